"""What a judge server can take: its context length and parallel slots, and the rejections that say so.

Local servers have limits a hosted API hides: vLLM's ``--max-model-len`` (prompt + ``max_tokens`` must
fit in it), llama.cpp's ``--parallel`` slots (requests beyond them wait in the server's queue, and that
wait counts against the client's timeout), and servers that accept only some ``response_format`` types
(llama-cpp-python rejects ``json_schema`` with HTTP 500 "Input should be 'text' or 'json_object'").

This module holds what is known about each server, per process (:func:`facts_for`): learned when the
client checks the endpoint (vLLM's ``/v1/models`` reports ``max_model_len``; llama.cpp's ``/props``
reports ``total_slots`` and ``n_ctx``) or from the server's own rejections (:func:`parse_context_rejection`
reads vLLM's and llama.cpp's context errors). :func:`fit_max_tokens` sizes a request's ``max_tokens``
to what the context leaves; :func:`is_format_rejection` tells an unsupported ``response_format`` from
other errors.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

#: Never ask for fewer output tokens than this to squeeze a request into the context: a judge reply
#: needs room, and a smaller budget would only turn a clear context error into a cut reply.
MIN_OUTPUT_TOKENS = 64
#: Characters per token assumed when sizing a request before the server has counted it. Lower than
#: the usual ~4 for English prose, because judge prompts are full of numbers, JSON and markup.
CHARS_PER_TOKEN = 3.0
_PER_MESSAGE_TOKENS = 8  # chat-template overhead per message


@dataclass
class ServerFacts:
    """What is known about one server (base URL): ``None`` where it does not say."""

    context_len: int | None = None  # prompt + output tokens one request may use
    slots: int | None = None  # requests it works on at once (llama.cpp --parallel)
    context_source: str | None = None  # where context_len came from: "/v1/models", "/props", "rejection"


_FACTS: dict[str, ServerFacts] = {}
_LOCK = threading.Lock()


def _key(base_url: str) -> str:
    return base_url.rstrip("/")


def facts_for(base_url: str) -> ServerFacts:
    """The facts known about the server at ``base_url`` (a shared, mutable record)."""
    with _LOCK:
        return _FACTS.setdefault(_key(base_url), ServerFacts())


def learn_context(base_url: str, context_len: int | None, source: str) -> None:
    if context_len and context_len > 0:
        facts = facts_for(base_url)
        facts.context_len, facts.context_source = int(context_len), source


def learn_slots(base_url: str, slots: int | None) -> None:
    if slots and slots > 0:
        facts_for(base_url).slots = int(slots)


def forget_server_facts() -> None:
    """Forget every server's facts (tests)."""
    with _LOCK:
        _FACTS.clear()


def facts_from_models(entries: list[Any], model: str) -> int | None:
    """``max_model_len`` of ``model`` from a ``/v1/models`` listing (vLLM adds it to each entry)."""
    for entry in entries:
        data = entry if isinstance(entry, dict) else (getattr(entry, "model_extra", None) or {}) | {
            "id": getattr(entry, "id", None)}
        if data.get("id") == model:
            value = data.get("max_model_len")
            return value if isinstance(value, int) and not isinstance(value, bool) else None
    return None


def facts_from_props(props: Any) -> tuple[int | None, int | None]:
    """(context length, slots) from llama.cpp's ``GET /props``."""
    if not isinstance(props, dict):
        return None, None
    slots = props.get("total_slots")
    settings = props.get("default_generation_settings") or {}
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    as_int = lambda v: v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None  # noqa: E731
    return as_int(n_ctx), as_int(slots)


# ---------------------------------------------------------------------------------------------
# sizing requests

def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """A deliberately high token count of a chat request, for fitting it into a context."""
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    return int(chars / CHARS_PER_TOKEN) + _PER_MESSAGE_TOKENS * len(messages) + 16


def fit_max_tokens(wanted: int | None, context_len: int | None, prompt_tokens: int) -> int | None:
    """The ``max_tokens`` to send: ``wanted``, lowered so that prompt + output fit ``context_len``.

    ``wanted`` None (the server's default) stays None. Returns ``wanted`` unchanged when it fits, when
    the context is unknown, or when what is left would be under :data:`MIN_OUTPUT_TOKENS` (the server
    then rejects the request, with a message that says the prompt is too long).
    """
    if not wanted or not context_len:
        return wanted
    room = context_len - prompt_tokens
    if wanted <= room:
        return wanted
    return room if room >= MIN_OUTPUT_TOKENS else wanted


# ---------------------------------------------------------------------------------------------
# reading rejections

@dataclass
class ContextRejection:
    """A server's "does not fit the context" rejection, with the numbers it gave."""

    kind: str  # "output_over_context": max_tokens alone exceeds it; "too_long": prompt (+ output) does not fit
    context_len: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


_OUTPUT_OVER_RE = re.compile(r"max_(?:completion_)?tokens'?\s*=?\s*(\d+)\s+cannot be greater than\s+"
                             r"max_model_len\s*=\s*(?:max_total_tokens\s*=\s*)?(\d+)", re.IGNORECASE)
_TOO_LARGE_RE = re.compile(r"max_(?:completion_)?tokens'? is too large:\s*(\d+)", re.IGNORECASE)
_CONTEXT_RE = re.compile(r"maximum context length (?:is|of)\s+(\d+)", re.IGNORECASE)
_INPUT_RES = (re.compile(r"(\d+) in the messages", re.IGNORECASE),
              re.compile(r"prompt contains at least (\d+) input tokens", re.IGNORECASE),
              re.compile(r"request has (\d+) input tokens", re.IGNORECASE),
              re.compile(r"messages resulted in (\d+) tokens", re.IGNORECASE))
_OUTPUT_RES = (re.compile(r"(\d+) in the completion", re.IGNORECASE),
               re.compile(r"requested (\d+) output tokens", re.IGNORECASE))
_TOO_LONG_WORDS = ("exceeds the available context size", "context length", "context window",
                   "prompt is too long", "too many tokens", "maximum model length", "context_length_exceeded")


def _first_int(patterns: tuple[re.Pattern[str], ...], text: str) -> int | None:
    for pat in patterns:
        m = pat.search(text)
        if m:
            return int(m.group(1))
    return None


def parse_context_rejection(message: str, body: Any = None) -> ContextRejection | None:
    """The context rejection in a 400's message (vLLM, llama.cpp, OpenAI wording), or None."""
    text = message or ""
    m = _OUTPUT_OVER_RE.search(text)
    if m:
        return ContextRejection("output_over_context", context_len=int(m.group(2)), output_tokens=int(m.group(1)))
    ctx = _CONTEXT_RE.search(text)
    details = body if isinstance(body, dict) else {}
    n_ctx = details.get("n_ctx") if isinstance(details.get("n_ctx"), int) else None  # llama.cpp
    n_prompt = details.get("n_prompt_tokens") if isinstance(details.get("n_prompt_tokens"), int) else None
    if ctx is None and n_ctx is None and not any(w in text.lower() for w in _TOO_LONG_WORDS):
        return None
    limit = int(ctx.group(1)) if ctx else n_ctx
    inp = _first_int(_INPUT_RES, text) or n_prompt
    out = _first_int(_OUTPUT_RES, text)
    large = _TOO_LARGE_RE.search(text)
    if large:
        out = int(large.group(1))
    if out is not None and limit is not None and out >= limit:
        return ContextRejection("output_over_context", context_len=limit, input_tokens=inp, output_tokens=out)
    return ContextRejection("too_long", context_len=limit, input_tokens=inp, output_tokens=out)


_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "json schema", "schema", "grammar",
                 "guided", "structured output", "text.format", "'text'")


def is_format_rejection(status: int | None, message: str) -> bool:
    """Whether an HTTP 400/422/500 rejects the structured-output request itself (an unsupported
    ``response_format`` or schema), so asking again with a simpler format may work."""
    if status not in (400, 422, 500):
        return False
    low = (message or "").lower()
    return any(w in low for w in _FORMAT_WORDS)


# ---------------------------------------------------------------------------------------------
# settings for a server of a given context (judge serve prints them)

#: Tokens of one verifier answer entry with 12 criteria ({"answer_index": 1, "judgement": [12 x
#: true/false], "final_score": 17}), and of a whole 12-criterion rubric, as small tokenizers count them.
_VERIFIER_ENTRY_TOKENS = 48
_CRITERION_TOKENS = 55  # one rubric criterion in the reply
MIN_ANSWER_CHARS = 200  # below this an answer is mostly its truncation marker


@dataclass
class ContextPlan:
    """Judge settings that fit a server's context: what ``judge serve`` prints for the run config."""

    context_len: int
    max_tokens: int  # per reply: a rubric or a verifier chunk fits in it
    verifier_chunk_size: int  # answers per verifier call whose reply fits max_tokens
    answer_char_budget: int  # characters per answer so the fullest prompt fits beside max_tokens
    max_criteria: int  # criteria per rubric whose reply fits max_tokens
    answers_per_prompt: int  # what the budget is sized for (the rubricator sees k + rollouts answers)
    too_small: bool  # the budget came out under MIN_ANSWER_CHARS: use a longer context


def plan_for_context(context_len: int, *, prompt_overhead_chars: int, answers_per_prompt: int,
                     default_chunk: int = 16, default_budget: int = 6000, default_max_criteria: int = 12,
                     min_criteria: int = 4) -> ContextPlan:
    """Settings for a server with ``context_len`` tokens: ``max_tokens`` a quarter of the context (at
    most 4096, the judge.<role>.max_tokens default, room for a reasoning model's thinking; 1024 holds
    a 12-criterion rubric or 16 verifier entries), a verifier chunk whose reply fits it, and an
    ``answer_char_budget`` that lets ``answers_per_prompt`` answers plus the template and question
    (``prompt_overhead_chars``) fit in what is left."""
    max_tokens = max(MIN_OUTPUT_TOKENS * 4, min(4096, context_len // 4))
    max_tokens = max(MIN_OUTPUT_TOKENS, min(max_tokens, context_len // 2))
    chunk = max(1, min(default_chunk, int(max_tokens * 0.8) // _VERIFIER_ENTRY_TOKENS))
    answers = max(answers_per_prompt, chunk)
    room = context_len - max_tokens - int(prompt_overhead_chars / CHARS_PER_TOKEN) - 64
    budget = int(max(0, room) * CHARS_PER_TOKEN / answers) // 50 * 50
    budget = min(default_budget, budget)
    criteria = max(min_criteria, min(default_max_criteria, (max_tokens - 60) // _CRITERION_TOKENS))
    return ContextPlan(context_len=context_len, max_tokens=max_tokens, verifier_chunk_size=chunk,
                       answer_char_budget=max(budget, 50), max_criteria=criteria, answers_per_prompt=answers,
                       too_small=budget < MIN_ANSWER_CHARS)
