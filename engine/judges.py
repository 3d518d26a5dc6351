"""The Judge protocol the scorer talks to, its stage error, and the factory that picks a judge.

Two implementations: :class:`engine.offline_judge.OfflineJudge` (deterministic, no network; the
embedded default and the tests' stand-in) and :class:`engine.llm_judge.LLMJudge` (rubricator,
verifier and scalar judge behind OpenAI-compatible endpoints). :func:`make_judge` chooses by
``cfg.judge_is_llm()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Protocol, runtime_checkable

from .errors import JudgeError
from .types import JudgeCall, Rubric

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config
    from .templates import Template


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


class StaticTemplates:
    """The configured templates (``cfg.templates``), loaded once: the fallback when no live TemplateSet is given.

    Anything with ``.current(role) -> Template`` can replace it (G's TemplateSet reloads edits live).
    """

    def __init__(self, cfg: "Config"):
        self.cfg = cfg
        self._cache: dict[str, "Template"] = {}

    def current(self, role: str) -> "Template":
        tpl = self._cache.get(role)
        if tpl is None:
            from .templates import Template

            path = getattr(self.cfg.templates, role, None)
            tpl = Template.load(path, role) if path else Template.default(role)
            self._cache[role] = tpl
        return tpl

    def versions(self) -> dict[str, str]:
        return {role: t.sha256 for role, t in self._cache.items()}


def make_judge(cfg: "Config", templates=None) -> Judge:
    """The offline judge when no LLM judge is configured, else the LLM judge (with ``templates`` or the config's)."""
    if not cfg.judge_is_llm():
        from .offline_judge import OfflineJudge

        return OfflineJudge(cfg)
    from .llm_judge import LLMJudge

    return LLMJudge(cfg, templates if templates is not None else StaticTemplates(cfg))
