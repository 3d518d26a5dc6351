"""Pilot tests of the ropd-tui screens against generated fixture stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fixtures_store import INJECTION, build_store
from tui_pilot import FROZEN_NOW, open_inspector, open_run, screen_text, wait_for, wait_screen

from engine.scoring.criterion_stats import VERDICT_ORDER
from engine.store import RunStore
from ropd_tui.app import RopdApp
from ropd_tui.screens.compare import CompareScreen
from ropd_tui.screens.errors import StoreProblemScreen
from ropd_tui.screens.help import HelpScreen
from ropd_tui.screens.inspector import InspectorScreen
from ropd_tui.screens.new_run import NewRunScreen
from ropd_tui.screens.run import RunScreen
from ropd_tui.screens.runs import RunsScreen
from ropd_tui.widgets.answers import AnswerCard
from ropd_tui.widgets.curves import CurvePlot
from ropd_tui.widgets.log_view import LogView
from ropd_tui.widgets.verdicts import VerdictMatrix

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "ropd.db"
    build_store(path)
    return path


def make_app(path, **kw) -> RopdApp:
    kw.setdefault("clock", lambda: FROZEN_NOW)
    kw.setdefault("supervise", False)
    kw.setdefault("configs_dir", ROOT / "configs")
    return RopdApp(path, **kw)


def table_names(screen: RunsScreen) -> list[str]:
    return [r.name for r in screen.visible_rows()]


async def test_runs_lists_every_run_with_status_and_filters(store):
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        runs = await wait_screen(pilot, RunsScreen)
        assert table_names(runs) == ["demo-baseline", "demo-lr-high", "verl-k1", "demo-stopped"]
        text = screen_text(app)
        for status in ("finished", "failed", "running", "stopped"):
            assert status in text
        assert "verl" in text and "6:05" in text  # elapsed of a finished run (frozen clock not needed)
        # filter by name
        await pilot.press("slash", *"demo-l")
        await pilot.press("enter")
        assert table_names(runs) == ["demo-lr-high"]
        await pilot.press("escape")
        assert len(table_names(runs)) == 4
        # cycle the status filter: all -> active -> running
        await pilot.press("f")
        assert table_names(runs) == ["verl-k1"]
        await pilot.press("f", "f")
        assert table_names(runs) == ["demo-baseline"]  # finished


async def test_compare_overlays_runs_and_diffs_configs(store):
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        runs = await wait_screen(pilot, RunsScreen)
        await pilot.press("space", "down", "space", "c")
        cmp = await wait_screen(pilot, CompareScreen)
        assert cmp.data.names == ["demo-baseline", "demo-lr-high"]
        reward = cmp.query_one("#cmp-curve-0", CurvePlot)
        assert [s.label for s in reward.series] == ["demo-baseline", "demo-lr-high"]
        diff = dict(cmp.data.diff)
        assert "trainer.learning_rate" in diff and "run.name" in diff
        assert "scorer.k" not in diff  # equal values are not shown
        assert runs.marked
        # it opens on the curves; d shows the diff, whose table then has the keys
        assert cmp.query_one("#cmp-tabs").active == "cmp-curves"
        await pilot.press("d")
        await pilot.pause()
        assert cmp.query_one("#cmp-tabs").active == "cmp-diff" and app.focused is cmp.query_one("#cmp-diff-table")


async def test_compare_needs_two_marked_runs(store):
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_screen(pilot, RunsScreen)
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)


async def test_run_screen_curves_markers_smoothing_axis_and_overview(store):
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await open_run(pilot, "demo-baseline")
        reward = run.query_one("#curve-0", CurvePlot)
        labels = [s.label for s in reward.series]
        assert labels == ["student", "teacher"]
        assert reward.series[0].steps == [float(s) for s in range(12)]
        assert reward.series[0].low is not None  # spread band from reward/std
        kinds = sorted(k for _, _, k in run.data.markers)
        assert kinds == ["resumed", "template_changed"]
        assert reward.smoothing == 0.6
        await pilot.press("m")
        assert reward.smoothing == 0.9
        await pilot.press("m")
        assert reward.smoothing == 0.0
        await pilot.press("x")
        assert reward.x_axis == "wall"
        for i in range(1, 6):  # every panel found its metric in the fixture
            assert run.query_one(f"#curve-{i}", CurvePlot).series, i
        await pilot.press("2")
        text = screen_text(app)
        assert "Key figures" in text and "exit code 0" in text


async def test_run_screen_shows_exit_cause_of_failed_run(store):
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await open_run(pilot, "demo-lr-high")
        await pilot.press("2")
        await pilot.pause()
        text = screen_text(app)
        assert "failed" in text and "CUDA error" in text
        assert "[bold]x[/]" in text  # the stderr tail is shown literally


async def test_log_follow_pause_and_search(store):
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await open_run(pilot, "demo-baseline")
        await pilot.press("3")
        log = run.query_one(LogView)
        await wait_for(pilot, lambda: len(log.lines) == 12, what="log lines")
        assert log.lines[0].startswith("step 0 reward 0.00 [bold]markup stays literal[/] red?")  # ANSI stripped
        assert log.follow
        await pilot.press("f")
        assert not log.follow
        await pilot.press("f")
        assert log.follow
        await pilot.press("slash", *"step 1", "enter")
        assert log.search == "step 1"
        assert log.matches() == [1, 10, 11]
        assert log.current_match == 1 and not log.follow  # searching pauses following
        # enter hands the keys back to the log: n, N and f act on it instead of being typed
        assert app.focused is log and run.query_one("#log-searchbar").has_class("-hidden")
        await pilot.press("n")
        assert log.current_match == 10
        await pilot.press("N")
        assert log.current_match == 1
        assert "3 matches" in screen_text(app)
        await pilot.press("f")
        assert log.follow and run.query_one("#log-search").value == "step 1"
        await pilot.press("slash")  # the bar opens again with the term; escape closes it, stays on the screen
        assert app.focused is run.query_one("#log-search")
        await pilot.press("escape")
        assert isinstance(app.screen, RunScreen) and app.focused is log


async def test_inspector_steps_prompts_sort_filter_and_run_wide(store):
    from engine.store import RunStore
    from engine.scoring.criterion_stats import criterion_stats

    with RunStore(store) as s:
        all_rates = s.criterion_pass_rates(s.get_run("demo-baseline").id)
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        run = await open_run(pilot, "demo-baseline")
        await pilot.press("i")
        insp = await wait_screen(pilot, InspectorScreen)
        assert insp.data.step == 11 and insp.follow_latest
        g = insp.group
        assert g.group_index == 0 and g.ground_truth
        matrix = insp.query_one(VerdictMatrix)
        assert matrix.row_count == 6  # 2 teachers + 4 students
        assert len(matrix.columns) == 3 + len(g.criteria)
        assert len(insp.query(AnswerCard)) == 6
        await pilot.press("left_square_bracket")
        await wait_for(pilot, lambda: insp.data.step == 10, what="step 10")
        assert not insp.follow_latest
        await pilot.press("n")
        assert insp.group.group_index == 1
        await pilot.press("p", "p")
        assert insp.group.group_index == 2  # wraps around
        await pilot.press("o")  # reward descending
        rewards = [insp.query_one(VerdictMatrix).get_row_at(i)[1].plain for i in range(matrix.row_count)]
        assert rewards == sorted(rewards, reverse=True)
        await pilot.press("F")  # answers failing criterion 1 only
        crit = 0
        shown = [c.answer for c in insp.query(AnswerCard)]
        assert all(a.verdicts[crit] is False for a in shown)
        assert matrix.row_count == len(shown)
        await pilot.press("g", *"3", "enter")
        await wait_for(pilot, lambda: insp.data.step == 3, what="step 3")
        await pilot.press("w")
        await wait_for(pilot, lambda: insp.run_wide is not None, what="run-wide stats")
        rw = insp.run_wide
        assert rw.n_total > 0 and sum(rw.counts.values()) == rw.n_total
        assert rw.top[0].verdict == "discriminates"
        assert rw.counts["discriminates"] == sum(1 for s in criterion_stats(all_rates) if s.verdict == "discriminates")
        table = insp.query_one("#runwide-table")
        assert rw.n_total > 200 and table.row_count == 200 and rw.cursor is not None  # one page
        first_page = [(s.step, s.group_index, s.criterion) for s in rw.top]
        await pilot.press("plus")  # the next page (keyset), appended
        await wait_for(pilot, lambda: table.row_count == rw.n_total, what="the second page")
        everything = [(s.step, s.group_index, s.criterion) for s in insp.run_wide.top]
        assert everything[:200] == first_page and len(set(everything)) == rw.n_total and insp.run_wide.cursor is None
        await pilot.press("v", "v")  # all -> discriminates -> never passes
        await wait_for(pilot, lambda: insp.run_wide.verdict == "never passes", what="verdict filter")
        assert all(s.verdict == "never passes" for s in insp.run_wide.top)
        assert table.row_count == insp.run_wide.counts.get("never passes", 0)
        await pilot.press("v", "v", "v", "v", "v")  # always, students ahead, weak, no data, all
        await wait_for(pilot, lambda: insp.run_wide.verdict is None and table.row_count == 200, what="all again")
        rw = insp.run_wide
        # enter on a run-wide row jumps to that prompt
        target = rw.top[0]
        table.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: insp.data.step == target.step, what="jump to the criterion's step")
        assert insp.group.group_index == target.group_index


async def test_inspector_run_wide_tab_has_the_keys_and_empty_filters_say_so(store):
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        insp = await open_inspector(pilot, "demo-baseline")
        assert app.focused is insp.query_one("#insp-matrix")
        await pilot.press("w")
        await wait_for(pilot, lambda: insp.run_wide is not None, what="run-wide stats")
        table = insp.query_one("#runwide-table")
        assert app.focused is table  # no Tab presses needed
        await pilot.press("down")
        assert table.cursor_row == 1
        # a verdict nobody has: the table is empty and the summary says so
        empty = next(v for v in (None, *VERDICT_ORDER) if v and not insp.run_wide.counts.get(v))
        for _ in range((None, *VERDICT_ORDER).index(empty)):
            await pilot.press("v")
        await wait_for(pilot, lambda: insp.run_wide.verdict == empty, what="the empty verdict filter")
        assert table.row_count == 0
        assert f"no criterion of this run is '{empty}'" in str(insp.query_one("#runwide-summary").content)
        await pilot.press("w")
        assert app.focused is insp.query_one("#insp-matrix")


async def test_inspector_tells_a_clipped_rollout_from_one_cut_for_the_judge(store):
    app = make_app(store)
    async with app.run_test(size=(120, 40)) as pilot:
        insp = await open_inspector(pilot, "demo-baseline")
        cards = {c.answer.key: c.render().plain.splitlines()[0] for c in insp.query(AnswerCard)}
        assert "hit token limit" in cards["student:2"] and "cut for judge" not in cards["student:2"]
        assert "cut for judge" in cards["student:3"] and "token limit" not in cards["student:3"]
        assert "token limit" not in cards["teacher:0"] and "cut" not in cards["student:0"]


async def test_model_output_markup_is_shown_literally(store):
    """A rollout, criterion, question, stderr and log containing markup must render as typed."""
    app = make_app(store)
    async with app.run_test(size=(200, 60)) as pilot:
        insp = await open_inspector(pilot, "demo-baseline")
        student = [c for c in insp.query(AnswerCard) if c.answer.key == "student:0"][0]
        assert INJECTION in student.render().plain
        text = screen_text(app)
        assert "[bold red]not bold[/] [/] [link=http://x]no link[/link]" in text
        assert "[@click=app.quit]q[/]" in text
        # rubric criterion and the question carry the same payload
        rubric_table = insp.query_one("#insp-rubric").content  # a rich Table of Text cells
        criterion_cells = [c for c in rubric_table.columns if "criterion" in str(c.header)][0]._cells
        assert INJECTION in criterion_cells[-1].plain
        assert INJECTION in insp.query_one("#insp-question").render().plain
        assert app.is_running  # nothing crashed, nothing quit via the injected @click


async def test_help_and_palette(store):
    app = make_app(store)
    async with app.run_test(size=(100, 60)) as pilot:
        runs = await wait_screen(pilot, RunsScreen)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        assert "Rubric inspector" in screen_text(app)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen), what="back to runs")
        from ropd_tui.app import RunsProvider

        titles = [c.title for c in app.get_system_commands(runs)] + [t for t, _, _ in RunsProvider(runs)._commands()]
        for t in ("New run", "Open run demo-baseline", "Inspect rubrics of verl-k1", "Stop demo-baseline",
                  "Delete demo-baseline", "Compare marked runs", "Toggle light/dark theme"):
            assert t in titles
        assert len(titles) == len(set(titles)), sorted(t for t in titles if titles.count(t) > 1)  # each once
        theme = app.theme
        await pilot.press("ctrl+t")
        assert app.theme != theme


async def test_missing_store_explains_and_can_create(tmp_path):
    path = tmp_path / "sub" / "ropd.db"
    app = make_app(path)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, StoreProblemScreen), what="problem screen")
        text = screen_text(app)
        assert "No run store at" in text and "press c" in text
        assert not path.exists()
        await pilot.press("c")
        runs = await wait_screen(pilot, RunsScreen)
        assert path.exists() and runs.rows == []
        assert "no runs yet" in screen_text(app)


async def test_newer_schema_is_reported_with_what_to_do(store):
    conn = sqlite3.connect(store)
    conn.execute("PRAGMA user_version=999")
    conn.close()
    app = make_app(store)
    async with app.run_test(size=(240, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, StoreProblemScreen), what="problem screen")
        text = screen_text(app)
        assert "schema version 999" in text and "upgrade" in text


async def test_new_run_validates_config_and_overrides(store, tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "a.yaml").write_text("run:\n  name: a\ntrainer:\n  steps: 2\n")
    (configs / "b.yaml").write_text("run:\n  name: b\n")
    app = make_app(store, configs_dir=configs)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_screen(pilot, RunsScreen)
        await pilot.press("n")
        screen = await wait_screen(pilot, NewRunScreen)
        assert [p.name for p in screen.configs] == ["a.yaml", "b.yaml"]
        screen.query_one("#new-run-overrides").text = "trainer.stepz=3\n"
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: "unknown config key 'trainer.stepz'" in screen_text(app), what="the check")
        assert "trainer.steps" in screen_text(app)
        screen.query_one("#new-run-overrides").text = "# comment\ntrainer.steps=3\n"
        screen.query_one("#new-run-name").value = "bad name!"
        await pilot.pause()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: "run name 'bad name!' is not valid" in screen_text(app), what="the name check")
        screen.query_one("#new-run-name").value = "fresh"
        await pilot.pause()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.valid_cfg is not None, what="a valid config")
        assert screen.valid_cfg.trainer.steps == 3
        assert screen.valid_cfg.run.name == "fresh"
        assert "valid" in screen_text(app)
        # the preflight checks (model, judge, templates) finish off the UI thread and list what will happen
        await wait_for(pilot, lambda: "checking" not in screen_text(app), timeout=30, what="preflight")
        assert "judge: offline" in screen_text(app)


async def test_new_run_check_shows_the_exact_name_a_launch_creates(store, tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "a.yaml").write_text("run:\n  name: demo-baseline\n")  # taken in the fixture store
    app = make_app(store, configs_dir=configs)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_screen(pilot, RunsScreen)
        await pilot.press("n")
        screen = await wait_screen(pilot, NewRunScreen)

        def result() -> str:
            return str(screen.query_one("#new-run-result").content)

        # the config's name is a default: taken, so the launch creates the first free NAME-2
        await pilot.press("ctrl+r")
        text = result()
        assert "creates run 'demo-baseline-2'" in text
        assert "run name 'demo-baseline' is taken (finished at step 11)" in text
        assert "select demo-baseline on the Runs screen, press r" in text
        assert screen.run_name.name == "demo-baseline-2"
        # a name typed in the form must be free: the check says so, before any launch
        screen.query_one("#new-run-name").value = "verl-k1"
        await pilot.pause()
        await pilot.press("ctrl+r")
        text = result()
        assert "a run named 'verl-k1' already exists (running at step 8)" in text and "resume it" in text
        assert screen.valid_cfg is None
        screen.query_one("#new-run-name").value = "fresh"
        await pilot.pause()
        await pilot.press("ctrl+r")
        assert "creates run 'fresh'" in result() and "is taken" not in result()


async def test_launch_failure_is_shown_and_the_form_kept(store, tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "verl.yaml").write_text("run:\n  name: v\n  backend: verl\n")  # verl.model_path missing
    app = make_app(store, configs_dir=configs)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_screen(pilot, RunsScreen)
        await pilot.press("n")
        screen = await wait_screen(pilot, NewRunScreen)
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: "launch failed" in screen_text(app), timeout=30, what="the launch error")
        text = screen_text(app)
        assert "verl" in text and "nothing was lost" in text
        assert isinstance(app.screen, NewRunScreen)
        assert not screen.query_one("#new-run-launch").disabled
    with RunStore(store) as s:
        assert s.find_run("v") is None  # no half-made run


@pytest.mark.parametrize("key, screen_name", [("T", "templates"), ("P", "replay")])
async def test_template_editor_and_replay_screens_open_from_runs(store, key, screen_name):
    from ropd_tui.app import SCREENS

    if screen_name not in SCREENS:
        pytest.skip(f"ropd_tui/screens/{screen_name}.py is not in this checkout")
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        runs = await wait_screen(pilot, RunsScreen)
        await pilot.press(key)
        await wait_for(pilot, lambda: app.screen is not runs, what=f"the {screen_name} screen")
        opened = app.screen
        assert type(opened).__module__ == f"ropd_tui.screens.{screen_name}"
        assert opened.run_id == runs.rows[0].id
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is runs, what="back to the runs")


async def test_palette_opens_any_run_by_name(store):
    app = make_app(store)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_screen(pilot, RunsScreen)
        await pilot.press("ctrl+p")
        await pilot.pause(0.2)
        await pilot.press(*"open run demo-st")
        await pilot.pause(0.5)
        await pilot.press("enter")
        run = await wait_screen(pilot, RunScreen)
        assert run.run_name == "demo-stopped"


def test_the_log_tab_leaves_progress_bars_out(tmp_path):
    from ropd_tui.widgets.log_view import LogTail

    path = tmp_path / "run.log"
    path.write_text("loading\nMap: 100%|██████████| 64/64 [00:00<00:00, 2000.1 examples/s]\nstep 1 reward 0.5\n",
                    encoding="utf-8")
    assert LogTail(path).read().lines == ["loading", "step 1 reward 0.5"]
