"""An OpenAI-compatible fake judge server on 127.0.0.1, for tests and benchmarks (real HTTP).

Serves ``POST /v1/chat/completions``, ``POST /v1/responses`` and ``GET /v1/models`` with aiohttp on a
background thread (its own event loop), so the code under test talks to it through the openai SDK
exactly as it would to vLLM or OpenAI.

Default behaviour (recognised from the prompt content, so any template in the project's format works):

* rubricator prompts (``<teacher_answer id=`` / ``<student_answer id=`` blocks): a valid
  ``ropd.rubric.v1`` rubric of 4 criteria; the first checks the final number most teacher answers
  end with (the "right number"), so rewards vary with the answers;
* verifier prompts (``<answer id=`` blocks plus a rubric): a valid ``ropd.batch_verifier.v2`` reply
  with one entry per answer block and one judgement per criterion listed in the prompt; verdicts are
  derived deterministically from each answer's text (see :func:`judge_criterion`);
* scalar-judge prompts (``<answer id=`` blocks, no rubric): ``ropd.scalar_judge.v1`` scores, 9 for
  answers ending with the majority final number, else 2;
* anything else (e.g. a teacher asked a question): a short worked answer; simple arithmetic in the
  question is actually computed.

Scriptable: ``latency_s`` / ``latency_fn``; faults consumed in order by matching requests
(:meth:`fail_next` 500s, :meth:`rate_limit_next` 429 + Retry-After, :meth:`hang_next`,
:meth:`malformed_next`, :meth:`wrong_count_next`, :meth:`reply_next`); ``api_key`` (401 on mismatch),
``models`` (404 for other models), ``reject_response_format`` (400); a per-request log
(:attr:`requests`, with messages and timing), in-flight and peak in-flight counters, and usage numbers.

Real servers' limits, as they behave (see :meth:`LoopbackJudgeServer.like_vllm` and
:meth:`LoopbackJudgeServer.like_llama_cpp_python`):

* a reply longer than the request's ``max_tokens`` is cut there with ``finish_reason: "length"``
  (``"incomplete"`` / ``max_output_tokens`` on the Responses API), as every server does
  (``cut_at_max_tokens``, on by default; tokens are counted as characters / 4);
* ``max_model_len``: vLLM's context checks, HTTP 400 with vLLM's messages when ``max_tokens`` exceeds
  it or the prompt (plus ``max_tokens``) does not fit; ``/v1/models`` reports it as vLLM does;
* ``response_format_types``: the ``response_format`` types the server accepts; another type is
  rejected with ``response_format_status`` (llama-cpp-python: HTTP 500 and its validation message
  "Input should be 'text' or 'json_object'");
* ``slots``: llama.cpp's ``--parallel``: at most that many requests are worked on at once (the others
  wait in the server's queue), reported by ``GET /props`` (``total_slots``, ``n_ctx``).

Use it as a context manager (``with LoopbackJudgeServer() as srv: srv.base_url``; see the
``judge_server`` fixtures in tests/test_judge_client.py and tests/test_scorer.py), with
:func:`loopback_config` for a Config whose judge roles point at it, or as a separate process for
benchmarks: ``python tests/loopback_server.py --latency 0.2`` prints ``READY <base_url>``; then
``GET /_stats``, ``GET /_requests`` (timings) and ``POST /_reset`` (JSON body may set ``latency_s``)
control it over HTTP.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import hashlib
import json
import operator
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

ANSWER_RE = re.compile(r'<answer id="(\d+)">\n(.*?)\n</answer>', re.DOTALL)
TEACHER_RE = re.compile(r'<teacher_answer id="(\d+)">\n(.*?)\n</teacher_answer>', re.DOTALL)
STUDENT_RE = re.compile(r'<student_answer id="(\d+)">\n(.*?)\n</student_answer>', re.DOTALL)
NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


# ---------------------------------------------------------------------------------------------
# the default fake judge

def last_number(text: str) -> str | None:
    nums = NUMBER_RE.findall(text.replace(",", ""))
    if not nums:
        return None
    n = nums[-1]
    return n[:-2] if n.endswith(".0") else n


def majority_number(texts: list[str]) -> str | None:
    nums = [n for n in (last_number(t) for t in texts) if n is not None]
    if not nums:
        return None
    return Counter(nums).most_common(1)[0][0]


def default_rubric(prompt: str) -> dict[str, Any]:
    """A valid rubric whose first criterion names the teachers' final number."""
    teachers = [t for _, t in TEACHER_RE.findall(prompt)]
    students = [t for _, t in STUDENT_RE.findall(prompt)]
    right = majority_number(teachers) or majority_number(students)
    first = (f"The answer gives {right} as the final result." if right is not None
             else "The answer ends with a definite final result.")
    crits = [
        {"criterion_id": "c1", "category": "task fulfilment", "criterion": first, "points": 5},
        {"criterion_id": "c2", "category": "general reasoning quality",
         "criterion": "The answer shows at least one intermediate calculation with an equals sign.", "points": 3},
        {"criterion_id": "c3", "category": "observable response quality",
         "criterion": "The answer states its final result explicitly, for example 'The answer is ...'.", "points": 2},
        {"criterion_id": "c4", "category": "observable response quality",
         "criterion": "The answer is at most 300 characters long.", "points": 1},
    ]
    return {"schema_version": "ropd.rubric.v1", "rubrics": crits, "maximum_score": sum(c["points"] for c in crits)}


def judge_criterion(answer: str, criterion: str) -> bool:
    """A deterministic verdict of one answer on one criterion, derived from the texts."""
    m = re.search(r"gives (-?\d+(?:\.\d+)?) as the final result", criterion)
    if m:
        return last_number(answer) == m.group(1)
    low = criterion.lower()
    if "intermediate calculation" in low:
        return "=" in answer
    if "final result explicitly" in low:
        return bool(re.search(r"answer is|answer:|####|\\boxed", answer, re.IGNORECASE))
    m = re.search(r"at most (\d+) characters", low)
    if m:
        return len(answer) <= int(m.group(1))
    if "definite final result" in low:
        return last_number(answer) is not None
    return hashlib.sha256(f"{answer}\x00{criterion}".encode()).digest()[0] % 2 == 0


def rubric_criteria_in(prompt: str) -> list[dict[str, Any]]:
    """The criteria listed in a verifier prompt (JSON objects with a criterion_id), answer blocks ignored."""
    outside = ANSWER_RE.sub("", prompt)
    found = []
    for line in outside.splitlines():
        line = line.strip().rstrip(",")
        if line.startswith("{") and '"criterion_id"' in line:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                found.append(obj)
    return found


def default_verifier(prompt: str, answers: list[str], criteria: list[dict[str, Any]],
                     final_score_offset: float = 0.0) -> dict[str, Any]:
    out = []
    for i, ans in enumerate(answers, 1):
        verdicts = [judge_criterion(ans, str(c.get("criterion", ""))) for c in criteria]
        score = sum(int(c.get("points", 1)) for c, v in zip(criteria, verdicts) if v) + final_score_offset
        out.append({"answer_index": i, "judgement": verdicts, "final_score": score})
    return {"schema_version": "ropd.batch_verifier.v2", "answers": out}


def default_scalar(answers: list[str]) -> dict[str, Any]:
    right = majority_number(answers)
    return {"schema_version": "ropd.scalar_judge.v1",
            "answers": [{"answer_index": i, "score": 9 if right is not None and last_number(a) == right else 2}
                        for i, a in enumerate(answers, 1)]}


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
        ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _safe_eval(node: ast.AST) -> int:
    if isinstance(node, ast.Expression):
        return _safe_eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_safe_eval(node.left), _safe_eval(node.right))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        left, right = _safe_eval(node.left), _safe_eval(node.right)
        if right and left % right == 0:
            return left // right
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_safe_eval(node.operand))
    raise ValueError("unsupported")


#: How a sampling teacher phrases its answer: a real model at temperature > 0 seldom repeats itself.
CHAT_PHRASINGS = ("We compute {expr} = {value}.\nThe answer is {value}.",
                  "{expr} gives {value}.\nThe answer is {value}.",
                  "Working it out: {expr} = {value}.\nThe answer is {value}.",
                  "First, {expr} = {value}.\nSo the answer is {value}.")


def default_chat(prompt: str, variant: int = 0) -> str:
    """A teacher-like answer; computes simple integer arithmetic found in the question. ``variant`` picks
    the phrasing (0 is what a greedy, temperature-0 model would always say)."""
    for expr in sorted(re.findall(r"[\d\s+\-*/()x×%]{3,}", prompt), key=len, reverse=True):
        expr = expr.replace("×", "*").replace("x", "*").strip()
        if not re.search(r"\d\s*[-+*/%]\s*\(?\s*\d", expr):
            continue
        try:
            value = _safe_eval(ast.parse(expr, mode="eval"))
        except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
            continue
        return CHAT_PHRASINGS[variant % len(CHAT_PHRASINGS)].format(expr=expr, value=value)
    return ("Let me think about it step by step.", "Step by step:", "Thinking it through:",
            "Let me see.")[variant % 4] + "\nThe answer is 42."


# ---------------------------------------------------------------------------------------------
# the server

#: What :meth:`LoopbackJudgeServer.random_faults` injects: transport faults (HTTP errors, a hang past
#: the client timeout, a dropped connection, a proxy's HTML page or a non-chat JSON body with 200)
#: and reply faults (cut-off JSON, prose, an empty reply, JSON in a code fence with chatter, a wrong
#: number of verdicts or criteria).
RANDOM_FAULT_KINDS = ("http_500", "http_502", "http_503", "http_504", "http_429", "http_408", "hang", "drop",
                      "html_200", "not_chat_json_200", "truncated_json", "prose", "empty", "fenced_chatter",
                      "wrong_count")
RANDOM_REPLY_FAULTS = {
    "truncated_json": '{"schema_version": "ropd.rubric.v1", "rubrics": [{"criterion_id": "c1", "crit',
    "prose": "I have carefully considered every answer and they all look reasonable to me.",
    "empty": "",
    "fenced_chatter": "Sure! Here you go:\n```json\n{\"oops\": true}\n```\nLet me know if you need more.",
}


@dataclass
class Fault:
    kind: str  # status | hang | reply | wrong_count | drop | raw | raw_json
    remaining: int = 1
    role: str | None = None  # only requests of this role consume it
    status: int = 500
    retry_after: float | None = None
    seconds: float = 30.0
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class RequestRecord:
    path: str
    body: dict[str, Any]
    messages: list[dict[str, Any]]
    role: str
    model: str | None
    authorization: str | None
    t_start: float
    t_end: float | None = None
    status: int | None = None
    fault: str | None = None
    reply: str | None = None
    cached_tokens: int = 0

    @property
    def prompt(self) -> str:
        return prompt_of(self.messages)


def prompt_of(messages: list[dict[str, Any]]) -> str:
    """The original prompt: all non-assistant content before the first assistant turn."""
    parts = []
    for m in messages:
        if m.get("role") == "assistant":
            break
        content = m.get("content", "")
        if isinstance(content, list):
            content = "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(str(content))
    return "\n".join(parts)


def classify(messages: list[dict[str, Any]]) -> str:
    p = prompt_of(messages)
    if '<teacher_answer id="' in p or '<student_answer id="' in p or "ropd.rubric.v1" in p:
        return "rubricator"
    if '<answer id="' in p:
        if '"criterion_id"' in p or "batch_verifier" in p or "judgement" in p:
            return "verifier"
        return "scalar_judge"
    return "chat"


def _input_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    inp = body.get("input")
    msgs: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        msgs.append({"role": "system", "content": body["instructions"]})
    if isinstance(inp, str):
        msgs.append({"role": "user", "content": inp})
    elif isinstance(inp, list):
        for item in inp:
            if isinstance(item, dict):
                content = item.get("content", "")
                if isinstance(content, list):
                    content = "\n".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
                msgs.append({"role": item.get("role", "user"), "content": content})
    return msgs


class LoopbackJudgeServer:
    """A fake OpenAI-compatible judge on 127.0.0.1; see the module docstring."""

    def __init__(self, *, latency_s: float = 0.0, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, models: list[str] | None = None,
                 reject_response_format: bool = False, final_score_offset: float = 0.0,
                 max_model_len: int | None = None, cut_at_max_tokens: bool = True,
                 response_format_types: tuple[str, ...] | None = None, response_format_status: int = 500,
                 slots: int | None = None):
        self.host = host
        self.port = port
        self.latency_s = latency_s
        self.latency_fn: Callable[[RequestRecord], float] | None = None
        self.api_key = api_key
        self.models = models
        self.reject_response_format = reject_response_format
        self.max_model_len = max_model_len
        self.cut_at_max_tokens = cut_at_max_tokens
        self.response_format_types = response_format_types
        self.response_format_status = response_format_status
        self.slots = slots
        self._slot_sem: asyncio.Semaphore | None = None  # made on the server's loop
        self.final_score_offset = final_score_offset
        # OpenAI-style automatic prompt caching: a prompt whose first N tokens (N >= the minimum, in
        # blocks) were already sent is reported with those tokens as usage.*_tokens_details.cached_tokens
        self.prompt_caching = False
        self.prompt_cache_min_tokens = 1024
        self.prompt_cache_block_tokens = 128
        self._cached_prefixes: set[str] = set()
        # Hooks: return a dict (sent as JSON) or a str (sent verbatim) to override the defaults.
        self.rubric_fn: Callable[[str], Any] | None = None
        self.verifier_fn: Callable[[str, list[str], list[dict]], Any] | None = None
        self.scalar_fn: Callable[[list[str]], Any] | None = None
        self.chat_fn: Callable[[str], str] | None = None
        self.faults: list[Fault] = []
        self._samples: dict[str, int] = {}  # prompt -> requests sampled at temperature > 0 so far
        self.requests: list[RequestRecord] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @classmethod
    def like_vllm(cls, max_model_len: int = 2048, **kw: Any) -> "LoopbackJudgeServer":
        """vLLM started with ``--max-model-len``: replies cut at max_tokens, HTTP 400 context errors."""
        return cls(max_model_len=max_model_len, **kw)

    @classmethod
    def like_llama_cpp_python(cls, slots: int | None = 1, **kw: Any) -> "LoopbackJudgeServer":
        """llama-cpp-python's server: json_schema rejected with HTTP 500, one request at a time."""
        return cls(response_format_types=("text", "json_object"), response_format_status=500, slots=slots, **kw)

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "LoopbackJudgeServer":
        self._thread = threading.Thread(target=self._run, name="loopback-judge", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("loopback judge server did not start")
        if self._error:
            raise RuntimeError(f"loopback judge server failed to start: {self._error}")
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop and self._stop:
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # loop already closed
                pass
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> "LoopbackJudgeServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # pragma: no cover - reported by start()
            self._error = e
            self._ready.set()
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:  # handlers still sleeping (hang faults)
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/props", self._props)
        app.router.add_get("/_stats", self._stats)
        app.router.add_get("/_requests", self._request_log)
        app.router.add_post("/_reset", self._reset)
        if self.slots:
            self._slot_sem = asyncio.Semaphore(self.slots)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        server = getattr(site, "_server", None)
        if self.port == 0 and server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        await self._runner.cleanup()

    # -- scripting -----------------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.faults.clear()
            self.requests.clear()
            self.max_in_flight = self.in_flight

    def add_fault(self, kind: str, count: int = 1, role: str | None = None, **kw: Any) -> Fault:
        fault = Fault(kind=kind, remaining=count, role=role, **kw)
        with self._lock:
            self.faults.append(fault)
        return fault

    def fail_next(self, n: int = 1, *, status: int = 500, role: str | None = None, message: str = "internal error") -> Fault:
        return self.add_fault("status", n, role, status=status, text=message)

    def rate_limit_next(self, n: int = 1, *, retry_after: float = 0.2, role: str | None = None) -> Fault:
        return self.add_fault("status", n, role, status=429, retry_after=retry_after, text="rate limit reached")

    def hang_next(self, n: int = 1, *, seconds: float = 30.0, role: str | None = None) -> Fault:
        return self.add_fault("hang", n, role, seconds=seconds)

    def malformed_next(self, n: int = 1, *, role: str | None = None,
                       text: str = 'Here is my rubric: {"rubrics": [ {"criterion_id": "c1", ') -> Fault:
        return self.add_fault("reply", n, role, text=text)

    def reply_next(self, text: str, n: int = 1, *, role: str | None = None) -> Fault:
        return self.add_fault("reply", n, role, text=text)

    def wrong_count_next(self, n: int = 1, *, role: str | None = "verifier") -> Fault:
        return self.add_fault("wrong_count", n, role)

    def raw_next(self, body: str = "<html>not an API</html>", n: int = 1, *, status: int = 200,
                 role: str | None = None) -> Fault:
        """Reply with a non-JSON body (e.g. a proxy's HTML page)."""
        return self.add_fault("raw", n, role, status=status, text=body)

    def drop_next(self, n: int = 1, *, role: str | None = None) -> Fault:
        """Close the connection without replying (a transport error)."""
        import logging

        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # the dropped handler's traceback is expected
        return self.add_fault("drop", n, role)

    def random_faults(self, rate: float, kinds: list[str] | None = None, *, seed: int = 0,
                      hang_s: float = 2.0) -> None:
        """Fault a ``rate`` share of the judge requests (after the scripted faults), each with a kind
        from ``kinds`` (default: every kind of :data:`RANDOM_FAULT_KINDS`). Reproducible whatever the
        order requests arrive in: the draw depends only on ``seed``, the request's messages and how
        many times that same request was seen before. ``fault_counts`` counts what was injected."""
        self._random_seed = seed
        self._random_rate = rate
        self._random_kinds = list(kinds or RANDOM_FAULT_KINDS)
        self._hang_s = hang_s
        self._seen: Counter = Counter()
        self.fault_counts: Counter = Counter()
        if "drop" in self._random_kinds:
            import logging

            logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)

    def _random_fault(self, role: str, messages: list[dict[str, Any]]) -> Fault | None:
        rate = getattr(self, "_random_rate", 0.0)
        if not rate or role == "chat":
            return None
        key = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        nth = self._seen[key]
        self._seen[key] += 1
        draw = hashlib.sha256(f"{self._random_seed}|{key}|{nth}".encode()).digest()
        if int.from_bytes(draw[:8], "big") / 2 ** 64 >= rate:
            return None
        kind = self._random_kinds[int.from_bytes(draw[8:16], "big") % len(self._random_kinds)]
        self.fault_counts[kind] += 1
        if kind.startswith("http_"):
            status = int(kind[5:])
            return Fault("status", status=status, retry_after=0.05 if status == 429 else None, text=f"injected {status}")
        if kind == "hang":
            return Fault("hang", seconds=self._hang_s)
        if kind == "drop":
            return Fault("drop")
        if kind == "html_200":
            return Fault("raw", status=200, text="<html><body><h1>502 Bad Gateway</h1>proxy</body></html>")
        if kind == "not_chat_json_200":
            return Fault("raw_json", text='{"detail": "upstream busy"}')
        if kind == "wrong_count":
            return Fault("wrong_count") if role in ("verifier", "scalar_judge") else Fault(
                "reply", text='{"rubrics": [{"criterion_id": "c1", "criterion": "x", "points": 1}]}')
        return Fault("reply", text=RANDOM_REPLY_FAULTS[kind])

    def stats(self) -> dict[str, Any]:
        with self._lock:
            reqs = list(self.requests)
        return {"requests": len(reqs), "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                "by_role": dict(Counter(r.role for r in reqs)),
                "statuses": dict(Counter(str(r.status) for r in reqs))}

    def requests_for(self, role: str) -> list[RequestRecord]:
        return [r for r in list(self.requests) if r.role == role]

    def _take_fault(self, role: str, messages: list[dict[str, Any]] | None = None) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.remaining > 0 and (f.role is None or f.role == role):
                    f.remaining -= 1
                    return f
            return self._random_fault(role, messages or [])

    # -- handlers ------------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.StreamResponse:
        if (resp := self._auth_error(request)) is not None:
            return resp
        ids = self.models or []  # no list configured: any model is served (clients probe instead)
        extra = {"max_model_len": self.max_model_len} if self.max_model_len else {}  # as vLLM reports it
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "loopback", **extra} for m in ids]})

    async def _props(self, request: web.Request) -> web.StreamResponse:
        """llama.cpp's ``GET /props`` (only when ``slots`` is set: other servers have no such route)."""
        if not self.slots:
            return web.Response(status=404, text="Not Found")
        settings = {"n_ctx": self.max_model_len} if self.max_model_len else {}
        return web.json_response({"total_slots": self.slots, "default_generation_settings": settings})

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())

    async def _request_log(self, request: web.Request) -> web.StreamResponse:
        """Timing of every request (CLOCK_MONOTONIC, comparable with time.monotonic() in other processes)."""
        return web.json_response([{"role": r.role, "path": r.path, "status": r.status, "t_start": r.t_start,
                                   "t_end": r.t_end} for r in list(self.requests)])

    async def _reset(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except Exception:
            body = {}
        self.reset()
        if isinstance(body, dict) and "latency_s" in body:
            self.latency_s = float(body["latency_s"])
        return web.json_response({"ok": True})

    def _auth_error(self, request: web.Request) -> web.StreamResponse | None:
        if self.api_key is None:
            return None
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "chat")

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, "responses")

    async def _handle(self, request: web.Request, api: str) -> web.StreamResponse:
        try:
            body = await request.json()
        except Exception:
            return _error(400, "request body is not JSON", "invalid_request_error")
        messages = body.get("messages") or [] if api == "chat" else _input_messages(body)
        role = classify(messages)
        rec = RequestRecord(path=request.path, body=body, messages=messages, role=role, model=body.get("model"),
                            authorization=request.headers.get("Authorization"), t_start=time.monotonic())
        with self._lock:
            self.requests.append(rec)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            resp = await self._respond(request, api, body, messages, role, rec)
            rec.status = resp.status
            return resp
        finally:
            rec.t_end = time.monotonic()
            with self._lock:
                self.in_flight -= 1

    async def _respond(self, request: web.Request, api: str, body: dict[str, Any], messages: list[dict],
                       role: str, rec: RequestRecord) -> web.StreamResponse:
        if (resp := self._auth_error(request)) is not None:
            return resp
        if self.models is not None and body.get("model") not in self.models:
            return _error(404, f"The model `{body.get('model')}` does not exist or you do not have access to it.",
                          "invalid_request_error", "model_not_found")
        has_format = "response_format" in body if api == "chat" else "format" in (body.get("text") or {})
        if self.reject_response_format and has_format:
            return _error(400, "response_format is not supported by this server", "invalid_request_error")
        fmt_type = ((body.get("response_format") if api == "chat" else (body.get("text") or {}).get("format"))
                    or {}).get("type")
        if self.response_format_types is not None and fmt_type and fmt_type not in self.response_format_types:
            allowed = " or ".join(repr(t) for t in self.response_format_types)
            detail = {"type": "literal_error", "loc": ("body", "response_format", "type"),
                      "msg": f"Input should be {allowed}", "input": fmt_type, "ctx": {"expected": allowed}}
            return _error(self.response_format_status, f"1 validation error:\n  {detail}\n",
                          "internal_server_error" if self.response_format_status >= 500 else "invalid_request_error")
        prompt_chars = sum(len(str(m.get("content", ""))) for m in messages)
        ptok = prompt_chars // 4 + 1
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens", body.get("max_output_tokens")))
        if (resp := self._context_error(ptok, max_tokens)) is not None:
            return resp
        if self._slot_sem is not None:  # llama.cpp --parallel N: the rest wait in the server's queue
            async with self._slot_sem:
                return await self._generate(request, api, body, messages, role, rec, ptok, max_tokens)
        return await self._generate(request, api, body, messages, role, rec, ptok, max_tokens)

    def _context_error(self, ptok: int, max_tokens: Any) -> web.StreamResponse | None:
        """vLLM's checks of a request against ``--max-model-len``, with its messages."""
        limit = self.max_model_len
        if not limit:
            return None
        mt = max_tokens if isinstance(max_tokens, int) else 0
        if mt > limit:
            return _error(400, f"max_tokens={mt} cannot be greater than max_model_len={limit}. "
                          "Please request fewer output tokens.", "BadRequestError")
        if ptok >= limit:
            return _error(400, f"This model's maximum context length is {limit} tokens. However, your request has "
                          f"{ptok} input tokens. Please reduce the length of the input messages.", "BadRequestError")
        if ptok + mt > limit:
            return _error(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                          f"{mt} output tokens and your prompt contains at least {ptok} input tokens, for a total "
                          f"of at least {ptok + mt} tokens. Please reduce the length of the input prompt or the "
                          "number of requested output tokens.", "BadRequestError")
        return None

    async def _generate(self, request: web.Request, api: str, body: dict[str, Any], messages: list[dict],
                        role: str, rec: RequestRecord, ptok: int, max_tokens: Any) -> web.StreamResponse:
        fault = self._take_fault(role, messages)
        rec.fault = fault.kind if fault else None
        delay = self.latency_fn(rec) if self.latency_fn else self.latency_s
        if fault and fault.kind == "hang":
            delay = max(delay, fault.seconds)
        if delay > 0:
            await asyncio.sleep(delay)
        if fault and fault.kind == "status":
            headers = dict(fault.headers)
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            return _error(fault.status, fault.text or "error", "server_error" if fault.status >= 500 else
                          "rate_limit_error" if fault.status == 429 else "invalid_request_error", headers=headers)
        if fault and fault.kind == "raw":
            return web.Response(status=fault.status, text=fault.text or "", content_type="text/html")
        if fault and fault.kind == "raw_json":
            return web.Response(status=200, text=fault.text or "{}", content_type="application/json")
        if fault and fault.kind == "drop":
            if request.transport is not None:
                request.transport.close()
            raise ConnectionResetError("dropped by script")
        text = fault.text if fault and fault.kind == "reply" else self._content(messages, role, fault, body)
        ctok, finish = len(text) // 4 + 1, "stop"
        if self.cut_at_max_tokens and isinstance(max_tokens, int) and max_tokens > 0 and ctok > max_tokens:
            text, ctok, finish = text[: max_tokens * 4], max_tokens, "length"
        rec.reply = text
        cached = self._cached_tokens("".join(str(m.get("content", "")) for m in messages), ptok)
        rec.cached_tokens = cached
        model = body.get("model") or "loopback-judge"
        if api == "chat":
            return web.json_response({
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": ptok, "completion_tokens": ctok, "total_tokens": ptok + ctok,
                          "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": 0}}})
        return web.json_response({
            "id": f"resp_{uuid.uuid4().hex[:12]}", "object": "response", "created_at": int(time.time()),
            "model": model, "status": "completed" if finish == "stop" else "incomplete",
            "incomplete_details": None if finish == "stop" else {"reason": "max_output_tokens"},
            "output": [{"type": "message", "id": f"msg_{uuid.uuid4().hex[:8]}", "status": "completed",
                        "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            "usage": {"input_tokens": ptok, "output_tokens": ctok, "total_tokens": ptok + ctok,
                      "input_tokens_details": {"cached_tokens": cached}, "output_tokens_details": {"reasoning_tokens": 0}}})

    def _cached_tokens(self, prompt: str, ptok: int) -> int:
        """Tokens of ``prompt`` served from the prompt cache: the longest block-aligned prefix (4 characters
        a token) of at least ``prompt_cache_min_tokens`` that an earlier request began with."""
        if not self.prompt_caching:
            return 0
        block, found = self.prompt_cache_block_tokens, 0
        with self._lock:
            for n_tok in range(self.prompt_cache_min_tokens, ptok + 1, block):
                key = hashlib.sha256(prompt[:n_tok * 4].encode()).hexdigest()
                if n_tok * 4 > len(prompt):
                    break
                if key in self._cached_prefixes:
                    found = n_tok
                self._cached_prefixes.add(key)
        return found

    def _content(self, messages: list[dict], role: str, fault: Fault | None, body: dict[str, Any] | None = None) -> str:
        prompt = prompt_of(messages)
        variant = 0
        if (body or {}).get("temperature"):  # sampling: each request of the same prompt may read differently
            with self._lock:
                self._samples[prompt] = variant = self._samples.get(prompt, -1) + 1
        if role == "rubricator":
            out = self.rubric_fn(prompt) if self.rubric_fn else default_rubric(prompt)
        elif role == "verifier":
            answers = [a for _, a in ANSWER_RE.findall(prompt)]
            criteria = rubric_criteria_in(prompt) or [{"criterion": f"criterion {i}", "points": 1} for i in range(4)]
            out = (self.verifier_fn(prompt, answers, criteria) if self.verifier_fn
                   else default_verifier(prompt, answers, criteria, self.final_score_offset))
            if fault and fault.kind == "wrong_count" and isinstance(out, dict):
                out = dict(out, answers=out["answers"][:-1] if len(out["answers"]) > 1 else out["answers"] * 2)
        elif role == "scalar_judge":
            answers = [a for _, a in ANSWER_RE.findall(prompt)]
            out = self.scalar_fn(answers) if self.scalar_fn else default_scalar(answers)
            if fault and fault.kind == "wrong_count" and isinstance(out, dict):
                out = dict(out, answers=out["answers"][:-1])
        else:
            out = self.chat_fn(prompt) if self.chat_fn else default_chat(prompt, variant)
        return out if isinstance(out, str) else json.dumps(out)


class HungServer:
    """A TCP server on 127.0.0.1 that accepts connections, reads requests and never answers (a hung
    judge: a stuck GPU worker, a frozen proxy). ``with HungServer() as hs: hs.base_url``."""

    def __init__(self) -> None:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._conns: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self.accepted = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _accept(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self._conns.append(conn)  # keep it open, never reply

    def __enter__(self) -> "HungServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(2)
        for c in self._conns:
            c.close()
        self._sock.close()


def _error(status: int, message: str, type_: str, code: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": None, "code": code}},
                             status=status, headers=headers)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the loopback fake judge server until interrupted.")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    args = ap.parse_args(argv)
    srv = LoopbackJudgeServer(latency_s=args.latency, port=args.port).start()
    print(f"READY {srv.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


def loopback_config(server: LoopbackJudgeServer, *overrides: str, model: str = "loopback-judge"):
    """A Config whose rubricator, verifier and teacher point at ``server``, LLM judging on, fast retries."""
    from engine.config import load_config

    base = [f"judge.mode=llm", "judge.retry_initial_delay_s=0.01", "judge.retry_max_delay_s=0.05",
            "judge.max_retries=3"]
    for role in ("rubricator", "verifier", "teacher"):
        base += [f"judge.{role}.base_url={server.base_url}", f"judge.{role}.model={model}",
                 f"judge.{role}.timeout_s=10"]
    return load_config(None, base + list(overrides))


if __name__ == "__main__":
    raise SystemExit(main())


def run_closing_clients(coro):
    """Run ``coro`` in a fresh event loop and close the judge clients it opened before the loop ends."""
    import asyncio

    from engine.judging.client import aclose_loop_clients

    async def main():
        try:
            return await coro
        finally:
            await aclose_loop_clients()
    return asyncio.run(main())
