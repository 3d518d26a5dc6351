"""Learning signal of a step: how many groups give GRPO something to learn from, and why not.

GRPO learns from the reward differences between the rollouts of one prompt. A group whose rollouts
all got the same reward (zero spread) contributes zero advantage, so zero loss and zero gradient; a
step where most groups are like that trains on almost nothing, while every number still looks
normal. :func:`learning_signal` finds such steps and names the likely causes from the groups
themselves: identical rollouts, a rubric every answer passes or fails, one rubric for every prompt,
or a verifier that gives every answer the same verdicts (a small judge copying its template's
example does both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from engine.types import GroupResult

#: A step warns when more than this share of its scored groups has zero reward spread.
FLAT_SHARE = 0.5
_EPS = 1e-9


@dataclass
class SignalReport:
    scored: int  # groups of the step that were scored (not failed)
    flat: int  # of them, groups whose rollouts all got the same reward
    causes: list[str] = field(default_factory=list)

    def message(self, step: int | None = None) -> str:
        where = f"step {step}: " if step is not None else ""
        causes = "; ".join(self.causes) if self.causes else "no single cause stands out: look at these groups in " \
            "the Rubric inspector (i)"
        return (f"{where}{self.flat} of {self.scored} scored groups carry no learning signal (every rollout of the "
                f"group got the same reward, so its advantages, loss and gradient are 0). Likely causes: {causes}")

    def data(self) -> dict:
        return {"scored": self.scored, "flat": self.flat, "causes": list(self.causes)}


def _spread(group: GroupResult) -> float | None:
    rewards = [r for r in group.student_rewards if r is not None]
    if len(rewards) < 2:
        return None
    return max(rewards) - min(rewards)


def learning_signal(groups: Sequence[GroupResult], *, share: float = FLAT_SHARE) -> SignalReport | None:
    """A report when more than ``share`` of the scored groups have zero reward spread, else None."""
    scored = [g for g in groups if g.status != "failed" and _spread(g) is not None]
    flat = [g for g in scored if (_spread(g) or 0.0) <= _EPS]
    if not scored or len(flat) <= share * len(scored):
        return None
    return SignalReport(scored=len(scored), flat=len(flat), causes=_causes(flat))


def _causes(flat: list[GroupResult]) -> list[str]:
    n = len(flat)
    out: list[str] = []
    same_rollouts = [g for g in flat if len({" ".join(t.split()) for t in g.rollouts_raw}) == 1]
    if same_rollouts:
        out.append(f"every rollout is the same text in {len(same_rollouts)} of {n} group(s) (the policy samples one "
                   "answer: raise trainer.temperature, or check the prompts)")
    rubrics = [tuple(c.text.strip().lower() for c in g.rubric.criteria) for g in flat if g.rubric and g.rubric.criteria]
    if len(rubrics) >= 2 and len(set(rubrics)) == 1:
        out.append("the rubricator wrote the same rubric for every prompt (a small judge copying its template's "
                   "example?)")
    uniform = [g for g in flat if _uniform_verdicts(g)]
    if uniform:
        out.append(f"the verifier gave every answer, teacher answers included, the same verdicts in {len(uniform)} of "
                   f"{n} group(s) (a judge copying the example in its reply format, or not reading the answers)")
    rewards = [r for g in flat for r in g.student_rewards if r is not None]
    if rewards and min(rewards) >= 1.0 - _EPS:
        out.append("every rollout passes every criterion (the rubric is too easy, or the prompts are already solved: "
                   "harder prompts, or scorer.extra_rubric_instructions asking for stricter criteria)")
    elif rewards and max(rewards) <= _EPS:
        out.append("every rollout fails every criterion (the rubric is too hard, or the judge marks everything "
                   "false; check the verdicts in the Rubric inspector)")
    return out


def _uniform_verdicts(group: GroupResult) -> bool:
    rows = [tuple(a.verdicts) for a in group.answers if a.verdicts is not None]
    kinds = {a.kind for a in group.answers if a.verdicts is not None}
    return len(rows) >= 2 and len(set(rows)) == 1 and "teacher" in kinds
