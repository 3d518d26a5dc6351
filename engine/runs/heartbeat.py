"""Sign of life inside a training step: what the trainer is doing now, and how far it got.

The trainer owns a :class:`Heartbeat` and tells it about phases (start-up, generating, scoring,
updating, saving a checkpoint, evaluating) and their progress (k of n tokens, groups, prompts). That
costs an attribute write: a daemon thread copies the latest state into the store's ``run_progress``
row (:meth:`RunStore.write_progress`, one short transaction of its own) at most every
``interval_s`` and only when something changed, so neither a slow disk nor a busy store ever holds
up training. Readers (``train``, ``status``, the Run and Runs screens) read that row from the store
and never touch the trainer; :func:`describe` turns it into one line, and flags a phase whose
progress has not moved for ``supervisor.no_progress_after_s`` seconds.

The heartbeat also adds up the seconds spent in each phase (``totals``), printed at the end of
``train`` as the measured time per phase.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from engine.config import SupervisorConfig

log = logging.getLogger(__name__)

# phase -> how people read it (in the order a step goes through them)
PHASES: dict[str, str] = {
    "startup": "starting up",
    "generate": "generating",
    "score": "scoring",
    "update": "updating",
    "save": "saving checkpoint",
    "eval": "evaluating",
    "done": "done",
}
PHASE_TOTAL_LABELS: dict[str, str] = {
    "startup": "start-up", "generate": "generating", "score": "scoring", "update": "updating",
    "save": "saving checkpoints", "eval": "evaluating",
}
# Seconds between writes at most: every write moves the store's data_version, which makes open UI
# screens re-read; phase changes still show within this.
INTERVAL_S = 2.0
NO_PROGRESS_AFTER_S = SupervisorConfig.no_progress_after_s


class Heartbeat:
    """The trainer's progress, flushed to the store by a background thread.

    ``phase()``/``advance()`` are cheap and never raise; :meth:`close` writes the final state.
    ``store=None`` keeps everything in memory (tests, and a trainer without a store)."""

    def __init__(self, store: Any, run_id: int | None, *, total_steps: int | None = None,
                 no_progress_after_s: float | None = None, interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.run_id = run_id
        self.total_steps = total_steps
        self.no_progress_after_s = no_progress_after_s  # written with the row, so readers need no config
        self.interval_s = interval_s
        self.clock = clock
        now = clock()
        self.name = "startup"
        self.step: int | None = None
        self.done: int | None = None
        self.total: int | None = None
        self.unit: str | None = None
        self.detail: str | None = None
        self.phase_started = now
        self.progress_at = now
        self.totals: dict[str, float] = {}
        self._lock = threading.Lock()
        self._version = 0  # bumped on every change; the flusher writes when it moved
        self._written = -1
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the trainer's side ------------------------------------------------------------------------
    def start(self) -> "Heartbeat":
        if self.store is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ropd-heartbeat", daemon=True)
            self._thread.start()
        self._wake.set()
        return self

    def phase(self, name: str, *, step: int | None = None, total: int | None = None, unit: str | None = None,
              detail: str | None = None) -> None:
        """Enter ``name`` (a key of :data:`PHASES`); the time spent in the previous phase is added up."""
        with self._lock:
            if name == self.name and (step is None or step == self.step) and total is None and detail is None:
                return  # already in it (a phase entered twice keeps its start time)
            now = self.clock()
            self._account(now)
            self.name = name
            if step is not None:
                self.step = step
            self.done = 0 if total is not None else None
            self.total, self.unit, self.detail = total, unit, detail
            self.phase_started = self.progress_at = now
            self._version += 1
        self._wake.set()

    def advance(self, done: int | None = None, *, total: int | None = None, detail: str | None = None) -> None:
        """Progress inside the current phase (``done`` of ``total`` ``unit``, and/or a detail)."""
        with self._lock:
            changed = False
            if done is not None and done != self.done:
                self.done, changed = done, True
            if total is not None and total != self.total:
                self.total, changed = total, True
            if detail is not None and detail != self.detail:
                self.detail, changed = detail, True
            if not changed:
                return
            self.progress_at = self.clock()
            self._version += 1

    def close(self, final_phase: str = "done") -> None:
        """Account the last phase, write the final state and stop the flusher."""
        self.phase(final_phase)
        self._closing.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._flush()

    def _account(self, now: float) -> None:
        if self.name in PHASE_TOTAL_LABELS:
            self.totals[self.name] = self.totals.get(self.name, 0.0) + max(0.0, now - self.phase_started)

    # -- the flusher -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            totals = dict(self.totals)
            if self.name in PHASE_TOTAL_LABELS:  # the running phase counts up to now
                totals[self.name] = totals.get(self.name, 0.0) + max(0.0, self.clock() - self.phase_started)
            return {"phase": self.name, "step": self.step, "total_steps": self.total_steps, "done": self.done,
                    "total": self.total, "unit": self.unit, "detail": self.detail,
                    "phase_started": self.phase_started, "progress_at": self.progress_at,
                    "no_progress_after_s": self.no_progress_after_s,
                    "totals": {k: round(v, 3) for k, v in totals.items()}, "version": self._version}

    def _flush(self) -> None:
        if self.store is None or self.run_id is None:
            return
        snap = self.snapshot()
        if snap["version"] == self._written:
            return
        version = snap.pop("version")
        try:
            self.store.write_progress(self.run_id, **snap)
            self._written = version
        except Exception as err:  # noqa: BLE001 - progress is advisory: never let it stop training
            log.warning("could not write the run's progress: %s", err)

    def _run(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self._flush()
            self._closing.wait(self.interval_s)  # at most one write per interval


# ---------------------------------------------------------------------------------------------
# reading it back


@dataclass
class ProgressLine:
    text: str  # e.g. "step 2/3 · scoring groups 3/4 · 12s"
    short: str  # e.g. "scoring 3/4" (a table cell)
    quiet: bool  # no progress for longer than the limit
    phase: str


def fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _counted(p: Mapping[str, Any]) -> str:
    if p.get("total") is None:
        return ""
    unit = f" {p['unit']}" if p.get("unit") else ""
    return f"{p.get('done') or 0}/{p['total']}{unit}"


def describe(p: Mapping[str, Any] | None, now: float | None = None,
             no_progress_after_s: float | None = None) -> ProgressLine | None:
    """One line for a progress row (from :meth:`RunStore.progress`), or None when there is none.
    The "no progress" limit: ``no_progress_after_s``, else the row's own (the run's config), else 300 s."""
    if not p or not p.get("phase"):
        return None
    now = time.time() if now is None else now
    if no_progress_after_s is None:
        no_progress_after_s = p.get("no_progress_after_s")
        no_progress_after_s = NO_PROGRESS_AFTER_S if no_progress_after_s is None else float(no_progress_after_s)
    phase = str(p["phase"])
    label = PHASES.get(phase, phase)
    counted = _counted(p)
    detail = p.get("detail") or ""
    what = label + (f" {counted}" if counted else "") + (f" ({detail})" if detail else "")
    step = p.get("step")
    total_steps = p.get("total_steps")
    where = ""
    if step is not None:
        where = f"step {step}" + (f"/{total_steps}" if total_steps else "")
        if phase == "eval":
            where = f"after step {step}"
    started = p.get("phase_started")
    started = now if started is None else float(started)
    moved = p.get("progress_at")
    moved = started if moved is None else float(moved)
    in_phase, still = now - started, now - moved
    quiet = phase != "done" and no_progress_after_s > 0 and still > no_progress_after_s
    parts = [x for x in (where, what, fmt_seconds(in_phase)) if x]
    if quiet:
        parts.append(f"no progress for {fmt_seconds(still)}")
    short = label.split()[0] + (f" {p.get('done') or 0}/{p['total']}" if p.get("total") is not None else "")
    if quiet:
        short = "no progress"
    return ProgressLine(text=" · ".join(parts), short=short, quiet=quiet, phase=phase)


def phase_times(totals: Mapping[str, float] | None) -> str:
    """``start-up 25.1 s, generating 61.0 s, ... (total 149.3 s)``, or "" when nothing was measured."""
    if not totals:
        return ""
    parts = [f"{PHASE_TOTAL_LABELS[k]} {totals[k]:.1f} s" for k in PHASE_TOTAL_LABELS if totals.get(k)]
    if not parts:
        return ""
    return ", ".join(parts) + f" (total {sum(v for k, v in totals.items() if k in PHASE_TOTAL_LABELS):.1f} s)"

