"""Infinite, rank-aware training batches from a shard directory (WebDataset tars).

Who reads what. Every reader is a *slot*: ``slot = rank * W + worker`` of
``world_size * W`` slots (``W = max(1, num_workers)``). Each epoch, all slots put
the shard list in the same order (shuffled with ``(seed, epoch)`` when
``epoch_shuffle``), then

- **shard split** (``#shards >= #slots``): slot ``k`` reads shards ``k, k + #slots, ...``
  of that order, so the slots read disjoint shards and each byte is read once;
- **sample split** (fewer shards than slots, e.g. 1 shard and 2 ranks): every slot
  reads every shard in that order and keeps sample ``j`` of the epoch's stream when
  ``j % #slots == k``; the slots' samples are disjoint again, at the price of each
  slot reading (not decoding) all the bytes, which only happens when there are
  few shards, i.e. a small data set.

Either way the slots of one epoch partition the data set: no two ranks or workers
hold the same sample in an epoch (resampling with per-rank seeds would not
guarantee that), and any number of shards works with any number of readers as
long as there are at least as many samples as readers. Rank and world size are arguments (the launcher owns the
environment); the worker id comes from ``torch.utils.data.get_worker_info()``.

Each slot then shuffles through a buffer seeded by ``(seed, rank, worker)``, flips
half the images horizontally when ``xflip``, and batches. A sample that does not
decode (or a tar that breaks) is skipped with a warning and counted in
``ShardLoader.skipped``; a slot whose whole epoch is unreadable raises instead of
spinning forever.
"""
from __future__ import annotations

import io
import random
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .shards import MANIFEST, read_manifest

__all__ = ["ShardLoader", "make_loader", "decode_image"]

_IMAGE_KEYS = ("png", "jpg", "jpeg")


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H, W, 3)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.asarray(im, dtype=np.uint8)


def _slot(rank: int, world_size: int) -> tuple[int, int, int]:
    """(slot, n_slots, worker id) of the calling process."""
    info = get_worker_info()
    wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * nw + wid, world_size * nw, wid


class _SlotStream(IterableDataset):
    """Yields ``(float batch (B, 3, H, W) in [-1, 1], samples skipped since the last batch)`` forever."""

    def __init__(self, urls, *, batch_size, rank, world_size, seed, shuffle_buffer, xflip,
                 epoch_shuffle, resolution):
        super().__init__()
        self.urls = list(urls)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle_buffer, self.xflip = seed, shuffle_buffer, xflip
        self.epoch_shuffle, self.resolution = epoch_shuffle, resolution
        self._skipped = 0

    # -- the steps, each a generator, composed in __iter__
    def _on_error(self, exn) -> bool:
        """WebDataset handler: a broken tar or member is skipped, warned about and counted."""
        self._skipped += 1
        warnings.warn(f"skipping unreadable shard data: {exn!r}", RuntimeWarning, stacklevel=2)
        return True

    def _samples(self, slot: int, n_slots: int):
        split_by_shard = len(self.urls) >= n_slots
        epoch = 0
        while True:
            position = 0
            order = list(self.urls)
            if self.epoch_shuffle:
                random.Random(f"shards:{self.seed}:{epoch}").shuffle(order)   # same on every slot
            mine = order[slot::n_slots] if split_by_shard else order
            good = 0
            stream = wds.tarfile_to_samples(handler=self._on_error)(iter([{"url": u} for u in mine]))
            for sample in stream:
                if not split_by_shard:
                    position += 1
                    if (position - 1) % n_slots != slot:
                        continue
                image = self._decode(sample)
                if image is not None:
                    good += 1
                    yield image
            if good == 0:
                raise RuntimeError(f"no readable sample in epoch {epoch} for rank {self.rank} "
                                   f"(slot {slot} of {n_slots}) in {len(mine)} shard(s) starting {mine[:1]}")
            epoch += 1

    def _decode(self, sample) -> Optional[np.ndarray]:
        key = sample.get("__key__")
        data = next((sample[k] for k in _IMAGE_KEYS if k in sample), None)
        try:
            if data is None:
                raise ValueError(f"no image member (has {sorted(k for k in sample if not k.startswith('__'))})")
            image = decode_image(data)
            if self.resolution and image.shape[:2] != (self.resolution, self.resolution):
                raise ValueError(f"size {image.shape[1]}x{image.shape[0]}, expected {self.resolution}")
            return image
        except Exception as exc:  # noqa: BLE001 - one bad sample never stops training
            self._skipped += 1
            warnings.warn(f"skipping corrupt sample {key!r} in {sample.get('__url__')}: {exc}",
                          RuntimeWarning, stacklevel=2)
            return None

    def __iter__(self):
        slot, n_slots, wid = _slot(self.rank, self.world_size)
        rng = random.Random(f"slot:{self.seed}:{self.rank}:{wid}")
        stream = self._samples(slot, n_slots)
        if self.shuffle_buffer > 1:
            stream = wds.shuffle(self.shuffle_buffer, min(self.shuffle_buffer, 100), rng=rng)(stream)
        batch, reported = [], 0
        for image in stream:
            if self.xflip and rng.random() < 0.5:
                image = image[:, ::-1]
            batch.append(image)
            if len(batch) == self.batch_size:
                # uint8 NHWC -> float NCHW in [-1, 1], in numpy: one pass, no intra-op threads
                u8 = np.stack(batch).transpose(0, 3, 1, 2)
                out = np.empty(u8.shape, np.float32)
                np.multiply(u8, np.float32(1 / 127.5), out=out, dtype=np.float32)
                out -= np.float32(1.0)
                delta, reported = self._skipped - reported, self._skipped
                yield torch.from_numpy(out), delta
                batch = []


class ShardLoader:
    """Iterator of float batches (N, 3, H, W) in [-1, 1], forever. See the module docstring."""

    def __init__(self, shards, *, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 num_workers: int = 0, shuffle_buffer: int = 1000, xflip: bool = True,
                 epoch_shuffle: bool = True, multiprocessing_context=None):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if int(num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers!r}")
        path = Path(shards)
        directory = path if path.is_dir() else path.parent
        if (directory / MANIFEST).exists():
            self.manifest = read_manifest(directory)
            urls = [str(directory / s["file"]) for s in self.manifest["shards"]]
            self.resolution = int(self.manifest["resolution"])
        else:
            urls = sorted(str(p) for p in directory.glob("*.tar"))
            self.manifest, self.resolution = None, None
        if not urls:
            raise ValueError(f"no shards in {shards!s}")
        for u in urls:
            if not Path(u).exists():
                raise ValueError(f"shard {u} listed in the manifest is missing")
        self.urls = urls
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.num_workers = int(num_workers)
        n_slots = self.world_size * max(1, self.num_workers)
        self.split = "shard" if len(urls) >= n_slots else "sample"
        if self.split == "sample" and self.manifest is not None and self.manifest["count"] < n_slots:
            raise ValueError(f"{self.manifest['count']} samples cannot feed {n_slots} readers "
                             f"(world_size={world_size} x num_workers={max(1, num_workers)})")
        self.dataset = _SlotStream(urls, batch_size=self.batch_size, rank=self.rank,
                                   world_size=self.world_size, seed=int(seed),
                                   shuffle_buffer=int(shuffle_buffer), xflip=bool(xflip),
                                   epoch_shuffle=bool(epoch_shuffle), resolution=self.resolution)
        self._mp_context = multiprocessing_context
        self._it = None
        self.skipped = 0          # corrupt samples (or broken tar pieces) skipped so far
        self.batches = 0

    def _start(self):
        if self.num_workers == 0:
            return iter(self.dataset)
        dl = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                        persistent_workers=True, prefetch_factor=2,
                        multiprocessing_context=self._mp_context)
        return iter(dl)

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self._it is None:
            self._it = self._start()
        batch, skipped = next(self._it)
        self.skipped += int(skipped)
        self.batches += 1
        return batch

    def close(self):
        """Stop the worker processes (they stop by themselves when the loader is garbage-collected)."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def make_loader(shard_dir_or_manifest, *, batch_size: int, rank: int = 0, world_size: int = 1,
                seed: int = 0, num_workers: int = 0, shuffle_buffer: int = 1000, xflip: bool = True,
                epoch_shuffle: bool = True, multiprocessing_context=None) -> ShardLoader:
    """An infinite iterator of float batches (N, 3, H, W) in [-1, 1] for this rank."""
    return ShardLoader(shard_dir_or_manifest, batch_size=batch_size, rank=rank, world_size=world_size,
                       seed=seed, num_workers=num_workers, shuffle_buffer=shuffle_buffer, xflip=xflip,
                       epoch_shuffle=epoch_shuffle, multiprocessing_context=multiprocessing_context)
