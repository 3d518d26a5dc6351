"""The engine is UI-free: nothing under engine/ imports textual or rich (statically), and importing
the engine's core modules in a fresh interpreter loads neither (harlequin-style import hygiene)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UI_PACKAGES = {"textual", "rich", "textual_plotext"}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_engine_module_imports_a_ui_package():
    offenders = {str(p.relative_to(ROOT)): sorted(_imported_roots(p) & UI_PACKAGES)
                 for p in (ROOT / "engine").rglob("*.py") if _imported_roots(p) & UI_PACKAGES}
    assert offenders == {}


def test_importing_the_engine_core_loads_no_ui_package():
    modules = ["engine.config", "engine.types", "engine.templates.render", "engine.judging.parsing", "engine.scoring.scorer",
               "engine.judging.protocol", "engine.judging.factory", "engine.judging.llm", "engine.judging.client", "engine.judging.offline",
               "engine.teacher.index", "engine.store", "engine.runs.supervisor", "engine.replay.runner",
               "engine.templates.watched", "engine.templates.editing", "engine.runs.launch", "engine.scoring.criterion_stats", "engine.runs.worker"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(UI_PACKAGES)!r})\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]


def _engine_modules() -> dict[str, Path]:
    mods = {}
    for p in (ROOT / "engine").rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _engine_imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Every engine module ``name`` imports, at module level or inside a function (lazy imports count:
    they are how a cycle hides), leaving out ``if TYPE_CHECKING:`` blocks and the module's own packages
    (always imported before it)."""
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names if a.name in mods)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                subs = {f"{child.module}.{a.name}" for a in child.names} & set(mods)
                out.update(subs)
                if child.module in mods and len(subs) < len(child.names):
                    out.add(child.module)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in out if m != name and not name.startswith(m + ".")}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_engine():
    mods = _engine_modules()
    graph = {name: _engine_imports(name, path, mods) for name, path in mods.items()}
    assert graph["engine.judging.factory"] >= {"engine.judging.offline", "engine.judging.llm"}  # the finder sees lazy imports
    assert _cycles(graph) == []


def test_judge_protocol_imports_nothing_concrete():
    mods = _engine_modules()
    deps = _engine_imports("engine.judging.protocol", mods["engine.judging.protocol"], mods)
    assert deps <= {"engine.errors", "engine.types"}, deps
