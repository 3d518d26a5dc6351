"""Pilot tests of the template editor and replay screens (hooked into the app by F's SCREENS registry)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.templates.render import Template
from loopback_server import LoopbackJudgeServer
from replay_fixtures import MARKUP, make_store
from tui_pilot import FROZEN_NOW, screen_text, wait_for

from ropd_tui.app import SCREENS, RopdApp
from ropd_tui.screens.replay import ReplayScreen
from ropd_tui.screens.templates import TemplatesScreen

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "ropd.db"
    make_store(path, steps=2, groups=3, failed={(2, 1)}, templates_dir=tmp_path / "prompts").close()
    return path


def make_app(path) -> RopdApp:
    return RopdApp(path, live=False, clock=lambda: FROZEN_NOW, supervise=False, configs_dir=ROOT / "configs")


async def open_screen(pilot, name: str, cls: type):
    app = pilot.app
    await wait_for(pilot, lambda: app.screen.__class__.__name__ == "RunsScreen", what="the runs screen")
    app.open_screen(name, run_id=1)
    await wait_for(pilot, lambda: isinstance(app.screen, cls) and app.screen.loaded, what=f"{cls.__name__}")
    await pilot.pause()
    return app.screen


def test_screens_are_registered():
    assert "templates" in SCREENS and "replay" in SCREENS


async def test_template_editor_validates_saves_diffs_and_reverts(store, tmp_path):
    vfile = tmp_path / "prompts" / "verifier.txt"
    original = vfile.read_text(encoding="utf-8")
    from engine.store import RunStore

    with RunStore(store) as st:  # what a running run's watcher records for a broken edit
        st.add_event(1, "template_rejected", "verifier template rejected: unknown placeholder '{x}' [red]",
                     step=2, data={"role": "verifier", "file": str(vfile), "line": 3, "placeholder": "x"})
    app = make_app(store)
    async with app.run_test(size=(140, 45)) as pilot:
        scr = await open_screen(pilot, "templates", TemplatesScreen)
        assert scr.role == "verifier" and scr.paths["verifier"] == vfile
        editor = scr.editor
        assert editor.text == original
        # placeholders are highlighted (known ones)
        row = next(i for i, line in enumerate(editor.document.lines) if "{question}" in line)
        assert any(h[2] == "ropd.placeholder" for h in editor._highlights[row])
        # the preview is rendered against a stored group, with model text shown literally
        text = screen_text(app)
        assert "valid verifier template" in text and MARKUP in text
        assert "the running run rejected the last edit" in text and "'{x}' [red]" in text
        # the editor has the keys as soon as the screen opens; the Check pane follows what is typed
        assert app.focused is editor
        editor.move_cursor((0, 0))
        await pilot.press(*"{bogus} ")
        assert any(h[2] == "ropd.bad_placeholder" for h in editor._highlights[0])
        problems = scr.query_one("#tpl-problems")
        await wait_for(pilot, lambda: "unknown placeholder '{bogus}'" in str(problems.render()), what="the check")
        for _ in range(len("{bogus} ")):  # undo the bad edit (the TextArea may batch keystrokes in several undos)
            if editor.text == original:
                break
            await pilot.press("ctrl+z")
        assert editor.text == original
        # ... and the check says valid again, without f5
        await wait_for(pilot, lambda: "valid verifier template" in str(problems.render()), what="the check")
        await pilot.press(*"{bogus} ")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert vfile.read_text(encoding="utf-8") == original
        assert "unknown placeholder '{bogus}'" in str(scr.query_one("#tpl-problems").render())
        # a valid edit is saved atomically and recorded as a version
        editor.load_text("EDITED-1\n" + original)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: len(scr.role_history()) >= 2, what="the saved version in the history")
        assert vfile.read_text(encoding="utf-8") == "EDITED-1\n" + original
        assert not scr.dirty
        assert not list(vfile.parent.glob("*.tmp"))
        # diff the original (stored) version against the editor, then revert to it
        table = scr.query_one("#tpl-history")
        table.focus()
        orig_sha = Template.from_text(original, "verifier").sha256
        table.move_cursor(row=[h["sha"] for h in scr.role_history()].index(orig_sha))
        await pilot.press("d")
        await pilot.pause()
        diff = str(scr.query_one("#tpl-diff-view").render())
        assert "+EDITED-1" in diff
        await pilot.press("r")
        await pilot.pause()
        assert editor.text == original and scr.dirty
        # switching roles keeps the unsaved buffer
        scr.action_next_role()
        await pilot.pause()
        assert scr.role == "scalar_judge"
        scr.switch_role("verifier")
        await pilot.pause()
        assert editor.text == original


async def test_replay_screen_runs_shows_results_and_lists_replays(store):
    app = make_app(store)
    with LoopbackJudgeServer() as srv:
        async with app.run_test(size=(160, 50)) as pilot:
            scr = await open_screen(pilot, "replay", ReplayScreen)
            scr.query_one("#rp-model").value = "judge-m"
            scr.query_one("#rp-url").value = srv.base_url
            scr.query_one("#rp-steps").value = "1-2"
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: scr.report is not None and not scr.running, timeout=30, what="the replay")
            await pilot.pause()
            assert scr.report.status == "done"
            summary = scr.query_one("#rp-summary")
            cells = {str(summary.get_row_at(i)[0]): str(summary.get_row_at(i)[1]) for i in range(summary.row_count)}
            assert cells["AUC reward vs correct old → new"].startswith("0.500 → 0.875")
            assert scr.query_one("#rp-answers").row_count == 6 * 8
            assert scr.query_one("#rp-criteria").row_count == 5 * 4
            await wait_for(pilot, lambda: scr.query_one("#rp-list").row_count == 1, what="the replay list")
            # bad input is reported, nothing runs
            scr.query_one("#rp-steps").value = "9-1"
            await pilot.press("ctrl+r")
            await pilot.pause()
            assert not scr.running


async def test_replay_screen_cancel(store):
    app = make_app(store)
    with LoopbackJudgeServer(latency_s=1.0) as srv:
        async with app.run_test(size=(160, 50)) as pilot:
            scr = await open_screen(pilot, "replay", ReplayScreen)
            scr.query_one("#rp-model").value = "judge-m"
            scr.query_one("#rp-url").value = srv.base_url
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: scr.running, what="the replay to start")
            await pilot.press("ctrl+x")
            await wait_for(pilot, lambda: not scr.running, timeout=30, what="the replay to stop")
            assert scr.report is not None and scr.report.status == "cancelled"


async def test_replay_form_labels_are_whole_at_80_columns(store):
    from textual.widgets import Label

    app = make_app(store)
    async with app.run_test(size=(80, 24)) as pilot:
        scr = await open_screen(pilot, "replay", ReplayScreen)
        form = scr.query_one("#rp-form")
        labels = list(form.query(Label))
        assert len(labels) >= 8
        for label in labels:
            text = str(label.render())
            assert label.size.width <= form.scrollable_content_region.width
            assert label.size.width * label.size.height >= len(text), text  # wrapped, never cut off
