"""Run-wide criterion aggregates kept at ingest (tables ``criterion_order`` and ``criterion_summary``, see
``schema._v7_criterion_rollups``), so the inspector's run-wide criteria tab costs the same at step 10 and at
step 10,000: verdict counts and per-category pass rates are a handful of summary rows, a page of the most
telling criteria is an index range scan of ``limit`` rows.

Written in the caller's transaction: :func:`add` when a step's criteria are inserted, :func:`subtract`
before a group's criteria are deleted (a rewritten step, a deleted run). The verdict is the one of
:func:`engine.scoring.criterion_stats.classify`, stored as its rank in ``VERDICT_ORDER``.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Iterable, Sequence

from engine.scoring.criterion_stats import VERDICT_ORDER, CriterionStat, classify

RANK = {v: i for i, v in enumerate(VERDICT_ORDER)}


class CriterionRollup:
    """Collects the rollup rows of the criteria one step inserts; :meth:`write` adds them."""

    def __init__(self, run_id: int, attempt: int, step: int):
        self.run_id, self.attempt, self.step = run_id, attempt, step
        self.order: list[tuple] = []
        self.summary: dict[tuple[str, int], list[float]] = {}

    def criterion(self, criterion_id: int, group_index: int, position: int, category: str | None,
                  student_rate: float | None, teacher_rate: float | None) -> None:
        rank = RANK[classify(teacher_rate, student_rate)]
        neg_gap = -abs((teacher_rate or 0.0) - (student_rate or 0.0))
        self.order.append((criterion_id, self.run_id, self.attempt, self.step, group_index, position, rank, neg_gap))
        acc = self.summary.setdefault((category or "", rank), [0, 0, 0.0, 0, 0.0])
        acc[0] += 1
        if student_rate is not None:
            acc[1] += 1
            acc[2] += student_rate
        if teacher_rate is not None:
            acc[3] += 1
            acc[4] += teacher_rate

    def write(self, c: sqlite3.Connection) -> None:
        if not self.order:
            return
        c.executemany("INSERT INTO criterion_order(criterion_id, run_id, attempt, step, group_index, position, rank,"
                      " neg_gap) VALUES (?,?,?,?,?,?,?,?)", self.order)
        _bump(c, [(self.run_id, self.attempt, cat, rank, *acc) for (cat, rank), acc in self.summary.items()])


def _bump(c: sqlite3.Connection, rows: Sequence[tuple]) -> None:
    c.executemany(
        "INSERT INTO criterion_summary(run_id, attempt, category, rank, n, n_student, sum_student, n_teacher,"
        " sum_teacher) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(run_id, attempt, category, rank) DO UPDATE SET"
        " n = n + excluded.n, n_student = n_student + excluded.n_student,"
        " sum_student = sum_student + excluded.sum_student, n_teacher = n_teacher + excluded.n_teacher,"
        " sum_teacher = sum_teacher + excluded.sum_teacher", rows)


def subtract(c: sqlite3.Connection, group_ids: Sequence[int]) -> None:
    """Take the criteria of these groups out of the rollups (call before deleting their criteria)."""
    if not group_ids:
        return
    marks = ",".join("?" * len(group_ids))
    rows = c.execute(
        "SELECT o.run_id, o.attempt, coalesce(cr.category, ''), o.rank, -count(*), -count(cr.student_pass_rate),"
        " -total(cr.student_pass_rate), -count(cr.teacher_pass_rate), -total(cr.teacher_pass_rate)"
        f" FROM criteria cr JOIN criterion_order o ON o.criterion_id = cr.id WHERE cr.group_id IN ({marks})"
        " GROUP BY 1, 2, 3, 4", list(group_ids)).fetchall()
    if not rows:
        return
    _bump(c, [tuple(r) for r in rows])
    c.execute("DELETE FROM criterion_summary WHERE n <= 0 AND (run_id, attempt) IN"
              f" (SELECT DISTINCT run_id, attempt FROM groups WHERE seq IN ({marks}))", list(group_ids))
    c.execute(f"DELETE FROM criterion_order WHERE criterion_id IN (SELECT id FROM criteria WHERE group_id IN ({marks}))",
              list(group_ids))


def verdict_counts(c: sqlite3.Connection, run_id: int, attempt: int) -> dict[str, int]:
    """{verdict: number of criteria} over every rubric of the attempt."""
    return {VERDICT_ORDER[rank]: n for rank, n in c.execute(
        "SELECT rank, sum(n) FROM criterion_summary WHERE run_id=? AND attempt=? GROUP BY rank HAVING sum(n) > 0",
        (run_id, attempt))}


def category_rates(c: sqlite3.Connection, run_id: int, attempt: int) -> list[dict[str, Any]]:
    """Per category ('' for none): number of criteria and mean student / teacher pass rate."""
    rows = c.execute(
        "SELECT category, sum(n), sum(n_student), sum(sum_student), sum(n_teacher), sum(sum_teacher)"
        " FROM criterion_summary WHERE run_id=? AND attempt=? GROUP BY category HAVING sum(n) > 0 ORDER BY category",
        (run_id, attempt)).fetchall()
    return [{"category": r[0], "n_criteria": r[1], "student_pass_rate": r[3] / r[2] if r[2] else None,
             "teacher_pass_rate": r[5] / r[4] if r[4] else None} for r in rows]


def page(c: sqlite3.Connection, run_id: int, attempt: int, limit: int, verdict: str | None,
         after: Iterable | None) -> tuple[list[CriterionStat], tuple | None]:
    """Up to ``limit`` criteria after the keyset position ``after``, ordered by verdict rank, then the
    teacher-student gap (largest first), step, prompt and position; and the position after the last one
    (None when no rows follow). Reads ``limit + 1`` entries of ``idx_criterion_order``."""
    where, params = ["o.run_id = ?", "o.attempt = ?"], [run_id, attempt]
    if verdict:
        where.append("o.rank = ?")
        params.append(RANK[verdict])
    if after is not None:
        where.append("(o.rank, o.neg_gap, o.step, o.group_index, o.position) > (?, ?, ?, ?, ?)")
        params += list(after)
    rows = c.execute(
        "SELECT o.step, o.group_index, cr.crit_key, cr.text, cr.points, cr.teacher_pass_rate, cr.student_pass_rate,"
        " o.rank, o.neg_gap, o.position FROM criterion_order o INDEXED BY idx_criterion_order"
        " JOIN criteria cr ON cr.id = o.criterion_id WHERE " + " AND ".join(where)
        + " ORDER BY o.rank, o.neg_gap, o.step, o.group_index, o.position LIMIT ?", (*params, limit + 1)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    stats = [CriterionStat(step=r[0], group_index=r[1], criterion=str(r[2] or "?"), text=str(r[3] or ""),
                           points=int(r[4] or 0), teacher_rate=r[5], student_rate=r[6]) for r in rows]
    cursor = (rows[-1][7], rows[-1][8], rows[-1][0], rows[-1][1], rows[-1][9]) if more and rows else None
    return stats, cursor
