"""An OpenAI-compatible judge client: one role (teacher, rubricator, verifier, scalar_judge) at one endpoint.

Built on the openai SDK (``AsyncOpenAI``): chat completions by default, the Responses API with
``judge.api=responses``; any OpenAI-compatible base URL (OpenAI, vLLM, llama.cpp, ...).

What this module adds to the SDK, and what it deliberately leaves to it:

* Transport retries are the SDK's own (``judge.max_retries``): backoff with jitter, honouring
  ``Retry-After``, on 408/409/429/5xx, timeouts and connection errors, never on 400/401/403/404.
  Only the backoff base and cap are configurable (``judge.retry_initial_delay_s`` /
  ``judge.retry_max_delay_s``), so tests and local servers need not wait seconds.
* Bounded concurrency per endpoint: one ``asyncio.Semaphore`` (``judge.concurrency``) shared by every
  client of the same base URL + model in the process (per event loop), plus optional
  requests-per-minute / tokens-per-minute limits (sliding 60 s window).
* API keys: the config holds only the NAME of an environment variable (``api_key_env``); the key is
  read from the environment at request time, sent as a bearer header, and never logged, stored or
  shown (error texts are scrubbed). A keyless local server gets a placeholder key.
* Structured output: ``response_format`` json_object (default) or json_schema. A server that rejects
  it (HTTP 400) is asked once more without it, and the endpoint remembers that for the process; the
  same for ``temperature``, ``reasoning_effort`` and ``max_tokens`` (-> ``max_completion_tokens``).
* Failures become :class:`JudgeCallError` (a :class:`~engine.errors.JudgeError`) naming the role,
  the URL, the model and the cause, with a hint: connection refused, 401 (which env var), 404
  (unknown model or a base URL without ``/v1``), 400 (the server's message), timeouts, 429/5xx after
  all retries.
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
import re
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

from engine.config import EndpointConfig, JudgeConfig
from engine.errors import JudgeError

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
    finish_reason: str | None = None
    endpoint: str | None = None  # base URL without credentials
    request_sha: str | None = None  # sha256 of the canonical request (model, messages, settings)
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
        self.kind = kind  # connection | timeout | auth | not_found | bad_request | rate_limit | server | config


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
    chain: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(chain) < 30:  # breadth-first over causes, contexts and exception groups
        cur = todo.pop(0)
        if any(cur is c for c in chain):
            continue
        chain.append(cur)
        todo += [e for e in (cur.__cause__, cur.__context__) if e is not None]
        todo += list(getattr(cur, "exceptions", None) or [])
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


def _chat_reply(data: Any) -> tuple[str, int | None, int | None, str | None]:
    """(text, prompt tokens, completion tokens, finish reason) of a chat-completions JSON body."""
    if not isinstance(data, dict):
        raise ValueError(f"the body is {str(data)[:120]!r}, not a chat-completions JSON object")
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


def _refused(exc: BaseException) -> bool:
    """Whether a connect failed outright (refused, unreachable, unknown host) rather than timing out.

    The SDK's aiohttp transport reports every connect failure as a ConnectTimeout; the OSError
    underneath tells the truth.
    """
    todo: list[BaseException] = [exc]
    seen: list[BaseException] = []
    while todo and len(seen) < 30:
        cur = todo.pop(0)
        if any(cur is s for s in seen):
            continue
        seen.append(cur)
        if isinstance(cur, OSError) and cur.errno and cur.errno != errno.ETIMEDOUT:
            return True
        if type(cur).__name__ == "ClientConnectorDNSError":
            return True
        todo += [x for x in (cur.__cause__, cur.__context__) if x is not None]
    return False


_ATTEMPTS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("ropd_judge_attempts", default=None)


class _SDKClient(AsyncOpenAI):
    """AsyncOpenAI with a configurable backoff base and an attempt counter; retry logic is the SDK's."""

    ropd_initial_delay: float = _SDK_INITIAL_RETRY_DELAY
    ropd_max_delay: float = 8.0

    def _calculate_retry_timeout(self, remaining_retries, options, response_headers=None):  # type: ignore[override]
        timeout = super()._calculate_retry_timeout(remaining_retries, options, response_headers)
        retry_after = self._parse_retry_after_header(response_headers)
        if retry_after is not None and math.isfinite(retry_after) and 0 < retry_after <= 120:
            return timeout  # the server said how long to wait: honour it as the SDK does
        scaled = timeout * (self.ropd_initial_delay / _SDK_INITIAL_RETRY_DELAY)
        return max(0.0, min(scaled, self.ropd_max_delay))

    async def _prepare_request(self, request):  # type: ignore[override]
        await super()._prepare_request(request)
        counter = _ATTEMPTS.get()
        if counter is not None:
            counter[0] += 1


# ---------------------------------------------------------------------------------------------
# per-endpoint limits, shared within a process (one set per event loop: asyncio primitives are loop-bound)

class EndpointLimiter:
    """Concurrency and optional RPM/TPM limits for one endpoint (base URL + model)."""

    def __init__(self, concurrency: int, rpm: float | None = None, tpm: float | None = None):
        self.concurrency = concurrency
        self.rpm = rpm
        self.tpm = tpm
        self._sem = asyncio.Semaphore(concurrency)
        self._lock = asyncio.Lock()
        self._requests: deque[float] = deque()
        self._tokens: deque[list[float]] = deque()  # [time, tokens]
        self.in_flight = 0
        self.peak_in_flight = 0

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
    async def slot(self, est_tokens: int = 0) -> AsyncIterator[list[float] | None]:
        async with self._sem:
            entry = await self._wait_for_rate(est_tokens)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                yield entry  # the caller may correct entry[1] with the real token count
            finally:
                self.in_flight -= 1


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
    """The limiter shared by every client of this base URL + model on the running loop."""
    state = _loop_state()
    key = (base_url.rstrip("/"), model)
    lim = state.limiters.get(key)
    if lim is None:
        lim = state.limiters[key] = EndpointLimiter(judge.concurrency, judge.requests_per_minute,
                                                    judge.tokens_per_minute)
    return lim


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
    """Forget which endpoints rejected which parameters (tests)."""
    _UNSUPPORTED.clear()


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
                unsupported: set[str]) -> tuple[dict[str, Any], str | None]:
        ep = self.endpoint
        fmt = self._response_format_kind(json_mode, schema, unsupported)
        schema_name = str((schema or {}).get("title") or f"ropd_{self.role}")[:64]
        if self.judge.api == "responses":
            p: dict[str, Any] = {"model": self.model, "input": messages, "store": False}
            if ep.temperature is not None and "temperature" not in unsupported:
                p["temperature"] = ep.temperature
            if ep.max_tokens:
                p["max_output_tokens"] = ep.max_tokens
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
        if ep.max_tokens:
            p["max_completion_tokens" if "max_tokens" in unsupported else "max_tokens"] = ep.max_tokens
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
            if fmt == "json_schema" and ("json_schema" in msg or "schema" in msg):
                return "json_schema"
            if any(w in msg for w in ("response_format", "json", "text.format", "format")):
                return "json_schema" if fmt == "json_schema" else "response_format"
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
            text = getattr(resp, "output_text", None) or ""
            usage = getattr(resp, "usage", None)
            return (text, getattr(usage, "input_tokens", None), getattr(usage, "output_tokens", None),
                    getattr(resp, "status", None), cached_prompt_tokens(usage))
        data = await client.post("/chat/completions", body=params, cast_to=dict)
        usage = data.get("usage") if isinstance(data, dict) else None
        return (*_chat_reply(data), cached_prompt_tokens(usage) if isinstance(usage, dict) else None)

    # -- public API ----------------------------------------------------------------------------

    async def complete(self, messages: list[dict[str, Any]], *, json_mode: bool = True,
                       schema: dict | None = None) -> Completion:
        """Send one chat request; return the reply text, usage, latency and attempts.

        Raises :class:`JudgeCallError` (a JudgeError) when the request fails for good.
        """
        model = self.model
        self._api_key()  # fail before any I/O when the key is required and missing
        ep_key = (self.base_url, model)
        remembered = _UNSUPPORTED.setdefault(ep_key, set())
        unsupported = set(remembered)
        limiter = endpoint_limiter(self.base_url, model, self.judge)
        client = self._sdk()
        await _ensure_closer(_loop_state())
        counter = [0]
        token = _ATTEMPTS.set(counter)
        t0 = time.perf_counter()
        est = estimate_tokens(messages)
        first_params: dict[str, Any] | None = None
        try:
            async with limiter.slot(est) as rate_entry:
                for _ in range(4):
                    params, fmt = self._params(messages, json_mode, schema, unsupported)
                    if first_params is None:
                        first_params = params
                    try:
                        text, ptok, ctok, finish, cached = await self._request(client, params)
                        break
                    except openai.BadRequestError as e:
                        dropped = self._rejected_param(e, params, fmt)
                        if dropped is None or dropped in unsupported:
                            raise
                        log.info("%s judge at %s rejected %s (HTTP 400); resending without it",
                                 self.role, self.url, dropped)
                        unsupported.add(dropped)
                else:  # pragma: no cover - bounded by the number of droppable params
                    raise JudgeCallError(f"{self.role} judge at {self.url} kept rejecting the request",
                                         role=self.role, endpoint=self.url, model=model, kind="bad_request")
                if rate_entry is not None and (ptok or ctok):
                    rate_entry[1] = float((ptok or 0) + (ctok or 0))
        except openai.OpenAIError as e:
            raise self._translate(e, counter[0], time.perf_counter() - t0) from None
        except ValueError as e:  # a 200 whose body is not JSON (a proxy's HTML page, a wrong URL)
            raise JudgeCallError(
                f"the {self.role} judge at {self.url} (model '{model}') sent a response that is not JSON: "
                f"{scrub(str(e)[:200])}",
                hint=f"check that judge.{self.role}.base_url points at an OpenAI-compatible API (usually ending in /v1)",
                role=self.role, endpoint=self.url, model=model, attempts=counter[0],
                latency_s=time.perf_counter() - t0, kind="bad_response") from None
        finally:
            _ATTEMPTS.reset(token)
        remembered |= unsupported
        return Completion(text=text, prompt_tokens=ptok, completion_tokens=ctok,
                          latency_s=time.perf_counter() - t0, attempts=max(1, counter[0]), model=model,
                          finish_reason=finish, endpoint=self.url,
                          request_sha=request_sha({"api": self.judge.api, **(first_params or {})}),
                          cached_prompt_tokens=cached)

    async def preflight(self) -> dict[str, Any]:
        """Check the endpoint answers, accepts the key and serves the model; fail fast otherwise.

        Lists ``/models`` (no retries, short timeout). A server without ``/models`` (404) is probed
        with a one-token chat request instead. Returns ``{"url", "model", "models"}``.
        """
        model = self.model
        self._api_key()
        client = self._sdk(max_retries=0, timeout=min(self.endpoint.timeout_s, _PREFLIGHT_TIMEOUT_S))
        await _ensure_closer(_loop_state())
        counter = [0]
        token = _ATTEMPTS.set(counter)
        t0 = time.perf_counter()
        try:
            try:
                page = await client.models.list()
                ids = [m.id for m in page.data]
            except openai.NotFoundError:
                ids = None
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
            raise self._translate(e, counter[0], time.perf_counter() - t0) from None
        finally:
            _ATTEMPTS.reset(token)
        return {"url": self.url, "model": model, "models": ids}

    # -- errors --------------------------------------------------------------------------------

    def _translate(self, e: BaseException, attempts: int, latency: float) -> JudgeCallError:
        model = self.endpoint.model or "?"
        who = f"the {self.role} judge at {self.url} (model '{model}')"
        env = self.endpoint.api_key_env or "OPENAI_API_KEY"
        status = getattr(e, "status_code", None)
        server_msg = str(getattr(e, "message", "") or e)
        server_msg = server_msg if len(server_msg) <= 400 else server_msg[:400] + "..."
        tries = f"after {attempts} attempt(s)" if attempts else ""
        hint = None
        refused = _refused(e)
        if isinstance(e, openai.APITimeoutError) and not refused:
            kind = "timeout"
            msg = f"{who} did not reply within {self.endpoint.timeout_s:g} s {tries}"
            hint = (f"the server is hung or overloaded: raise judge.{self.role}.timeout_s, lower judge.concurrency, "
                    "or check the server")
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
            low = server_msg.lower()
            if any(w in low for w in ("context", "too long", "maximum", "token")):
                hint = "the prompt may be too long: lower scorer.answer_char_budget or scorer.verifier_chunk_size"
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

    def __repr__(self) -> str:
        return f"JudgeClient(role={self.role!r}, url={self.url!r}, model={self.endpoint.model!r})"
