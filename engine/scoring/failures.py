"""Failed groups in words: one line per cause, and the failure-rate check shared by scoring, training
and replay.

A cause is the stage's error text: often several lines (a judge error and its hint, or a server's
multi-line message such as llama-cpp-python's "1 validation error:\n  {... 'msg': "Input should be
'text' or 'json_object'" ...}"). Summaries keep the informative part on one line instead of the
first line alone.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable

from engine.errors import JudgeUnreachableError, ScoringFailureRateError, one_line

#: error_class of a judge call ended by its endpoint's open circuit breaker (the judge stopped answering)
UNREACHABLE_CALL = "JudgeError:unreachable"

#: Characters of each cause kept in a failure summary.
CAUSE_CHARS = 400
_SDK_PREFIX_RE = re.compile(r"(HTTP (\d{3})\b[^:]*: )Error code: \2 - ")
_PYDANTIC_RE = re.compile(r"""\d+ validation errors?:\s*\{.*?'loc': \(([^)]*)\).*?'msg': (['"])(.*?)\2""")


def cause_summary(cause: str | None, limit: int = CAUSE_CHARS) -> str:
    """A failure cause on one line, keeping the reason: whitespace and newlines collapsed, the SDK's
    repeated "Error code: 500 - " dropped, a validation error's dict reduced to its message and field."""
    text = " ".join(str(cause or "unknown").split())
    text = _SDK_PREFIX_RE.sub(r"\1", text)
    m = _PYDANTIC_RE.search(text)
    if m:
        field = ".".join(p.strip(" '\"") for p in m.group(1).split(",") if p.strip(" '\""))
        text = text[: m.start()] + f"validation error at {field}: {m.group(3)}" + text[m.end():].split("}", 1)[-1]
        text = " ".join(text.split())
    return one_line(text, limit)


def unreachable_cause(groups: Iterable[Any]) -> str | None:
    """The failure cause of the first failed group one of whose judge calls was ended by an open circuit
    breaker (groups with ``status``, ``failure_cause`` and ``calls``), or None."""
    for g in groups:
        if getattr(g, "status", None) == "failed" and any(
                getattr(c, "error_class", None) == UNREACHABLE_CALL for c in getattr(g, "calls", None) or []):
            return g.failure_cause
    return None


def failure_rate_error(failed: Iterable[tuple[str | None, str | None]], total: int,
                       threshold: float, *, unreachable: str | None = None) -> ScoringFailureRateError | None:
    """The error for a batch of ``total`` groups whose ``failed`` ones ((stage, cause) pairs) are more
    than ``threshold`` of it, naming the most common causes; None when the rate is within it. With
    ``unreachable`` (the cause of a group the circuit breaker ended: :func:`unreachable_cause`), a
    :class:`JudgeUnreachableError` (exit 3) that says it once."""
    failed = list(failed)
    rate = len(failed) / total if total else 0.0
    if rate <= threshold:
        return None
    if unreachable:
        cause, _, hint = str(unreachable).partition("\n  hint: ")
        return JudgeUnreachableError(
            f"the judge stopped answering: {len(failed)} of {total} groups failed to score ({rate:.0%}, above "
            f"scorer.failure_threshold={threshold:g}): {one_line(cause, 600)}",
            hint=(hint.strip() + "; " if hint.strip() else "") + "then run again once the judge answers")
    causes = Counter(f"{stage}: {cause_summary(cause)}" for stage, cause in failed)
    listed = "; ".join(f"{c} (x{n})" for c, n in causes.most_common(3))
    more = f"; and {len(causes) - 3} other cause(s)" if len(causes) > 3 else ""
    return ScoringFailureRateError(
        f"{len(failed)} of {total} groups failed to score ({rate:.0%}, above scorer.failure_threshold="
        f"{threshold:g}). Causes: {listed}{more}",
        hint="fix the cause (judge server, teacher index, templates), or raise scorer.failure_threshold")
