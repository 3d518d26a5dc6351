"""A generated run store for replay and template tests: a run whose steps hold scored groups.

Each group is an addition question with ground truth, 4 teacher answers (correct) and 4 student
answers (correct and explained, correct but terse, wrong, wrong and long). The stored rubric uses the
criteria wording of the loopback judge (tests/loopback_server.py), so a replay with the stored rubric
gets meaningful verdicts from it; the stored ("old") verdicts come from a different, sloppier judge:
c1 (the final number) is judged from the first number instead of the last, and c4 (length) always
passes, so some verdicts flip and the mean reward shifts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from engine.config import Config
from engine.scoring.scorer import weighted_reward
from engine.store import RunStore
from engine.templates.render import Template
from engine.types import AnswerResult, Criterion, GroupResult, JudgeCall, Rubric
from loopback_server import judge_criterion, last_number


def criteria_for(right: str) -> list[Criterion]:
    return [
        Criterion("c1", f"The answer gives {right} as the final result.", 5, "task fulfilment"),
        Criterion("c2", "The answer shows at least one intermediate calculation with an equals sign.", 3,
                  "general reasoning quality"),
        Criterion("c3", "The answer states its final result explicitly, for example 'The answer is ...'.", 2,
                  "observable response quality"),
        Criterion("c4", "The answer is at most 300 characters long.", 1, "observable response quality"),
    ]


def _old_verdict(answer: str, crit: Criterion, right: str) -> bool:
    if crit.id == "c1":  # the sloppy old judge looks at the FIRST number
        import re

        nums = re.findall(r"-?\d+", answer)
        return bool(nums) and nums[0] == right
    if crit.id == "c4":  # ... and ignores length
        return True
    return judge_criterion(answer, crit.text)


MARKUP = "[bold red]not markup[/]"  # untrusted text that a UI must show literally


def make_group(step: int, gi: int, *, failed: bool = False) -> GroupResult:
    a, b = 3 + step * 7 + gi, 5 + gi * 2
    right = str(a + b)
    question = f"What is {a} + {b}? {MARKUP}"
    students = [
        f"{a} + {b} = {right}. The answer is {right}.",
        f"{right}",
        f"{a} + {b} = {a + b + 1}. The answer is {a + b + 1}.",
        f"{right} is what I first thought, but adding more carefully I get {a + b - 2}. " + "Lots of words. " * 25,
    ]
    teachers = [f"Adding: {a} + {b} = {right}. The answer is {right}." for _ in range(4)]
    rubric = Rubric(criteria_for(right), maximum_score=11)
    answers = []
    pool_order = [4, 0, 6, 2, 7, 1, 5, 3]  # a fixed shuffled pool: positions of s0..s3, t0..t3
    for kind, texts in (("student", students), ("teacher", teachers)):
        for i, text in enumerate(texts):
            k = i if kind == "student" else 4 + i
            verdicts = None if failed else [_old_verdict(text, c, right) for c in rubric.criteria]
            answers.append(AnswerResult(
                kind=kind, index=i, text=text, pool_position=pool_order[k] + 1, verdicts=verdicts,
                reward=None if failed else weighted_reward([c.points for c in rubric.criteria], verdicts, 1e-6),
                correct=last_number(text) == right))
    tv = {r: Template.default(r).sha256 for r in ("rubricator", "verifier")}
    call = JudgeCall(role="verifier", model="old-judge", status="ok", latency_s=0.1, raw_reply="{}",
                     template_sha=tv["verifier"])
    return GroupResult(
        group_index=gi, prompt=question, question=question, rollouts_raw=students,
        status="failed" if failed else "ok", ground_truth=right, uid=f"s{step}g{gi}",
        failure_stage="verifier" if failed else None, failure_cause="old judge timed out" if failed else None,
        rubric=None if failed else rubric, answers=answers, calls=[call], template_versions=tv, judge_kind="llm")


def make_store(path: Path, *, steps: int = 2, groups: int = 3, failed: set[tuple[int, int]] = frozenset(),
               name: str = "r1", templates_dir: Path | None = None,
               configure: Callable[[Config], None] | None = None) -> RunStore:
    """A store at ``path`` with run ``name``: ``steps`` steps (1..steps) of ``groups`` groups each.
    ``templates_dir``: copy the shipped templates there and configure the run with them; ``configure``
    may change the run's config (e.g. short judge timeouts) before it is stored."""
    store = RunStore(path)
    cfg = Config()
    cfg.run.name = name
    if configure is not None:
        configure(cfg)
    if templates_dir is not None:
        import shutil

        from engine.templates.render import PROMPTS_DIR

        templates_dir.mkdir(parents=True, exist_ok=True)
        for role in ("rubricator", "verifier", "scalar_judge"):
            shutil.copy(PROMPTS_DIR / f"{role}.txt", templates_dir / f"{role}.txt")
            setattr(cfg.templates, role, str(templates_dir / f"{role}.txt"))
    run = store.create_run(name, "embedded", cfg.to_dict())
    for r in ("rubricator", "verifier"):
        t = Template.default(r)
        store.record_template(r, t.sha256, t.text, source=str(t.source), run_id=run.id, step=1)
    for step in range(1, steps + 1):
        store.write_step(run.id, step, {"loss": 0.1 * step},
                         [make_group(step, gi, failed=(step, gi) in failed) for gi in range(groups)])
    return store
