"""The Judge protocol the scorer talks to, and its stage error. Imports nothing concrete.

Two implementations: :class:`engine.judging.offline.OfflineJudge` (deterministic, no network; the
embedded default and the tests' stand-in) and :class:`engine.judging.llm.LLMJudge` (rubricator,
verifier and scalar judge behind OpenAI-compatible endpoints).
:func:`engine.judging.factory.make_judge` chooses by ``cfg.judge_is_llm()``.
"""

from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

from engine.errors import JudgeError
from engine.types import JudgeCall, Rubric



@runtime_checkable
class Judge(Protocol):
    """What the scorer needs from a judge. All methods are coroutines and raise JudgeStageError."""

    kind: str  # "offline" | "llm"

    async def rubricate(self, question: str, teacher_answers: list[str], student_answers: list[str], *,
                        ground_truth: str | None = None) -> tuple[Rubric, list[JudgeCall]]:
        """One rubric shared by every answer to ``question``, induced from teacher vs student answers."""
        ...

    async def verify(self, question: str, rubric: Rubric,
                     answers: list[str]) -> tuple[list[list[bool]], list[float | None], list[JudgeCall]]:
        """Per answer: one verdict per criterion (rubric order), and the judge's self-reported score."""
        ...

    async def scalar_score(self, question: str, answers: list[str]) -> tuple[list[float], list[JudgeCall]]:
        """Per answer: a 0-10 score (the T-Judge baseline)."""
        ...


class JudgeStageError(JudgeError):
    """A judge stage (teacher, rubricator, verifier, scorer) failed for good; carries its JudgeCalls."""

    def __init__(self, stage: str, cause: "str | BaseException", calls: Iterable[JudgeCall] = ()):
        cause = cause if isinstance(cause, str) else (str(cause) or type(cause).__name__)
        super().__init__(f"{stage} failed: {cause}")
        self.stage = stage
        self.cause = cause
        self.calls: list[JudgeCall] = list(calls)
