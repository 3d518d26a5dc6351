"""An OpenAI-compatible judge client: one role (teacher, rubricator, verifier, scalar_judge) at one endpoint.

Built on the openai SDK (``AsyncOpenAI``): chat completions by default, the Responses API with
``judge.api=responses``; any OpenAI-compatible base URL (OpenAI, vLLM, llama.cpp, ...).

What this module adds to the SDK, and what it deliberately leaves to it:

* Transport retries are the SDK's own (``judge.max_retries``): backoff with jitter, honouring
  ``Retry-After``, on 408/409/429/5xx, timeouts and connection errors, never on 400/401/403/404.
  Only the backoff base and cap are configurable (``judge.retry_initial_delay_s`` /
  ``judge.retry_max_delay_s``), so tests and local servers need not wait seconds. A 200 whose body
  is not JSON (a proxy's HTML error page), or JSON that is no reply of the API (``{"detail": "upstream
  busy"}``, never read as an empty reply), is a transient transport error too, retried the same way.
* Bounded concurrency per endpoint: one ``asyncio.Semaphore`` (``judge.concurrency``) shared by every
  client of the same base URL + model in the process (per event loop); a request gives its slot
  back while it sleeps before a retry, so a dying server is discovered by every request at once; plus optional
  requests-per-minute / tokens-per-minute limits (sliding 60 s window).
* A circuit breaker per endpoint (:class:`CircuitBreaker`): a judge that stops answering after the
  preflight (hung, or dead) opens it after ``judge.circuit_breaker_failures`` HTTP requests failed in
  a row with no reply, once the endpoint has been silent for as long as one request's retries wait;
  then every request to it fails at once (kind ``unreachable``, exit 3) instead of each waiting
  ``timeout_s`` x (1 + ``max_retries``). A probe after ``judge.circuit_open_s`` closes it again.
* API keys: the config holds only the NAME of an environment variable (``api_key_env``); the key is
  read from the environment at request time, sent as a bearer header, and never logged, stored or
  shown (error texts are scrubbed). A keyless local server gets a placeholder key.
* Structured output: ``response_format`` json_object (default) or json_schema. A server that rejects
  it (HTTP 400, 422 or 500 with a message about the format or schema; such a 500 is not retried) is
  asked again with the next simpler format, json_schema -> json_object -> none, each step once, and
  the endpoint remembers it for the process; every :class:`Completion` says which format was used.
  The same for ``temperature``, ``reasoning_effort`` and ``max_tokens`` (-> ``max_completion_tokens``)
  on HTTP 400.
* The server's context (:mod:`engine.judging.server_limits`): ``max_model_len`` and llama.cpp's slots
  are read by :meth:`JudgeClient.preflight`, or learned from a context rejection. A request's
  ``max_tokens`` is lowered to what the context leaves after the prompt (once logged per endpoint),
  a rejected one is resent once with a fitting ``max_tokens``, and per-endpoint concurrency never
  exceeds the server's slots. ``finish_reason`` ("length" when the reply hit ``max_tokens``) is kept.
* Failures become :class:`JudgeCallError` (a :class:`~engine.errors.JudgeError`) naming the role,
  the URL, the model and the cause, with a hint: connection refused, 401 (which env var), 404
  (unknown model or a base URL without ``/v1``), 400 (the server's message; for a context rejection
  which setting to change), timeouts (queued behind other requests at the server, or a slow model),
  429/5xx after all retries.
* Every call returns a :class:`Completion` with the text, token usage, latency and HTTP attempts.
* Transport: the SDK's aiohttp backend when installed (``judge.http_backend=auto``; about half the
  client CPU per request of the default httpx one, which matters with 64 requests in flight), or
  ``httpx``. HTTP clients are pooled per event loop and closed when the loop shuts down
  (``asyncio.run``), or explicitly with :func:`aclose_loop_clients`.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import hashlib
import json
import logging
import math
import os
import random
import re
import sys
import time
import weakref
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import openai
from openai import AsyncOpenAI
from openai.types.responses import Response

from engine import progress
from engine.config import EndpointConfig, JudgeConfig
from engine.errors import JudgeError, one_line as _one_line
from engine.judging.server_limits import (MIN_OUTPUT_TOKENS, estimate_prompt_tokens, facts_for, facts_from_models,
                                          facts_from_props, fit_max_tokens, is_format_rejection, learn_context,
                                          learn_slots, parse_context_rejection)

log = logging.getLogger("ropd.judge")

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Sent as the key to servers that need none (vLLM / llama.cpp without --api-key).
PLACEHOLDER_KEY = "sk-no-key-required"
_SDK_INITIAL_RETRY_DELAY = 0.5  # openai._constants.INITIAL_RETRY_DELAY
_PREFLIGHT_TIMEOUT_S = 10.0


@dataclass
class Completion:
    """One successful judge request."""

    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    attempts: int  # HTTP attempts: 1 + the SDK's transport retries (+ resends without unsupported params)
    model: str
    finish_reason: str | None = None  # "stop"; "length" when the reply hit max_tokens (cut off)
    endpoint: str | None = None  # base URL without credentials
    request_sha: str | None = None  # sha256 of the canonical request (model, messages, settings)
    response_format: str | None = None  # the format the reply was asked in: json_schema | json_object | none
    max_tokens: int | None = None  # the max_tokens sent (judge.<role>.max_tokens, or what the context left)
    cached_prompt_tokens: int | None = None  # prompt tokens the server served from its prompt cache


class JudgeCallError(JudgeError):
    """A judge request failed for good (after the SDK's retries). Carries what the call cost."""

    def __init__(self, message: str, *, hint: str | None = None, role: str = "", endpoint: str = "",
                 model: str = "", attempts: int = 0, latency_s: float = 0.0, status_code: int | None = None,
                 kind: str = "error"):
        super().__init__(message, hint=hint)
        self.role = role
        self.endpoint = endpoint
        self.model = model
        self.attempts = attempts
        self.latency_s = latency_s
        self.status_code = status_code
        # connection | timeout | auth | not_found | bad_request | rate_limit | server | config | bad_response
        # | unreachable (the endpoint's circuit breaker is open: it stopped answering)
        self.kind = kind


# ---------------------------------------------------------------------------------------------
# helpers

def display_url(url: str) -> str:
    """A base URL safe to show: no user:password, no query string."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


_KEYLIKE_RE = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|Bearer\s+[A-Za-z0-9_\-.=]{6,})")


def scrub(text: str, *secrets: str | None) -> str:
    """Remove secrets (and anything that looks like a bearer token or an sk- key) from text."""
    for s in secrets:
        if s and len(s) >= 4 and s != PLACEHOLDER_KEY:
            text = text.replace(s, "***")
    return _KEYLIKE_RE.sub(lambda m: "Bearer ***" if m.group(0).startswith("Bearer") else "sk-***", text)


def request_sha(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
                          .encode("utf-8")).hexdigest()


def estimate_tokens(messages: list[dict[str, Any]]) -> int:
    """A rough token count (4 characters per token) for rate limiting before the server reports usage."""
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    return chars // 4 + 4 * len(messages)


def _root_cause(exc: BaseException) -> str:
    """The cause of a connection error in words, e.g. 'connection refused ([Errno 111] ...)'."""
    chain = list(_chain(exc, groups=True))
    for e in chain:
        if isinstance(e, OSError) and e.errno:
            reason = os.strerror(e.errno).lower()
            text = str(e).strip()
            return reason if reason in text.lower() else f"{reason} ({text})"
    for e in chain[1:]:
        text = str(e).strip()
        if text:
            return text
    return str(exc).strip() or type(exc).__name__


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _NotAReply(ValueError):
    """A 200 whose body is JSON but no reply of the API (e.g. a proxy's ``{"detail": "upstream busy"}``):
    retried like a body that is not JSON at all, never read as an empty reply."""


def _chat_reply(data: Any) -> tuple[str, int | None, int | None, str | None]:
    """(text, prompt tokens, completion tokens, finish reason) of a chat-completions JSON body."""
    if not isinstance(data, dict):
        raise ValueError(f"the body is {str(data)[:120]!r}, not a chat-completions JSON object")
    if "choices" not in data:
        raise _NotAReply(f"the JSON body {_one_line(json.dumps(data, default=str), 120)} has no \"choices\"")
    choices = data.get("choices") or []
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # content parts
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    usage = data.get("usage") or {}
    usage = usage if isinstance(usage, dict) else {}
    return (content if isinstance(content, str) else "", _int_or_none(usage.get("prompt_tokens")),
            _int_or_none(usage.get("completion_tokens")), choice.get("finish_reason"))


def _responses_finish(resp: Any) -> str | None:
    """The Responses API's status as a chat finish_reason ("length" for a reply cut at max_output_tokens)."""
    status = getattr(resp, "status", None)
    details = getattr(resp, "incomplete_details", None)
    reason = getattr(details, "reason", None) if details is not None else None
    if status == "incomplete" and reason == "max_output_tokens":
        return "length"
    if status == "completed":
        return "stop"
    return status


def cached_prompt_tokens(usage: Any) -> int | None:
    """Prompt tokens served from the server's prompt cache, where its usage reports them: chat
    ``usage.prompt_tokens_details.cached_tokens``, Responses ``usage.input_tokens_details.cached_tokens``
    (a dict or an SDK object); None when the server does not say."""
    for name in ("prompt_tokens_details", "input_tokens_details"):
        details = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
        if details is None:
            continue
        cached = details.get("cached_tokens") if isinstance(details, dict) else getattr(details, "cached_tokens", None)
        return _int_or_none(cached)
    return None


def _chain(exc: BaseException, *, groups: bool = False):
    """``exc`` and the exceptions behind it (``__cause__`` / ``__context__``, and with ``groups`` the
    members of exception groups), breadth-first, each once, at most 30."""
    todo: list[BaseException] = [exc]
    seen: list[BaseException] = []
    while todo and len(seen) < 30:
        cur = todo.pop(0)
        if any(cur is s for s in seen):
            continue
        seen.append(cur)
        yield cur
        todo += [x for x in (cur.__cause__, cur.__context__) if x is not None]
        if groups:
            todo += list(getattr(cur, "exceptions", None) or [])


def _refused(exc: BaseException) -> bool:
    """Whether a connect failed outright (refused, unreachable, unknown host) rather than timing out.

    The SDK's aiohttp transport reports every connect failure as a ConnectTimeout; the OSError
    underneath tells the truth.
    """
    return any((isinstance(cur, OSError) and cur.errno and cur.errno != errno.ETIMEDOUT)
               or type(cur).__name__ == "ClientConnectorDNSError" for cur in _chain(exc))


#: The current request's [HTTP attempts so far, when the latest attempt started (time.monotonic())].
_ATTEMPTS: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("ropd_judge_attempts", default=None)


def _is_timeout(exc: BaseException) -> bool:
    """Whether a transport error (or one in its chain) is a timeout."""
    return any(isinstance(cur, (TimeoutError, openai.APITimeoutError)) or "Timeout" in type(cur).__name__
               for cur in _chain(exc))


def _failure_words(exc: BaseException | None, status: int | None, elapsed: float, timeout_s: float) -> str:
    """One failed HTTP attempt in a few words, for the circuit breaker's message."""
    if status is not None:
        return f"HTTP {status}"
    if exc is None:
        return "no reply"
    if _refused(exc):
        return f"cannot connect: {_one_line(_root_cause(exc), 160)}"
    if _is_timeout(exc) and elapsed >= 0.9 * timeout_s:  # (aiohttp reports a dropped connection as a timeout)
        return f"no reply within {timeout_s:g} s"
    return f"connection lost: {_one_line(_root_cause(exc), 160)}"


def _transport_failure(e: BaseException) -> bool:
    """Whether a request's final error counts against its endpoint (see :func:`_counts_against_endpoint`);
    a 500 that rejects the response_format is the server's answer, not an outage."""
    if isinstance(e, openai.APIStatusError):
        return _counts_against_endpoint(e.status_code) and not is_format_rejection(
            e.status_code, str(getattr(e, "message", "") or e))
    return isinstance(e, openai.APIConnectionError)  # timeouts included


def _counts_against_endpoint(status: int | None) -> bool:
    """Whether a failed attempt is a transport failure the circuit breaker counts (no HTTP status: a
    timeout or a connection error; 408 or 5xx), rather than a reply from a live server (4xx, 429)."""
    return status is None or status == 408 or status >= 500


class _SDKClient(AsyncOpenAI):
    """AsyncOpenAI with a configurable backoff base and an attempt counter; retry logic is the SDK's."""

    ropd_initial_delay: float = _SDK_INITIAL_RETRY_DELAY
    ropd_max_delay: float = 8.0
    ropd_timeout_s: float = 120.0

    def _calculate_retry_timeout(self, remaining_retries, options, response_headers=None):  # type: ignore[override]
        timeout = super()._calculate_retry_timeout(remaining_retries, options, response_headers)
        retry_after = self._parse_retry_after_header(response_headers)
        if retry_after is not None and math.isfinite(retry_after) and 0 < retry_after <= 120:
            return timeout  # the server said how long to wait: honour it as the SDK does
        scaled = timeout * (self.ropd_initial_delay / _SDK_INITIAL_RETRY_DELAY)
        return max(0.0, min(scaled, self.ropd_max_delay))

    def _should_retry(self, response) -> bool:  # type: ignore[override]
        # A 5xx that rejects the response_format (llama-cpp-python answers json_schema with HTTP 500
        # "Input should be 'text' or 'json_object'") fails the same way every time: hand it straight
        # back, so the client can fall back to a simpler format instead of retrying it.
        if response.status_code >= 500:
            try:
                text = response.text
            except Exception:  # noqa: BLE001 - body not read: let the SDK decide
                text = ""
            if is_format_rejection(500, text):
                return False
        return super()._should_retry(response)

    async def _prepare_request(self, request):  # type: ignore[override]
        await super()._prepare_request(request)
        counter = _ATTEMPTS.get()
        if counter is not None:
            counter[0] += 1
            if len(counter) > 1:
                counter[1] = time.monotonic()

    async def _sleep_for_retry(self, *, retries_taken, max_retries, options, response):  # type: ignore[override]
        # The SDK's own backoff sleep before a transport retry (it runs inside the SDK's except block, so
        # the attempt's error is sys.exc_info()): tell the endpoint's circuit breaker how the attempt
        # failed, count the retry, and sleep without the slot; an open circuit ends the sleep and the
        # request at once (_CircuitOpen).
        breaker = _current_breaker()
        if breaker is not None:
            status = response.status_code if response is not None else None
            if _counts_against_endpoint(status):
                counter = _ATTEMPTS.get()
                started = counter[1] if counter is not None and len(counter) > 1 else time.monotonic()
                breaker.record_failure(_failure_words(sys.exc_info()[1], status, time.monotonic() - started,
                                                      self.ropd_timeout_s))
            else:
                breaker.record_reply()
        remaining = max_retries - retries_taken
        delay = self._calculate_retry_timeout(remaining, options, response.headers if response is not None else None)
        log.debug("%s: retrying in %.2f s (retry %d of %d)", self.base_url, delay, retries_taken + 1, max_retries)
        async with _slot_released():
            if breaker is not None:
                await breaker.sleep(delay)
            else:
                await asyncio.sleep(delay)
        if breaker is not None:
            breaker.check()  # it may have opened while this request waited for its slot again
        prog = progress.current()
        if prog is not None:
            prog.request_retried()


# ---------------------------------------------------------------------------------------------
# the circuit breaker: a judge that stops answering after the preflight is reported in one timeout

class _CircuitOpen(Exception):
    """Ends a request whose endpoint's circuit is open (complete() turns it into a JudgeCallError)."""

    def __init__(self, breaker: "CircuitBreaker"):
        super().__init__("circuit open")
        self.failures = breaker.failures
        self.silent_s = breaker.silent_s()
        self.last = breaker.last_failure
        self.open_s = breaker.open_s


class CircuitBreaker:
    """Per endpoint (base URL + model, one per event loop, with its :class:`EndpointLimiter`).

    Counts the endpoint's HTTP attempts that failed in transport (a timeout, a refused, reset or dropped
    connection, HTTP 408 or 5xx, a 200 whose body is no chat reply) since its last reply; any reply
    (also a 4xx, a 429, or a reply the judge parsing then rejects) resets the count. The circuit
    **opens** when ``threshold`` failures are counted while the endpoint has given no reply for at least
    ``quiet_s``, the time one request's own retries wait (the backoff of judge.max_retries retries): a hiccup
    shorter than that is ridden out by the retries as before, a judge that hangs or died is reported
    after one wave of failures instead of timeout_s x (1 + max_retries) per request. While open, every
    request that is sleeping before a retry or about to start fails at once with a
    ``JudgeCallError(kind="unreachable")``. After ``open_s`` one request is let through as a probe
    (half-open): its first reply closes the circuit, its failure opens it again for ``open_s``.
    A reply to any request still in flight closes it too.
    """

    def __init__(self, threshold: int, open_s: float, quiet_s: float, name: str = ""):
        self.threshold = threshold  # 0: off
        self.open_s = open_s
        self.quiet_s = quiet_s
        self.name = name
        self.failures = 0
        self.last_failure = ""
        self.last_reply = time.monotonic()
        self.state = "closed"  # closed | open | half_open
        self.opened_at = 0.0
        self._opened = asyncio.Event()  # set while not closed: wakes the requests sleeping before a retry

    @classmethod
    def for_endpoint(cls, judge: JudgeConfig, concurrency: int, name: str) -> "CircuitBreaker":
        """The breaker of an endpoint: judge.circuit_breaker_failures (no more than the endpoint's
        concurrency, at least 2), opening only after the endpoint was silent for the backoff of one
        request's retries."""
        n = judge.circuit_breaker_failures
        threshold = min(n, max(2, concurrency)) if n > 0 else 0
        quiet = sum(min(judge.retry_initial_delay_s * 2 ** i, judge.retry_max_delay_s)
                    for i in range(judge.max_retries))
        return cls(threshold, judge.circuit_open_s, quiet, name)

    def silent_s(self) -> float:
        return time.monotonic() - self.last_reply

    def admit(self) -> bool:
        """Before a request: raise :class:`_CircuitOpen` while the circuit is open; once ``open_s`` has
        passed, the first caller is let through as the probe (returns True)."""
        if self.state == "closed":
            return False
        if self.state == "open" and time.monotonic() - self.opened_at >= self.open_s:
            self.state = "half_open"
            log.info("judge endpoint %s: letting one probe request through", self.name)
            return True
        raise _CircuitOpen(self)

    def probe_ended(self) -> None:
        """The probe ended without telling (cancelled): let the next request probe."""
        if self.state == "half_open":
            self.state = "open"
            self.opened_at = time.monotonic() - self.open_s

    def record_failure(self, words: str) -> None:
        self.failures += 1
        self.last_failure = words
        if self.state == "half_open":  # the probe failed: open again for open_s
            self._open()
        elif (self.state == "closed" and self.threshold and self.failures >= self.threshold
              and self.silent_s() >= self.quiet_s):
            self._open()

    def record_reply(self) -> None:
        self.failures = 0
        self.last_reply = time.monotonic()
        if self.state != "closed":
            self.state = "closed"
            self._opened.clear()
            log.info("the judge at %s answered again: its circuit breaker is closed", self.name)

    def _open(self) -> None:
        first = self.state == "closed"
        self.state = "open"
        self.opened_at = time.monotonic()
        self._opened.set()
        if first:
            # INFO: the requests it ends say so (their JudgeCallError, recorded with each call), once per command
            log.info("the judge at %s is not answering: %d requests in a row failed with no reply for %.1f s "
                     "(last: %s); requests to it fail at once until a probe in %g s gets a reply",
                     self.name, self.failures, self.silent_s(), self.last_failure, self.open_s)

    def check(self) -> None:
        """Before a retry: :class:`_CircuitOpen` unless the circuit is closed."""
        if self.state != "closed":
            raise _CircuitOpen(self)

    async def sleep(self, delay: float) -> None:
        """A backoff sleep that ends with :class:`_CircuitOpen` as soon as the circuit opens."""
        self.check()
        try:
            await asyncio.wait_for(self._opened.wait(), max(0.0, delay))
        except asyncio.TimeoutError:
            return
        raise _CircuitOpen(self)


def _current_breaker() -> CircuitBreaker | None:
    """The circuit breaker of the endpoint the current request holds a slot of."""
    held = _SLOT.get()
    return held.limiter.breaker if held is not None else None


# ---------------------------------------------------------------------------------------------
# per-endpoint limits, shared within a process (one set per event loop: asyncio primitives are loop-bound)

class EndpointLimiter:
    """Concurrency and optional RPM/TPM limits for one endpoint (base URL + model)."""

    def __init__(self, concurrency: int, rpm: float | None = None, tpm: float | None = None,
                 breaker: CircuitBreaker | None = None):
        self.concurrency = concurrency
        self.breaker = breaker or CircuitBreaker(0, 0.0, 0.0)
        self.rpm = rpm
        self.tpm = tpm
        self._sem = asyncio.Semaphore(concurrency)
        self._lock = asyncio.Lock()
        self._requests: deque[float] = deque()
        self._tokens: deque[list[float]] = deque()  # [time, tokens]
        self.in_flight = 0
        self.peak_in_flight = 0
        self._active: list[SlotTicket] = []

    async def _wait_for_rate(self, est_tokens: int) -> list[float] | None:
        if not self.rpm and not self.tpm:
            return None
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._requests and now - self._requests[0] >= 60.0:
                    self._requests.popleft()
                while self._tokens and now - self._tokens[0][0] >= 60.0:
                    self._tokens.popleft()
                waits = []
                if self.rpm and len(self._requests) >= self.rpm:
                    waits.append(self._requests[0] + 60.0 - now)
                if self.tpm and self._tokens and sum(t for _, t in self._tokens) + est_tokens > self.tpm:
                    waits.append(self._tokens[0][0] + 60.0 - now)
                if not waits:
                    break
                await asyncio.sleep(max(0.01, min(waits)))
            self._requests.append(now)
            entry = [now, float(est_tokens)]
            self._tokens.append(entry)
            return entry

    @asynccontextmanager
    async def slot(self, est_tokens: int = 0) -> AsyncIterator["SlotTicket"]:
        """Hold one of the endpoint's request slots. The ticket's ``rate`` entry may be corrected with
        the real token count; ``peak_in_flight`` is the most requests in flight while it was held.
        A retrying request gives its slot back while it sleeps before the next attempt
        (:func:`_slot_released`), so it never blocks other requests from reaching, or discovering the
        outage of, the server."""
        ticket = SlotTicket(None)
        held = _Slot(self, ticket)
        await held.acquire()
        token = _SLOT.set(held)
        try:
            ticket.rate = await self._wait_for_rate(est_tokens)
            yield ticket
        finally:
            _SLOT.reset(token)
            held.release()


@dataclass
class SlotTicket:
    rate: list[float] | None
    peak_in_flight: int = 0


class _Slot:
    """One request's hold on an endpoint's semaphore (released and re-acquired around backoff sleeps)."""

    def __init__(self, limiter: EndpointLimiter, ticket: SlotTicket):
        self.limiter = limiter
        self.ticket = ticket
        self.held = False

    async def acquire(self) -> None:
        lim = self.limiter
        await lim._sem.acquire()
        self.held = True
        lim.in_flight += 1
        lim.peak_in_flight = max(lim.peak_in_flight, lim.in_flight)
        lim._active.append(self.ticket)
        for t in lim._active:
            t.peak_in_flight = max(t.peak_in_flight, lim.in_flight)

    def release(self) -> None:
        if self.held:
            self.held = False
            lim = self.limiter
            lim.in_flight -= 1
            lim._active.remove(self.ticket)
            lim._sem.release()


_SLOT: contextvars.ContextVar[_Slot | None] = contextvars.ContextVar("ropd_judge_slot", default=None)


@asynccontextmanager
async def _slot_released() -> AsyncIterator[None]:
    """Give the current request's concurrency slot back for the duration of the block (a backoff sleep)."""
    held = _SLOT.get()
    if held is None or not held.held:
        yield
        return
    held.release()
    try:
        yield
    finally:
        await held.acquire()


class _LoopState:
    def __init__(self) -> None:
        self.limiters: dict[tuple[str, str], EndpointLimiter] = {}
        self.clients: dict[tuple[Any, ...], _SDKClient] = {}
        self.closer: Any = None  # an async generator the loop finalises at shutdown (closes the clients)

    async def close_clients(self) -> None:
        clients, self.clients = list(self.clients.values()), {}
        for client in clients:
            try:
                await client.close()
            except Exception:  # pragma: no cover - best effort on shutdown
                pass


async def _close_at_loop_shutdown(state: _LoopState):
    """Suspended for the loop's lifetime; ``asyncio.run`` finalises async generators before closing the
    loop, which runs the ``finally`` here, so HTTP clients are closed even when callers forget to."""
    try:
        yield
    finally:
        await state.close_clients()
        loop = asyncio.get_running_loop()
        if _LOOPS.get(loop) is state:
            del _LOOPS[loop]  # limiters and clients hold the loop: drop them with it


async def _ensure_closer(state: _LoopState) -> None:
    if state.closer is None:
        state.closer = _close_at_loop_shutdown(state)
        await state.closer.__anext__()


_LOOPS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState]" = weakref.WeakKeyDictionary()
# Parameters an endpoint rejected (HTTP 400), remembered for the process: (base_url, model) -> names.
_UNSUPPORTED: dict[tuple[str, str], set[str]] = {}


def _loop_state() -> _LoopState:
    loop = asyncio.get_running_loop()
    state = _LOOPS.get(loop)
    if state is None:
        state = _LOOPS[loop] = _LoopState()
    return state


def endpoint_limiter(base_url: str, model: str, judge: JudgeConfig) -> EndpointLimiter:
    """The limiter shared by every client of this base URL + model on the running loop. Its concurrency
    is ``judge.concurrency``, or the server's parallel slots when it reported fewer (llama.cpp)."""
    state = _loop_state()
    key = (base_url.rstrip("/"), model)
    lim = state.limiters.get(key)
    if lim is None:
        concurrency = judge.concurrency
        slots = facts_for(base_url).slots
        if slots and slots < concurrency:
            _note_once(("slots", key[0]), "the judge server at %s works on %d request(s) at a time (its parallel "
                       "slots); sending at most that many instead of judge.concurrency=%d, so requests do not "
                       "time out waiting in its queue", display_url(base_url), slots, concurrency)
            concurrency = slots
        name = display_url(base_url) + (f" (model '{model}')" if model else "")
        lim = state.limiters[key] = EndpointLimiter(concurrency, judge.requests_per_minute, judge.tokens_per_minute,
                                                    CircuitBreaker.for_endpoint(judge, concurrency, name))
    return lim


_NOTED: set[tuple[str, ...]] = set()


def _note_once(key: tuple[str, ...], msg: str, *args: Any) -> None:
    """Log a warning once per process per key (e.g. once per endpoint)."""
    if key not in _NOTED:
        _NOTED.add(key)
        log.warning(msg, *args)


async def aclose_loop_clients() -> None:
    """Close the HTTP clients opened on the running loop (call before the loop ends)."""
    loop = asyncio.get_running_loop()
    state = _LOOPS.pop(loop, None)
    if state is None:
        return
    await state.close_clients()
    if state.closer is not None:
        await state.closer.aclose()
        state.closer = None


def forget_unsupported_params() -> None:
    """Forget which endpoints rejected which parameters, and what servers said about their limits (tests)."""
    from engine.judging.server_limits import forget_server_facts

    _UNSUPPORTED.clear()
    _NOTED.clear()
    forget_server_facts()


def _http_client_kwargs(backend: str, timeout: float) -> dict[str, Any]:
    """The SDK's aiohttp transport (its documented option for high concurrency: about half the client
    CPU per request of the default) when asked for or, with "auto", when installed."""
    if backend == "httpx":
        return {}
    try:
        return {"http_client": openai.DefaultAioHttpClient(timeout=timeout)}
    except (RuntimeError, AttributeError, ImportError):
        if backend == "aiohttp":
            raise JudgeCallError("judge.http_backend=aiohttp needs the openai SDK's aiohttp extra",
                                 hint="pip install 'openai[aiohttp]', or set judge.http_backend=httpx",
                                 kind="config") from None
        return {}


# ---------------------------------------------------------------------------------------------
# the client

class JudgeClient:
    """Calls one judge role's model. Cheap to create; HTTP connections are pooled per event loop."""

    def __init__(self, endpoint: EndpointConfig, judge: JudgeConfig, role: str):
        self.endpoint = endpoint
        self.judge = judge
        self.role = role
        self.base_url = (endpoint.base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL).rstrip("/")
        self.url = display_url(self.base_url)

    # -- configuration -------------------------------------------------------------------------

    @property
    def model(self) -> str:
        if not self.endpoint.model:
            env = {"rubricator": "ROPD_RUBRICATOR_MODEL", "verifier": "ROPD_VERIFIER_MODEL",
                   "teacher": "ROPD_TEACHER_MODEL"}.get(self.role)
            raise JudgeCallError(
                f"no model configured for the {self.role} judge at {self.url}",
                hint=f"set judge.{self.role}.model in the config" + (f" or the environment variable {env}" if env else ""),
                role=self.role, endpoint=self.url, kind="config")
        return self.endpoint.model

    def _is_openai(self) -> bool:
        host = urlsplit(self.base_url).hostname or ""
        return host.endswith("openai.com")

    def _api_key(self) -> str:
        """The key, read from the environment now. Missing: a placeholder, except for api.openai.com."""
        name = self.endpoint.api_key_env or "OPENAI_API_KEY"
        key = os.environ.get(name, "").strip()
        if key:
            return key
        if self._is_openai():
            raise JudgeCallError(
                f"no API key for the {self.role} judge at {self.url}: the environment variable {name} is not set",
                hint=f"export {name}=... (judge.{self.role}.api_key_env names the variable), or point "
                f"judge.{self.role}.base_url at your own server",
                role=self.role, endpoint=self.url, model=self.endpoint.model or "", kind="auth")
        return PLACEHOLDER_KEY

    def _sdk(self, *, max_retries: int | None = None, timeout: float | None = None) -> _SDKClient:
        state = _loop_state()
        retries = self.judge.max_retries if max_retries is None else max_retries
        tmo = self.endpoint.timeout_s if timeout is None else timeout
        key = (self.base_url, self.endpoint.api_key_env, retries, tmo,
               self.judge.retry_initial_delay_s, self.judge.retry_max_delay_s)
        client = state.clients.get(key)
        if client is None:
            async def api_key() -> str:
                return self._api_key()

            client = _SDKClient(api_key=api_key, base_url=self.base_url, max_retries=retries, timeout=tmo,
                                **_http_client_kwargs(self.judge.http_backend, tmo))
            client.ropd_initial_delay = self.judge.retry_initial_delay_s
            client.ropd_max_delay = self.judge.retry_max_delay_s
            client.ropd_timeout_s = tmo
            state.clients[key] = client
        return client

    # -- request building ----------------------------------------------------------------------

    def _response_format_kind(self, json_mode: bool, schema: dict | None, unsupported: set[str]) -> str | None:
        if not json_mode or self.endpoint.response_format == "none" or "response_format" in unsupported:
            return None
        if self.endpoint.response_format == "json_schema" and schema is not None and "json_schema" not in unsupported:
            return "json_schema"
        return "json_object"

    def _params(self, messages: list[dict], json_mode: bool, schema: dict | None,
                unsupported: set[str], max_tokens: int | None = None) -> tuple[dict[str, Any], str | None]:
        ep = self.endpoint
        fmt = self._response_format_kind(json_mode, schema, unsupported)
        schema_name = str((schema or {}).get("title") or f"ropd_{self.role}")[:64]
        if self.judge.api == "responses":
            p: dict[str, Any] = {"model": self.model, "input": messages, "store": False}
            if ep.temperature is not None and "temperature" not in unsupported:
                p["temperature"] = ep.temperature
            if max_tokens:
                p["max_output_tokens"] = max_tokens
            if ep.reasoning_effort and "reasoning_effort" not in unsupported:
                p["reasoning"] = {"effort": ep.reasoning_effort}
            if fmt == "json_schema":
                p["text"] = {"format": {"type": "json_schema", "name": schema_name, "schema": schema, "strict": False}}
            elif fmt == "json_object":
                p["text"] = {"format": {"type": "json_object"}}
            return p, fmt
        p = {"model": self.model, "messages": messages}
        if ep.temperature is not None and "temperature" not in unsupported:
            p["temperature"] = ep.temperature
        if max_tokens:
            p["max_completion_tokens" if "max_tokens" in unsupported else "max_tokens"] = max_tokens
        if ep.reasoning_effort and "reasoning_effort" not in unsupported:
            p["reasoning_effort"] = ep.reasoning_effort
        if fmt == "json_schema":
            p["response_format"] = {"type": "json_schema",
                                    "json_schema": {"name": schema_name, "schema": schema, "strict": False}}
        elif fmt == "json_object":
            p["response_format"] = {"type": "json_object"}
        return p, fmt

    @staticmethod
    def _rejected_param(err: openai.BadRequestError, params: dict[str, Any], fmt: str | None) -> str | None:
        """Which parameter a 400 complains about, if dropping one could help; None otherwise."""
        msg = (getattr(err, "message", "") or str(err)).lower()
        if "temperature" in msg and "temperature" in params:
            return "temperature"
        if "max_tokens" in msg and "max_completion_tokens" in msg and "max_tokens" in params:
            return "max_tokens"
        if "reasoning" in msg and ("reasoning_effort" in params or "reasoning" in params):
            return "reasoning_effort"
        if fmt is not None:
            if not any(w in msg for w in ("context", "token", "length", "too long", "too large")):
                # A generic 400 while asking for structured output: try once without it.
                return "json_schema" if fmt == "json_schema" else "response_format"
        return None

    async def _request(self, client: _SDKClient, params: dict[str, Any]
                       ) -> tuple[str, int | None, int | None, str | None, int | None]:
        # client.post is the SDK's documented route for raw bodies: same retries, auth and error types
        # as client.chat.completions.create, without re-validating our already well-formed params
        # (that per-call transform is the largest client-side cost when 64 requests are in flight).
        if self.judge.api == "responses":
            resp = await client.post("/responses", body=params, cast_to=Response)
            if not isinstance(getattr(resp, "output", None), list):
                try:
                    shown = json.dumps(resp.to_dict(), default=str)
                except Exception:  # noqa: BLE001 - only for the message
                    shown = type(resp).__name__
                raise _NotAReply(f"the JSON body {_one_line(shown, 120)} has no \"output\" list")
            text = getattr(resp, "output_text", None) or ""
            usage = getattr(resp, "usage", None)
            return (text, getattr(usage, "input_tokens", None), getattr(usage, "output_tokens", None),
                    _responses_finish(resp), cached_prompt_tokens(usage))
        data = await client.post("/chat/completions", body=params, cast_to=dict)
        usage = data.get("usage") if isinstance(data, dict) else None
        return (*_chat_reply(data), cached_prompt_tokens(usage) if isinstance(usage, dict) else None)

    def _fitted_max_tokens(self, messages: list[dict[str, Any]]) -> int | None:
        """judge.<role>.max_tokens, lowered to what the server's known context leaves after the prompt."""
        wanted = self.endpoint.max_tokens
        context = facts_for(self.base_url).context_len
        fitted = fit_max_tokens(wanted, context, estimate_prompt_tokens(messages))
        if fitted != wanted:
            _note_once(("fit", self.base_url, self.role),
                       "judge.%s.max_tokens=%s does not fit the context of the server at %s (%s tokens) together "
                       "with the prompt; asking for at most what is left (%s tokens here). Set "
                       "judge.%s.max_tokens lower to make this explicit", self.role, wanted, self.url, context,
                       fitted, self.role)
        return fitted

    def _refit(self, rejection: Any, messages: list[dict[str, Any]], sent: int | None) -> int | None:
        """A max_tokens that fits the context a rejection reported, or None when none would help."""
        limit = rejection.context_len or facts_for(self.base_url).context_len
        if not sent or not limit:
            return None
        prompt = rejection.input_tokens if rejection.input_tokens else estimate_prompt_tokens(messages)
        room = limit - prompt - 8
        return room if MIN_OUTPUT_TOKENS <= room < sent else None

    async def _request_retrying_bad_bodies(self, client: _SDKClient, params: dict[str, Any]
                                           ) -> tuple[str, int | None, int | None, str | None, int | None]:
        """:meth:`_request`, with a 200 whose body is not a JSON reply (a proxy's HTML error page, a
        truncated body) treated as a transient transport error: retried like a 5xx, up to
        ``judge.max_retries`` times with the same backoff, the slot given back while sleeping."""
        bad = 0
        breaker = _current_breaker()
        while True:
            try:
                return await self._request(client, params)
            except ValueError:
                if breaker is not None:
                    breaker.record_failure("HTTP 200 with a body that is no reply of the API")
                if bad >= self.judge.max_retries:
                    raise
                bad += 1
                delay = min(self.judge.retry_initial_delay_s * 2 ** (bad - 1), self.judge.retry_max_delay_s)
                log.info("%s judge at %s sent a body that is not a chat reply; retrying (%d of %d)", self.role,
                         self.url, bad, self.judge.max_retries)
                async with _slot_released():
                    pause = max(0.0, delay * (1 - 0.25 * random.random()))
                    await (breaker.sleep(pause) if breaker is not None else asyncio.sleep(pause))
                if breaker is not None:
                    breaker.check()
                prog = progress.current()
                if prog is not None:
                    prog.request_retried()

    # -- public API ----------------------------------------------------------------------------

    async def complete(self, messages: list[dict[str, Any]], *, json_mode: bool = True,
                       schema: dict | None = None) -> Completion:
        """Send one chat request; return the reply text, usage, latency, attempts, finish reason and
        the output format used.

        Raises :class:`JudgeCallError` (a JudgeError) when the request fails for good.
        """
        model = self.model
        self._api_key()  # fail before any I/O when the key is required and missing
        ep_key = (self.base_url, model)
        remembered = _UNSUPPORTED.setdefault(ep_key, set())
        unsupported = set(remembered)
        limiter = endpoint_limiter(self.base_url, model, self.judge)
        breaker = limiter.breaker
        client = self._sdk()
        await _ensure_closer(_loop_state())
        counter: list[Any] = [0, time.monotonic()]
        token = _ATTEMPTS.set(counter)
        t0 = time.perf_counter()
        est = estimate_tokens(messages)
        max_tokens = self._fitted_max_tokens(messages)
        first_params: dict[str, Any] | None = None
        ticket: SlotTicket | None = None
        refitted = False
        prog = progress.current()
        reported = False
        ok = False
        probe = False
        try:
            async with limiter.slot(est) as ticket:
                if prog is not None:
                    prog.request_started()
                    reported = True
                probe = breaker.admit()  # an open circuit: _CircuitOpen, before anything is sent
                for _ in range(8):  # bounded by the droppable params, format steps and one refit
                    params, fmt = self._params(messages, json_mode, schema, unsupported, max_tokens)
                    if first_params is None:
                        first_params = params
                    try:
                        text, ptok, ctok, finish, cached = await self._request_retrying_bad_bodies(client, params)
                        breaker.record_reply()
                        break
                    except openai.APIStatusError as e:
                        status, msg = e.status_code, str(getattr(e, "message", "") or e)
                        if not _transport_failure(e):
                            breaker.record_reply()  # a 4xx, a 429, a format rejection: the server is there
                        rejection = parse_context_rejection(msg, getattr(e, "body", None)) if status == 400 else None
                        if rejection is not None:
                            learn_context(self.base_url, rejection.context_len, "rejection")
                            refit = None if refitted else self._refit(rejection, messages, max_tokens)
                            if refit is None:
                                raise
                            log.warning("%s judge at %s: the request did not fit the server's context of %s tokens "
                                        "with max_tokens=%s; resending with max_tokens=%s", self.role, self.url,
                                        rejection.context_len, max_tokens, refit)
                            max_tokens, refitted = refit, True
                            continue
                        if fmt is not None and is_format_rejection(status, msg):
                            dropped = "json_schema" if fmt == "json_schema" else "response_format"
                            nxt = "json_object" if dropped == "json_schema" else "no response_format"
                            _note_once(("format", self.base_url, model, dropped),
                                       "the %s judge at %s (model %s) rejected response_format %s (HTTP %s: %s); "
                                       "using %s for this endpoint from now on", self.role, self.url, model, fmt,
                                       status, _one_line(scrub(msg), 200), nxt)
                            unsupported.add(dropped)
                            remembered.add(dropped)  # a fact about the server: remembered even if this call fails
                            continue
                        dropped = self._rejected_param(e, params, fmt) if isinstance(e, openai.BadRequestError) else None
                        if dropped is None or dropped in unsupported:
                            raise
                        log.info("%s judge at %s rejected %s (HTTP 400); resending without it",
                                 self.role, self.url, dropped)
                        unsupported.add(dropped)
                else:  # pragma: no cover - bounded by the number of droppable params
                    raise JudgeCallError(f"{self.role} judge at {self.url} kept rejecting the request",
                                         role=self.role, endpoint=self.url, model=model, kind="bad_request")
                if ticket.rate is not None and (ptok or ctok):
                    ticket.rate[1] = float((ptok or 0) + (ctok or 0))
            ok = True
        except _CircuitOpen as c:
            if prog is not None:
                prog.request_cut()
            raise self._circuit_error(c, counter[0], time.perf_counter() - t0) from None
        except openai.OpenAIError as e:
            if _transport_failure(e):
                breaker.record_failure(_failure_words(e, e.status_code if isinstance(e, openai.APIStatusError) else None,
                                                      time.monotonic() - counter[1], self.endpoint.timeout_s))
            raise self._translate(e, counter[0], time.perf_counter() - t0, max_tokens=max_tokens,
                                  in_flight=ticket.peak_in_flight if ticket else 0,
                                  concurrency=limiter.concurrency) from None
        except ValueError as e:  # still not JSON after the retries (a proxy's HTML page, a wrong URL)
            what = "JSON that is not a reply of the API" if isinstance(e, _NotAReply) else "a response that is not JSON"
            raise JudgeCallError(
                f"the {self.role} judge at {self.url} (model '{model}') sent {what}"
                f"{f' after {counter[0]} attempt(s)' if counter[0] > 1 else ''}: "
                f"{scrub(str(e)[:200])}",
                hint=f"check that judge.{self.role}.base_url points at an OpenAI-compatible API (usually ending in /v1)",
                role=self.role, endpoint=self.url, model=model, attempts=counter[0],
                latency_s=time.perf_counter() - t0, kind="bad_response") from None
        finally:
            _ATTEMPTS.reset(token)
            if probe:
                breaker.probe_ended()
            if reported:
                prog.request_finished(ok)
        remembered |= unsupported
        return Completion(text=text, prompt_tokens=ptok, completion_tokens=ctok,
                          latency_s=time.perf_counter() - t0, attempts=max(1, counter[0]), model=model,
                          finish_reason=finish, endpoint=self.url,
                          request_sha=request_sha({"api": self.judge.api, **(first_params or {})}),
                          response_format=fmt or "none", max_tokens=max_tokens, cached_prompt_tokens=cached)

    async def preflight(self) -> dict[str, Any]:
        """Check the endpoint answers, accepts the key and serves the model; fail fast otherwise.

        Lists ``/models`` (no retries, short timeout). A server without ``/models`` (404) is probed
        with a one-token chat request instead. Learns the server's context length (vLLM's
        ``max_model_len``) and parallel slots (llama.cpp's ``/props``) where it reports them. Returns
        ``{"url", "model", "models", "context_len", "slots"}``.
        """
        model = self.model
        self._api_key()
        pre_timeout = min(self.endpoint.timeout_s, _PREFLIGHT_TIMEOUT_S)
        client = self._sdk(max_retries=0, timeout=pre_timeout)
        await _ensure_closer(_loop_state())
        counter: list[Any] = [0, time.monotonic()]
        token = _ATTEMPTS.set(counter)
        t0 = time.perf_counter()
        try:
            try:
                page = await client.models.list()
                entries = list(page.data)
                ids = [m.id for m in entries]
            except openai.NotFoundError:
                entries, ids = [], None
            if ids is None or not ids:
                params, _ = self._params([{"role": "user", "content": "ping"}], False, None, set())
                if self.judge.api == "responses":
                    params["max_output_tokens"] = 16
                else:
                    params.pop("max_tokens", None)
                    params["max_tokens"] = 1
                await self._request(client, params)
            elif model not in ids:
                shown = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
                raise JudgeCallError(
                    f"the {self.role} judge at {self.url} does not serve the model '{model}' (it serves: {shown})",
                    hint=f"set judge.{self.role}.model to one of the served models",
                    role=self.role, endpoint=self.url, model=model, kind="not_found")
        except openai.OpenAIError as e:
            raise self._translate(e, counter[0], time.perf_counter() - t0, timeout_s=pre_timeout) from None
        finally:
            _ATTEMPTS.reset(token)
        learn_context(self.base_url, facts_from_models(entries, model), "/v1/models")
        await self._read_props(client)
        facts = facts_for(self.base_url)
        return {"url": self.url, "model": model, "models": ids, "context_len": facts.context_len,
                "slots": facts.slots}

    async def _read_props(self, client: _SDKClient) -> None:
        """llama.cpp's ``GET /props`` (at the server root): its parallel slots and context per slot.
        Other servers have no such route; any failure is ignored."""
        parts = urlsplit(self.base_url)
        root = parts.path.rstrip("/")
        root = root[: -len("/v1")] if root.endswith("/v1") else root
        url = urlunsplit((parts.scheme, parts.netloc, f"{root}/props", "", ""))
        try:
            props = await client.get(url, cast_to=dict)
        except (openai.OpenAIError, ValueError):
            return
        n_ctx, slots = facts_from_props(props)
        learn_slots(self.base_url, slots)
        if n_ctx and facts_for(self.base_url).context_source != "/v1/models":
            learn_context(self.base_url, n_ctx, "/props")

    # -- errors --------------------------------------------------------------------------------

    def _circuit_error(self, c: _CircuitOpen, attempts: int, latency: float) -> JudgeCallError:
        """The request ended because its endpoint's circuit breaker is open: say why and what to do."""
        model = self.endpoint.model or "?"
        silent = f"{c.silent_s:.1f}" if c.silent_s < 10 else f"{c.silent_s:.0f}"
        msg = (f"the {self.role} judge at {self.url} (model '{model}') is not answering: {c.failures} request(s) "
               f"to it in a row failed with no reply in the last {silent} s (last: {c.last}); its circuit breaker "
               "is open, so requests to it now fail at once instead of each waiting out its retries")
        hint = (f"check that the judge server is up and answering (its log, a stuck or overloaded worker); if it is "
                f"only slow, raise judge.{self.role}.timeout_s (now {self.endpoint.timeout_s:g} s). One probe "
                f"request is let through every {c.open_s:g} s (judge.circuit_open_s) and a reply closes the circuit; "
                "judge.circuit_breaker_failures=0 turns the breaker off")
        key = os.environ.get(self.endpoint.api_key_env or "OPENAI_API_KEY")
        return JudgeCallError(scrub(msg, key), hint=hint, role=self.role, endpoint=self.url, model=model,
                              attempts=attempts, latency_s=latency, kind="unreachable")

    def _translate(self, e: BaseException, attempts: int, latency: float, *, max_tokens: int | None = None,
                   in_flight: int = 0, concurrency: int | None = None,
                   timeout_s: float | None = None) -> JudgeCallError:
        model = self.endpoint.model or "?"
        who = f"the {self.role} judge at {self.url} (model '{model}')"
        env = self.endpoint.api_key_env or "OPENAI_API_KEY"
        status = getattr(e, "status_code", None)
        server_msg = str(getattr(e, "message", "") or e)
        server_msg = server_msg if len(server_msg) <= 400 else server_msg[:400] + "..."
        tries = f"after {attempts} attempt(s)" if attempts else ""
        hint = None
        refused = _refused(e)
        timeout_s = self.endpoint.timeout_s if timeout_s is None else timeout_s
        # The aiohttp transport reports a dropped connection as a timeout too: no attempt can have timed
        # out when all of them together took less than one timeout.
        dropped = isinstance(e, openai.APITimeoutError) and latency < 0.9 * timeout_s
        if isinstance(e, openai.APITimeoutError) and not refused and not dropped:
            kind = "timeout"
            msg, hint = self._timeout_text(who, tries, in_flight, concurrency, timeout_s)
        elif isinstance(e, openai.APIConnectionError):  # (APITimeoutError is one: a refused connect lands here)
            kind = "connection"
            msg = f"cannot connect to {who}: {_root_cause(e)} ({tries})" if tries else \
                f"cannot connect to {who}: {_root_cause(e)}"
            hint = f"is the server running? check judge.{self.role}.base_url (or OPENAI_BASE_URL)"
        elif isinstance(e, openai.AuthenticationError):
            kind = "auth"
            has = "set" if os.environ.get(env) else "not set"
            msg = f"{who} rejected the API key (HTTP 401): {server_msg}"
            hint = (f"put a valid key in the environment variable {env} (currently {has}); "
                    f"judge.{self.role}.api_key_env names the variable")
        elif isinstance(e, openai.PermissionDeniedError):
            kind = "auth"
            msg = f"{who} refused access (HTTP 403): {server_msg}"
            hint = f"the key in {env} lacks access to model '{model}'"
        elif isinstance(e, openai.NotFoundError):
            kind = "not_found"
            msg = f"{who} answered HTTP 404: {server_msg}"
            hint = (f"check the model name judge.{self.role}.model, and that the base URL ends with /v1 "
                    f"(it is {self.url})")
        elif isinstance(e, openai.RateLimitError):
            kind = "rate_limit"
            msg = f"{who} is still rate limiting (HTTP 429) {tries}: {server_msg}"
            hint = "lower judge.concurrency or set judge.requests_per_minute / judge.tokens_per_minute"
        elif isinstance(e, openai.BadRequestError):
            kind = "bad_request"
            msg = f"{who} rejected the request (HTTP 400): {server_msg}"
            hint = self._bad_request_hint(server_msg, getattr(e, "body", None), max_tokens)
        elif isinstance(e, openai.APIStatusError):
            kind = "server"
            msg = f"{who} failed with HTTP {status} {tries}: {server_msg}"
            hint = "the server keeps failing; check its logs"
        else:
            kind = "error"
            msg = f"{who} failed: {type(e).__name__}: {server_msg}"
        key = os.environ.get(env)
        return JudgeCallError(scrub(msg, key), hint=scrub(hint, key) if hint else None, role=self.role,
                              endpoint=self.url, model=model, attempts=attempts, latency_s=latency,
                              status_code=status, kind=kind)

    def _timeout_text(self, who: str, tries: str, in_flight: int, concurrency: int | None,
                      timeout_s: float | None = None) -> tuple[str, str]:
        """A timeout, told apart: queued behind other requests at the server, or a slow model."""
        t = f"{self.endpoint.timeout_s if timeout_s is None else timeout_s:g}"
        others = max(0, in_flight - 1)
        slots = facts_for(self.base_url).slots
        role = self.role
        if others and (slots is None or others >= slots):
            capacity = f"it works on {slots} at a time" if slots else "its parallel capacity is not known"
            msg = (f"{who} did not reply within {t} s {tries}; {others} other request(s) to it were in flight "
                   f"({capacity}), so this one most likely waited in the server's queue rather than being slow")
            hint = (f"queueing at the server counts against judge.{role}.timeout_s: lower judge.concurrency "
                    f"(now {concurrency}) to what the server runs in parallel (llama.cpp: its --parallel slots; "
                    f"llama-cpp-python: 1; vLLM: up to --max-num-seqs), or raise judge.{role}.timeout_s")
        else:
            msg = (f"{who} did not reply within {t} s {tries} with no other request of ours in flight: "
                   "the server itself is that slow (or hung)")
            hint = (f"raise judge.{role}.timeout_s, lower judge.{role}.max_tokens, use a smaller or faster judge "
                    "model, or check the server")
        return msg, hint

    def _bad_request_hint(self, server_msg: str, body: Any, max_tokens: int | None) -> str | None:
        role = self.role
        rejection = parse_context_rejection(server_msg, body)
        if rejection is not None:
            limit = rejection.context_len or facts_for(self.base_url).context_len
            ctx = f"{limit} tokens" if limit else "its size"
            if rejection.kind == "output_over_context":
                asked = rejection.output_tokens or max_tokens or self.endpoint.max_tokens
                return (f"judge.{role}.max_tokens ({asked}) does not fit the server's context ({ctx}), which must "
                        f"also hold the prompt: set judge.{role}.max_tokens to about "
                        f"{max(MIN_OUTPUT_TOKENS, limit // 4) if limit else 'a quarter of it'}, or start the server "
                        "with a larger --max-model-len")
            return (f"the prompt does not fit the server's context ({ctx}) with room for the reply: lower "
                    "scorer.answer_char_budget or scorer.verifier_chunk_size (fewer or shorter answers per request), "
                    f"lower judge.{role}.max_tokens, or start the server with a larger --max-model-len")
        low = server_msg.lower()
        if any(w in low for w in ("context", "too long", "maximum", "token")):
            return "the prompt may be too long: lower scorer.answer_char_budget or scorer.verifier_chunk_size"
        return None

    def __repr__(self) -> str:
        return f"JudgeClient(role={self.role!r}, url={self.url!r}, model={self.endpoint.model!r})"
