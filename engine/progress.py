"""Judge progress counters, shared by ``score``, ``replay`` and ``train`` (no rendering here).

One :class:`JudgeProgress` per piece of work (a ``score`` batch, a replay, a training step's
scoring) counts judge requests (started, in flight, done, retried, failed) and groups (done,
failed), and remembers when a request last completed, so a front end can say "no judge reply
for 40 s" while a judge hangs. The judge client and the scorer report into the tracker that is
*current* in their context (:func:`tracking`); with none current, nothing is counted.

Front ends render snapshots (``ropd_tui.commands._progress``: a bar on a terminal, plain lines
otherwise). A training step runs in the worker process, so the worker writes snapshots to a
small JSON file in the run folder (:class:`SnapshotWriter`) and ``train`` reads it
(:func:`read_snapshot`).
"""

from __future__ import annotations

import contextvars
import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

PROGRESS_FILE = "progress.json"


@dataclass
class ProgressSnapshot:
    """The counters at one moment (plain data: written to and read from JSON)."""

    label: str = ""
    groups_total: int = 0
    groups_done: int = 0
    groups_failed: int = 0
    requests_done: int = 0
    requests_failed: int = 0
    requests_retried: int = 0
    #: requests ended at once by an open circuit breaker (the judge stopped answering); in requests_failed too
    requests_cut: int = 0
    in_flight: int = 0
    elapsed_s: float = 0.0
    #: seconds since a request last completed (or since the first one started), while any is in flight
    idle_s: float | None = None
    finished: bool = False
    wall_time: float = 0.0  # when the snapshot was taken (time.time())

    @property
    def fraction(self) -> float:
        return self.groups_done / self.groups_total if self.groups_total else 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProgressSnapshot":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


class JudgeProgress:
    """Thread-safe counters for one piece of judge work."""

    def __init__(self, label: str = "", groups_total: int = 0):
        self._lock = threading.Lock()
        self.label = label
        self.groups_total = groups_total
        self.groups_done = self.groups_failed = 0
        self.requests_done = self.requests_failed = self.requests_retried = self.requests_cut = 0
        self.in_flight = 0
        self.started = time.monotonic()
        self._last_completion: float | None = None
        self._busy_since: float | None = None  # when in_flight last went from 0 to 1
        self.finished = False

    # -- reported by the judge client ------------------------------------------------------------
    def request_started(self) -> None:
        with self._lock:
            if self.in_flight == 0:
                self._busy_since = time.monotonic()
            self.in_flight += 1

    def request_retried(self) -> None:
        with self._lock:
            self.requests_retried += 1

    def request_cut(self) -> None:
        """A request ended at once because its endpoint's circuit breaker is open (request_finished follows)."""
        with self._lock:
            self.requests_cut += 1

    def request_finished(self, ok: bool) -> None:
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)
            if ok:
                self.requests_done += 1
            else:
                self.requests_failed += 1
            self._last_completion = time.monotonic()

    # -- reported by the scorer / the replay -----------------------------------------------------
    def group_finished(self, failed: bool) -> None:
        with self._lock:
            self.groups_done += 1
            self.groups_failed += 1 if failed else 0

    def finish(self) -> None:
        with self._lock:
            self.finished = True

    # -- read by front ends ----------------------------------------------------------------------
    def snapshot(self) -> ProgressSnapshot:
        with self._lock:
            now = time.monotonic()
            idle = None
            if self.in_flight:
                since = max(t for t in (self._last_completion, self._busy_since, self.started) if t is not None)
                idle = now - since
            return ProgressSnapshot(
                label=self.label, groups_total=self.groups_total, groups_done=self.groups_done,
                groups_failed=self.groups_failed, requests_done=self.requests_done,
                requests_failed=self.requests_failed, requests_retried=self.requests_retried,
                requests_cut=self.requests_cut,
                in_flight=self.in_flight, elapsed_s=now - self.started, idle_s=idle, finished=self.finished,
                wall_time=time.time())


_CURRENT: contextvars.ContextVar[JudgeProgress | None] = contextvars.ContextVar("ropd_progress", default=None)


def current() -> JudgeProgress | None:
    """The tracker of the work running in this context, if any."""
    return _CURRENT.get()


@contextmanager
def tracking(progress: JudgeProgress | None) -> Iterator[JudgeProgress | None]:
    """Make ``progress`` current for the code (and the asyncio tasks it starts) inside the block."""
    token = _CURRENT.set(progress)
    try:
        yield progress
    finally:
        _CURRENT.reset(token)


# ---------------------------------------------------------------------------------------------
# snapshots across processes (the training worker -> ``train``)

def write_snapshot(path: str | os.PathLike, snap: ProgressSnapshot) -> None:
    """Replace ``path`` atomically with the snapshot (best effort: a full disk only loses progress)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        tmp.write_text(json.dumps(asdict(snap)), encoding="utf-8")
        os.replace(tmp, p)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass


def read_snapshot(path: str | os.PathLike) -> ProgressSnapshot | None:
    """The last snapshot written to ``path``; None when there is none (or it cannot be read)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return ProgressSnapshot.from_dict(data) if isinstance(data, dict) else None


class SnapshotWriter:
    """Writes the current tracker's snapshot to a file every ``interval_s`` on a daemon thread."""

    def __init__(self, path: str | os.PathLike, interval_s: float = 1.0):
        self.path = Path(path)
        self.interval_s = interval_s
        self.progress: JudgeProgress | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ropd-progress", daemon=True)
        self._thread.start()

    def watch(self, progress: JudgeProgress | None) -> None:
        self.progress = progress
        if progress is not None:
            write_snapshot(self.path, progress.snapshot())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            prog = self.progress
            if prog is not None:
                write_snapshot(self.path, prog.snapshot())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        prog = self.progress
        if prog is not None:
            write_snapshot(self.path, prog.snapshot())
