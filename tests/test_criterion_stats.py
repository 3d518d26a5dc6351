"""Criterion verdicts (engine.scoring.criterion_stats) and the store's run-wide criterion page (RunStore.criterion_page):
counts per verdict, keyset paging (every row exactly once, in order), the verdict filter, attempts."""

from __future__ import annotations

import pytest

from engine.scoring.criterion_stats import GAP, VERDICT_ORDER, CriterionStat, classify, criterion_stats, verdict_counts
from engine.store import RunStore
from engine.types import AnswerResult, Criterion, GroupResult, Rubric
from fixtures_store import make_group

# (teacher verdicts, student verdicts) per criterion pattern; the student pass count of "discriminates"
# grows with the step so the teacher-student gap differs (1.0, 0.75, 0.5) and orders the rows.
PATTERNS = {
    "never passes": ([0, 0], [0, 0, 0, 0]),
    "always passes": ([1, 1], [1, 1, 1, 1]),
    "students ahead": ([0, 0], [1, 1, 1, 0]),
    "weak": ([1, 0], [1, 0, 1, 0]),
}
STEPS = (1, 2, 3)
GROUPS_PER_STEP = 2


def _discriminating(step: int) -> tuple[list[int], list[int]]:
    passing = step - 1
    return [1, 1], [1] * passing + [0] * (4 - passing)


def _group(step: int, group_index: int, *, failed: bool = False) -> GroupResult:
    patterns = [("discriminates", _discriminating(step)), *PATTERNS.items()]
    criteria = [Criterion(id=f"c{i + 1}", text=f"{name} criterion", points=i + 1, category=name.split()[0])
                for i, (name, _) in enumerate(patterns)]
    answers = []
    for kind, pos in (("teacher", 0), ("student", 1)):
        n = len(patterns[0][1][pos])
        for i in range(n):
            verdicts = None if failed else [bool(p[1][pos][i]) for p in patterns]
            answers.append(AnswerResult(kind=kind, index=i, text=f"{kind} {i}", verdicts=verdicts,
                                        reward=None if failed else 0.5))
    q = f"question {step}/{group_index}"
    g = GroupResult(group_index=group_index, prompt=q, question=q, rollouts_raw=[a.text for a in answers
                                                                                  if a.kind == "student"],
                    status="failed" if failed else "ok", rubric=Rubric(criteria=criteria), answers=answers)
    if failed:
        g.failure_stage, g.failure_cause = "verifier", "no verdicts"
    return g


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "ropd.db")
    yield s
    s.close()


@pytest.fixture
def run_id(store):
    rec = store.create_run("crit", "embedded", {})
    for step in STEPS:
        groups = [_group(step, gi) for gi in range(GROUPS_PER_STEP)]
        if step == 2:
            groups.append(_group(step, GROUPS_PER_STEP, failed=True))  # its 5 criteria have no data
        store.write_step(rec.id, step, {"loss": 1.0 / step}, groups)
    return rec.id


def _expected_order(store: RunStore, run_id: int, verdict: str | None = None) -> list[tuple]:
    """(step, group_index, criterion key) of every criterion, most telling first, computed in Python."""
    rows = store.criterion_pass_rates(run_id)
    keyed = []
    for r, st in zip(rows, criterion_stats(rows)):
        if verdict and st.verdict != verdict:
            continue
        gap = abs((st.teacher_rate or 0.0) - (st.student_rate or 0.0))
        keyed.append(((VERDICT_ORDER.index(st.verdict), -gap, r["step"], r["group_index"], r["position"]),
                      (st.step, st.group_index, st.criterion)))
    return [k for _, k in sorted(keyed)]


def _all_pages(store: RunStore, run_id: int, limit: int, verdict: str | None = None) -> tuple[list[CriterionStat], int]:
    out: list[CriterionStat] = []
    page = store.criterion_page(run_id, limit, verdict=verdict)
    pages = 1
    out += page.top
    while page.cursor is not None:
        assert len(page.top) == limit and pages <= 100, "the cursor does not advance"
        page = store.criterion_page(run_id, limit, verdict=verdict, after=page.cursor, with_counts=False)
        pages += 1
        out += page.top
    return out, pages


@pytest.mark.parametrize("teacher, student, verdict", [
    (1.0, 0.0, "discriminates"),
    (0.75, 0.5, "discriminates"),  # a gap of exactly GAP discriminates
    (0.7, 0.5, "weak"),
    (0.5, 0.5, "weak"),
    (0.0, 0.0, "never passes"),
    (None, 0.0, "never passes"),
    (1.0, 1.0, "always passes"),
    (None, 1.0, "always passes"),
    (0.2, 0.6, "students ahead"),
    (1.0, None, "no data"),
    (None, None, "no data"),
])
def test_classify(teacher, student, verdict):
    assert classify(teacher, student) == verdict
    assert CriterionStat(1, 0, "c1", "", 1, teacher, student).verdict == verdict


def test_gap_threshold_is_the_documented_one():
    assert GAP == 0.25 and classify(0.75, 0.5) == "discriminates" and classify(0.74, 0.5) == "weak"


def test_counts_per_verdict(store, run_id):
    page = store.criterion_page(run_id, 10)
    n_ok = len(STEPS) * GROUPS_PER_STEP
    assert page.counts == {"discriminates": n_ok, "never passes": n_ok, "always passes": n_ok,
                           "students ahead": n_ok, "weak": n_ok, "no data": 5}
    assert page.n_total == 5 * n_ok + 5 == page.n_matching
    assert page.counts == verdict_counts(criterion_stats(store.criterion_pass_rates(run_id)))
    assert page.categories == store.criterion_pass_rates(run_id, by="category")
    assert page.verdict is None and len(page.top) == 10 and page.cursor is not None


def test_first_page_is_most_telling_first(store, run_id):
    top = store.criterion_page(run_id, 8).top
    assert [s.verdict for s in top[:6]] == ["discriminates"] * 6
    assert [s.gap for s in top[:6]] == [1.0, 1.0, 0.75, 0.75, 0.5, 0.5]  # largest gap first
    assert [(s.step, s.group_index) for s in top[:6]] == [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    assert [s.verdict for s in top[6:]] == ["never passes"] * 2
    assert top[0].criterion == "c1" and top[0].text == "discriminates criterion" and top[0].points == 1


@pytest.mark.parametrize("limit", [1, 4, 7, 35, 100])
def test_paging_returns_every_row_once_in_order(store, run_id, limit):
    rows, pages = _all_pages(store, run_id, limit)
    got = [(s.step, s.group_index, s.criterion) for s in rows]
    assert got == _expected_order(store, run_id)
    assert len(set(got)) == len(got) == 35
    assert pages == -(-35 // limit)  # ceil: a full last page has no cursor (no empty extra page)


def test_verdict_filter(store, run_id):
    for verdict in VERDICT_ORDER:
        page = store.criterion_page(run_id, 3, verdict=verdict)
        assert page.verdict == verdict and page.n_matching == page.counts[verdict]
        rows, _ = _all_pages(store, run_id, 3, verdict=verdict)
        assert all(s.verdict == verdict for s in rows)
        assert [(s.step, s.group_index, s.criterion) for s in rows] == _expected_order(store, run_id, verdict)
    assert [s.step for s in _all_pages(store, run_id, 2, verdict="no data")[0]] == [2] * 5
    with pytest.raises(ValueError, match="verdict must be one of"):
        store.criterion_page(run_id, verdict="great")


def test_without_counts(store, run_id):
    page = store.criterion_page(run_id, 5, with_counts=False)
    assert page.counts == {} and page.categories == [] and page.n_total == 0 and len(page.top) == 5


def test_sql_verdicts_agree_with_classify_on_random_rates(store):
    rec = store.create_run("random", "embedded", {})
    for step in range(1, 5):
        store.write_step(rec.id, step, {}, [make_group(step, gi, seed=7) for gi in range(4)])
    expected = verdict_counts(criterion_stats(store.criterion_pass_rates(rec.id)))
    page = store.criterion_page(rec.id, 1000)
    assert page.counts == expected and len(expected) > 2
    assert [(s.step, s.group_index, s.criterion) for s in page.top] == _expected_order(store, rec.id)


def test_attempts_and_empty_runs(store, run_id):
    store.start_attempt(run_id)
    fresh = store.criterion_page(run_id)
    assert fresh.counts == {} and fresh.top == [] and fresh.cursor is None and fresh.n_total == 0
    old = store.criterion_page(run_id, 100, attempt=1)
    assert old.n_total == 35 and len(old.top) == 35 and old.cursor is None


def test_metric_keys_of_an_attempt(store):
    rec = store.create_run("keys", "embedded", {})
    store.write_metrics(rec.id, 1, {"loss": 1.0, "reward/mean": 0.2})
    store.start_attempt(rec.id)
    store.write_metrics(rec.id, 1, {"kl": 0.1})
    assert store.metric_keys(rec.id, attempt=1) == ["loss", "reward/mean"]
    assert store.metric_keys(rec.id, attempt=2) == ["kl"]
    assert store.metric_keys(rec.id, attempt=3) == []
    assert "kl" in store.metric_keys(rec.id)
