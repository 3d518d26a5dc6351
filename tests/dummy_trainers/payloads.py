"""Synthetic scored groups of any size (GroupResult with rubric, answers, verdicts, judge calls),
for store tests, the killed-writer test and bench/store.py."""

from __future__ import annotations

import random

from engine.types import AnswerResult, Criterion, GroupResult, JudgeCall, Rubric


def make_group(step: int, index: int, *, students: int = 8, teachers: int = 4, criteria: int = 12,
               text_len: int = 400, seed: int | None = None, failed: bool = False) -> GroupResult:
    rng = random.Random(seed if seed is not None else step * 1000 + index)
    crits = [Criterion(id=f"c{j + 1}", text=f"Criterion {j + 1} of prompt {index}: the answer states the final result "
                       f"{j} explicitly and justifies it." + " detail" * rng.randint(0, 10),
                       points=rng.randint(1, 5), category=("task", "quality", "reasoning")[j % 3])
             for j in range(criteria)]
    total = sum(c.points for c in crits)
    answers = []
    for kind, n in (("student", students), ("teacher", teachers)):
        for i in range(n):
            verdicts = [rng.random() < (0.8 if kind == "teacher" else 0.5) for _ in crits]
            reward = sum(c.points for c, v in zip(crits, verdicts) if v) / total
            body = f"{kind} answer {i} for step {step} group {index}. " + "x" * max(0, text_len - 40)
            answers.append(AnswerResult(kind=kind, index=i, text=body, truncated=False,
                                        pool_position=len(answers) + 1, verdicts=None if failed else verdicts,
                                        reward=None if failed else reward, correct=rng.random() < 0.5))
    calls = [JudgeCall(role="rubricator", model="judge-m", status="ok", latency_s=rng.random(), prompt_tokens=900,
                       completion_tokens=300, raw_reply='{"criteria": []}' * 5, template_sha="a" * 64,
                       endpoint="http://127.0.0.1:8000/v1"),
             JudgeCall(role="verifier", model="judge-m", status="ok", latency_s=rng.random(), prompt_tokens=3000,
                       completion_tokens=500, raw_reply='{"judgements": []}' * 5, template_sha="b" * 64,
                       endpoint="http://127.0.0.1:8000/v1")]
    return GroupResult(
        group_index=index, prompt=f"Prompt {index}: what is {index} + {step}?", question=f"what is {index} + {step}?",
        rollouts_raw=[a.text for a in answers if a.kind == "student"],
        status="failed" if failed else "ok", ground_truth=str(index + step), uid=f"uid-{index}",
        failure_stage="verifier" if failed else None, failure_cause="reply was not JSON" if failed else None,
        rubric=None if failed else Rubric(crits), answers=answers, calls=calls,
        template_versions={"rubricator": "a" * 64, "verifier": "b" * 64}, judge_kind="llm", wall_s=1.5)


def make_step(step: int, groups: int, **kw) -> list[GroupResult]:
    return [make_group(step, i, **kw) for i in range(groups)]
