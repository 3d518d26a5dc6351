"""Counting generated tokens while ``model.generate`` runs, for the heartbeat (engine.runs.heartbeat).

``generate`` calls the model's forward once per new token (the first call also reads the prompt), so
a forward hook on the model counts tokens for the whole batch at the cost of an integer increment.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator


@contextmanager
def counting_forwards(model: Any, on_count: Callable[[int], None]) -> Iterator[None]:
    """Call ``on_count(n)`` after the n-th forward of ``model`` inside the block."""
    count = 0

    def hook(_module, _inputs, _output) -> None:
        nonlocal count
        count += 1
        try:
            on_count(count)
        except Exception:  # noqa: BLE001 - progress never breaks generation
            pass

    handle = model.register_forward_hook(hook) if hasattr(model, "register_forward_hook") else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()
