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
    modules = ["engine.config", "engine.types", "engine.templates", "engine.parsing", "engine.scorer",
               "engine.judges", "engine.llm_judge", "engine.judge_client", "engine.offline_judge",
               "engine.teacher_index", "engine.store", "engine.supervisor", "engine.replay",
               "engine.template_set", "engine.launch", "engine.criterion_stats", "engine.train_worker"]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(UI_PACKAGES)!r})\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
