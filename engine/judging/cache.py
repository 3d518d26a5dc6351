"""A judge-request cache in the run store: an identical request is never paid for twice.

The key is the sha256 of the request as it would be sent: API flavour, base URL (without
credentials), model, rendered messages, temperature, max tokens, reasoning effort, output format and
schema. A hit returns the stored reply as a :class:`~engine.judging.client.Completion` (zero latency,
zero attempts) without any network I/O; a miss calls the judge and stores the reply. ``force=True``
skips the lookup (the new reply replaces the stored one).

:class:`CachingClient` wraps a :class:`~engine.judging.client.JudgeClient`; :class:`CachingJudge` wraps a
Judge (see :mod:`engine.judging.protocol`) by wrapping the judge clients it holds, so the rubricator and
verifier logic (rendering, re-asks with the validation error, parsing) is exactly the judge's own.
"""

from __future__ import annotations

from typing import Any, Callable

from engine.judging.client import Completion, JudgeClient, display_url, request_sha


def cache_key(client: JudgeClient, messages: list[dict[str, Any]], *, json_mode: bool, schema: dict | None) -> str:
    ep = client.endpoint
    return request_sha({
        "api": client.judge.api, "base_url": display_url(client.base_url), "model": client.model,
        "messages": messages, "temperature": ep.temperature, "max_tokens": ep.max_tokens,
        "reasoning_effort": ep.reasoning_effort, "response_format": ep.response_format if json_mode else "none",
        "schema": schema if json_mode else None,
    })


class CachingClient:
    """A JudgeClient whose ``complete`` answers identical requests from the store."""

    def __init__(self, inner: JudgeClient, cache: Any, *, force: bool = False,
                 on_request: Callable[[bool, str], None] | None = None):
        self.inner = inner
        self.cache = cache  # anything with cache_get(sha) / cache_put(sha, ...): engine.replay.store.ReplayStore
        self.force = force
        self.on_request = on_request
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str) -> Any:  # endpoint, judge, role, model, url, preflight, ...
        return getattr(self.inner, name)

    async def complete(self, messages: list[dict[str, Any]], *, json_mode: bool = True,
                       schema: dict | None = None) -> Completion:
        key = cache_key(self.inner, messages, json_mode=json_mode, schema=schema)
        if not self.force:
            row = self.cache.cache_get(key)
            if row is not None:
                self.hits += 1
                if self.on_request:
                    self.on_request(True, key)
                return Completion(text=row["reply"], prompt_tokens=row["prompt_tokens"],
                                  completion_tokens=row["completion_tokens"], latency_s=0.0, attempts=0,
                                  model=row["model"] or self.inner.model, endpoint="cache", request_sha=key,
                                  finish_reason=row.get("finish_reason"), response_format=row.get("response_format"),
                                  max_tokens=self.inner.endpoint.max_tokens)
        comp = await self.inner.complete(messages, json_mode=json_mode, schema=schema)
        self.misses += 1
        if self.on_request:
            self.on_request(False, key)
        self.cache.cache_put(key, model=comp.model, role=self.inner.role, reply=comp.text,
                             prompt_tokens=comp.prompt_tokens, completion_tokens=comp.completion_tokens,
                             latency_s=comp.latency_s, finish_reason=comp.finish_reason,
                             response_format=comp.response_format)
        comp.request_sha = key
        return comp


def wrap_clients(obj: Any, wrap: Callable[[JudgeClient], Any], _seen: set[int] | None = None) -> int:
    """Replace every JudgeClient held by ``obj`` (attributes, dicts, lists; nested judges) with
    ``wrap(client)``. Returns how many were wrapped."""
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    count = 0
    attrs = getattr(obj, "__dict__", None)
    if not isinstance(attrs, dict):
        return 0
    for name, value in list(attrs.items()):
        if isinstance(value, JudgeClient):
            setattr(obj, name, wrap(value))
            count += 1
        elif isinstance(value, dict):
            for k, v in list(value.items()):
                if isinstance(v, JudgeClient):
                    value[k] = wrap(v)
                    count += 1
                elif _is_judge_like(v):
                    count += wrap_clients(v, wrap, seen)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                if isinstance(v, JudgeClient):
                    value[i] = wrap(v)
                    count += 1
        elif _is_judge_like(value):
            count += wrap_clients(value, wrap, seen)
    return count


def _is_judge_like(value: Any) -> bool:
    mod = type(value).__module__ or ""
    return mod.startswith("engine.") and hasattr(value, "__dict__") and not isinstance(value, type)


class CachingJudge:
    """A Judge whose judge requests go through the cache. Delegates everything to the wrapped judge."""

    def __init__(self, judge: Any, cache: Any, *, force: bool = False,
                 on_request: Callable[[bool, str], None] | None = None):
        self.judge = judge
        self.clients: list[CachingClient] = []

        def wrap(client: JudgeClient) -> CachingClient:
            c = CachingClient(client, cache, force=force, on_request=on_request)
            self.clients.append(c)
            return c

        self.wrapped = wrap_clients(judge, wrap)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.judge, name)

    @property
    def hits(self) -> int:
        return sum(c.hits for c in self.clients)

    @property
    def misses(self) -> int:
        return sum(c.misses for c in self.clients)
