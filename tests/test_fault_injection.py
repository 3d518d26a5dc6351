"""Fault injection: 64 groups scored through real HTTP while 30% of the judge requests fail in 15 ways
(HTTP 408/429/5xx, hangs past the timeout, dropped connections, a proxy's HTML page and a non-chat JSON
body with status 200, cut-off JSON, prose, empty replies, chatter around JSON, wrong counts).

What must hold: no crash, at least 98% of the groups scored, every scored group's rewards identical
to a fault-free run (no wrong reward), every failed group's rewards None (never read as 0).
``bench/fault_injection.py`` prints the same figures and the time each command takes to report a
dead or hung judge.
"""

from __future__ import annotations

import pytest

from engine.judging.client import forget_unsupported_params
from engine.scoring.scorer import Scorer
from engine.types import GroupInput
from loopback_server import RANDOM_FAULT_KINDS, LoopbackJudgeServer, loopback_config


def fault_groups(n: int = 64, rollouts: int = 6, teachers: int = 2) -> list[GroupInput]:
    groups = []
    for g in range(n):
        a, b = 13 + g, 29 + 3 * g
        right = a + b
        t_answers = [f"{a} + {b} = {right}.\nThe answer is {right}.", f"Adding: {right}. The answer is {right}."][:teachers]
        rolls = [f"{a} + {b} = {right}. The answer is {right}." if i % 3 == 0 else
                 f"I get {right + i}." if i % 3 == 1 else f"The total is {right}." for i in range(rollouts)]
        groups.append(GroupInput(prompt=f"Ann has {a} beads and buys {b} more. How many beads does she have?",
                                 rollouts=rolls, teacher_answers=t_answers, ground_truth=str(right), uid=f"f{g}"))
    return groups


SETTINGS = ("judge.max_retries=4", "judge.reask_attempts=2", "judge.concurrency=16", "scorer.verifier_chunk_size=4",
            "scorer.k=2", "judge.rubricator.timeout_s=0.5", "judge.verifier.timeout_s=0.5",
            "judge.retry_initial_delay_s=0.01", "judge.retry_max_delay_s=0.05")


def score(srv: LoopbackJudgeServer, groups: list[GroupInput]):
    forget_unsupported_params()
    cfg = loopback_config(srv, *SETTINGS)
    return Scorer(cfg).score_batch_sync(groups)


@pytest.mark.parametrize("seed", [1])
def test_30_percent_mixed_faults_score_98_percent_of_groups_with_no_wrong_reward(seed):
    groups = fault_groups()
    with LoopbackJudgeServer() as srv:
        reference = score(srv, groups)
        assert all(g.status == "ok" for g in reference.groups)
        srv.random_faults(0.30, seed=seed, hang_s=1.0)
        faulted = score(srv, groups)
        injected = dict(srv.fault_counts)
    assert set(injected) == set(RANDOM_FAULT_KINDS), injected  # every kind was exercised
    scored = [g for g in faulted.groups if g.status != "failed"]
    assert len(scored) >= 0.98 * len(groups), [(g.group_index, g.failure_cause) for g in faulted.groups
                                                if g.status == "failed"]
    for ref, got in zip(reference.groups, faulted.groups):
        if got.status == "failed":
            assert all(r is None for r in got.student_rewards)  # never a silent 0
        else:
            assert got.student_rewards == ref.student_rewards  # no wrong reward
            assert got.teacher_scores == ref.teacher_scores
    assert sum(g.status == "recovered" for g in faulted.groups) > len(groups) / 2
