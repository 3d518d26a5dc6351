"""Pilot tests of the TUI search: `/` in the rubric inspector and the palette's "Search run NAME"."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures_store import build_store
from tui_pilot import FROZEN_NOW, open_inspector, screen_text, wait_for, wait_screen

from ropd_tui.app import RopdApp
from ropd_tui.screens.inspector import InspectorScreen
from ropd_tui.screens.runs import RunsScreen
from ropd_tui.screens.search import SearchScreen
from ropd_tui.widgets.answers import AnswerCard
from ropd_tui.widgets.verdicts import VerdictMatrix

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "ropd.db"
    build_store(path)
    return path


def make_app(path) -> RopdApp:
    return RopdApp(path, clock=lambda: FROZEN_NOW, supervise=False, configs_dir=ROOT / "configs")


async def search_for(pilot, screen: SearchScreen, query: str) -> None:
    screen.query_one("#search-input").focus()
    screen.query_one("#search-input").value = ""
    await pilot.press(*query, "enter")
    await wait_for(pilot, lambda: not screen.searching and (screen.state.searched or screen.state.error),
                   what=f"results for {query!r}")
    await pilot.pause()


async def test_slash_on_the_run_wide_view_searches_and_enter_jumps_to_the_prompt(store):
    app = make_app(store)
    async with app.run_test(size=(140, 40)) as pilot:
        insp = await open_inspector(pilot, "demo-baseline")
        await pilot.press("w")
        await wait_for(pilot, lambda: insp.run_wide is not None, what="run-wide stats")
        await pilot.press("slash")
        search = await wait_screen(pilot, SearchScreen)
        await search_for(pilot, search, "bold")
        hits = search.state.hits
        assert hits and {h.kind for h in hits} == {"criterion", "student"}  # the fixture's markup payloads
        assert [(h.step, h.group_index) for h in hits] == sorted((h.step, h.group_index) for h in hits)
        table = search.query_one("#search-table")
        assert table.row_count == len(hits)
        cell = table.get_row_at(0)[4]  # the match, as Text: literal, matched words styled
        assert "[bold red]not bold[/] [/] [link=http://x]no link[/link]" in cell.plain
        styled = [cell.plain[s.start:s.end] for s in cell.spans if "reverse" in str(s.style)]
        assert styled and all(w.lower() == "bold" for w in styled)
        assert "[bold red]not bold[/]" in screen_text(app)  # shown literally on screen too
        target = next(i for i, h in enumerate(hits) if h.kind == "student" and h.step == 5)
        table.focus()
        table.move_cursor(row=target)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is insp and insp.data.step == 5 and not insp.follow_latest,
                       what="the inspector at the match's step")
        await pilot.pause()
        assert insp.query_one("#insp-tabs").active == "prompt"
        assert insp.group.group_index == hits[target].group_index
        selected = [c for c in insp.query(AnswerCard) if c.has_class("-selected")]
        assert [c.answer.key for c in selected] == [f"student:{hits[target].index}"]
        matrix = insp.query_one(VerdictMatrix)
        assert matrix.coordinate_to_cell_key(matrix.cursor_coordinate).row_key.value == f"student:{hits[target].index}"
        # / again: the same results, ready to pick another one
        await pilot.press("slash")
        again = await wait_screen(pilot, SearchScreen)
        assert again.state.query == "bold" and len(again.state.hits) == len(hits)
        # kinds: ctrl+f cycles all -> criterion
        await pilot.press("ctrl+f")
        await wait_for(pilot, lambda: not again.searching and again.state.kinds == ("criterion",), what="criterion only")
        await wait_for(pilot, lambda: again.state.hits and all(h.kind == "criterion" for h in again.state.hits),
                       what="criterion hits")
        # a query with a syntax error says why and keeps the app running
        await search_for(pilot, again, "AND")
        assert "AND needs a term on each side" in again.state.error
        assert "AND needs a term on each side" in screen_text(app)
        await search_for(pilot, again, '"not bold')
        assert "double quote is not closed" in again.state.error
        await pilot.press("ctrl+l")  # literal: the same text now searches as typed
        await wait_for(pilot, lambda: not again.searching and again.state.error is None and again.state.hits,
                       what="literal results")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is insp, what="back to the inspector")
        assert app.is_running


async def test_palette_searches_any_run_and_opens_the_match_in_the_inspector(store):
    app = make_app(store)
    async with app.run_test(size=(120, 36)) as pilot:
        runs = await wait_screen(pilot, RunsScreen)
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"search run demo-lr")
        await pilot.pause(0.5)
        await pilot.press("enter")
        search = await wait_screen(pilot, SearchScreen)
        assert search.run_name == "demo-lr-high"
        await search_for(pilot, search, "unit*")
        hits = search.state.hits
        assert hits and all(h.kind == "criterion" for h in hits)
        table = search.query_one("#search-table")
        table.move_cursor(row=len(hits) - 1)
        await pilot.press("enter")
        insp = await wait_screen(pilot, InspectorScreen)
        await wait_for(pilot, lambda: insp.data is not None and insp.data.step == hits[-1].step, what="the step")
        assert insp.run_name == "demo-lr-high" and insp.group.group_index == hits[-1].group_index
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is runs, what="back to the runs")
