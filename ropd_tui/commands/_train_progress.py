"""What ``train`` prints while a step runs: the trainer's heartbeat (engine.runs.heartbeat), read from
the store, as ``now: ...`` lines: when the phase changes, every ``REPEAT_S`` seconds while it lasts, and
once when it has made no progress for ``supervisor.no_progress_after_s``."""

from __future__ import annotations

import time
from typing import Any, Callable

from ._output import echo as term_echo

REPEAT_S = 20.0


class ProgressPrinter:
    def __init__(self, store: Any, run: Any, *, clock: Callable[[], float] = time.time,
                 echo: Callable[[str], None] | None = None):
        self.store = store
        self.run = run
        self.clock = clock
        self.echo = echo or (lambda line: term_echo(line, flush=True))
        self._key: tuple | None = None
        self._printed_at = 0.0
        self._quiet_said = False

    def row(self) -> dict[str, Any] | None:
        try:
            return self.store.progress([self.run.id]).get(self.run.id)
        except Exception:  # noqa: BLE001 - an older store without progress: nothing to show
            return None

    def poll(self) -> None:
        from engine.runs.heartbeat import describe

        row = self.row()
        now = self.clock()
        line = describe(row, now)
        if line is None or line.phase == "done":
            return
        key = (row.get("attempt"), row.get("step"), line.phase, row.get("phase_started"))
        if key != self._key:
            self._key, self._quiet_said = key, False
        elif line.quiet and not self._quiet_said:
            self._quiet_said = True
        elif now - self._printed_at < REPEAT_S:
            return
        self._printed_at = now
        self.echo(f"  now: {line.text}")

    def phase_times(self) -> str:
        """``time per phase: ...`` of the trainer's last process ("" when it reported none)."""
        from engine.runs.heartbeat import phase_times

        row = self.row()
        text = phase_times((row or {}).get("totals"))
        return f"time per phase: {text}" if text else ""
