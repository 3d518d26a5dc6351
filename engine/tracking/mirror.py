"""TrackerMirror: send the store's new metric rows of a run to the configured tracker backends.

Call :meth:`TrackerMirror.sync` after each write to the store (a step, its validation numbers, its
checkpoint time); it reads the rows newer than each backend's cursor, in write order, one step at a
time, and stores the cursor after the backend took them. A backend that fails (network, disk) is
reported once (log line and a ``warning`` event) and left alone for the rest of the process: training
never stops for a tracker, and the next process (resume) retries it from its cursor.
"""

from __future__ import annotations

import math
from itertools import groupby
from typing import Any, Callable

from engine.store.scrub import scrub
from engine.tracking.backends import BACKEND_CLASSES, Backend, TrackerContext, check_tracking


class TrackerMirror:
    def __init__(self, cfg: Any, store: Any, run: Any, *, log: Callable[[str], None] = print,
                 backends: dict[str, Backend] | None = None):
        self.cfg = cfg
        self.store = store
        self.run = run
        self.log = log
        names = list(dict.fromkeys(cfg.tracking.backends))
        self.backends: dict[str, Backend] = backends if backends is not None else {
            n: BACKEND_CLASSES[n]() for n in names}
        self.cursors: dict[str, int] = {}
        self.attempt: int | None = None
        self.opened = False

    @classmethod
    def for_run(cls, cfg: Any, store: Any, run: Any, *, log: Callable[[str], None] = print) -> "TrackerMirror | None":
        """A mirror when ``tracking.backends`` names any (ConfigError naming the pip command for a missing
        package), else None."""
        if not cfg.tracking.backends:
            return None
        check_tracking(cfg)
        return cls(cfg, store, run, log=log)

    def open(self) -> None:
        rec = self.store.get_run(self.run.id)
        self.attempt = rec.attempt
        config = scrub(self.cfg.to_dict())
        for name, backend in list(self.backends.items()):
            state = self.store.tracker_state(rec.id, rec.attempt, name) or {}
            ctx = TrackerContext(run_name=rec.name, run_id=rec.id, attempt=rec.attempt, run_dir=rec.run_dir,
                                 config=config, settings=self.cfg.tracking, external_id=state.get("external_id"))
            try:
                external = backend.open(ctx)
            except Exception as err:  # noqa: BLE001 - a tracker never stops training
                self._drop(name, "could not start", err)
                continue
            self.cursors[name] = int(state.get("cursor") or 0)
            self.store.save_tracker_state(rec.id, rec.attempt, name, external_id=external,
                                          cursor=self.cursors[name])
        self.opened = True

    def sync(self) -> int:
        """Mirror the new rows; returns how many rows were sent (to the slowest backend)."""
        if not self.opened:
            self.open()
        sent = 0
        for name, backend in list(self.backends.items()):
            cursor = self.cursors.get(name, 0)
            n = 0
            while True:
                rows, new_cursor = self.store.metric_rows_after(self.run.id, self.attempt, cursor)
                if not rows:
                    break
                try:
                    # one store write (a step's metrics, its validation numbers, ...) per call
                    for (step, wall), items in groupby(rows, key=lambda r: (r["step"], r["wall_time"])):
                        metrics = {r["key"]: float(r["value"]) for r in items
                                   if r["value"] is not None and math.isfinite(r["value"])}
                        if metrics:
                            backend.log(int(step), metrics, wall)
                except Exception as err:  # noqa: BLE001
                    self._drop(name, "failed", err)
                    break
                cursor = new_cursor
                n += len(rows)
            if name in self.backends:
                self.cursors[name] = cursor
                self.store.save_tracker_state(self.run.id, self.attempt, name, cursor=cursor)
            sent = max(sent, n)
        return sent

    def close(self) -> None:
        """A last sync, then close every backend (finish the W&B run, flush TensorBoard, end MLflow)."""
        try:
            if self.backends:
                self.sync()
        finally:
            for name, backend in list(self.backends.items()):
                try:
                    backend.close()
                except Exception as err:  # noqa: BLE001
                    self.log(f"warning: tracker {name}: closing failed: {type(err).__name__}: {err}")
            self.backends.clear()

    def _drop(self, name: str, what: str, err: BaseException) -> None:
        self.backends.pop(name, None)
        msg = (f"tracker {name} {what}: {type(err).__name__}: {str(err)[:300]}; metrics stay in the run store "
               f"and are not mirrored to {name} until the run is resumed")
        self.log(f"warning: {msg}")
        try:
            self.store.add_event(self.run.id, "warning", msg)
        except Exception:  # noqa: BLE001
            pass
