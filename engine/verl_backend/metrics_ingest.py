"""Ingest verl's ``file`` logger and the gatherer's side channel into the run store.

verl's ``FileLogger`` writes one line ``{"step": N, "data": {key: value, ...}}`` per training step
(validation metrics merged in when ``test_freq`` hits; ``val_before_train`` logs its own line). The
gatherer appends one line per scored group. :class:`StepIngestor` pairs them: a step's groups are
written together with that step's metrics in one ``write_step`` transaction, when verl logs the step.

Key mapping (every raw numeric key is kept as well):

- ``accuracy``     = mean over data sources of ``val-core/<source>/acc/mean@N``
- ``reward/mean``  = ``critic/score/mean`` (the sequence reward verl trained on)
- ``score/*``      = derived by the store from the step's scored groups (student/teacher reward means,
  rule-based accuracy, group failure rate);
- ``ropd/*``       = ``failed_groups``, ``reward_std``, ``judge_calls``, ``judge_errors``, ``group_wall_s``.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from engine.scoring.signal import learning_signal
from engine.types import GroupResult

from engine.verl_backend.side_channel import JsonlTail, group_from_dict


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    return None


def map_metrics(data: dict[str, Any]) -> dict[str, float]:
    """verl's per-step metrics -> store metrics: every finite numeric key, plus ``accuracy`` and
    ``reward/mean`` under the names the store and UI use."""
    out: dict[str, float] = {}
    for key, value in data.items():
        f = _number(value)
        if f is not None:
            out[str(key)] = f
    acc = [v for k, v in out.items() if k.startswith("val-core/") and "/acc/mean@" in k]
    if acc:
        out["accuracy"] = sum(acc) / len(acc)
    if "critic/score/mean" in out:
        out["reward/mean"] = out["critic/score/mean"]
    return out


def group_metrics(groups: list[GroupResult]) -> dict[str, float]:
    """ROPD-side metrics of one step's scored groups that the store does not derive itself (it adds
    ``score/student_reward_mean``, ``score/teacher_reward_mean``, ``score/student_accuracy``,
    ``score/groups`` and ``score/group_failure_rate`` from the groups)."""
    if not groups:
        return {}
    rewards = [r for g in groups if g.status != "failed" for r in g.student_rewards if r is not None]
    calls = [c for g in groups for c in g.calls]
    out = {
        "ropd/failed_groups": float(sum(g.status == "failed" for g in groups)),
        "ropd/judge_calls": float(len(calls)),
        "ropd/judge_errors": float(sum(c.status == "error" for c in calls)),
        "ropd/group_wall_s": sum(g.wall_s for g in groups) / len(groups),
    }
    if len(rewards) > 1:
        out["ropd/reward_std"] = statistics.pstdev(rewards)
    return out


@dataclass
class StepReport:
    step: int
    metrics: dict[str, float]
    n_groups: int
    failure_rate: float | None


class StepIngestor:
    """Tails one attempt's metrics file and side channel and writes steps into the store.

    ``start_step`` is the step training resumes after (0 for a fresh run); groups whose rollouts did not
    say which step they belong to (verl's legacy v0 trainer) are given the step after the last logged one.
    """

    def __init__(self, store, run_id: Any, metrics_path: str | os.PathLike, groups_path: str | os.PathLike,
                 *, start_step: int = 0):
        self.store = store
        self.run_id = run_id
        self.metrics = JsonlTail(metrics_path)
        self.groups = JsonlTail(groups_path)
        self.last_step = int(start_step)
        self._pending: dict[int, list[GroupResult]] = defaultdict(list)
        self._next_index: dict[int, int] = defaultdict(int)
        self._steps_with_groups: set[int] = set()
        self._logged_steps: set[int] = set()
        self._step_totals: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # step -> [groups, failed]
        self.metric_lines = 0  # verl lines read (0 while the file logger writes elsewhere)
        self.max_group_step = int(start_step)
        self.new_events: list[dict[str, Any]] = []  # gatherer events written since the caller last cleared it

    def poll(self) -> list[StepReport]:
        # Every group of a step is appended before verl logs that step, so groups are read both before
        # and after the metrics lines; a group of an already written step (read in the window between)
        # is added to that step at once.
        self._read_groups()
        reports = []
        for rec in list(self.metrics.read()):
            try:
                step = int(rec.get("step"))
            except (TypeError, ValueError):
                continue
            data = rec.get("data") if isinstance(rec.get("data"), dict) else {}
            self.metric_lines += 1
            reports.append(self._write(step, map_metrics(data)))
            self._logged_steps.add(step)
            self.last_step = max(self.last_step, step)
        self._read_groups()
        for step in sorted(s for s in self._pending if s in self._logged_steps):
            reports.append(self._write(step, {}))
        return reports

    def pending_groups(self, step: int) -> int:
        """Scored groups of ``step`` read but not yet written (the step's metrics line has not come)."""
        return len(self._pending.get(step, ()))

    def flush(self) -> list[StepReport]:
        """Write groups whose step was never logged (the run ended or crashed mid-step)."""
        reports = self.poll()
        for step in sorted(self._pending):
            reports.append(self._write(step, {}))
        return reports

    def _read_groups(self) -> None:
        for rec in self.groups.read():
            if rec.get("type") == "event":
                step = rec.get("step") if isinstance(rec.get("step"), int) else None
                self.store.add_event(self.run_id, str(rec.get("kind") or "warning"), str(rec.get("message", "")),
                                     step=step)
                self.new_events.append(rec)
                continue
            if rec.get("type") != "group" or not isinstance(rec.get("group"), dict):
                continue
            step = rec.get("step")
            step = int(step) if isinstance(step, (int, float)) else self.last_step + 1
            self.max_group_step = max(self.max_group_step, step)
            self._pending[step].append(group_from_dict(rec["group"]))

    def _write(self, step: int, metrics: dict[str, float]) -> StepReport:
        groups = self._pending.pop(step, [])
        for g in groups:  # unique per step, even if a straggler group of a written step shows up later
            g.group_index = self._next_index[step]
            self._next_index[step] += 1
        gm = group_metrics(groups)
        metrics = {**metrics, **gm}
        if groups:
            # a straggler group of a step already written is added to it, not replacing its groups
            first_write = step not in self._steps_with_groups
            self.store.write_step(self.run_id, step, metrics, groups, append=not first_write)
            self._steps_with_groups.add(step)
            flat = learning_signal(groups) if first_write else None
            if flat is not None:
                self.store.add_event(self.run_id, "no_signal", flat.message(step), step=step, data=flat.data())
        elif metrics:
            self.store.write_metrics(self.run_id, step, metrics)
        totals = self._step_totals[step]
        totals[0] += len(groups)
        totals[1] += sum(g.status == "failed" for g in groups)
        rate = totals[1] / totals[0] if groups and totals[0] else None  # over all of the step's groups so far
        return StepReport(step, metrics, len(groups), rate)
