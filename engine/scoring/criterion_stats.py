"""How well a rubric criterion separates teacher answers from student rollouts.

Every criterion the Rubricator writes gets a teacher pass rate and a student pass rate (share of
the verifier's verdicts that passed). From the two, a criterion is classified as:

- ``discriminates``: teachers pass it clearly more often than students (the useful signal),
- ``never passes`` / ``always passes``: nobody / everybody passes (no reward signal),
- ``students ahead``: students pass it clearly more often than teachers (suspicious criterion),
- ``weak``: some spread but below the gap threshold,
- ``no data``: no student verdicts.

This module is the one place for those thresholds and labels; the run store aggregates and pages
them in SQL (:meth:`engine.store.RunStore.criterion_page`), built from the same constants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

EDGE = 0.001  # a pass rate within this of 0 or 1 counts as "never" / "always"
GAP = 0.25  # teacher minus student pass rate at which a criterion "discriminates"
VERDICT_ORDER = ("discriminates", "never passes", "always passes", "students ahead", "weak", "no data")
"""The verdicts, most telling first (the order lists are ranked and shown in)."""


def classify(teacher_rate: float | None, student_rate: float | None) -> str:
    """The verdict (one of :data:`VERDICT_ORDER`) of a criterion with these pass rates."""
    t, s = teacher_rate, student_rate
    if s is None:
        return "no data"
    if s >= 1 - EDGE and (t is None or t >= 1 - EDGE):
        return "always passes"
    if s <= EDGE and (t is None or t <= EDGE):
        return "never passes"
    if t is not None and t - s >= GAP:
        return "discriminates"
    if t is not None and s - t >= GAP:
        return "students ahead"
    return "weak"


@dataclass
class CriterionStat:
    """One criterion of one prompt's rubric with its teacher and student pass rates."""

    step: int | None
    group_index: int | None
    criterion: str
    text: str
    points: int
    teacher_rate: float | None
    student_rate: float | None

    @property
    def gap(self) -> float | None:
        if self.teacher_rate is None or self.student_rate is None:
            return None
        return self.teacher_rate - self.student_rate

    @property
    def verdict(self) -> str:
        return classify(self.teacher_rate, self.student_rate)


def criterion_stats(rows: Iterable[dict[str, Any]]) -> list[CriterionStat]:
    """CriterionStats of the rows of ``RunStore.criterion_pass_rates(run_id)`` (by criterion)."""
    return [CriterionStat(step=r.get("step"), group_index=r.get("group_index"), criterion=str(r.get("key") or "?"),
                          text=str(r.get("text") or ""), points=int(r.get("points") or 0),
                          teacher_rate=r.get("teacher_pass_rate"), student_rate=r.get("student_pass_rate"))
            for r in rows]


def verdict_counts(stats: Iterable[CriterionStat]) -> dict[str, int]:
    """{verdict: number of criteria} (verdicts with no criterion are left out)."""
    counts: dict[str, int] = {}
    for st in stats:
        counts[st.verdict] = counts.get(st.verdict, 0) + 1
    return counts


@dataclass
class RunWide:
    """Run-wide criterion statistics: counts per verdict, per-category rates, one page of criteria."""

    counts: dict[str, int]
    n_total: int
    top: list[CriterionStat]
    categories: list[dict[str, Any]] = field(default_factory=list)
    verdict: str | None = None  # the filter the page was read with (None: all)
    cursor: tuple | None = None  # keyset position after the page's last row; None: no more rows

    @property
    def n_matching(self) -> int:
        return self.counts.get(self.verdict, 0) if self.verdict else self.n_total
