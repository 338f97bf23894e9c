"""The package installed the way a cluster's shared environment has it -- from a wheel, not editable --
still finds what it ships: the DeepSpeed presets (package data), the CUDA sources, the leaf helpers."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_non_editable_install_resolves_the_shipped_deepspeed_presets(tmp_path):
    pytest.importorskip("setuptools")
    wheels = tmp_path / "wheels"
    had_build = (ROOT / "build").exists()
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "--wheel-dir", str(wheels), str(ROOT)], check=True, cwd=tmp_path, timeout=300)
    finally:
        if not had_build:  # setuptools builds in the tree: leave the checkout as it was
            import shutil

            shutil.rmtree(ROOT / "build", ignore_errors=True)
    (wheel,) = wheels.glob("cartoon_stylegan-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    # the fresh venv sees this environment's dependencies (torch, ...) through a .pth path line -- which
    # adds the folder to sys.path but does not run its .pth files, so this checkout's editable install
    # is NOT visible there: only the wheel's copy of the project is
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=300)
    probe = (
        "import json, cartoon_stylegan, pipeline, toolbox\n"
        "from cartoon_stylegan.training.deepspeed_config import deepspeed_config_path, SHIPPED_DEEPSPEED\n"
        "from stages import load_config\n"
        "import sys\n"
        "cfg = load_config(sys.argv[1], ['launch.backend=deepspeed', 'launch.deepspeed=zero2'])\n"
        "p = deepspeed_config_path(cfg.launch.deepspeed)\n"
        "print(json.dumps({'pkg': cartoon_stylegan.__file__, 'preset': str(p), 'exists': p.is_file(),"
        " 'shipped': sorted(q.name for q in SHIPPED_DEEPSPEED.glob('*.json')),"
        " 'csrc': len(list((SHIPPED_DEEPSPEED.parents[1] / 'ops' / 'csrc').glob('*')))}))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    out = subprocess.run([str(py), "-c", probe, str(ROOT / "configs" / "default.yaml")], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=300)
    import json

    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert str(venv) in got["pkg"], got  # the wheel's copy, not this checkout
    assert got["exists"] and got["preset"].startswith(str(venv)), got
    assert got["shipped"] == ["zero0.json", "zero1.json", "zero2.json"]
    assert got["csrc"] > 0
    # without --config, the repository's default config is not there: one line saying to pass one
    miss = subprocess.run([str(py), "-m", "pipeline", "list"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)
    assert miss.returncode == 2 and "pass --config FILE" in miss.stderr and "Traceback" not in miss.stderr
