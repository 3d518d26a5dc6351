"""The LLM judge: rubricator, verifier and scalar judge behind OpenAI-compatible endpoints.

Each call renders the role's *current* template (``templates.current(role)``, so a live-edited
template takes effect from the next group on), sends it through :class:`JudgeClient`, and parses the
reply with :mod:`engine.judging.parsing`. A reply that fails to parse or validate is **re-asked**: the
conversation continues with the model's reply and a user turn that states the exact problem and asks
for the corrected JSON only, up to ``judge.reask_attempts`` times.

Every model turn becomes one :class:`~engine.types.JudgeCall` (raw reply, tokens, latency, HTTP
attempts including the SDK's transport retries); a turn whose reply was rejected has
``status="error"``, ``error_class="ReplyFormatError"`` and the validation message. The verifier's
self-reported ``final_score`` is returned for the record and never used for rewards.

The scalar judge (T-Judge baseline) is the teacher model (``judge.teacher``: model, URL, key) with the
verifier's judging settings (temperature, max tokens, output format); without a teacher model it is
the verifier.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, TypeVar

from engine.config import Config, EndpointConfig
from engine.errors import UserError
from engine.judging.client import Completion, JudgeCallError, JudgeClient
from engine.judging.protocol import JudgeStageError
from engine.templates.static import StaticTemplates
from engine.judging.parsing import ReplyFormatError, parse_rubric, parse_scalar_batch, parse_verifier
from engine.types import JudgeCall, Rubric

T = TypeVar("T")

REASK_MESSAGE = (
    "Your reply could not be used: {error}.\n"
    "Reply again with the corrected JSON object only: no explanations, no code fences, no other text."
)
#: The previous reply is echoed back in a re-ask; keep at most this many characters of it.
_ECHO_LIMIT = 20000

RUBRIC_JSON_SCHEMA: dict[str, Any] = {
    "title": "ropd_rubric",
    "type": "object",
    "properties": {
        "schema_version": {"type": "string"},
        "rubrics": {"type": "array", "items": {
            "type": "object",
            "properties": {"criterion_id": {"type": "string"}, "category": {"type": "string"},
                           "criterion": {"type": "string"}, "points": {"type": "integer", "minimum": 1, "maximum": 5}},
            "required": ["criterion_id", "category", "criterion", "points"]}},
        "maximum_score": {"type": "integer"},
    },
    "required": ["rubrics"],
}
VERIFIER_JSON_SCHEMA: dict[str, Any] = {
    "title": "ropd_batch_verifier",
    "type": "object",
    "properties": {
        "schema_version": {"type": "string"},
        "answers": {"type": "array", "items": {
            "type": "object",
            "properties": {"answer_index": {"type": "integer"},
                           "judgement": {"type": "array", "items": {"type": "boolean"}},
                           "final_score": {"type": "number"}},
            "required": ["answer_index", "judgement"]}},
    },
    "required": ["answers"],
}
SCALAR_JSON_SCHEMA: dict[str, Any] = {
    "title": "ropd_scalar_judge",
    "type": "object",
    "properties": {
        "schema_version": {"type": "string"},
        "answers": {"type": "array", "items": {
            "type": "object",
            "properties": {"answer_index": {"type": "integer"}, "score": {"type": "number", "minimum": 0, "maximum": 10}},
            "required": ["answer_index", "score"]}},
    },
    "required": ["answers"],
}


def scalar_endpoint(cfg: Config) -> EndpointConfig:
    """The teacher acts as the scalar judge when it has a model (its model, URL and key, with the
    verifier's judging settings: temperature, max tokens, output format); else the verifier's endpoint."""
    t, v = cfg.judge.teacher, cfg.judge.verifier
    if not t.model:
        return v
    return dataclasses.replace(t, temperature=v.temperature, max_tokens=v.max_tokens,
                               response_format=v.response_format, reasoning_effort=t.reasoning_effort or v.reasoning_effort)


class LLMJudge:
    """Implements the Judge protocol with LLM calls."""

    kind = "llm"

    def __init__(self, cfg: Config, templates=None):
        self.cfg = cfg
        self.templates = templates if templates is not None else StaticTemplates(cfg)
        j = cfg.judge
        self.clients: dict[str, JudgeClient] = {
            "rubricator": JudgeClient(j.rubricator, j, "rubricator"),
            "verifier": JudgeClient(j.verifier, j, "verifier"),
            "scalar_judge": JudgeClient(scalar_endpoint(cfg), j, "scalar_judge"),
        }

    async def preflight(self) -> list[dict[str, Any]]:
        """Check every endpoint the configured reward mode needs (fails fast with JudgeError)."""
        roles = ["scalar_judge"] if self.cfg.scorer.reward_mode == "scalar_judge" else ["rubricator", "verifier"]
        seen: dict[tuple[str, str | None], dict[str, Any]] = {}
        for role in roles:
            c = self.clients[role]
            key = (c.base_url, c.endpoint.model)
            if key not in seen:
                seen[key] = await c.preflight()
        return list(seen.values())

    # -- the protocol ----------------------------------------------------------------------------

    async def rubricate(self, question: str, teacher_answers: list[str], student_answers: list[str], *,
                        ground_truth: str | None = None) -> tuple[Rubric, list[JudgeCall]]:
        # ground_truth is not shown to the LLM rubricator: the rubric comes from the teacher/student contrast.
        s = self.cfg.scorer
        tpl = self._template("rubricator", "rubricator")
        prompt = tpl.render(question=question, teacher_response=list(teacher_answers),
                            student_response=list(student_answers),
                            extra_rubric_instructions=s.extra_rubric_instructions)
        return await self._ask("rubricator", "rubricator", prompt, tpl.sha256, RUBRIC_JSON_SCHEMA,
                               lambda text: parse_rubric(text, min_criteria=s.min_criteria,
                                                         max_criteria=s.max_criteria))

    async def verify(self, question: str, rubric: Rubric,
                     answers: list[str]) -> tuple[list[list[bool]], list[float | None], list[JudgeCall]]:
        if not answers:
            return [], [], []
        tpl = self._template("verifier", "verifier")
        prompt = tpl.render(question=question, rubrics=rubric, answers=list(answers),
                            extra_scoring_instructions=self.cfg.scorer.extra_scoring_instructions)
        n, m = len(answers), len(rubric.criteria)
        parsed, calls = await self._ask("verifier", "verifier", prompt, tpl.sha256, VERIFIER_JSON_SCHEMA,
                                        lambda text: parse_verifier(text, n_answers=n, n_criteria=m))
        return [v for v, _ in parsed], [score for _, score in parsed], calls

    async def scalar_score(self, question: str, answers: list[str]) -> tuple[list[float], list[JudgeCall]]:
        if not answers:
            return [], []
        tpl = self._template("scalar_judge", "verifier")
        prompt = tpl.render(question=question, answers=list(answers),
                            extra_scoring_instructions=self.cfg.scorer.extra_scoring_instructions)
        n = len(answers)
        return await self._ask("scalar_judge", "verifier", prompt, tpl.sha256, SCALAR_JSON_SCHEMA,
                               lambda text: parse_scalar_batch(text, n_answers=n))

    # -- internals -------------------------------------------------------------------------------

    def _template(self, role: str, stage: str):
        try:
            return self.templates.current(role)
        except UserError as e:
            raise JudgeStageError(stage, f"no usable {role} template: {e}") from None

    async def _ask(self, role: str, stage: str, prompt: str, template_sha: str, schema: dict[str, Any],
                   parse: Callable[[str], T]) -> tuple[T, list[JudgeCall]]:
        """Send the prompt; re-ask with the validation error until the reply parses or attempts run out."""
        client = self.clients[role]
        messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        calls: list[JudgeCall] = []
        turns = 1 + max(0, self.cfg.judge.reask_attempts)
        last_error = ""
        for _ in range(turns):
            try:
                comp = await client.complete(messages, json_mode=True, schema=schema)
            except JudgeCallError as e:
                calls.append(self._failed_call(client, role, e, template_sha))
                raise JudgeStageError(stage, str(e), calls) from None
            try:
                result = parse(comp.text)
            except ReplyFormatError as e:
                last_error = str(e)
                calls.append(self._call(client, role, comp, template_sha, status="error",
                                        error_class="ReplyFormatError", error=last_error))
                echo = comp.text if len(comp.text) <= _ECHO_LIMIT else comp.text[-_ECHO_LIMIT:]
                messages = messages + [{"role": "assistant", "content": echo},
                                       {"role": "user", "content": REASK_MESSAGE.format(error=last_error.rstrip("."))}]
                continue
            calls.append(self._call(client, role, comp, template_sha))
            return result, calls
        raise JudgeStageError(stage, f"the {role} reply was still invalid after {turns} attempt(s): {last_error}",
                              calls)

    @staticmethod
    def _call(client: JudgeClient, role: str, comp: Completion, template_sha: str, *, status: str = "ok",
              error_class: str | None = None, error: str | None = None) -> JudgeCall:
        return JudgeCall(role=role, model=comp.model, status=status, latency_s=comp.latency_s,  # type: ignore[arg-type]
                         attempts=comp.attempts, prompt_tokens=comp.prompt_tokens,
                         completion_tokens=comp.completion_tokens, error_class=error_class, error=error,
                         raw_reply=comp.text, template_sha=template_sha, request_sha=comp.request_sha,
                         endpoint=client.url, cached_prompt_tokens=comp.cached_prompt_tokens)

    @staticmethod
    def _failed_call(client: JudgeClient, role: str, e: JudgeCallError, template_sha: str) -> JudgeCall:
        return JudgeCall(role=role, model=e.model or (client.endpoint.model or ""), status="error",  # type: ignore[arg-type]
                         latency_s=e.latency_s, attempts=max(1, e.attempts), error_class=f"JudgeError:{e.kind}",
                         error=str(e), template_sha=template_sha, endpoint=client.url)
