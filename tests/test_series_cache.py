"""Run screen curves read only new points on a new step (ropd_tui.screens.views.SeriesCache), and still equal a
full read after appended steps, an upserted last step, a new attempt and removed steps."""

from __future__ import annotations

from engine.store import RunStore
from ropd_tui.screens.views import SeriesCache, metric_series


class Recording:
    """A real RunStore that notes where each read starts: the since_step of metric_series, the step (level 0)
    or bucket of metric_curve's ``since``."""

    def __init__(self, store: RunStore):
        self.store, self.since = store, []

    def metric_series(self, run_id, key, **kw):
        self.since.append(kw.get("since_step"))
        return self.store.metric_series(run_id, key, **kw)

    def metric_curve(self, run_id, key, **kw):
        self.since.append(None if kw.get("since") is None else kw["since"][1])
        return self.store.metric_curve(run_id, key, **kw)


def _check(store: RunStore, rec, cache: SeriesCache, key: str = "loss"):
    run = store.get_run(rec.id)
    cache.check(run.attempt, run.last_step)
    assert metric_series(store, rec.id, key, cache) == metric_series(store, rec.id, key)


def test_reload_reads_only_new_points_and_matches_a_full_read(tmp_path):
    with RunStore(tmp_path / "ropd.db") as store:
        rec = store.create_run("r", "embedded", {})
        for step in range(1, 6):
            store.write_metrics(rec.id, step, {"loss": 1.0 / step}, wall_time=100.0 + step)
        rs, cache = Recording(store), SeriesCache()
        _check(rs.store, rec, cache)
        assert metric_series(rs, rec.id, "loss", cache)[0] == [1.0, 2.0, 3.0, 4.0, 5.0]
        assert rs.since[-1] == 4  # the last point again (it may be upserted) and what follows

        store.write_metrics(rec.id, 5, {"loss": 0.5}, wall_time=106.0)  # the last step upserted
        for step in (6, 7):
            store.write_metrics(rec.id, step, {"loss": 0.1 * step}, wall_time=100.0 + step)
        _check(store, rec, cache)
        steps, values, _ = metric_series(rs, rec.id, "loss", cache)
        assert rs.since[-1] == 6 and steps[-3:] == [5.0, 6.0, 7.0] and values[-3] == 0.5

        store.start_attempt(rec.id)  # a new attempt starts over
        store.write_metrics(rec.id, 1, {"loss": 9.0}, wall_time=200.0)
        _check(store, rec, cache)
        assert metric_series(store, rec.id, "loss", cache)[1] == [9.0]

        with store.write_transaction() as c:  # steps removed: the cache starts over
            for table in ("metrics", "steps"):
                c.execute(f"DELETE FROM {table} WHERE run_id=?", (rec.id,))
            c.execute("UPDATE runs SET last_step=NULL WHERE id=?", (rec.id,))
        store.write_metrics(rec.id, 1, {"loss": 3.0}, wall_time=300.0)
        _check(store, rec, cache)
