"""Untrusted text (model output, rubrics, logs) as Rich ``Text`` that is never parsed as markup.

Everything a model wrote goes through :func:`plain` before a widget sees it, so ``[bold]`` or ``[/]``
inside a rollout shows literally and can never break rendering.
"""

from __future__ import annotations

import re

from rich.text import Text

_ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")

_CONTROL = {i: None for i in range(32) if i not in (9, 10)}  # keep tab and newline
_CONTROL[127] = None
_CONTROL[13] = None


def clean(text: object) -> str:
    """The text with terminal control characters (ANSI escapes, CR, ...) removed."""
    s = "" if text is None else str(text)
    if "\x1b" in s:
        s = _ANSI.sub("", s)
    return s.translate(_CONTROL)


def plain(text: object, style: str = "", *, limit: int | None = None) -> Text:
    """A ``Text`` holding ``text`` literally (no markup, no escapes), optionally cut to ``limit`` chars."""
    s = clean(text)
    if limit is not None and len(s) > limit:
        s = s[: max(0, limit - 1)] + "…"
    return Text(s, style=style, end="")


def one_line(text: object, limit: int = 80, style: str = "") -> Text:
    """A single-line preview of untrusted text."""
    s = " ".join(clean(text).split())
    return plain(s, style, limit=limit)


def highlighted(parts, style: str = "bold reverse", *, limit: int | None = None, lead: int | None = None) -> Text:
    """Untrusted text given as ``[(text, matched)]`` parts (a search snippet), matched parts in ``style``;
    every part literal (no markup), on one line, cut to ``limit`` characters and with at most ``lead``
    characters before the first match (so a narrow column still shows it)."""
    parts = [(clean(text).replace("\n", " ").replace("\t", " "), bool(matched)) for text, matched in parts]
    if lead is not None:
        before = 0
        for i, (text, matched) in enumerate(parts):
            if matched:
                if before > lead:  # drop the start, keep the last ``lead`` characters before the match
                    keep, kept = lead, []
                    for t, m in reversed(parts[:i]):
                        kept.insert(0, (t[-keep:], m) if len(t) > keep else (t, m))
                        keep -= len(kept[0][0])
                        if keep <= 0:
                            break
                    parts = [("…", False)] + kept + parts[i:]
                break
            before += len(text)
    out = Text(end="")
    left = limit
    for s, matched in parts:
        if left is not None:
            if left <= 0:
                break
            if len(s) > left:
                s = s[: max(0, left - 1)] + "…"
            left -= len(s)
        out.append(s, style=style if matched else "")
    return out
