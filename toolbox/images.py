"""An image array written as PNG, atomically: the one PNG writer of the runner and the library."""
from __future__ import annotations

from pathlib import Path

from toolbox.files import atomic_path


def save_png(array, path) -> Path:
    """Write an HWC (or HW) uint8 array as PNG at ``path`` (temp file + rename)."""
    import numpy as np
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array).squeeze()).save(tmp, format="PNG")
    return Path(path)
