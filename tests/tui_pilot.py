"""Helpers for driving the ropd-tui app in tests and the benchmark (pilot waits without sleeps-as-asserts)."""

from __future__ import annotations

import time
from typing import Any, Callable

FROZEN_NOW = 1_700_000_400.0  # a fixed "now" for elapsed times (fixtures start at 1_700_000_000)


async def wait_for(pilot: Any, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Let the app run until ``predicate()`` holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)


async def wait_screen(pilot: Any, cls: type, timeout: float = 10.0) -> Any:
    """Wait until the active screen is a ``cls`` that has applied its first load; return it."""
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, cls) and getattr(app.screen, "loaded", True),
                   timeout, f"{cls.__name__} to load")
    await pilot.pause()
    return app.screen


def screen_text(app: Any) -> str:
    """The plain text currently on screen, line by line (what a user would read)."""
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system="truecolor",
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False)


async def open_run(pilot: Any, name: str) -> Any:
    """From the Runs screen, open the Run screen of the run called ``name``."""
    from ropd_tui.screens.run import RunScreen
    from ropd_tui.screens.runs import RunsScreen

    runs = await wait_screen(pilot, RunsScreen)
    runs.query_one("#runs-table").move_cursor(row=[r.name for r in runs.visible_rows()].index(name))
    await pilot.press("enter")
    return await wait_screen(pilot, RunScreen)


async def open_inspector(pilot: Any, name: str) -> Any:
    """From the Runs screen, open the Rubric inspector of the run called ``name`` (through its Run screen)."""
    from ropd_tui.screens.inspector import InspectorScreen

    await open_run(pilot, name)
    await pilot.press("i")
    return await wait_screen(pilot, InspectorScreen)
