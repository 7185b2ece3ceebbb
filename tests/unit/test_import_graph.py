"""No import circle inside pipeline/repository and pipeline/triton, and each module imports alone.

Imports are read with ast, function-level ones included: a lazy import that closes a circle
(render -> layout_llmapi -> render, as it once was) still ties two modules into one concern.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("pipeline/repository", "pipeline/triton")
MAX_LINES = 500


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).glob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of `known` that `path` imports anywhere (top level or inside a function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                    else []))
            # `from pkg import mod` imports the module pkg.mod when there is one
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, name, known) for name, path in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `g` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_find_cycle_finds_a_planted_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_imports_of_reads_function_level_and_from_imports(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("from pipeline.repository import pbtxt\n\ndef f():\n    from pipeline.repository.render import x\n")
    assert imports_of(f, "pipeline.repository.m", {"pipeline.repository.pbtxt", "pipeline.repository.render"}) == {
        "pipeline.repository.pbtxt", "pipeline.repository.render"}


def test_no_import_circle_in_repository_and_triton() -> None:
    g = graph()
    # a package's __init__ re-exports from its modules (pkg -> pkg.base); `from pkg import mod`
    # in a module reads as an edge to pkg too, which is no circle: leave the packages out
    inner = {n: {m for m in deps if m not in PACKAGE_NAMES} for n, deps in g.items() if n not in PACKAGE_NAMES}
    cycle = find_cycle(inner)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


PACKAGE_NAMES = {p.replace("/", ".") for p in PACKAGES}


def test_triton_does_not_import_repository() -> None:
    """One direction only: the repository drives the server's API, the server knows no repository."""
    g = graph()
    wrong = {n: sorted(d for d in deps if d.startswith("pipeline.repository"))
             for n, deps in g.items() if n.startswith("pipeline.triton")}
    assert not any(wrong.values()), wrong


def test_modules_stay_under_the_size_limit() -> None:
    big = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert not {n: c for n, c in big.items() if c > MAX_LINES}, big


@pytest.mark.timeout(120)
def test_each_module_imports_on_its_own() -> None:
    """Each module in a fresh set of pipeline.* modules (third-party ones stay loaded: cheap)."""
    names = sorted(modules())
    code = ("import importlib, sys\n"
            f"bad = []\nfor name in {names!r}:\n"
            "    for m in [m for m in sys.modules if m == 'pipeline' or m.startswith('pipeline.')]:\n"
            "        del sys.modules[m]\n"
            "    try:\n        importlib.import_module(name)\n"
            "    except Exception as e:\n        bad.append(f'{name}: {type(e).__name__}: {e}')\n"
            "print('\\n'.join(bad))\nsys.exit(1 if bad else 0)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=110,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
