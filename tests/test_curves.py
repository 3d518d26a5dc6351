"""Curve panels read right with few points: the metric's range, whole-number steps, raw points for short
series, a single point marked with its value, the latest value in the title, honest empty panels."""

from __future__ import annotations

from pathlib import Path

from fixtures_store import FixtureRun, build_store
from tui_pilot import FROZEN_NOW, open_run, screen_text

from engine.store import RunStore
from ropd_tui.app import RopdApp
from ropd_tui.widgets.curves import CurvePlot, Series, step_ticks, titled, y_limits

ROOT = Path(__file__).resolve().parents[1]


def test_the_y_axis_stays_inside_the_metric_range():
    # reward - std reaches below 0: the axis starts at 0, not below
    assert y_limits([-0.2, 0.1, 0.5], (0.0, 1.0)) == (0.0, 0.556)
    lo, hi = y_limits([0.0, 0.02, 0.0], (0.0, 1.0))  # a failure rate near 0 never goes negative
    assert lo == 0.0 and hi > 0.02
    lo, hi = y_limits([1.0, 1.0], (0.0, 1.0))  # flat on the upper bound: room below, none above
    assert hi == 1.0 and lo < 1.0
    assert y_limits([120.0, 80.0], (0.0, None))[1] > 120.0  # no upper bound: headroom


def test_steps_are_labelled_with_whole_numbers():
    assert step_ticks(1, 3) == [1, 2, 3]
    assert step_ticks(1, 2) == [1, 2]
    assert step_ticks(0, 11) == [0, 2, 4, 6, 8, 10]
    assert all(isinstance(t, int) for t in step_ticks(0, 500)) and len(step_ticks(0, 500)) <= 6


def test_titles_carry_the_latest_raw_value():
    assert titled("reward", [Series("r", [1, 2, 3], [0.1, 0.332, 0.25])]) == "reward · last 0.250"
    two = [Series("student", [1, 2], [0.2, 0.3]), Series("teacher", [1, 2], [0.9, 0.95])]
    assert titled("reward", two) == "reward · last student 0.300, teacher 0.950"
    assert titled("reward", []) == "reward"


async def test_a_short_run_shows_its_raw_values_and_its_single_validation_point(tmp_path):
    path = tmp_path / "ropd.db"
    ids = build_store(path, [FixtureRun("short", "finished", 3, exit_code=0)])
    with RunStore(path) as s:
        s.write_metrics(ids["short"], 2, {"val/accuracy": 0.625})
        rewards = [v for _, v in s.metric_series(ids["short"], "reward/mean")]
        s.add_event(ids["short"], "trainer_started", "embedded trainer", data={"judge": "offline"})
        with s.write_transaction() as c:
            c.execute("DELETE FROM metrics WHERE key LIKE 'judge/%tokens'")
            c.execute("DELETE FROM latest_metrics WHERE key LIKE 'judge/%tokens'")
    app = RopdApp(path, live=False, clock=lambda: FROZEN_NOW, supervise=False, configs_dir=ROOT / "configs")
    async with app.run_test(size=(160, 50)) as pilot:
        run = await open_run(pilot, "short")
        assert run.smoothing == 0.6  # 3 points: drawn raw anyway, every real value visible
        reward = next(p for p in run.query(CurvePlot) if p.title.startswith("reward"))
        assert reward.series[0].values == rewards
        text = screen_text(app)
        assert f"· last {rewards[-1]:.3f}" in text  # the title shortened to fit, still with the value
        assert "0.625" in text  # the single validation point is labelled with its value
        assert "offline judge: no tokens" in text
        assert "1.50" not in text and "2.50" not in text  # whole-number steps only
