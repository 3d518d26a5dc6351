"""The app follows the store live: steps written by other processes appear, and run operations
(stop, delete) on a real supervised subprocess work from the UI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_store import build_store
from tui_pilot import FROZEN_NOW, open_run, wait_for, wait_screen

from engine.store import RunStore
from ropd_tui.app import RopdApp
from ropd_tui.screens.confirm import ConfirmScreen
from ropd_tui.screens.inspector import InspectorScreen
from ropd_tui.screens.run import RunScreen
from ropd_tui.screens.runs import RunsScreen
from ropd_tui.widgets.curves import CurvePlot

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

WRITER = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
from engine.store import RunStore
from fixtures_store import write_fixture_step
store = RunStore({path!r}, create=False)
write_fixture_step(store, {run_id}, {step})
store.close()
"""


def write_step_in_subprocess(path: Path, run_id: int, step: int) -> None:
    code = WRITER.format(root=str(ROOT), tests=str(TESTS), path=str(path), run_id=run_id, step=step)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.fixture
def store(tmp_path) -> tuple[Path, dict[str, int]]:
    path = tmp_path / "ropd.db"
    return path, build_store(path)


def row(screen: RunsScreen, name: str):
    return next(r for r in screen.rows if r.name == name)


async def test_step_written_by_another_process_shows_up(store):
    path, ids = store
    rid = ids["verl-k1"]
    app = RopdApp(path, clock=lambda: FROZEN_NOW, supervise=False)
    async with app.run_test(size=(100, 30)) as pilot:
        runs = await wait_screen(pilot, RunsScreen)
        assert row(runs, "verl-k1").step == 8
        write_step_in_subprocess(path, rid, 9)
        await wait_for(pilot, lambda: row(runs, "verl-k1").step == 9, what="step 9 in the runs list")
        table = runs.query_one("#runs-table")
        table.move_cursor(row=[r.name for r in runs.visible_rows()].index("verl-k1"))
        await pilot.press("enter")
        run = await wait_screen(pilot, RunScreen)
        reward = run.query_one("#curve-0", CurvePlot)
        assert reward.series[0].steps[-1] == 9
        write_step_in_subprocess(path, rid, 10)
        await wait_for(pilot, lambda: reward.series[0].steps[-1] == 10, what="step 10 on the reward curve")
        await pilot.press("i")
        insp = await wait_screen(pilot, InspectorScreen)
        assert insp.data.step == 10 and insp.follow_latest
        write_step_in_subprocess(path, rid, 11)
        await wait_for(pilot, lambda: insp.data.step == 11, what="the inspector to follow step 11")
        assert insp.data.nav["last"] == 11 and insp.data.nav["next"] is None


SLEEPER = """
import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
from engine.store import RunStore
from fixtures_store import write_fixture_step
store = RunStore({path!r}, create=False)
write_fixture_step(store, {run_id}, 0)
print("step 0 written", flush=True)
time.sleep(120)
"""


async def test_stop_then_delete_a_supervised_run_from_the_ui(tmp_path):
    from engine.runs.supervisor import Supervisor

    path = tmp_path / "ropd.db"
    store = RunStore(path)
    run = store.create_run("sleeper", "embedded", {"run": {"name": "sleeper"}}, cwd=str(ROOT))
    code = SLEEPER.format(root=str(ROOT), tests=str(TESTS), path=str(path), run_id=run.id)
    sup = Supervisor(store)
    sup.launch(run, [sys.executable, "-c", code], cwd=str(ROOT))
    try:
        app = RopdApp(path, supervise=True)
        async with app.run_test(size=(100, 30)) as pilot:
            runs = await wait_screen(pilot, RunsScreen)
            await wait_for(pilot, lambda: row(runs, "sleeper").status == "running"
                           and row(runs, "sleeper").step == 0, timeout=30, what="the run to be running")
            await pilot.press("s")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="stop confirmation")
            await pilot.press("y")
            await wait_for(pilot, lambda: row(runs, "sleeper").status == "stopped", timeout=30,
                           what="the run to be stopped")
            assert not sup.is_running(run.id)
            await pilot.press("d")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="delete confirmation")
            await pilot.press("n")  # "no" keeps it
            await pilot.pause(0.3)
            assert [r.name for r in runs.rows] == ["sleeper"]
            await pilot.press("d")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="delete confirmation")
            await pilot.press("y")
            await wait_for(pilot, lambda: runs.rows == [], timeout=30, what="the run to be deleted")
            assert not run.run_dir.exists()
    finally:
        if store.find_run("sleeper") is not None and sup.is_running("sleeper"):
            sup.stop("sleeper", grace=1)
        store.close()


def test_runs_under_the_web_driver_used_by_textual_serve(store):
    """``textual serve`` starts the app as a subprocess with Textual's web driver (stdin/stdout pipes);
    the app must start and render the runs from the store alone."""
    import os
    import select
    import time

    path, _ = store
    env = dict(os.environ, TEXTUAL_DRIVER="textual.drivers.web_driver:WebDriver")
    proc = subprocess.Popen([sys.executable, "-m", "ropd_tui.cli", "--store", str(path)], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"demo-baseline" not in seen and time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                seen += os.read(proc.stdout.fileno(), 65536)
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert b"demo-baseline" in seen, err.decode(errors="replace")[-2000:]
    assert b"Traceback" not in err


async def test_pause_freezes_live_refresh_until_resumed(store):
    path, ids = store
    rid = ids["verl-k1"]
    app = RopdApp(path, clock=lambda: FROZEN_NOW, supervise=False)
    async with app.run_test(size=(100, 30)) as pilot:
        runs = await wait_screen(pilot, RunsScreen)
        assert row(runs, "verl-k1").step == 8
        await pilot.press("z")
        assert app.paused and "paused" in app.sub_title
        write_step_in_subprocess(path, rid, 9)
        for _ in range(10):  # several poll intervals go by while paused
            await pilot.pause(0.1)
        assert row(runs, "verl-k1").step == 8
        await pilot.press("z")
        assert not app.paused
        await wait_for(pilot, lambda: row(runs, "verl-k1").step == 9, what="step 9 after resuming")


async def test_run_screen_announces_a_rejected_template_edit(store):
    path, ids = store
    rid = ids["verl-k1"]
    app = RopdApp(path, clock=lambda: FROZEN_NOW, supervise=False)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await open_run(pilot, "verl-k1")
        await wait_for(pilot, lambda: run.data is not None, what="run data")
        before = len(list(app._notifications))
        writer = RunStore(path, create=False)
        writer.add_event(rid, "template_rejected", "prompts/verifier.txt line 3: unknown placeholder {answer} [/]",
                         data={"role": "verifier"})
        writer.close()

        def rejected() -> list[str]:
            return [n.message for n in list(app._notifications)[before:] if "rejected" in n.message]

        await wait_for(pilot, lambda: rejected(), what="a notice about the rejected edit")
        assert "verl-k1" in rejected()[0] and "{answer} [/]" in rejected()[0]
