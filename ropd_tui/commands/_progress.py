"""The judge progress reporter of ``score``, ``replay`` and ``train`` (plain text on stderr, no rich).

It renders :class:`engine.progress.ProgressSnapshot` s: on a terminal one bar redrawn in place,
otherwise a plain line every ``every_s`` seconds (logs and CI stay readable). Either way it warns,
on a line of its own, when judge requests are in flight but none has completed for ``stall_s``
seconds (a hung or overloaded judge), and says so again when replies resume.

``score`` and ``replay`` feed it from their own tracker on a background thread
(:meth:`ProgressReporter.follow`); ``train`` feeds it the snapshots the training worker writes to the
run folder (:meth:`ProgressReporter.update` from its polling loop).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Callable

from engine.progress import JudgeProgress, ProgressSnapshot

STALL_WARN_S = 30.0
PLAIN_EVERY_S = 10.0
TTY_EVERY_S = 0.2


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_line(snap: ProgressSnapshot, width: int = 24) -> str:
    """One line: the bar (when the number of groups is known), groups and request counters, elapsed time."""
    parts = []
    if snap.label:
        parts.append(snap.label)
    if snap.groups_total:
        filled = int(snap.fraction * width)
        parts.append(f"[{'#' * filled}{'.' * (width - filled)}] {snap.groups_done}/{snap.groups_total} groups"
                     + (f" ({snap.groups_failed} failed)" if snap.groups_failed else ""))
    cut = f" ({snap.requests_cut} at once: judge not answering)" if snap.requests_cut else ""
    parts.append(f"requests: {snap.requests_done} done, {snap.in_flight} in flight, {snap.requests_retried} retried, "
                 f"{snap.requests_failed} failed{cut}")
    parts.append(f"{snap.elapsed_s:.0f}s")
    return "  ".join(parts)


def stall_line(snap: ProgressSnapshot) -> str:
    return (f"warning: no judge request has completed for {snap.idle_s:.0f} s ({snap.in_flight} in flight): the judge "
            "may be hung or overloaded (each attempt waits up to judge.<role>.timeout_s; check the server, or lower "
            "judge.concurrency)")


class ProgressReporter:
    """Draws snapshots on ``stream`` (stderr); see the module docstring."""

    def __init__(self, stream=None, *, every_s: float = PLAIN_EVERY_S, stall_s: float = STALL_WARN_S,
                 tty: bool | None = None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self.every_s = TTY_EVERY_S if self.tty else every_s
        self.stall_s = stall_s
        self.enabled = enabled
        self._last_draw = 0.0
        self._last_line = ""
        self._bar_shown = False
        self._stalled = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- drawing ---------------------------------------------------------------------------------
    def update(self, snap: ProgressSnapshot | None, *, force: bool = False) -> None:
        if not self.enabled or snap is None:
            return
        with self._lock:
            now = time.monotonic()
            stalled = snap.idle_s is not None and snap.idle_s >= self.stall_s and snap.in_flight > 0
            if stalled and not self._stalled:
                self._write_line(stall_line(snap))
            elif self._stalled and not stalled:
                self._write_line(f"judge replies resumed ({snap.requests_done} requests done)")
            self._stalled = stalled
            line = progress_line(snap)
            if not force and now - self._last_draw < self.every_s:
                return
            if not self.tty and line == self._last_line and not force:
                return
            self._last_draw = now
            self._last_line = line
            if self.tty:
                self.stream.write("\r\x1b[K" + line)
                self._bar_shown = True
            else:
                self.stream.write(line + "\n")
            self.stream.flush()

    def _write_line(self, text: str) -> None:
        if self.tty and self._bar_shown:
            self.stream.write("\r\x1b[K")
            self._bar_shown = False
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_draw = 0.0  # redraw the bar under it at once

    def clear(self) -> None:
        """Take the bar off the terminal before other output (``train`` prints step lines)."""
        with self._lock:
            if self.tty and self._bar_shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._bar_shown = False
                self._last_draw = 0.0

    def close(self, snap: ProgressSnapshot | None = None) -> None:
        """Stop following; draw the final state once (then end the bar's line on a terminal)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if snap is not None:
            self.update(snap, force=True)
        with self._lock:
            if self.tty and self._bar_shown:
                self.stream.write("\n")
                self.stream.flush()
                self._bar_shown = False

    # -- following an in-process tracker ---------------------------------------------------------
    def follow(self, source: JudgeProgress | Callable[[], ProgressSnapshot | None]) -> "ProgressReporter":
        """Draw ``source`` (a tracker, or a function returning snapshots) on a daemon thread until :meth:`close`."""
        if not self.enabled:
            return self
        get = source.snapshot if isinstance(source, JudgeProgress) else source
        tick = min(self.every_s, 1.0)

        def loop() -> None:
            while not self._stop.wait(tick):
                try:
                    self.update(get())
                except (OSError, ValueError):  # the stream went away (a closed pipe)
                    return

        self._thread = threading.Thread(target=loop, name="ropd-progress-view", daemon=True)
        self._thread.start()
        return self
