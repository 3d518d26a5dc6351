"""The LLM judge: rubricator, verifier and scalar judge behind OpenAI-compatible endpoints.

Each call renders the role's *current* template (``templates.current(role)``, so a live-edited
template takes effect from the next group on), sends it through :class:`JudgeClient`, and parses the
reply with :mod:`engine.judging.parsing`. Each request carries a JSON schema of the exact reply shape
(:mod:`engine.judging.schemas`; sent with ``response_format=json_schema``). A reply that fails to
parse or validate is **re-asked**, up to ``judge.reask_attempts`` times: the original prompt, a short
excerpt of the rejected reply and a user turn that states the exact problem and asks for the corrected
JSON only (never the whole reply, so re-asks do not grow the prompt). A reply cut at ``max_tokens``
(``finish_reason`` "length") says so, in the re-ask and in the failure, naming the setting to change.

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

from engine.errors import one_line

from engine.config import Config, EndpointConfig
from engine.errors import UserError
from engine.judging.client import Completion, JudgeCallError, JudgeClient
from engine.judging.protocol import JudgeStageError
from engine.templates.static import StaticTemplates
from engine.judging.parsing import (ReplyFormatError, example_criteria, parse_rubric, parse_scalar_batch,
                                    parse_verifier)
from engine.judging.schemas import rubric_schema, scalar_schema, verifier_schema
from engine.judging.server_limits import facts_for
from engine.types import JudgeCall, Rubric

T = TypeVar("T")

REASK_MESSAGE = (
    "Your reply could not be used: {error}.\n"
    "Reply again with the corrected JSON object only: no explanations, no code fences, no other text."
)
REASK_CUT_MESSAGE = (
    "Your reply was cut off at the output limit of {limit} before the JSON object was complete "
    "({error}).\n"
    "Reply again with the complete JSON object only, as short as it can be: no explanations, no code "
    "fences, no other text."
)
#: A re-ask shows the model this much of its rejected reply (start and end), never the whole reply:
#: a cut reply echoed back in full would add max_tokens to the prompt with every re-ask until the
#: server's context overflows.
EXCERPT_CHARS = 400
#: The validation error quoted in a re-ask is cut to this many characters.
_ERROR_CHARS = 800


def reply_excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """At most ``limit`` characters of a rejected reply: its start and end, with the cut marked."""
    if len(text) <= limit:
        return text
    head, tail = (limit * 3) // 4, limit // 4
    return f"{text[:head]}\n[... {len(text) - head - tail} characters left out ...]\n{text[-tail:]}"


def _config_role(role: str) -> str:
    """The judge.<role> section whose settings a role's requests use (the scalar judge uses the verifier's)."""
    return "verifier" if role == "scalar_judge" else role


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
        self._examples: dict[str, set[str]] = {}  # template sha -> its example rubric's criterion texts
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
                            extra_rubric_instructions=s.extra_rubric_instructions,
                            min_criteria=s.min_criteria, max_criteria=s.max_criteria)
        examples = self._example_criteria(tpl)
        return await self._ask("rubricator", "rubricator", prompt, tpl.sha256,
                               rubric_schema(s.min_criteria, s.max_criteria),
                               lambda text: parse_rubric(text, min_criteria=s.min_criteria,
                                                         max_criteria=s.max_criteria, example_texts=examples))

    async def verify(self, question: str, rubric: Rubric,
                     answers: list[str]) -> tuple[list[list[bool]], list[float | None], list[JudgeCall]]:
        if not answers:
            return [], [], []
        tpl = self._template("verifier", "verifier")
        n, m = len(answers), len(rubric.criteria)
        prompt = tpl.render(question=question, rubrics=rubric, answers=list(answers),
                            extra_scoring_instructions=self.cfg.scorer.extra_scoring_instructions,
                            n_answers=n, n_criteria=m)
        parsed, calls = await self._ask("verifier", "verifier", prompt, tpl.sha256, verifier_schema(n, m),
                                        lambda text: parse_verifier(text, n_answers=n, n_criteria=m))
        return [v for v, _ in parsed], [score for _, score in parsed], calls

    async def scalar_score(self, question: str, answers: list[str]) -> tuple[list[float], list[JudgeCall]]:
        if not answers:
            return [], []
        tpl = self._template("scalar_judge", "verifier")
        n = len(answers)
        prompt = tpl.render(question=question, answers=list(answers),
                            extra_scoring_instructions=self.cfg.scorer.extra_scoring_instructions, n_answers=n)
        return await self._ask("scalar_judge", "verifier", prompt, tpl.sha256, scalar_schema(n),
                               lambda text: parse_scalar_batch(text, n_answers=n))

    # -- internals -------------------------------------------------------------------------------

    def _template(self, role: str, stage: str):
        try:
            return self.templates.current(role)
        except UserError as e:
            raise JudgeStageError(stage, f"no usable {role} template: {e}") from None

    def _example_criteria(self, tpl) -> set[str]:
        """The criterion texts of the template's own example rubric (cached per template version)."""
        if tpl.sha256 not in self._examples:
            self._examples[tpl.sha256] = example_criteria(tpl.literal_text)
        return self._examples[tpl.sha256]

    async def _ask(self, role: str, stage: str, prompt: str, template_sha: str, schema: dict[str, Any],
                   parse: Callable[[str], T]) -> tuple[T, list[JudgeCall]]:
        """Send the prompt; re-ask with the validation error until the reply parses or attempts run out.

        A re-ask is the original prompt, a short excerpt of the rejected reply (:func:`reply_excerpt`)
        and the error, never the whole reply nor earlier re-asks, so its size stays within the first
        request's plus about a thousand characters. A reply cut at max_tokens (finish_reason "length")
        says so, in the re-ask and in the failure, with the settings that fix it.
        """
        client = self.clients[role]
        first: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
        messages = first
        calls: list[JudgeCall] = []
        turns = 1 + max(0, self.cfg.judge.reask_attempts)
        last_error = ""
        cut_limit: str | None = None  # the output limit a reply hit, when one did
        cut_at: int | None = None  # the max_tokens that reply was sent with
        for _ in range(turns):
            try:
                comp = await client.complete(messages, json_mode=True, schema=schema)
            except JudgeCallError as e:
                calls.append(self._failed_call(client, role, e, template_sha))
                raise JudgeStageError(stage, str(e), calls) from None
            try:
                result = parse(comp.text)
            except ReplyFormatError as e:
                error = one_line(str(e).rstrip("."), _ERROR_CHARS)
                if comp.finish_reason == "length":
                    cut_limit = f"max_tokens={comp.max_tokens}" if comp.max_tokens else "the server's output limit"
                    cut_at = comp.max_tokens
                    last_error = f"the reply hit {cut_limit} and was cut off ({error})"
                    reask = REASK_CUT_MESSAGE.format(limit=f"{comp.max_tokens} tokens" if comp.max_tokens
                                                     else "tokens", error=error)
                else:
                    last_error = error
                    reask = REASK_MESSAGE.format(error=error)
                calls.append(self._call(client, role, comp, template_sha, status="error",
                                        error_class="ReplyFormatError", error=last_error))
                messages = first + [{"role": "assistant", "content": reply_excerpt(comp.text)},
                                    {"role": "user", "content": reask}]
                continue
            calls.append(self._call(client, role, comp, template_sha))
            return result, calls
        cause = f"the {role} reply was still invalid after {turns} attempt(s): {last_error}"
        if cut_limit is not None:
            cause += "; " + self._cut_fix(role, client, cut_at)
        raise JudgeStageError(stage, cause, calls)

    def _cut_fix(self, role: str, client: JudgeClient, sent: int | None) -> str:
        """What to change when replies keep hitting max_tokens (``sent``: the max_tokens of the last one)."""
        section = _config_role(role)
        s = self.cfg.scorer
        mt = client.endpoint.max_tokens
        fewer = (f"scorer.verifier_chunk_size (now {s.verifier_chunk_size}) so each call judges fewer answers"
                 if role in ("verifier", "scalar_judge") else f"scorer.max_criteria (now {s.max_criteria})")
        if sent and mt and sent < mt:  # the server's context, not max_tokens, set the limit
            context = facts_for(client.base_url).context_len
            fix = (f"fix: the server's context ({context or '?'} tokens) left only {sent} tokens for the reply "
                   f"after the prompt (judge.{section}.max_tokens is {mt}): lower {fewer}, or "
                   f"scorer.answer_char_budget (now {s.answer_char_budget}), or start the server with a larger "
                   "--max-model-len")
        else:
            fix = (f"fix: raise judge.{section}.max_tokens" + (f" (now {mt})" if mt else " (not set: the server's "
                   "default)") + f", or lower {fewer}")
        if client.endpoint.response_format != "json_schema":
            fix += (f"; with judge.{section}.response_format=json_schema a server with guided decoding (vLLM, "
                    "llama.cpp) can only write replies of the right shape")
        return fix

    @staticmethod
    def _call(client: JudgeClient, role: str, comp: Completion, template_sha: str, *, status: str = "ok",
              error_class: str | None = None, error: str | None = None) -> JudgeCall:
        return JudgeCall(role=role, model=comp.model, status=status, latency_s=comp.latency_s,  # type: ignore[arg-type]
                         attempts=comp.attempts, prompt_tokens=comp.prompt_tokens,
                         completion_tokens=comp.completion_tokens, error_class=error_class, error=error,
                         raw_reply=comp.text, template_sha=template_sha, request_sha=comp.request_sha,
                         endpoint=client.url, finish_reason=comp.finish_reason, response_format=comp.response_format,
                         cached_prompt_tokens=comp.cached_prompt_tokens)

    @staticmethod
    def _failed_call(client: JudgeClient, role: str, e: JudgeCallError, template_sha: str) -> JudgeCall:
        return JudgeCall(role=role, model=e.model or (client.endpoint.model or ""), status="error",  # type: ignore[arg-type]
                         latency_s=e.latency_s, attempts=max(1, e.attempts), error_class=f"JudgeError:{e.kind}",
                         error=str(e), template_sha=template_sha, endpoint=client.url)
