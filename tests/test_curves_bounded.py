"""The Run screen's first read costs the same whatever the run's length (issue 16): each curve is read at
screen resolution from the ``metric_buckets`` pyramid (schema v13, kept by triggers on ``metrics``), the
"did anything move" checks and the events are index probes and LIMITed reads (v14), and what the screen
shows of a long series keeps every spike and the exact last / min / max."""

from __future__ import annotations

import math
import random

import pytest

from engine.store import RunStore
from engine.store.queries import CURVE_BUCKETS
from engine.store.step_writer import write_metric_rows
from ropd_tui.screens.run import RunScreen
from ropd_tui.screens.views import SeriesCache, metric_series
from ropd_tui.widgets.curves import smooth_buckets, smooth_ema

KEYS = ("reward/mean", "reward/std", "score/teacher_reward_mean", "judge/failure_rate", "judge/latency_s",
        "judge/prompt_tokens", "judge/completion_tokens", "response_length/mean", "loss")


def _run(store: RunStore, name: str, steps: int, events: int = 0, spike: int | None = None) -> int:
    rec = store.create_run(name, "embedded", {})
    rng = random.Random(name)
    with store.write_transaction() as c:
        for step in range(steps):
            values = {k: rng.random() for k in KEYS}
            if step == spike:
                values["judge/failure_rate"] = 9.0
            write_metric_rows(c, rec.id, 1, step, values, 1000.0 + step)
        c.execute("UPDATE runs SET last_step=? WHERE id=?", (steps - 1, rec.id))
        c.executemany("INSERT INTO events(run_id, ts, kind, step, message) VALUES (?,?,?,?,?)",
                      [(rec.id, 1000.0 + i, "checkpoint" if i % 50 else "resumed", i, f"event {i}")
                       for i in range(events)])
    return rec.id


def _vm_work(store: RunStore, run_id: int) -> tuple[int, RunScreen]:
    """SQLite VM instructions (in thousands) that the Run screen's first read executes."""
    ticks = [0]

    def tick() -> int:
        ticks[0] += 1
        return 0

    screen = RunScreen(run_id, "r")
    store.connection.set_progress_handler(tick, 1000)
    try:
        data = screen.load(store)
    finally:
        store.connection.set_progress_handler(None, 1000)
    screen.data = data
    return ticks[0], screen


def test_first_read_does_not_grow_with_the_run(tmp_path):
    with RunStore(tmp_path / "ropd.db") as store:
        short = _run(store, "short", 2_000, events=200)
        long = _run(store, "long", 20_000, events=2_000)
        work_short, _ = _vm_work(store, short)
        work_long, screen = _vm_work(store, long)
        # before: every point of every curve and every event was read (10x the work for 10x the steps)
        assert work_long <= 1.5 * work_short + 50, (work_short, work_long)
        for lines in screen.data.series:
            for s in lines:
                assert len(s.steps) <= 2 * CURVE_BUCKETS + 2
                assert s.buckets is not None and len(s.buckets) <= CURVE_BUCKETS
        assert len(screen.data.events) <= 30 + 500 + 5


def test_a_long_series_keeps_spikes_and_exact_figures(tmp_path):
    with RunStore(tmp_path / "ropd.db") as store:
        rid = _run(store, "long", 12_345, spike=7_777)
        full = store.metric_series(rid, "judge/failure_rate", with_time=True)
        steps, values, walls = metric_series(store, rid, "judge/failure_rate", SeriesCache())
        assert max(values) == 9.0 and steps[values.index(9.0)] == 7_777
        assert (min(values), max(values)) == (min(r[1] for r in full), max(r[1] for r in full))
        assert (steps[0], values[0]) == full[0][:2] and (steps[-1], values[-1]) == full[-1][:2]
        raw = {r[0]: (r[1], r[2]) for r in full}
        assert all(raw[int(x)] == (y, w) for x, y, w in zip(steps, values, walls))  # real points, real times
        assert steps == sorted(set(steps))


def test_a_reload_reads_only_the_last_buckets_and_matches_a_fresh_read(tmp_path):
    with RunStore(tmp_path / "ropd.db") as store:
        rid = _run(store, "long", 5_000)
        cache = SeriesCache()
        cache.check(1, 4_999)
        metric_series(store, rid, "loss", cache)
        level = cache.level("loss")
        assert level > 0
        with store.write_transaction() as c:
            write_metric_rows(c, rid, 1, 4_999, {"loss": -3.0}, 9_999.0)  # the last step upserted
            for step in range(5_000, 5_010):
                write_metric_rows(c, rid, 1, step, {"loss": 0.5}, 1000.0 + step)
        calls = []
        real = store.metric_curve

        def curve(*a, **kw):
            calls.append(kw.get("since"))
            got = real(*a, **kw)
            calls.append(len(got.get("buckets", got.get("rows", []))))
            return got

        store.metric_curve = curve
        cache.check(1, 5_009)
        again = metric_series(store, rid, "loss", cache)
        assert calls[0] is not None and calls[0][0] == level and calls[1] <= 3  # the last bucket(s) only
        del store.metric_curve
        assert again == metric_series(store, rid, "loss", SeriesCache())
        assert min(again[1]) == -3.0


def test_bucket_smoothing_is_the_ema_of_the_points():
    values = [math.sin(i / 5) for i in range(200)]
    assert smooth_buckets([(float(i), 1, v, 0.0) for i, v in enumerate(values)], 0.6) == pytest.approx(
        smooth_ema(values, 0.6))
    # a bucket of n equal points moves the average as those n points do
    flat = [0.25] * 8 + [0.75] * 8
    assert smooth_buckets([(7.0, 8, 0.25, 0.0), (15.0, 8, 0.75, 0.0)], 0.9) == pytest.approx(
        [smooth_ema(flat, 0.9)[7], smooth_ema(flat, 0.9)[15]])


def _pyramid(c, run_id: int, key: str, brute: bool) -> dict:
    from engine.store.schema import CURVE_LEVELS

    if not brute:
        return {(r[0], r[1]): (r[2], round(r[3], 9), r[4], r[5], r[6], r[7]) for r in c.execute(
            "SELECT level, bucket, n, total, lo_step, lo_value, hi_step, hi_value FROM metric_buckets"
            " WHERE run_id=? AND key=?", (run_id, key))}
    out: dict = {}
    rows = c.execute("SELECT step, value FROM metrics WHERE run_id=? AND key=? AND value IS NOT NULL ORDER BY step",
                     (run_id, key)).fetchall()
    for level in range(1, CURVE_LEVELS + 1):
        for step, value in rows:
            e = out.setdefault((level, step >> level), [0, 0.0, step, value, step, value])
            e[0] += 1
            e[1] += value
            if value < e[3]:
                e[2], e[3] = step, value
            if value > e[5]:
                e[4], e[5] = step, value
    return {k: (e[0], round(e[1], 9), *e[2:]) for k, e in out.items()}


def test_the_bucket_pyramid_follows_inserts_upserts_deletes_and_a_backfill(tmp_path):
    from engine.store.schema import _v13_metric_buckets

    with RunStore(tmp_path / "ropd.db") as store:
        rec = store.create_run("r", "embedded", {})
        rng = random.Random(3)
        for step in range(700):
            store.write_metrics(rec.id, step, {"a": rng.choice([0.0, 1.0, rng.random()]),
                                               "b": None if step % 7 == 0 else rng.random()})
        for step in rng.sample(range(700), 40):  # a step's metrics written again, some unchanged
            store.write_metrics(rec.id, step, {"a": rng.random() * 3 - 1})
        with store.write_transaction() as c:
            c.execute("DELETE FROM metrics WHERE step > 650 OR step % 13 = 0")
        c = store.connection
        for key in ("a", "b"):
            assert _pyramid(c, rec.id, key, brute=False) == _pyramid(c, rec.id, key, brute=True)
        before = _pyramid(c, rec.id, "a", brute=False)
        with store.write_transaction() as w:  # the migration's backfill builds the same pyramid
            for name in ("metrics_curve_ai", "metrics_curve_ad", "metrics_curve_au"):
                w.execute(f"DROP TRIGGER {name}")
            w.execute("DROP TABLE metric_buckets")
            w.execute("DROP TABLE metric_levels")
            _v13_metric_buckets(w)
        assert _pyramid(c, rec.id, "a", brute=False) == before
        store.delete_run(rec.id)
        assert c.execute("SELECT count(*) FROM metric_buckets").fetchone()[0] == 0
