"""Small helpers for the words every front end prints (engine-side, so the headless commands, the TUI
and the trainer's own messages say things the same way)."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 step``, ``3 steps`` (``many``: an irregular plural)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
