"""Shard writer: accounting of every input, conversions, zip safety, atomicity, determinism."""
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cartoon_stylegan.data import iter_source, read_manifest, write_shards


def _png_bytes(im):
    b = io.BytesIO()
    im.save(b, format="PNG")
    return b.getvalue()


def _noise(w, h, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    ch = {"RGB": 3, "RGBA": 4, "L": 1, "CMYK": 4}[mode]
    a = rng.integers(0, 256, (h, w, ch), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if ch == 1 else a, mode)


@pytest.fixture
def messy_folder(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    _noise(80, 60).save(d / "good.jpg", quality=90)
    _noise(40, 50, seed=1).save(d / "good.png")
    _noise(48, 48, seed=2).save(d / "sub" / "NESTED.PNG")
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 3)
    full = _png_bytes(_noise(64, 64, seed=3))
    (d / "truncated.png").write_bytes(full[: len(full) // 2])
    _noise(8, 8, seed=4).save(d / "tiny.png")
    _noise(40, 40, "CMYK", seed=5).save(d / "cmyk.jpg")
    _noise(40, 40, "L", seed=6).save(d / "gray.png")
    _noise(40, 40, "RGBA", seed=7).save(d / "rgba.png")
    _noise(40, 40, seed=8).convert("P", palette=Image.ADAPTIVE).save(d / "palette.png")
    (d / "notes.txt").write_text("not an image")
    return d


def _tar_members(path):
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]


def test_folder_every_input_written_or_skipped_with_reason(messy_folder, tmp_path):
    out = tmp_path / "out"
    m = write_shards(messy_folder, out, "ds", resolution=32, min_size=16, workers=1, progress=False)
    assert m["found"] == 11
    assert m["count"] + len(m["skipped"]) == m["found"]
    reasons = {Path(s["path"]).name: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"corrupt.jpg", "truncated.png", "tiny.png", "notes.txt"}
    assert reasons["corrupt.jpg"].startswith("cannot decode")
    assert reasons["truncated.png"].startswith("cannot decode")
    assert reasons["tiny.png"] == "too small: 8x8 < min_size 16"
    assert reasons["notes.txt"] == "not an image extension"
    conv = {Path(c["path"]).name: c["reason"] for c in m["converted"]}
    assert set(conv) == {"cmyk.jpg", "gray.png", "rgba.png", "palette.png"}
    assert "CMYK" in conv["cmyk.jpg"] and "grayscale" in conv["gray.png"]
    assert "alpha composited over white" in conv["rgba.png"] and "palette" in conv["palette.png"]
    assert m["n_converted"] == 4

    # the tar holds exactly the written samples, as RGB PNGs of the right size, with metadata
    assert read_manifest(out) == m and read_manifest(out / "manifest.json") == m
    (shard,) = m["shards"]
    members = _tar_members(out / shard["file"])
    pngs = [(n, d) for n, d in members if n.endswith(".png")]
    metas = [json.loads(d) for n, d in members if n.endswith(".json")]
    assert len(pngs) == len(metas) == shard["count"] == m["count"] == 7
    for _, data in pngs:
        im = Image.open(io.BytesIO(data))
        assert im.mode == "RGB" and im.size == (32, 32)
    assert {Path(x["source"]).name for x in metas} == {
        "good.jpg", "good.png", "NESTED.PNG", "cmyk.jpg", "gray.png", "rgba.png", "palette.png"}


def test_rgba_is_composited_over_white(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    a = np.zeros((32, 32, 4), np.uint8)          # fully transparent black -> white
    Image.fromarray(a, "RGBA").save(d / "clear.png")
    m = write_shards(d, tmp_path / "out", "w", resolution=32, workers=1, progress=False)
    (name, data), = [x for x in _tar_members(tmp_path / "out" / m["shards"][0]["file"]) if x[0].endswith("png")]
    assert (np.asarray(Image.open(io.BytesIO(data))) == 255).all()


def test_zip_rejects_traversal_and_absolute_members(tmp_path):
    zpath = tmp_path / "in.zip"
    good = _png_bytes(_noise(40, 40))
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("faces/a.png", good)
        zf.writestr("faces/b.JPG", good)          # wrong content for its extension: decodes anyway
        zf.writestr("../evil.png", good)
        zf.writestr("/abs/evil2.png", good)
        zf.writestr("faces/../../evil3.png", good)
        zf.writestr("readme.md", b"hi")
        zf.writestr("faces/dir/", b"")            # directory entries are not inputs
    m = write_shards(zpath, tmp_path / "out", "z", resolution=16, workers=1, progress=False)
    assert m["found"] == 6 and m["count"] == 2
    reasons = {s["path"].split("::", 1)[1]: s["reason"] for s in m["skipped"]}
    assert reasons == {
        "../evil.png": "unsafe zip member path (contains ..)",
        "/abs/evil2.png": "unsafe zip member path (absolute)",
        "faces/../../evil3.png": "unsafe zip member path (contains ..)",
        "readme.md": "not an image extension",
    }
    assert all(s["path"].startswith(str(zpath) + "::") for s in m["skipped"])


def test_zero_usable_images_names_the_path(tmp_path):
    d = tmp_path / "nothing_here"
    d.mkdir()
    (d / "a.txt").write_text("x")
    (d / "b.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="nothing_here"):
        write_shards(d, tmp_path / "out", "n", resolution=16, workers=1, progress=False)
    with pytest.raises(ValueError, match="does_not_exist"):
        write_shards(tmp_path / "does_not_exist", tmp_path / "out", "n", resolution=16, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="count"):
        write_shards("synthetic:faces", tmp_path, "s", resolution=16, progress=False)
    with pytest.raises(ValueError, match="unknown synthetic domain"):
        write_shards("synthetic:dogs", tmp_path, "s", resolution=16, count=2, progress=False)
    with pytest.raises(ValueError, match="fmt"):
        write_shards("synthetic:faces", tmp_path, "s", resolution=16, count=2, fmt="gif", progress=False)
    with pytest.raises(ValueError, match="power of two"):
        write_shards("synthetic:faces", tmp_path, "s", resolution=48, count=2, progress=False)


def test_shard_split_atomic_rerun_and_report(tmp_path):
    out = tmp_path / "out"
    reports = []
    m1 = write_shards("synthetic:cartoons", out, "c", resolution=16, count=10, max_per_shard=4,
                      workers=1, progress=False, report=reports.append)
    assert [s["count"] for s in m1["shards"]] == [4, 4, 2]
    assert sorted(p.name for p in out.iterdir()) == ["c-000000.tar", "c-000001.tar", "c-000002.tar",
                                                     "manifest.json"]
    assert reports[-1]["written"] == 10 and reports[-1]["skipped"] == 0 and reports[-1]["shards"] == 3
    assert reports[-1]["images_per_s"] > 0 and len(reports) >= 3
    # same inputs -> same bytes (fixed tar headers), and a re-run cleans up after itself
    m2 = write_shards("synthetic:cartoons", out, "c", resolution=16, count=10, max_per_shard=4,
                      workers=1, progress=False)
    assert m2 == m1
    (out / "c-000009.tar.tmp").write_bytes(b"left by a crash")
    m3 = write_shards("synthetic:cartoons", out, "c", resolution=16, count=5, max_per_shard=4,
                      workers=1, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["c-000000.tar", "c-000001.tar", "manifest.json"]
    assert m3["shards"][0]["sha256"] == m1["shards"][0]["sha256"]
    assert not list(out.glob("*.tmp"))


def test_workers_give_identical_shards(tmp_path):
    kw = dict(resolution=16, count=40, max_per_shard=16, progress=False, chunk_size=8)
    m1 = write_shards("synthetic:faces", tmp_path / "a", "f", workers=1, **kw)
    m2 = write_shards("synthetic:faces", tmp_path / "b", "f", workers=2, **kw)
    assert m1["shards"] == m2["shards"]


def test_jpeg_format_and_count_caps_folder_inputs(messy_folder, tmp_path):
    m = write_shards(messy_folder, tmp_path / "out", "j", resolution=16, count=3, fmt="jpg", quality=80,
                     workers=1, progress=False)
    assert m["format"] == "jpg" and m["quality"] == 80 and m["found"] == 3
    names = [n for n, _ in _tar_members(tmp_path / "out" / m["shards"][0]["file"])]
    assert all(n.endswith((".jpg", ".json")) for n in names)
    # the first three inputs in sorted order: cmyk.jpg, corrupt.jpg, good.jpg
    assert [Path(p).name for _, p, _ in iter_source(messy_folder, 3)] == ["cmyk.jpg", "corrupt.jpg", "good.jpg"]


def test_special_files_and_symlinked_folders(tmp_path):
    """A FIFO (which would block open() forever), a socket, links to them, a broken link and a
    symlink loop are listed as skipped with a reason; a symlinked folder is followed once."""
    import os
    import socket
    import threading

    src = tmp_path / "in"
    (src / "real").mkdir(parents=True)
    Image.new("RGB", (20, 20), (200, 10, 10)).save(src / "real" / "a.png")
    os.mkfifo(src / "pipe.png")
    os.symlink(src / "pipe.png", src / "link-to-pipe.png")
    os.symlink(src / "missing.png", src / "broken.png")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock.png"))
    os.symlink(src / "real", src / "zlink")          # a second path to real/: walked once
    os.symlink(src, src / "real" / "up")            # a loop back to the root
    result = {}
    t = threading.Thread(target=lambda: result.update(m=write_shards(str(src), tmp_path / "out", "x", resolution=16,
                                                                       workers=1, progress=False)), daemon=True)
    t.start()
    t.join(60)
    sock.close()
    assert not t.is_alive(), "sharding hung on a special file"
    man = result["m"]
    assert man["count"] == 1
    reasons = {Path(s["path"]).relative_to(src).as_posix(): s["reason"] for s in man["skipped"]}
    assert reasons["pipe.png"] == "not a regular file: named pipe (FIFO)"
    assert reasons["link-to-pipe.png"] == "not a regular file: named pipe (FIFO)"
    assert reasons["sock.png"] == "not a regular file: socket"
    assert reasons["broken.png"] == "broken symlink"
    assert "already walked" in reasons["zlink"] and "already walked" in reasons["real/up"]
    assert man["found"] == man["count"] + len(man["skipped"])
