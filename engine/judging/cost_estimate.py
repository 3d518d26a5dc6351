"""An estimate of the judge cost of a run's first step, before it starts (the preflight prints it).

Method, deliberately simple and stated as such to the user:

* the step's batch: ``trainer.prompts_per_step`` x ``trainer.rollouts`` (embedded) or verl's
  ``data.train_batch_size`` x ``actor_rollout_ref.rollout.n`` (the Hydra config plus
  ``verl.overrides``); the first prompts of the task;
* every judge request of one group is rendered dry with the configured templates
  (:mod:`engine.templates.render`), exactly as the scorer would send it: the question, the teacher
  answers from the teacher index (when it exists yet), student answers as long as the policy may write
  (``max_new_tokens`` tokens at 4 characters a token, cut to ``scorer.answer_char_budget``), and a
  rubric of ``scorer.max_criteria`` criteria of ~100 characters for the verifier;
* replies: a rubric of ``max_criteria`` criteria, one verdict list per answer (or a score), capped at
  the role's ``max_tokens``; reasoning tokens, re-asks and prompt-cache discounts are not counted;
* tokens = characters / 4 (the same rule the rate limiter uses before a server reports usage).

So it is an estimate of the order of magnitude (usually high for short answers), not a quote.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.judging.cost import Pricing, format_usd, pricing_from_config
from engine.types import Criterion, Rubric, prompt_text

CHARS_PER_TOKEN = 4
CRITERION_CHARS = 100  # a typical criterion sentence


def approx_tokens(text: str) -> int:
    """Characters / 4: the estimate used throughout (a rough rule, not a tokenizer)."""
    return len(text) // CHARS_PER_TOKEN


@dataclass
class RoleEstimate:
    role: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, prompt: str, reply: str, max_tokens: int | None) -> None:
        self.calls += 1
        self.prompt_tokens += approx_tokens(prompt) + 4  # + the chat message overhead
        out = approx_tokens(reply)
        self.completion_tokens += min(out, max_tokens) if max_tokens else out


@dataclass
class StepEstimate:
    prompts: int
    rollouts: int
    roles: dict[str, RoleEstimate] = field(default_factory=dict)
    usd: float = 0.0
    assumed_teacher: bool = False  # teacher answers were not available: assumed as long as the students'

    def describe(self, steps: int | None = None) -> str:
        parts = [f"{r.role} {r.calls} calls ~{_k(r.prompt_tokens)} in / {_k(r.completion_tokens)} out tokens"
                 for r in self.roles.values() if r.calls]
        text = (f"judge cost, first step (estimate): {format_usd(self.usd)} for {self.prompts} prompts x "
                f"{self.rollouts} rollouts ({'; '.join(parts)})")
        if steps and steps > 1:
            text += f"; {steps} steps ~ {format_usd(self.usd * steps)}"
        return text + (". Tokens estimated as characters / 4 from a dry render of the templates, student answers "
                       "at their maximum length, no re-asks, reasoning tokens or cache discounts"
                       + ("; teacher answers assumed as long as the students'" if self.assumed_teacher else ""))


def _k(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)


def _verl_value(cfg: Config, key: str, default: Any) -> Any:
    """A key of the run's verl Hydra config, with ``verl.overrides`` applied (dotted key)."""
    for ov in reversed(cfg.verl.overrides):
        k, _, v = ov.lstrip("+").partition("=")
        if k.strip() == key:
            try:
                return int(v)
            except ValueError:
                return default
    try:
        import yaml

        from engine.verl_backend.launcher import config_location

        folder, name = config_location(cfg)
        node: Any = yaml.safe_load((Path(folder) / f"{name}.yaml").read_text(encoding="utf-8"))
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return int(node) if isinstance(node, (int, float)) and not isinstance(node, bool) else default
    except Exception:  # noqa: BLE001 - an estimate; the verl preflight reports real config problems
        return default


def batch_shape(cfg: Config) -> tuple[int, int, int]:
    """(prompts per step, rollouts per prompt, max answer tokens) of the configured backend."""
    if cfg.run.backend == "verl":
        return (_verl_value(cfg, "data.train_batch_size", 32), _verl_value(cfg, "actor_rollout_ref.rollout.n", 8),
                _verl_value(cfg, "data.max_response_length", 2048))
    t = cfg.trainer
    return t.prompts_per_step, t.rollouts, t.max_new_tokens


def _teacher_answers(cfg: Config, problems: list[dict[str, Any]]) -> list[list[str]] | None:
    if cfg.scorer.k <= 0:
        return [[] for _ in problems]
    if not cfg.teacher.index or not Path(cfg.teacher.index).exists():
        return None
    from engine.teacher.index import TeacherIndex

    index = TeacherIndex.load(cfg.teacher.index)
    out = []
    for p in problems:
        answers = index.answers_for(p["prompt"])
        if answers is None:
            return None
        out.append(answers[:cfg.scorer.k])
    return out


def estimate_first_step(cfg: Config, problems: list[dict[str, Any]] | None = None,
                        teacher_answers: list[list[str]] | None = None) -> StepEstimate:
    """The estimated judge usage and cost (by :mod:`engine.judging.cost`) of the first training step."""
    from engine.scoring.scorer import REFERENCE_LABEL, chunked, truncate
    from engine.templates.render import Template

    n_prompts, n, max_tokens = batch_shape(cfg)
    if problems is None:
        from engine.trainers.data import load_problems

        problems = load_problems(cfg)
    problems = list(problems)[:n_prompts]
    s = cfg.scorer
    budget = s.answer_char_budget
    student = truncate("x" * (max_tokens * CHARS_PER_TOKEN), budget)[0]
    assumed = False
    if teacher_answers is None:
        teacher_answers = _teacher_answers(cfg, problems)
    if teacher_answers is None:
        assumed = True
        teacher_answers = [[student] * s.k for _ in problems]
    rubric = Rubric([Criterion(id=f"c{i + 1}", text="x" * CRITERION_CHARS, points=3, category="correctness")
                     for i in range(s.max_criteria)])
    rubric_reply = json.dumps({"schema_version": "ropd.rubric.v1", "maximum_score": rubric.total_points,
                               "rubrics": [{"criterion_id": c.id, "category": c.category, "criterion": c.text,
                                            "points": c.points} for c in rubric.criteria]})

    def verdict_reply(k: int) -> str:
        return json.dumps({"schema_version": "ropd.batch_verifier.v2", "answers": [
            {"answer_index": i + 1, "judgement": [True] * len(rubric.criteria), "final_score": 0.5} for i in range(k)]})

    def scalar_reply(k: int) -> str:
        return json.dumps({"schema_version": "ropd.scalar_judge.v1",
                           "answers": [{"answer_index": i + 1, "score": 7} for i in range(k)]})

    j = cfg.judge
    est = StepEstimate(prompts=len(problems), rollouts=n, assumed_teacher=assumed)
    roles = {r: RoleEstimate(r) for r in ("rubricator", "verifier", "scalar_judge")}
    for prob, teachers in zip(problems, teacher_answers):
        question = prompt_text(prob["prompt"])
        teachers = [truncate(str(t), budget)[0] for t in teachers]
        students = [student] * n

        def pool_text(texts: list[str], kind: str) -> list[str]:
            return [REFERENCE_LABEL + t if kind == "teacher" and not s.blind else t for t in texts]

        pool = pool_text(students, "student") + (pool_text(teachers, "teacher") if s.teacher_in_pool else [])
        if s.reward_mode == "scalar_judge":
            tpl = Template.load(cfg.templates.scalar_judge, "scalar_judge")
            for ch in chunked(pool, s.verifier_chunk_size):
                roles["scalar_judge"].add(tpl.render(question=question, answers=ch,
                                                     extra_scoring_instructions=s.extra_scoring_instructions),
                                          scalar_reply(len(ch)), j.verifier.max_tokens)
            continue
        rub = Template.load(cfg.templates.rubricator, "rubricator")
        ver = Template.load(cfg.templates.verifier, "verifier")
        if s.rubric_scope == "pair":
            pairs = [([t], [st], [st] + ([t] if s.teacher_in_pool else [])) for t in teachers for st in students]
        else:
            pairs = [(teachers, students, pool)]
        for t_answers, s_answers, answers in pairs:
            roles["rubricator"].add(rub.render(question=question, teacher_response=t_answers,
                                               student_response=s_answers,
                                               extra_rubric_instructions=s.extra_rubric_instructions),
                                    rubric_reply, j.rubricator.max_tokens)
            for ch in chunked(answers, s.verifier_chunk_size):
                roles["verifier"].add(ver.render(question=question, rubrics=rubric, answers=ch,
                                                 extra_scoring_instructions=s.extra_scoring_instructions),
                                      verdict_reply(len(ch)), j.verifier.max_tokens)
    est.roles = {r: e for r, e in roles.items() if e.calls}
    pricing: Pricing = pricing_from_config(cfg)
    est.usd = pricing.usd((r, e.prompt_tokens, 0, e.completion_tokens) for r, e in est.roles.items())
    return est


def steps_within_budget(step_usd: float, budget_usd: float) -> int:
    """About how many steps of ``step_usd`` the budget pays for."""
    return math.floor(budget_usd / step_usd) if step_usd > 0 else 0
