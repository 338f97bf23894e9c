"""Small image helpers: tensor batches -> uint8 grids -> PNG (atomic)."""
from __future__ import annotations

import numpy as np

from toolbox.images import save_png  # the one PNG writer (atomic), used by the commands

__all__ = ["to_uint8", "tile_images", "save_png"]


def to_uint8(x):
    """Images in [-1, 1] (N, C, H, W) float tensor -> uint8 tensor, same layout."""
    import torch

    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def tile_images(images, cols: int, pad: int = 0) -> np.ndarray:
    """uint8 (N, C, H, W) tensor or array -> (rows*H, cols*W, C) uint8 array, row-major."""
    a = images.cpu().numpy() if hasattr(images, "cpu") else np.asarray(images)
    if a.dtype != np.uint8:
        raise TypeError(f"tile_images wants uint8 images, got {a.dtype}")
    n, c, h, w = a.shape
    rows = -(-n // cols)
    out = np.zeros((rows * (h + pad) - pad, cols * (w + pad) - pad, c), np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        out[r * (h + pad): r * (h + pad) + h, q * (w + pad): q * (w + pad) + w] = a[i].transpose(1, 2, 0)
    return out
