"""The GPU acceptance run (benchmarks/gpu_acceptance.sh), rehearsed on the CPU, so that the one run a
GPU machine allows is spent measuring: the plan fits the run, the steps run in their order with their
limits scaled down, a step that overruns is cut off (its processes with it) and makes the run
INCOMPLETE, --prepare checks versions and refuses to go on without NVlabs' code, and their plugin
loader gets the module it built."""
from __future__ import annotations

import re
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_acceptance as ga  # noqa: E402
import gpu_step  # noqa: E402

SCRIPT = REPO / "benchmarks" / "gpu_acceptance.sh"


def _run(tmp_path, *args, timeout=120):
    proc = subprocess.run([str(SCRIPT), "--cpu-rehearsal", "--out", str(tmp_path), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    report = tmp_path / "gpu-cpu-rehearsal.md"
    text = report.read_text() if report.exists() else ""
    rows = {m[0]: m[1] for m in re.findall(r"^\| (\d) \| [^|]+ \|[^|]*\|[^|]*\|[^|]*\| ([^|]+?) \|", text, re.M)}
    return proc, text, rows


def test_the_plan_fits_one_run_in_the_order_that_settles_the_most_first():
    ids = [i for i, _, _ in ga.PLAN]
    assert ids == [str(i) for i in range(9)]
    titles = " / ".join(t for _, t, _ in ga.PLAN)
    order = ["device", "cold build", "kernels vs reference", "kernel timing", "DAG", "ZeRO-2", "config-f", "memcheck"]
    assert [titles.index(w) for w in order] == sorted(titles.index(w) for w in order), titles
    assert ga.BUDGET_S <= ga.CALL_LIMIT_S - 60  # a minute for the start, the wheels' install and the report
    # the step table's rows fill step 7's share exactly, the target's two rows first
    rows = ga.STEP_ROWS.split(",")
    assert sum(gpu_step.ROW_SECONDS[r] for r in rows) == dict((i, s) for i, _, s in ga.PLAN)["7"]
    assert rows[:2] == ["ours:cuda:bf16", "nvlabs"] and "ours:cuda:bf16:compile" in rows and "ours:ref:bf16" in rows
    assert gpu_step.row_limits(rows, 92.5) == pytest.approx([gpu_step.ROW_SECONDS[r] / 2 for r in rows])


@pytest.mark.slow
def test_cpu_rehearsal_runs_every_step_in_order_with_scaled_limits(tmp_path):
    proc, report, rows = _run(tmp_path, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    assert list(rows) == [str(i) for i in range(9)], report
    assert rows["0"] == rows["1"] == "ok", report
    limits = dict(re.findall(r"^\| (\d) \| [^|]+ \| (\d+) \|", report, re.M))
    share = dict((i, s) for i, _, s in ga.PLAN)["2"]
    assert limits["2"] == str(round(share * ga.REHEARSAL_BUDGET_S / ga.BUDGET_S)), report  # the same budgets, scaled
    n = int(re.search(r"-m gpu selects (\d+) tests", report).group(1))
    assert n >= ga.MIN_GPU_TESTS and rows["3"] == "CUDA only: collected, not run"
    assert rows["4"] == "CUDA only: cases listed"
    assert rows["5"] == rows["6"] == "CUDA only: its command line checked (--dry-run)"
    assert rows["7"] == "rows rehearsed on the CPU" and rows["2"] == "CUDA only: not rehearsed"
    assert rows["8"] == "CUDA only: its program ran on the reference ops"
    step = dict(re.findall(r"^\| ([\w:]+) \|[^|]*\|[^|]*\|[^|]*\|[^|]*\|[^|]*\|[^|]*\| ([^|]+) \|$", report, re.M))
    assert step["ours:ref:bf16"] == "ok (rehearsal: reference ops)"
    assert step["ours:cuda:bf16:compile"] == "ok (rehearsal: reference ops, torch.compile disabled)"
    assert step["ours:cuda:bf16"].startswith("skipped: no CUDA (ours:ref:bf16 runs the same code")
    peer = REPO / ".peer" / "stylegan2-ada-pytorch"
    assert step["nvlabs"] == "ok (rehearsal: reference ops)" if (peer / "training" / "loss.py").is_file() \
        else step["nvlabs"].startswith("skipped: no NVlabs checkout")
    assert re.search(r"^Result: REHEARSED on the CPU", report, re.M)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_step_that_overruns_is_cut_off_with_its_processes_and_the_run_is_incomplete(tmp_path):
    t0 = time.time()
    proc, report, rows = _run(tmp_path, "--only", "1", "--rehearse-overrun", "1")
    assert proc.returncode == 3, (proc.stdout + proc.stderr)[-3000:]
    assert rows["1"].startswith("cut off at its limit"), report
    assert rows["0"] == "ok" and all(rows[i] == "not selected (--only)" for i in "2345678")
    assert re.search(r"^Result: INCOMPLETE: 1 \(cut off at its limit", report, re.M), report
    assert "passed" not in report.lower()
    pids = [int(p) for p in (tmp_path / "overrun.pids").read_text().split()]
    deadline = time.time() + 5
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "a child of the cut-off step survived (the group or a new session)"
    assert time.time() - t0 < 60


def test_a_step_without_time_left_is_not_run_and_the_run_is_incomplete(tmp_path):
    proc, report, rows = _run(tmp_path, "--only", "1", "--budget", "1")
    assert proc.returncode == 3, (proc.stdout + proc.stderr)[-3000:]
    assert rows["0"] == rows["1"] == "not run: out of time"
    assert re.search(r"^Result: INCOMPLETE: 0 \(not run: out of time\), 1 \(not run: out of time\)", report, re.M)


def _wheel(path: Path, name: str, version: str, requires: list[str]) -> Path:
    w = path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n{}".format(
        name, version, "".join(f"Requires-Dist: {r}\n" for r in requires))
    with zipfile.ZipFile(w, "w") as z:
        z.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", meta)
    return w


def test_requirements_are_checked_by_version_not_only_by_name(tmp_path):
    core = _wheel(tmp_path, "pydantic-core", "2.50.5",
                  ["typing-extensions>=4.16.0", "tomli; python_version < '3.11'", "rich; extra == 'dev'"])
    reqs = {core.name: ga.wheel_requirements(core)}
    markers = ga.TARGET_MARKERS
    assert ga.wheel_name_version(core) == ("pydantic-core", "2.50.5")
    # the image lists typing-extensions without a version: a bound on it cannot be taken on trust
    assert ga.unmet(reqs, {"typing-extensions": None}, markers) == [
        f"{core.name} needs typing-extensions>=4.16.0: the version there is not known, so it must be carried"]
    assert ga.unmet(reqs, {"typing-extensions": "4.15.0"}, markers) == [
        f"{core.name} needs typing-extensions>=4.16.0: found 4.15.0"]
    assert ga.unmet(reqs, {"typing-extensions": "4.16.0"}, markers) == []
    assert ga.unmet(reqs, {}, markers) == [f"{core.name} needs typing-extensions>=4.16.0: not there"]
    # what the run carries, against the image's list as written in the repository
    image = ga.read_image_packages()
    assert image["torch"] and image["python"] == "3.12.3" and image["typing-extensions"] is None
    carried = {ga._canon(c.split("==")[0]) for c in ga.CARRY_BINARY + ga.CARRY_BUILT}
    assert "typing-extensions" in carried and not carried & {n for n, v in image.items() if v}


def test_prepared_wheels_meet_their_requirements_on_the_image():
    wheels = sorted(ga.WHEELS.glob("*.whl")) if ga.WHEELS.is_dir() else []
    if not wheels:
        pytest.skip("no .whl/ here (benchmarks/gpu_acceptance.sh --prepare)")
    available = dict(ga.read_image_packages())
    available.update(ga.wheel_name_version(w) for w in wheels)
    assert ga.unmet({w.name: ga.wheel_requirements(w) for w in wheels}, available, ga.TARGET_MARKERS) == []


def _fake_nvlabs(root: Path) -> Path:
    """A stand-in with NVlabs' layout and the shape of their plugin loader: it builds through
    torch.utils.cpp_extension.load(name=...) and then imports the module by that name."""
    for f in ga.NVLABS_FILES:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("")
    (root / "torch_utils" / "__init__.py").write_text("")
    (root / "torch_utils" / "ops" / "__init__.py").write_text("")
    (root / "torch_utils" / "custom_ops.py").write_text(
        "import importlib\nimport torch.utils.cpp_extension\n"
        "def get_plugin(module_name, sources, **kw):\n"
        "    torch.utils.cpp_extension.load(name=module_name, sources=sources, **kw)\n"
        "    return importlib.import_module(module_name)\n")
    for op in gpu_step.PLUGINS:
        (root / "torch_utils" / "ops" / f"{op}.py").write_text(
            "import warnings\nfrom .. import custom_ops\n_plugin = None\n"
            "def _init():\n    global _plugin\n    try:\n"
            f"        _plugin = custom_ops.get_plugin('{op}_plugin', sources=['{op}.cu'])\n"
            "    except Exception as e:\n        warnings.warn(f'Falling back to the reference: {e!r}')\n"
            "    return _plugin is not None\n")
    return root


@pytest.fixture
def fake_nvlabs(tmp_path, monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    built = []

    def load(name, sources, **kw):  # current torch: the module comes back, sys.modules is left alone
        built.append(name)
        if name.startswith("upfirdn2d") and getattr(load, "fail", False):
            raise RuntimeError("ninja: build stopped: subcommand failed")
        return types.ModuleType(name)

    monkeypatch.setattr(cpp_extension, "load", load)
    root = _fake_nvlabs(tmp_path / "stylegan2-ada-pytorch")
    yield root, load, built
    for name in [m for m in sys.modules if m.split(".")[0] in ("torch_utils", "training", "dnnlib")
                 or m.endswith("_plugin")]:
        del sys.modules[name]
    sys.path[:] = [p for p in sys.path if p != str(root)]


def test_their_loader_fails_on_current_torch_without_the_module_registered(fake_nvlabs, monkeypatch):
    root, _, built = fake_nvlabs
    monkeypatch.syspath_prepend(str(root))
    from torch_utils.ops import bias_act

    with pytest.warns(UserWarning, match="No module named 'bias_act_plugin'"):
        assert bias_act._init() is False
    assert built == ["bias_act_plugin"]


def test_their_plugins_load_with_the_built_module_registered(fake_nvlabs):
    root, _, built = fake_nvlabs
    mods = gpu_step.import_nvlabs(root)
    seconds = gpu_step.load_nvlabs_plugins(mods)
    assert set(seconds) == set(gpu_step.PLUGINS) and built == ["bias_act_plugin", "upfirdn2d_plugin"]
    for op in gpu_step.PLUGINS:
        assert mods[op]._plugin is sys.modules[f"{op}_plugin"]


def test_a_plugin_that_does_not_build_fails_the_row(fake_nvlabs):
    root, load, _ = fake_nvlabs
    load.fail = True
    with pytest.raises(RuntimeError, match=r"(?s)upfirdn2d CUDA plugin did not load.*subcommand failed"):
        gpu_step.load_nvlabs_plugins(gpu_step.import_nvlabs(root))
    with pytest.raises(FileNotFoundError, match="--prepare --nvlabs-repo"):
        gpu_step.import_nvlabs(root.parent / "absent")


def test_prepare_takes_the_nvlabs_checkout_as_an_argument_and_fails_without_it(tmp_path):
    dest = tmp_path / "peer" / "stylegan2-ada-pytorch"
    with pytest.raises(SystemExit, match="--prepare needs NVlabs' stylegan2-ada-pytorch.*--nvlabs-repo DIR"):
        ga.prepare_peer(None, dest)
    src = _fake_nvlabs(tmp_path / "checkout")
    subprocess.run(["git", "init", "-q", str(src)], check=True)
    subprocess.run(["git", "-C", str(src), "add", "."], check=True)
    subprocess.run(["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for source in (src, src / ".git"):  # a checkout, or a bare git directory
        assert head[:12] in ga.prepare_peer(str(source), dest)
        assert (dest / "torch_utils" / "custom_ops.py").is_file() and not (dest / ".git").exists()
        assert (dest / "REVISION").read_text().strip() == head
    assert "stylegan2-ada-pytorch" in ga.prepare_peer(None, dest)  # an earlier copy is used again
    # the script fails before it downloads anything
    proc = subprocess.run([str(SCRIPT), "--prepare", "--nvlabs-repo", str(tmp_path / "nowhere")], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "neither a stylegan2-ada-pytorch checkout nor a git repository" in proc.stderr


def test_the_targets_are_read_off_this_runs_tables(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_ops", REPO / "benchmarks" / "ops.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["benchmark_ops"] = bench  # its dataclasses look their module up
    try:
        spec.loader.exec_module(bench)
    finally:
        del sys.modules["benchmark_ops"]
    shape = "16x128x256x256"
    down = "D downsample2d 256->128px"
    rows = [["G lrelu 256px", shape, "bf16", "nchw", "fwd", 0.1, None, 0.3, None, 3.0, None, 2900.0, 91.0],
            ["G lrelu 256px", shape, "fp32", "nchw", "fwd+bwd", 0.4, None, 0.9, None, 2.2, None, 2500.0, 80.5],
            ["G upsample 128->256px", shape, "bf16", "nchw", "fwd+bwd", 0.2, None, 0.8, 0.3, 4.0, 1.5, 900.0, 30.0],
            [down, shape, "bf16", "nchw", "fwd+bwd", 0.2, None, 0.5, 0.18, 2.5, 0.9, 900.0, 30.0],
            [down, shape, "bf16", "nchw", "fwd", 0.1, None, 0.5, 0.1, 5.0, 1.0, 900.0, 30.0]]
    ops_md = "## Correctness\n\nNot run here.\n\n## Ops\n\n" + bench.format_table(bench.OP_HEADERS, rows) + "\n"
    args = types.SimpleNamespace(reps=3)
    results = [{"row": "ours:cuda:bf16", "sec_per_kimg": 3.0, "status": "ok", "limit_s": 30, "ops": "cuda"},
               {"row": "nvlabs", "sec_per_kimg": 4.0, "status": "ok", "limit_s": 60, "ops": "cuda"}]
    step_md = gpu_step.write_table(results, args, dict(size=256, batch=32), "GPU", tmp_path / "step.md")
    assert ga.targets(ops_md, step_md) == [
        "fused_bias_act bf16 fwd: 91 % of copy bandwidth (target >= 85 %): met",
        "fused_bias_act fp32 fwd+bwd: 80 % of copy bandwidth (target >= 85 %): MISSED",
        "G upsample 128->256px bf16 fwd+bwd: 4.0x the eager reference (target >= 3x), "
        "1.5x the compiled reference (target > 1x): met",
        "D downsample2d 256->128px bf16 fwd+bwd: 2.5x the eager reference (target >= 3x), "
        "0.9x the compiled reference (target > 1x): MISSED",
        "config-f step, ours CUDA bf16 3.00 vs NVlabs 4.00 sec/kimg = 0.75x (target <= 0.8x): met"]
    results[1] = {"row": "nvlabs", "status": "failed: RuntimeError: NVlabs' upfirdn2d CUDA plugin did not load",
                  "limit_s": 60}
    step_md = gpu_step.write_table(results, args, dict(size=256, batch=32), "GPU", tmp_path / "step.md")
    assert ga.targets(None, step_md) == [
        "config-f step against NVlabs: not measured (ours:cuda:bf16: ok; "
        "nvlabs: failed: RuntimeError: NVlabs' upfirdn2d CUDA plugin did not load)"]
