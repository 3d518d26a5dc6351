"""Output for headless commands (no rich, no textual): terminal-safe text, plain tables, JSON.

Model output, prompts, judge error bodies and log lines are untrusted: printed raw, an ESC, BEL,
OSC (``\\x1b]0;title\\x07``) or CSI (``\\x1b[2J``) sequence would retitle, clear or reprogram the user's
terminal. :func:`term_safe` is the one place that neutralises them: every control character
(C0 except newline and tab, DEL, C1) and the bidirectional overrides that reorder what is shown
("Trojan source") become a visible escape such as ``\\x1b``. Every human-readable line a command
prints goes through it (:func:`echo`, :func:`format_table`); JSON stays exact and is escaped
(:func:`json_text`: those characters as ``\\uXXXX``, which decodes to the same string).
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Iterable, Sequence

# C0 controls except \t and \n, DEL, C1, line/paragraph separators, bidi embeddings/overrides/isolates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(m: re.Match) -> str:
    ch = m.group(0)
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def term_safe(text: Any, *, multiline: bool = True) -> str:
    """``text`` with every terminal control character shown as a visible escape (``\\x1b``, ``\\x07``...).

    ``multiline``: keep newlines and tabs (a CRLF becomes a newline); else they are escaped too.
    """
    s = "" if text is None else str(text)
    if multiline:
        return _UNSAFE.sub(_escape, s.replace("\r\n", "\n"))
    return _UNSAFE_ONE_LINE.sub(_escape, s)


def echo(*parts: Any, file=None, sep: str = " ", end: str = "\n", flush: bool = False) -> None:
    """``print`` for human-readable output: every part through :func:`term_safe`."""
    stream = file or sys.stdout
    stream.write(sep.join(term_safe(p) for p in parts) + end)
    if flush:
        stream.flush()


def warn(*parts: Any, flush: bool = False) -> None:
    """:func:`echo` to stderr."""
    echo(*parts, file=sys.stderr, flush=flush)


def json_text(obj: Any, *, indent: int | None = None) -> str:
    """JSON with non-ASCII text kept readable but every terminal control character escaped as ``\\uXXXX``
    (json already escapes C0; this adds DEL, C1 and the bidi controls). Decodes to exactly ``obj``."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, default=str)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def print_json(obj: Any, file=None) -> None:
    stream = file or sys.stdout
    stream.write(json_text(obj, indent=2) + "\n")


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [["" if v is None else term_safe(f"{v:.4g}" if isinstance(v, float) else v, multiline=False) for v in r]
            for r in rows]
    headers = [term_safe(h, multiline=False) for h in headers]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, v in enumerate(r):
            widths[i] = max(widths[i], len(v))
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line.rstrip(), "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(out)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], file=None) -> None:
    (file or sys.stdout).write(format_table(headers, rows) + "\n")


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")
