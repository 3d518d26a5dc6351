"""Correctness in the scoring path: the scorer checks answers with the task's checker while the judge
works, the offline judge's final-answer criterion follows it, the store records which checker decided
(migration of an older store included), and export carries it."""

from __future__ import annotations

import csv
import io
import sqlite3

import pytest

from engine.config import load_config
from engine.scoring.scorer import Scorer
from engine.store import RunStore
from engine.store.schema import MIGRATIONS, schema_version
from engine.trainers.embedded import rollout_correctness
from engine.types import GroupInput

HALF = GroupInput(prompt="What is 1/2 as a fraction?",
                  rollouts=[r"It is one half: $\boxed{0.5}$", r"$\boxed{\frac{1}{3}}$", "I do not know."],
                  ground_truth=r"\frac{1}{2}",
                  teacher_answers=[r"One half, $\frac{1}{2}$. The answer is $\boxed{\frac{1}{2}}$",
                                   r"Halving 1 gives $\boxed{\frac12}$"], uid="half")


def offline_cfg(*extra: str):
    return load_config(None, ["judge.mode=offline", "scorer.k=2", *extra])


def test_the_scorer_checks_latex_answers_with_math_verify_and_records_it():
    group = Scorer(offline_cfg()).score_batch_sync([HALF]).groups[0]
    assert group.status == "ok"
    assert [a.correct for a in group.student_answers] == [True, False, False]
    assert [a.correct for a in group.teacher_answers] == [True, True]
    assert {a.checker for a in group.answers} == {"math_verify"}
    # the offline judge's "final answer" criterion follows the same checker: 0.5 passes against \frac{1}{2}
    final = next(i for i, c in enumerate(group.rubric.criteria) if c.text.startswith("The final answer is"))
    assert [a.verdicts[final] for a in group.student_answers] == [True, False, False]


def test_task_checker_rule_is_the_old_rule_based_check():
    group = Scorer(offline_cfg("task.checker=rule")).score_batch_sync([HALF]).groups[0]
    assert [a.correct for a in group.student_answers] == [False, False, False]  # "0.5" vs "\frac{1}{2}" as text
    assert {a.checker for a in group.answers} == {"rule"}


def test_no_ground_truth_no_correctness():
    plain = GroupInput(prompt="What is 2 + 2?", rollouts=["4", "5"], teacher_answers=["4", "2 + 2 = 4\n4"])
    group = Scorer(offline_cfg()).score_batch_sync([plain]).groups[0]
    assert group.status == "ok" and [(a.correct, a.checker) for a in group.answers] == [(None, None)] * 4


def test_a_pathological_answer_cannot_stall_the_group(tmp_path, monkeypatch):
    (tmp_path / "spin_checks.py").write_text(
        "def spin(answer, ground_truth):\n"
        "    while 'forever' in answer:\n"
        "        pass\n"
        "    return answer.strip().endswith(ground_truth)\n")
    monkeypatch.chdir(tmp_path)
    cfg = offline_cfg("task.checker=python:spin_checks:spin", "task.checker_timeout_s=0.5")
    group = Scorer(cfg).score_batch_sync([GroupInput(prompt="What is 3 + 4?", rollouts=["3 + 4 = 7", "forever 7"],
                                                     ground_truth="7", teacher_answers=["7", "It is 7"])]).groups[0]
    assert group.status == "ok"
    assert [(a.correct, a.checker) for a in group.student_answers] == [
        (True, "python:spin_checks:spin"), (False, "python:spin_checks:spin:timeout")]


def test_a_failed_group_still_has_its_rollouts_checked(tmp_path):
    cfg = offline_cfg(f"teacher.index={tmp_path / 'missing.jsonl'}")
    group = Scorer(cfg).score_batch_sync([GroupInput(prompt="What is 3 + 4?", rollouts=["7", "8"],
                                                     ground_truth="7")]).groups[0]
    assert group.status == "failed" and group.failure_stage == "teacher"
    assert [a.correct for a in group.student_answers] == [True, False]
    assert rollout_correctness_of(group) == [True, False]


def rollout_correctness_of(group):
    from engine.types import BatchResult

    return rollout_correctness(BatchResult(groups=[group]), 2)


def test_the_store_records_the_checker_and_export_carries_it(tmp_path, capsys):
    from ropd_tui.cli import main

    group = Scorer(offline_cfg()).score_batch_sync([HALF]).groups[0]
    store = RunStore(tmp_path / "ropd.db")
    try:
        rec = store.create_run("latex", "embedded", {})
        store.write_step(rec.id, 1, {"accuracy": 1 / 3}, [group])
        got = store.step_groups(rec.id, 1)[0]["answers"]
        assert [(a["correct"], a["checker"]) for a in got] == [(True, "math_verify"), (False, "math_verify"),
                                                               (False, "math_verify"), (True, "math_verify"),
                                                               (True, "math_verify")]
    finally:
        store.close()
    assert main(["--headless", "--store", str(tmp_path / "ropd.db"), "export", "latex", "--what", "answers",
                 "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["checker"] for r in rows] == ["math_verify"] * 5 and rows[0]["correct"] == "True"


def test_an_older_store_gains_the_checker_column(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    for migrate in MIGRATIONS[:3]:  # the schema before the checker column
        migrate(conn)
    conn.execute("PRAGMA user_version=3")
    conn.execute("INSERT INTO answers(group_id, kind, idx, text, correct) VALUES (1, 'student', 0, '7', 1)")
    conn.commit()
    conn.close()
    store = RunStore(path)
    try:
        with store._db.read() as c:
            assert c.execute("PRAGMA user_version").fetchone()[0] == schema_version()
            assert [tuple(r) for r in c.execute("SELECT correct, checker FROM answers")] == [(1, None)]
    finally:
        store.close()


@pytest.mark.parametrize("spec", ["rule", "exact", "math_verify"])
def test_checker_config_values(spec):
    assert offline_cfg(f"task.checker={spec}").task.checker == spec


def test_bad_checker_config_is_refused():
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown checker"):
        offline_cfg("task.checker=sympy")
    with pytest.raises(ConfigError, match="task.checker_timeout_s"):
        offline_cfg("task.checker_timeout_s=0")
