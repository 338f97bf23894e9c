"""Commands on a finished experiment (``python -m pipeline generate ...``), apart from the DAG's stages.

    trained.py     the service they all stand on: the experiment's trained networks, a variant loaded
                   as a sampler (optionally layer-swapped), seed lists, --out folders, UseError
    generate.py    images from a generator            edit.py      SeFa directions, style mixing
    cartoonize.py  photos -> each face -> cartoons     serve.py     the local web page (webapp.py)
    export.py      rosinality / TorchScript / ONNX     buildops.py  the CUDA kernels into their cache

Each module declares its ``COMMANDS``; ``COMMANDS`` below is all of them, in the order of ``--help``.
"""
from __future__ import annotations

from stages.use import buildops, cartoonize, edit, export, generate, serve

COMMANDS = [*generate.COMMANDS, *edit.COMMANDS, *cartoonize.COMMANDS, *serve.COMMANDS, export.COMMAND, buildops.COMMAND]
