"""Run-wide criterion rollups kept at ingest (engine.store.criterion_rollups): after new steps, rewritten steps,
appended batches, new attempts and deleted runs they equal a full recomputation from the criteria rows; the
migration backfills an old store; a page is read from the index in order (no sort of the whole run)."""

from __future__ import annotations

import sqlite3

import pytest

from engine.scoring.criterion_stats import VERDICT_ORDER, criterion_stats, verdict_counts
from engine.store import RunStore
from engine.store.schema import _v10_criterion_rollups
from fixtures_store import make_group


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "ropd.db")
    yield s
    s.close()


def _recomputed(store: RunStore, run_id: int, attempt: int | None = None) -> tuple[dict, list, list]:
    """(verdict counts, per-category rates, page order) computed in Python from every criterion row."""
    rows = store.criterion_pass_rates(run_id, attempt=attempt)
    stats = criterion_stats(rows)
    order = sorted(((VERDICT_ORDER.index(st.verdict), -abs((st.teacher_rate or 0.0) - (st.student_rate or 0.0)),
                     r["step"], r["group_index"], r["position"]), (st.step, st.group_index, st.criterion))
                   for r, st in zip(rows, stats))
    cats = store.criterion_pass_rates(run_id, by="category", attempt=attempt)
    return verdict_counts(stats), cats, [k for _, k in order]


def _assert_rollups_match(store: RunStore, run_id: int, attempt: int | None = None) -> None:
    counts, cats, order = _recomputed(store, run_id, attempt)
    page = store.criterion_page(run_id, 10_000, attempt=attempt)
    assert page.counts == counts
    assert [c["category"] for c in page.categories] == [c["category"] for c in cats]
    for got, want in zip(page.categories, cats):
        assert got["n_criteria"] == want["n_criteria"]
        assert got["student_pass_rate"] == pytest.approx(want["student_pass_rate"])
        assert got["teacher_pass_rate"] == pytest.approx(want["teacher_pass_rate"])
    assert [(s.step, s.group_index, s.criterion) for s in page.top] == order


def _groups(step: int, n: int, seed: int = 3, start: int = 0):
    return [make_group(step, gi, seed=seed, failed=(gi == 2 and step == 2)) for gi in range(start, start + n)]


def test_rollups_follow_new_rewritten_appended_and_deleted_steps(store):
    a = store.create_run("a", "embedded", {})
    b = store.create_run("b", "embedded", {})
    for step in range(1, 5):
        store.write_step(a.id, step, {}, _groups(step, 3))
        store.write_step(b.id, step, {}, _groups(step, 2, seed=9))
    _assert_rollups_match(store, a.id)
    assert store.criterion_page(a.id).n_total > 0

    store.write_step(a.id, 3, {}, _groups(3, 1, seed=11))  # a rewritten step replaces its groups
    store.write_step(a.id, 4, {}, _groups(4, 2, seed=12, start=3), append=True)  # a second batch of a step
    _assert_rollups_match(store, a.id)
    _assert_rollups_match(store, b.id)

    store.start_attempt(a.id)
    store.write_step(a.id, 1, {}, _groups(1, 2, seed=13))
    _assert_rollups_match(store, a.id)
    _assert_rollups_match(store, a.id, attempt=1)

    store.delete_run(a.id)
    _assert_rollups_match(store, b.id)
    with store.read_snapshot() as c:
        for table in ("criterion_order", "criterion_summary"):
            assert c.execute(f"SELECT count(*) FROM {table} WHERE run_id=?", (a.id,)).fetchone()[0] == 0


def test_migration_backfills_an_old_store(tmp_path):
    path = tmp_path / "ropd.db"
    with RunStore(path) as s:
        rec = s.create_run("old", "embedded", {})
        for step in range(1, 4):
            s.write_step(rec.id, step, {}, _groups(step, 3))
    conn = sqlite3.connect(path)  # turn it into a store written before the rollups existed, and migrate it
    conn.executescript("DROP TABLE criterion_order; DROP TABLE criterion_summary;")
    conn.execute("BEGIN IMMEDIATE")
    _v10_criterion_rollups(conn)  # (later migrations follow v10: replaying by user_version would rerun them)
    conn.commit()
    conn.close()
    with RunStore(path) as s:
        _assert_rollups_match(s, rec.id)
        assert s.criterion_page(rec.id).n_total == len(s.criterion_pass_rates(rec.id)) > 0


def test_a_page_reads_the_index_in_order_without_sorting_the_run(store):
    rec = store.create_run("plan", "embedded", {})
    store.write_step(rec.id, 1, {}, _groups(1, 2))
    with store.read_snapshot() as c:
        for extra, params in (("", ()), (" AND o.rank = ?", (0,)),
                              (" AND (o.rank, o.neg_gap, o.step, o.group_index, o.position) > (?,?,?,?,?)",
                               (0, -1.0, 1, 0, 0))):
            plan = " | ".join(r[3] for r in c.execute(
                "EXPLAIN QUERY PLAN SELECT o.step FROM criterion_order o INDEXED BY idx_criterion_order"
                " JOIN criteria cr ON cr.id = o.criterion_id WHERE o.run_id = ? AND o.attempt = ?" + extra +
                " ORDER BY o.rank, o.neg_gap, o.step, o.group_index, o.position LIMIT 10", (rec.id, 1, *params)))
            assert "idx_criterion_order" in plan and "TEMP B-TREE" not in plan, plan
