"""Is the ``engine`` package this process would import ropd-tui's own? Checked before importing it.

ropd-tui ships two top-level packages, ``ropd_tui`` and ``engine``. A user's own ``engine/`` folder
earlier on ``sys.path`` (their project folder when they run ``python -m ropd_tui.cli`` or a script that
imports ``engine``) would be imported instead, and fail in confusing ways. The ``ropd-tui`` command
itself and every subprocess it starts (:mod:`engine.runs.entrypoint`) are protected; this check
names the problem for everything else. Must not import ``engine``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

EXIT_USAGE = 2


def foreign_engine() -> str | None:
    """The file of the ``engine`` package that would be imported, when it is not ours; else None."""
    expected = Path(__file__).resolve().parent.parent / "engine" / "__init__.py"
    mod = sys.modules.get("engine")
    origin = getattr(mod, "__file__", None) if mod is not None else None
    if origin is None:
        try:
            spec = importlib.util.find_spec("engine")
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
    if origin is None:
        return "(no engine package found)"
    return None if os.path.realpath(origin) == os.path.realpath(expected) else str(origin)


def exit_if_engine_is_foreign() -> None:
    where = foreign_engine()
    if where is None:
        return
    ours = Path(__file__).resolve().parent.parent / "engine"
    sys.stderr.write(
        f"error: the 'engine' package Python would import is not ropd-tui's: {where}\n"
        f"  ropd-tui's own is {ours}. A folder named engine/ earlier on sys.path (often the working "
        f"directory, {os.getcwd()}) shadows it.\n"
        "  hint: use the installed `ropd-tui` command (it is not affected), run from another directory, "
        "or remove that folder from PYTHONPATH\n")
    raise SystemExit(EXIT_USAGE)
