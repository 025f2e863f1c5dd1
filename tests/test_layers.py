"""The package's layers import downward only, and every module imports on its own in any order.

The layers, bottom up (see ``hnas_fast/__init__.py``): the kernels, files, distributed helpers, data and
the op registry; spaces; genotypes; ``nn/`` and ``patch``; ``search/``; ``analysis/`` and ``viz/`` to the
side; ``train``, the CLIs and the package root on top. A module may import its own layer or any layer below,
never one above, and nothing may form a module-level import cycle. A function-level import of a package
module is allowed only where it defers an optional heavy dependency: the compiled extension, Triton, and
viz/ (matplotlib).
"""

from __future__ import annotations

import ast
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "hnas_fast"

# Layer of each first component below hnas_fast ("" is the package root).
LAYERS: dict[str, int] = {
    "_C": 0, "kernels": 0, "files": 0, "distributed": 0, "data": 0, "registry": 0,
    "spaces": 1,
    "genotypes": 2,
    "nn": 3, "patch": 3,
    "search": 4,
    "analysis": 5, "viz": 5,
    "train": 6, "confusion": 6, "correlation": 6, "space_size": 6, "profile_memory": 6, "": 6,
}
# Imported lazily on purpose: optional dependencies that cost time or may be missing.
LAZY_OK = ("hnas_fast._C", "hnas_fast.viz")
LAZY_SUFFIX_OK = (".triton_impl",)


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(mod: str, path: Path) -> list[tuple[str, bool, int]]:
    """``(imported module, at function level, line)`` for every hnas_fast import of ``path``."""
    found: list[tuple[str, bool, int]] = []
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names: list[str] = []
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                mods = _modules()
                # "from pkg import sub" imports the submodule pkg.sub when there is one (_C: compiled).
                subs = [f"{base}.{a.name}" for a in child.names
                        if f"{base}.{a.name}" in mods or f"{base}.{a.name}" == "hnas_fast._C"]
                names = subs or [base]
            elif isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            for n in names:
                if n == "hnas_fast" or n.startswith("hnas_fast."):
                    found.append((n, inner, child.lineno))
            visit(child, inner)

    visit(ast.parse(path.read_text()), False)
    return found


def _layer(mod: str) -> int:
    parts = mod.split(".")
    key = parts[1] if len(parts) > 1 else ""
    assert key in LAYERS, f"{mod}: no layer assigned (add it to LAYERS in tests/test_layers.py)"
    return LAYERS[key]


def test_imports_go_downward_only() -> None:
    bad = []
    for mod, path in _modules().items():
        for target, lazy, line in _imports(mod, path):
            if lazy:
                if not (target.startswith(LAZY_OK) or target.endswith(LAZY_SUFFIX_OK)):
                    bad.append(f"{path.relative_to(ROOT)}:{line}: function-level import of {target}")
                continue
            if target != "hnas_fast" and _layer(target) > _layer(mod):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {mod} (layer {_layer(mod)}) imports "
                           f"{target} (layer {_layer(target)})")
    assert not bad, "\n".join(bad)


def test_no_module_level_import_cycle() -> None:
    mods = _modules()
    graph = {m: sorted({t for t, lazy, _ in _imports(m, p) if not lazy and t in mods and t != m})
             for m, p in mods.items()}
    # A submodule's import runs its packages' __init__ first; that edge is not a cycle of the code.
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if m.startswith(t + "."):
                continue
            if state.get(t) == 1:
                cycle = [*stack[stack.index(t):], t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                dfs(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            dfs(m)


def test_the_rules_see_a_violation(tmp_path: Path) -> None:
    """The checker itself: an upward import and a lazy one are both reported."""
    path = tmp_path / "probe.py"
    path.write_text("from hnas_fast.search.runner import SearchRun\n\n"
                    "def f():\n    import hnas_fast.nn.cell\n")
    found = _imports("hnas_fast.spaces.probe", path)
    assert ("hnas_fast.search.runner", False, 1) in found and ("hnas_fast.nn.cell", True, 4) in found
    assert _layer("hnas_fast.search.runner") > _layer("hnas_fast.spaces.probe")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_module_imports_in_random_order(seed: int) -> None:
    mods = [m for m in _modules() if not m.endswith("__main__")]
    random.Random(seed).shuffle(mods)
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    proc = subprocess.run([sys.executable, "-c", code, *mods], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"order {mods}:\n{proc.stderr[-3000:]}"
