"""The embedded trainer's per-step metrics count scored rows only, and every unscored row counts as a
failure (pure functions: no model, no TRL)."""

from __future__ import annotations

import pytest

from engine.trainers.embedded import StepRecord, row_rewards, step_metrics
from engine.types import AnswerResult, BatchResult, GroupResult


def group(i: int, rewards: list[float | None], status: str = "ok") -> GroupResult:
    g = GroupResult(group_index=i, prompt=f"q{i}", question=f"q{i}", rollouts_raw=[f"a{j}" for j in range(len(rewards))],
                    status=status)  # type: ignore[arg-type]
    g.answers = [AnswerResult(kind="student", index=j, text=f"a{j}", reward=r) for j, r in enumerate(rewards)]
    if status == "failed":
        g.failure_stage, g.failure_cause = "verifier", "HTTP 500"
    return g


def record(groups: list[GroupResult], *, lengths: list[int], truncated: list[bool], n: int = 3) -> StepRecord:
    batch = BatchResult(groups=groups)
    rewards = row_rewards(batch, n)
    return StepRecord(batch=batch, rewards=rewards, failed_rows=[r is None for r in rewards],
                      completion_lengths=lengths, truncated=truncated, skipped=all(r is None for r in rewards))


def test_a_failed_group_is_no_spread_and_its_rows_are_no_lengths():
    # group 0 scored with equal rewards (no learning signal), group 1 failed
    rec = record([group(0, [0.5, 0.5, 0.5]), group(1, [0.9, 0.1, 0.3], status="failed")],
                 lengths=[4, 6, 8, 1, 1, 1], truncated=[False, False, True, False, False, False])
    m = step_metrics(rec, {"completions/mean_length": 3.5, "completions/clipped_ratio": 1 / 6,
                           "frac_reward_zero_std": 0.5, "loss": 0.25}, rollouts=3)
    assert m["frac_reward_zero_std"] == 1.0  # TRL's 0.5 counts the failed group (NaN std) as spread
    assert m["response_length/mean"] == pytest.approx(6.0)  # TRL's 3.5 includes the failed rows
    assert m["response_length/clipped_ratio"] == pytest.approx(1 / 3)  # TRL's 1/6 likewise
    assert m["judge/failure_rate"] == pytest.approx(0.5) and m["judge/unscored_rollouts"] == 3.0
    assert m["judge/failed_groups"] == 1.0
    assert m["reward/mean"] == pytest.approx(0.5) and m["loss"] == 0.25 and m["update/skipped"] == 0.0


def test_a_none_reward_inside_a_scored_group_is_a_failure_and_no_statistic():
    rec = record([group(0, [0.2, None, 0.8]), group(1, [1.0, 1.0, 1.0])],
                 lengths=[2, 9, 4, 5, 5, 5], truncated=[False, True, False, False, False, False])
    assert rec.failed_rows == [False, True, False, False, False, False]
    m = step_metrics(rec, {}, rollouts=3)
    assert m["judge/failure_rate"] == pytest.approx(1 / 6)  # no group failed, one rollout unscored
    assert m["judge/unscored_rollouts"] == 1.0 and m["judge/failed_groups"] == 0.0
    assert m["response_length/mean"] == pytest.approx((2 + 4 + 15) / 5)
    assert m["response_length/clipped_ratio"] == 0.0  # the truncated row is the unscored one
    assert m["frac_reward_zero_std"] == 0.5  # group 0 spreads over its scored rows, group 1 does not
    assert m["reward/mean"] == pytest.approx((0.2 + 0.8 + 3.0) / 5)


def test_a_nan_reward_is_unscored():
    rec = record([group(0, [0.2, float("nan"), 0.8])], lengths=[1, 2, 3], truncated=[False] * 3)
    assert rec.rewards == [0.2, None, 0.8]


def test_a_step_with_nothing_scored_reports_no_update_statistics():
    rec = record([group(0, [None] * 3, status="failed"), group(1, [None] * 3, status="failed")],
                 lengths=[3] * 6, truncated=[False] * 6)
    assert rec.skipped
    m = step_metrics(rec, {"loss": 0.0, "grad_norm": 0.0, "entropy": 0.0, "clip_ratio/region_mean": 0.0,
                           "learning_rate": 1e-3}, rollouts=3)
    assert m["update/skipped"] == 1.0 and m["judge/failure_rate"] == 1.0
    assert not {"loss", "grad_norm", "entropy", "clip_ratio", "reward/mean", "frac_reward_zero_std",
                "response_length/mean", "response_length/clipped_ratio"} & set(m)
    assert m["lr"] == 1e-3
