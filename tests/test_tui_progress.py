"""The trainer's heartbeat on the Runs and Run screens: what a live run's step is doing, and a phase
that stopped moving shown as such."""

from __future__ import annotations

from pathlib import Path

from fixtures_store import FixtureRun, build_store
from tui_pilot import FROZEN_NOW, open_run, screen_text, wait_screen

from ropd_tui.app import RopdApp
from ropd_tui.screens.runs import RunsScreen

ROOT = Path(__file__).resolve().parents[1]


def make_app(path) -> RopdApp:
    return RopdApp(path, live=False, clock=lambda: FROZEN_NOW, supervise=False, configs_dir=ROOT / "configs")


async def test_runs_and_run_screens_show_the_step_in_progress(tmp_path):
    path = tmp_path / "ropd.db"
    build_store(path, [FixtureRun("busy", "running", 3), FixtureRun("stuck", "stalled", 2),
                       FixtureRun("done", "finished", 2, exit_code=0)])
    app = make_app(path)
    async with app.run_test(size=(120, 30)) as pilot:
        runs = await wait_screen(pilot, RunsScreen)
        text = screen_text(app)
        assert "scoring 2/3" in text and "no progress" in text
        # the selected run's step in full in the status line
        runs.query_one("#runs-table").move_cursor(row=0)
        await pilot.pause()
        assert "busy: step 3 · scoring 2/3 groups · 30s" in screen_text(app)
        runs.query_one("#runs-table").move_cursor(row=1)
        await pilot.pause()
        assert "stuck: step 2 · updating · 10m00s · no progress for 10m00s" in screen_text(app)
        await open_run(pilot, "busy")
        assert "now: step 3 · scoring 2/3 groups · 30s" in screen_text(app)


async def test_a_finished_run_shows_no_progress_line(tmp_path):
    path = tmp_path / "ropd.db"
    build_store(path, [FixtureRun("done", "finished", 2, exit_code=0)])
    app = make_app(path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_run(pilot, "done")
        assert "now:" not in screen_text(app)


async def test_a_heartbeat_alone_does_not_re_read_the_curves(tmp_path):
    from engine.store import RunStore
    from tui_pilot import wait_for

    path = tmp_path / "ropd.db"
    ids = build_store(path, [FixtureRun("busy", "running", 3)])
    app = RopdApp(path, clock=lambda: FROZEN_NOW, supervise=False, configs_dir=ROOT / "configs")  # live polling
    async with app.run_test(size=(120, 30)) as pilot:
        run = await open_run(pilot, "busy")
        series = run.data.series
        with RunStore(path) as s:
            s.write_progress(ids["busy"], phase="update", step=3, phase_started=FROZEN_NOW - 5,
                             progress_at=FROZEN_NOW - 5)
        await wait_for(pilot, lambda: "updating" in screen_text(app), what="the new phase")
        assert run.data.series is series  # same curves, not re-read
        with RunStore(path) as s:
            s.write_metrics(ids["busy"], 3, {"reward/mean": 0.9})
        await wait_for(pilot, lambda: run.data.series is not series, what="the new step's curves")


async def test_compare_keeps_its_curves_through_a_heartbeat_and_reads_a_new_step(tmp_path):
    from engine.store import RunStore
    from ropd_tui.screens.compare import CompareScreen
    from tui_pilot import wait_for

    path = tmp_path / "ropd.db"
    ids = build_store(path, [FixtureRun("busy", "running", 3), FixtureRun("done", "finished", 2, exit_code=0)])
    app = RopdApp(path, clock=lambda: FROZEN_NOW, supervise=False, configs_dir=ROOT / "configs")  # live polling
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_screen(pilot, RunsScreen)
        app.push_screen(CompareScreen([ids["busy"], ids["done"]]))
        cmp = await wait_screen(pilot, CompareScreen)
        await wait_for(pilot, lambda: cmp.data is not None, what="the compared curves")
        first = cmp.data
        with RunStore(path) as s:
            s.write_progress(ids["busy"], phase="update", step=3, phase_started=FROZEN_NOW - 5,
                             progress_at=FROZEN_NOW - 5)
            s.write_metrics(ids["busy"], 4, {"reward/mean": 0.9})
        await wait_for(pilot, lambda: cmp.data is not first, what="the new step's curves")
        reward = cmp.data.panels[0][0]
        assert reward.steps[-1] == 4 and reward.values[-1] == 0.9
