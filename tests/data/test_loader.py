"""Loader: exact round trip, rank/worker partitions (also with one shard), corrupt samples."""
import io
import json
import warnings

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from cartoon_stylegan.data import make_loader, write_shards

RES = 16


def _distinct_images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture
def known_shards(tmp_path):
    """n random 16x16 PNGs (no resize needed) -> shards of 5 -> (dir, images)."""
    def make(n, per_shard):
        src = tmp_path / f"src{n}_{per_shard}"
        src.mkdir()
        images = _distinct_images(n)
        for i, a in enumerate(images):
            Image.fromarray(a).save(src / f"{i:03d}.png")
        out = tmp_path / f"shards{n}_{per_shard}"
        write_shards(src, out, "k", resolution=RES, max_per_shard=per_shard, workers=1, progress=False)
        return out, images
    return make


def _to_uint8(batch):
    assert batch.dtype == torch.float32 and batch.shape[1:] == (3, RES, RES)
    assert batch.min() >= -1 and batch.max() <= 1
    return ((batch + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _take(loader, n_batches):
    return [im for _ in range(n_batches) for im in _to_uint8(next(loader))]


def test_exact_pixel_round_trip(known_shards):
    out, images = known_shards(12, 5)
    loader = make_loader(out, batch_size=12, shuffle_buffer=0, xflip=False, epoch_shuffle=False)
    got = _take(loader, 1)
    # epoch order without shuffling is the shard order, which is the sorted input order
    assert all(np.array_equal(g, e) for g, e in zip(got, images))
    # a second epoch comes back the same, forever
    assert all(np.array_equal(g, e) for g, e in zip(_take(loader, 1), images))


def test_shuffled_flipped_stream_covers_the_data(known_shards):
    out, images = known_shards(12, 5)
    loader = make_loader(out / "manifest.json", batch_size=4, shuffle_buffer=8, xflip=True, seed=3)
    got = _take(loader, 15)                  # 5 epochs; the buffer mixes across epoch ends
    keys = {a.tobytes(): i for i, a in enumerate(images)}
    flipped = {a[:, ::-1].tobytes(): i for i, a in enumerate(images)}
    ids = [keys.get(g.tobytes(), flipped.get(g.tobytes())) for g in got]
    assert None not in ids and set(ids) == set(range(12))
    assert ids[:12] != list(range(12))
    n_flipped = sum(g.tobytes() in flipped for g in got)
    assert 10 < n_flipped < 50


@pytest.mark.parametrize("per_shard", [100, 3])      # one shard (sample split) / 4 shards (shard split)
def test_two_ranks_read_disjoint_samples(known_shards, per_shard):
    out, images = known_shards(12, per_shard)
    keys = {a.tobytes(): i for i, a in enumerate(images)}
    seen = []
    for rank in (0, 1):
        loader = make_loader(out, batch_size=3, rank=rank, world_size=2, shuffle_buffer=0, xflip=False)
        assert loader.split == ("sample" if per_shard == 100 else "shard")
        seen.append([keys[g.tobytes()] for g in _take(loader, 2)])   # one epoch = 6 per rank
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(12))


def test_one_shard_two_ranks_stay_disjoint_with_shuffling(known_shards):
    out, images = known_shards(11, 100)          # odd count: the split must not drift between epochs
    keys = {a.tobytes(): i for i, a in enumerate(images)}
    seen = []
    for rank in (0, 1):
        loader = make_loader(out, batch_size=2, rank=rank, world_size=2, shuffle_buffer=4, seed=5)
        got = _take(loader, 12)
        seen.append({keys.get(g.tobytes(), keys.get(g[:, ::-1].tobytes())) for g in got})
    assert None not in seen[0] | seen[1]
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(11))


def test_workers_partition_one_shard(known_shards):
    out, images = known_shards(8, 100)
    keys = {a.tobytes(): i for i, a in enumerate(images)}
    loader = make_loader(out, batch_size=2, num_workers=2, shuffle_buffer=0, xflip=False,
                         multiprocessing_context="fork")
    try:
        # workers alternate batches: 4 batches = one epoch of each worker's half
        ids = [keys[g.tobytes()] for g in _take(loader, 4)]
    finally:
        loader.close()
    assert sorted(ids) == list(range(8))


def test_too_few_samples_for_readers_is_an_error(known_shards):
    out, _ = known_shards(3, 100)
    with pytest.raises(ValueError, match="3 samples cannot feed 4 readers"):
        make_loader(out, batch_size=1, world_size=4)
    with pytest.raises(ValueError, match="rank"):
        make_loader(out, batch_size=1, rank=2, world_size=2)


def _write_tar(path, samples):
    with open(path, "wb") as f:
        w = wds.TarWriter(f, encoder=False, mtime=0)
        for key, ext, data in samples:
            w.write({"__key__": key, ext: data, "json": json.dumps({"k": key}).encode()})
        w.close()


def test_corrupt_sample_in_tar_is_skipped_and_counted(tmp_path):
    images = _distinct_images(3)
    png = [io.BytesIO() for _ in images]
    for b, a in zip(png, images):
        Image.fromarray(a).save(b, format="PNG")
    d = tmp_path / "shards"
    d.mkdir()
    _write_tar(d / "x-000000.tar", [("a", "png", png[0].getvalue()), ("b", "png", b"\x89PNG broken"),
                                    ("c", "png", png[2].getvalue()[:40]), ("d", "png", png[1].getvalue())])
    (d / "manifest.json").write_text(json.dumps({
        "name": "x", "count": 4, "resolution": RES, "format": "png",
        "shards": [{"file": "x-000000.tar", "count": 4, "sha256": ""}], "skipped": [], "found": 4}))
    loader = make_loader(d, batch_size=2, shuffle_buffer=0, xflip=False, epoch_shuffle=False)
    with pytest.warns(RuntimeWarning) as record:
        got = _take(loader, 1)
    messages = [str(w.message) for w in record]
    assert any("skipping corrupt sample 'b'" in m for m in messages)
    assert any("skipping corrupt sample 'c'" in m for m in messages)
    assert np.array_equal(got[0], images[0]) and np.array_equal(got[1], images[1])
    assert loader.skipped == 2


def test_unreadable_epoch_raises_instead_of_spinning(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    _write_tar(d / "x-000000.tar", [("a", "png", b"nope"), ("b", "png", b"nope")])
    loader = make_loader(d, batch_size=1, shuffle_buffer=0)    # no manifest: *.tar fallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError, match="no readable sample"):
            next(loader)
