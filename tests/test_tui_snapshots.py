"""Snapshot tests of the main screens (pytest-textual-snapshot; textual is pinned in pyproject).

Deterministic: a generated fixture store opened by a relative path, a frozen clock, polling off
(``live=False``: one load, no timers). Update after reviewing: ``pytest tests/test_tui_snapshots.py
--snapshot-update``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures_store import build_store
from tui_pilot import FROZEN_NOW, wait_screen

from ropd_tui.app import RopdApp
from ropd_tui.screens.compare import CompareScreen
from ropd_tui.screens.inspector import InspectorScreen
from ropd_tui.screens.run import RunScreen
from ropd_tui.screens.runs import RunsScreen

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def app(tmp_path, monkeypatch) -> RopdApp:
    build_store(tmp_path / "ropd.db")
    monkeypatch.chdir(tmp_path)
    return RopdApp("ropd.db", live=False, clock=lambda: FROZEN_NOW, supervise=False, configs_dir=ROOT / "configs")


async def _runs(pilot) -> RunsScreen:
    return await wait_screen(pilot, RunsScreen)


async def _open(pilot, name: str) -> RunScreen:
    runs = await _runs(pilot)
    runs.query_one("#runs-table").move_cursor(row=[r.name for r in runs.visible_rows()].index(name))
    await pilot.press("enter")
    return await wait_screen(pilot, RunScreen)


def test_runs_80x24(snap_compare, app):
    assert snap_compare(app, terminal_size=(80, 24), run_before=_runs)


def test_runs_light_theme(snap_compare, app):
    async def before(pilot):
        await _runs(pilot)
        await pilot.press("ctrl+t")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)


def test_run_curves(snap_compare, app):
    async def before(pilot):
        await _open(pilot, "demo-baseline")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 34), run_before=before)


def test_run_overview_failed(snap_compare, app):
    async def before(pilot):
        await _open(pilot, "demo-lr-high")
        await pilot.press("2")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)


def test_inspector_80x24(snap_compare, app):
    async def before(pilot):
        await _open(pilot, "demo-baseline")
        await pilot.press("i")
        await wait_screen(pilot, InspectorScreen)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)


def test_inspector_answers_with_markup(snap_compare, app):
    async def before(pilot):
        await _open(pilot, "demo-baseline")
        await pilot.press("i")
        await wait_screen(pilot, InspectorScreen)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 60), run_before=before)


def test_compare(snap_compare, app):
    async def before(pilot):
        await _runs(pilot)
        await pilot.press("space", "down", "space", "c")
        await wait_screen(pilot, CompareScreen)
        await pilot.press("d")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)


def test_help(snap_compare, app):
    async def before(pilot):
        await _runs(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)
