"""Picking a judge: the offline judge when no LLM judge is configured, else the LLM judge."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.judging.protocol import Judge

if TYPE_CHECKING:  # pragma: no cover
    from engine.config import Config


def make_judge(cfg: "Config", templates=None) -> Judge:
    """The offline judge when no LLM judge is configured, else the LLM judge (with ``templates`` or the config's)."""
    if not cfg.judge_is_llm():
        from engine.judging.offline import OfflineJudge

        return OfflineJudge(cfg)
    from engine.judging.llm import LLMJudge
    from engine.templates.static import StaticTemplates

    return LLMJudge(cfg, templates if templates is not None else StaticTemplates(cfg))
