"""RunStore.step_nav: the inspector's bounded navigation around one step (no list of every step)."""

from __future__ import annotations

from engine.store import RunStore


def test_step_nav_around_a_step(tmp_path):
    with RunStore(tmp_path / "ropd.db") as store:
        rec = store.create_run("r", "embedded", {})
        assert store.step_nav(rec.id) == {"step": None, "first": None, "last": None, "prev": None, "next": None,
                                          "index": 0, "count": 0}
        for step in (2, 4, 8, 16):
            store.write_metrics(rec.id, step, {"loss": 1.0})
        assert store.step_nav(rec.id) == {"step": 16, "first": 2, "last": 16, "prev": 8, "next": None,
                                          "index": 4, "count": 4}
        assert store.step_nav(rec.id, 4) == {"step": 4, "first": 2, "last": 16, "prev": 2, "next": 8,
                                             "index": 2, "count": 4}
        assert store.step_nav(rec.id, 2)["prev"] is None
        assert store.step_nav(rec.id, 5)["step"] == 4  # the nearest existing step
        assert store.step_nav(rec.id, 7)["step"] == 8
        assert store.step_nav(rec.id, 6)["step"] == 4  # a tie goes to the lower one
        assert store.step_nav(rec.id, 100)["step"] == 16 and store.step_nav(rec.id, -3)["step"] == 2
