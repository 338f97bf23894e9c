"""Every CLI command: its --help, and its cheapest real invocation, through a real subprocess.

Also the layering rules of the redesign: the runner (pipeline/) imports nothing from the
stages package, and no module imports a private name from another package.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    """Every command the CLI has: the runner's own and the registry's (generate, ..., export, build-ops)."""
    from pipeline.__main__ import _parsers
    from stages import REGISTRY

    return [*_parsers(), *(c.name for c in REGISTRY.commands)]


COMMANDS = _commands()


def _cli(*args, cwd=REPO, timeout=120, env=None):
    import os

    e = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, text=True, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**e, **(env or {})})


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command):
    p = _cli(command, "--help")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"usage: python -m pipeline {command}")
    from stages import REGISTRY

    needs_config = all(c.config for c in REGISTRY.commands if c.name == command)
    assert ("--config" in p.stdout) == needs_config, p.stdout


def test_the_command_list_is_the_registrys():
    assert {"run", "list", "show", "submit", "compare"} <= set(COMMANDS)
    assert {"generate", "sefa", "mix", "cartoonize", "serve", "export", "build-ops"} <= set(COMMANDS)


def test_no_command_prints_usage_not_a_traceback():
    p = _cli()
    assert p.returncode == 2 and "python -m pipeline run all" in p.stderr and "Traceback" not in p.stderr
    p = _cli("frobnicate")
    assert p.returncode == 2 and "unknown command 'frobnicate'" in p.stderr


def test_cheapest_real_invocations(tmp_path):
    root = f"run_root={tmp_path}"
    p = _cli("run", "--dry-run", "all", root)
    assert p.returncode == 0 and "pretrain" in p.stdout and "never run" in p.stdout, p.stderr
    p = _cli("list", root)
    assert p.returncode == 0 and "eval" in p.stdout, p.stderr
    p = _cli("show", "pretrain", root)
    assert p.returncode == 0 and "pretrain:" in p.stdout and "kimg:" in p.stdout, p.stderr
    p = _cli("submit", "--dry-run", "all", root)
    assert p.returncode == 0 and "[dry-run] sbatch" in p.stdout and "slurm/eval.sh" in p.stdout, p.stderr
    p = _cli("compare", root, "tracking.enabled=true")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "no MLflow store" in p.stderr


def test_build_ops_without_cuda_says_why(tmp_path):
    """No CUDA toolkit (CUDA_HOME points nowhere, no nvcc on PATH): one line and a non-zero exit.
    (With a toolkit, build-ops really builds, GPU or not: that is what a login node does.)"""
    import os

    bindir = os.path.dirname(sys.executable)  # python and ninja, no nvcc
    p = _cli("build-ops", timeout=300, env={"CUDA_HOME": str(tmp_path / "no-cuda"), "PATH": bindir})
    assert p.returncode != 0, p.stdout
    assert "Traceback" not in p.stderr and "AttributeError" not in p.stderr
    assert p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "nvcc" in p.stderr


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, None
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                yield node.lineno, node.module, a.name


def test_runner_imports_nothing_from_stages():
    bad = [f"{p.relative_to(REPO)}:{line} imports {mod}" for p in (REPO / "pipeline").rglob("*.py")
           for line, mod, _ in _imports(p) if mod == "stages" or mod.startswith("stages.")]
    assert not bad, bad
    text = "\n".join(p.read_text() for p in (REPO / "pipeline").rglob("*.py"))
    assert "import stages" not in text and "from stages" not in text


def _all_imports(top: str):
    """(file, line, module) of every import under ``top`` -- lazy ones inside functions included."""
    for p in (REPO / top).rglob("*.py"):
        for line, mod, _ in _imports(p):
            yield p, line, mod


def test_runner_imports_nothing_from_the_library():
    """pipeline/ is generic: the registry hands it the version, the commands, the path names; the
    mechanisms it shares with the library come from toolbox/ (a leaf)."""
    bad = [f"{p.relative_to(REPO)}:{line} imports {mod}" for p, line, mod in _all_imports("pipeline")
           if mod.split(".")[0] in ("cartoon_stylegan", "stages")]
    assert not bad, bad


def test_toolbox_is_a_leaf():
    bad = [f"{p.relative_to(REPO)}:{line} imports {mod}" for p, line, mod in _all_imports("toolbox")
           if mod.split(".")[0] in ("cartoon_stylegan", "stages", "pipeline")]
    assert not bad, bad


def _module_graph() -> dict[str, set[str]]:
    """{module: project modules it imports} over pipeline/, stages/, cartoon_stylegan/, toolbox/ -- every
    import statement, lazy ones inside functions included; ``from pkg import mod`` counts as importing
    pkg.mod; a module importing its own package's __init__ is left out (Python runs the package first)."""
    mods = {}
    for top in ("pipeline", "stages", "cartoon_stylegan", "toolbox"):
        for p in (REPO / top).rglob("*.py"):
            parts = list(p.relative_to(REPO).with_suffix("").parts)
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p

    def resolve(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rpartition(".")[0]
        out = set()
        for node in ast.walk(ast.parse(p.read_text(), filename=str(p))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg
                    for _ in range(node.level - 1):
                        up = up.rpartition(".")[0]
                    base = f"{up}.{node.module}" if node.module else up
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            for t in targets:
                r = resolve(t)
                if r and r != m and not m.startswith(r + "."):
                    out.add(r)
        graph[m] = out
    return graph


def _cycles(graph) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph``: each component of 2+ modules is a cycle."""
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles_lazy_imports_included():
    graph = _module_graph()
    assert "cartoon_stylegan.ops.bias_act" in graph and "stages.use.webapp" in graph  # the scan sees them
    assert not _cycles(graph)


def test_the_cycle_check_finds_a_lazy_cycle(tmp_path, monkeypatch):
    """The scan above is not vacuous: two modules that import each other inside functions are a cycle."""
    for top in ("pipeline", "stages", "cartoon_stylegan", "toolbox"):
        (tmp_path / top).mkdir()
    pkg = tmp_path / "toolbox"
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from toolbox import b\n")
    (pkg / "b.py").write_text("def g():\n    from toolbox.a import f\n")
    (pkg / "c.py").write_text("from toolbox import a\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    graph = _module_graph()
    assert graph["toolbox.a"] == {"toolbox.b"} and graph["toolbox.b"] == {"toolbox.a"}
    assert _cycles(graph) == [["toolbox.a", "toolbox.b"]]


def test_no_private_names_imported_across_packages():
    bad = []
    for top in ("pipeline", "stages", "cartoon_stylegan"):
        for p in (REPO / top).rglob("*.py"):
            own = ".".join(p.relative_to(REPO).with_suffix("").parts[:-1])
            for line, mod, name in _imports(p):
                private = name is not None and name.startswith("_") and not name.startswith("__")
                if private and not (mod == own or mod.startswith(own + ".")):
                    bad.append(f"{p.relative_to(REPO)}:{line} from {mod} import {name}")
    assert not bad, bad
