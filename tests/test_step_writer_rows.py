"""The step writer's batched inserts store exactly the rows the per-row inserts did (issue 16: verdicts go in
one bound row per answer, pass rates in one pass per group): every verdict (group, answer, criterion, 0/1)
as ``zip(criterion ids, verdicts)`` pairs them, with verdict lists shorter or longer than the rubric, and
criterion pass rates as the mean over the answers whose verdicts reach each position."""

from __future__ import annotations

from engine.store import RunStore
from engine.types import AnswerResult, Criterion, GroupResult, Rubric


def _group(gi: int, verdicts: list[list]) -> GroupResult:
    crits = [Criterion(id=f"c{i}", text=f"criterion {i}", points=1 + i % 3, category="task fulfilment")
             for i in range(4)]
    answers = [AnswerResult(kind="student" if i < len(verdicts) - 1 else "teacher", index=i, text=f"answer {i}",
                            verdicts=v, reward=0.5) for i, v in enumerate(verdicts)]
    return GroupResult(group_index=gi, prompt=f"q{gi}", question=f"q{gi}", rollouts_raw=[a.text for a in answers],
                       status="ok", rubric=Rubric(criteria=crits, maximum_score=8), answers=answers)


CASES = [
    [[True, False, True, True], [False, False, True, False], [True, True, True, False], [True, True, False, True]],
    [[True, False], [1, 0, 1, 1, 1, 0], [True, False, False, True], [0, 2, 1, 0], [True, True, True, True]],
    [[], [True, True, False, False], [False, True, True, True]],
]


def _expected(store: RunStore, rid: int) -> tuple[list[tuple], list[tuple]]:
    c = store.connection
    verdicts, rates = [], []
    for gi, case in enumerate(CASES):
        gid = c.execute("SELECT seq FROM groups WHERE run_id=? AND group_index=?", (rid, gi)).fetchone()[0]
        crit_ids = [r[0] for r in c.execute("SELECT id FROM criteria WHERE group_id=? ORDER BY position", (gid,))]
        answer_ids = [r[0] for r in c.execute("SELECT id FROM answers WHERE group_id=? ORDER BY id", (gid,))]
        for aid, v in zip(answer_ids, case):
            if v:
                verdicts += [(gid, aid, cid, int(bool(x))) for cid, x in zip(crit_ids, v)]
        for kind, votes in (("student", [v for v in case[:-1] if v]), ("teacher", [v for v in case[-1:] if v])):
            for pos, cid in enumerate(crit_ids):
                col = [float(v[pos]) for v in votes if pos < len(v)]
                rates.append((cid, kind, sum(col) / len(col) if col else None))
    return verdicts, rates


def test_batched_verdicts_and_pass_rates_equal_the_per_row_values(tmp_path):
    with RunStore(tmp_path / "ropd.db") as store:
        rec = store.create_run("r", "embedded", {})
        store.write_step(rec.id, 1, {}, [_group(gi, case) for gi, case in enumerate(CASES)])
        verdicts, rates = _expected(store, rec.id)
        c = store.connection
        got = [tuple(r) for r in c.execute("SELECT group_id, answer_id, criterion_id, passed FROM verdicts"
                                           " ORDER BY group_id, answer_id, criterion_id")]
        assert got == sorted(verdicts)
        assert all(type(r[3]) is int for r in got)
        stored = {}
        for cid, s, t in c.execute("SELECT id, student_pass_rate, teacher_pass_rate FROM criteria"):
            stored[(cid, "student")], stored[(cid, "teacher")] = s, t
        assert [(cid, kind, stored[(cid, kind)]) for cid, kind, _ in rates] == rates
