"""Turn run-store rows into what the screens show (runs on the reader thread; no Textual here).

The store's readers return dicts; this module is the one place that knows their field names, so a
change in the store means a change here only.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..widgets.curves import Series
from ..widgets.verdicts import AnswerView, CriterionView

ACTIVE = {"running", "starting", "launching", "stalled"}


def _first(d: dict[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if n in d and d[n] is not None:
            return d[n]
    return default


# ---------------------------------------------------------------------------------------------
# runs

@dataclass
class RunRow:
    id: int
    name: str
    status: str
    backend: str
    step: int | None
    reward: float | None
    accuracy: float | None
    started_at: float | None
    ended_at: float | None
    exit_cause: str | None = None
    cost: str = "-"  # the judge cost as engine.judging.cost.describe_cost writes it ("-", "free", "$1.23")
    progress: dict[str, Any] | None = None  # the trainer's heartbeat row (engine.runs.heartbeat)

    def now(self, clock: float) -> Any:
        """What an active run's trainer is doing (a ProgressLine), or None."""
        if self.status not in ACTIVE or not self.progress:
            return None
        from engine.runs.heartbeat import describe

        return describe(self.progress, clock)

    def elapsed(self, now: float) -> float | None:
        if not self.started_at:
            return None
        end = self.ended_at or (now if self.status in ACTIVE else None)
        return None if end is None else max(0.0, end - self.started_at)


def run_row(d: dict[str, Any]) -> RunRow:
    latest = d.get("latest") if isinstance(d.get("latest"), dict) else {}
    merged = {**latest, **d}
    return RunRow(
        id=int(_first(merged, "id", "run_id")),
        name=str(_first(merged, "name", default="?")),
        status=str(_first(merged, "status", default="?")),
        backend=str(_first(merged, "backend", default="")),
        step=_first(merged, "step", "latest_step", "last_step"),
        reward=_first(merged, "reward", "latest_reward", "reward/mean", "reward_mean"),
        accuracy=_first(merged, "accuracy", "latest_accuracy", "accuracy/mean"),
        started_at=_first(merged, "started_at", "start_time", "created_at"),
        ended_at=_first(merged, "ended_at", "end_time", "finished_at"),
        exit_cause=_first(merged, "exit_cause", "cause"),
        cost=_short_cost(merged.get("cost")),
        progress=d.get("progress") if isinstance(d.get("progress"), dict) else None,
    )


def _short_cost(cost: Any) -> str:
    text = str(cost.get("text") or "-") if isinstance(cost, dict) else "-"
    return "free" if text.startswith("free") else text


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def fmt_num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# ---------------------------------------------------------------------------------------------
# curves

@dataclass
class Panel:
    """One curve panel: which metric key (first present) and optional spread keys."""

    title: str
    keys: tuple[str, ...]
    low: tuple[str, ...] = ()
    high: tuple[str, ...] = ()
    std: tuple[str, ...] = ()
    companion: tuple[str, ...] = ()  # a second line on the same panel (e.g. the teacher's reward)
    companion_label: str = ""
    main_label: str = ""  # the main line's legend when a companion is drawn
    bounds: tuple[float | None, float | None] = (None, None)  # the metric's range: the y axis stays inside
    offline_text: str = ""  # what the panel says when empty because the judge is the offline one


PANELS: list[Panel] = [
    Panel("reward (mean, spread)",
          ("reward/mean", "score/student_reward_mean", "ropd/reward_mean", "critic/score/mean", "reward"),
          low=("reward/min", "critic/score/min"), high=("reward/max", "critic/score/max"),
          std=("reward/std", "ropd/reward_std", "reward_std"),
          companion=("teacher_score/mean", "score/teacher_reward_mean", "ropd/teacher_mean"),
          companion_label="teacher", bounds=(0.0, 1.0)),
    Panel("accuracy", ("accuracy", "score/student_accuracy", "ropd/train_accuracy", "accuracy/mean"),
          companion=("val/accuracy",), companion_label="val", main_label="train", bounds=(0.0, 1.0)),
    Panel("judge failure rate", ("judge/failure_rate", "score/group_failure_rate", "ropd/failure_rate"),
          bounds=(0.0, 1.0)),
    Panel("judge latency (s)", ("judge/latency_s", "judge/latency_mean_s", "ropd/group_wall_s"), bounds=(0.0, None)),
    Panel("judge tokens (prompt, completion)", ("judge/prompt_tokens", "judge/tokens", "judge/total_tokens"),
          companion=("judge/completion_tokens",), companion_label="completion", bounds=(0.0, None),
          offline_text="offline judge: no tokens"),
    Panel("response length", ("response_length/mean", "completions/mean_length"), bounds=(0.0, None)),
    Panel("judge cost (USD, run total)", ("cost/total_usd",), companion=("cost/step_usd",),
          companion_label="per step", main_label="total", bounds=(0.0, None)),
]
# the events whose data names the judge the trainer used
JUDGE_KINDS = ("trainer_started", "checkpoint_loaded")


def empty_text(panel: Panel, judge: str | None) -> str:
    """What an empty panel says: an offline judge makes no judge calls that count tokens."""
    if judge == "offline" and panel.offline_text:
        return panel.offline_text
    return "no data yet"


def run_judge(events: list[dict[str, Any]]) -> str | None:
    """"offline" / "llm": the judge the trainer said it used (its start event), None when unknown."""
    for e in reversed(events):
        data = e.get("data") or {}
        if e.get("kind") in JUDGE_KINDS and data.get("judge"):
            return str(data["judge"])
    return None


def pick_key(keys: Iterable[str], candidates: tuple[str, ...]) -> str | None:
    have = set(keys)
    for c in candidates:
        if c in have:
            return c
    for c in candidates:  # pattern fallback: e.g. "*latency*"
        if "*" in c:
            for k in sorted(have):
                if fnmatch.fnmatch(k, c):
                    return k
    return None


class SeriesCache:
    """The metric series a screen has read, per key, so a reload reads only the new points.

    Against a store with ``metric_curve`` (the run store) each key is read at screen resolution: every point
    while the series spans at most ``2 * CURVE_BUCKETS`` steps, else the minimum and maximum of each of at most
    ``CURVE_BUCKETS`` buckets plus the first and last points (a bounded read whatever the run's length; the
    key figures' last / min / max stay exact). A reload reads again the last point or bucket held (a step's
    metrics may be upserted) and what follows; a new bucket level (the run grew) reads the key again, still
    bounded. Other stores: every point, with ``metric_series(since_step=...)``. Starts over when the run's
    attempt changes or its last step goes back (steps removed)."""

    def __init__(self) -> None:
        self.attempt: Any = None
        self.last_step: Any = None
        self._series: dict[str, tuple[list[float], list[float], list[float]]] = {}
        self._curves: dict[str, dict[str, Any]] = {}

    def check(self, attempt: Any, last_step: Any) -> None:
        if attempt != self.attempt or (last_step is not None and self.last_step is not None
                                       and last_step < self.last_step):
            self._series.clear()
            self._curves.clear()
        self.attempt, self.last_step = attempt, last_step

    def level(self, key: str) -> int:
        """0: the key's points are all held; l > 0: its level-l buckets (see engine.store.queries.metric_curve)."""
        cur = self._curves.get(key)
        return cur["level"] if cur else 0

    def buckets(self, key: str) -> list[tuple[float, int, float, float]] | None:
        """(step, points, mean, wall time) per bucket of a bucketed key, for smoothing; None when all points are held."""
        cur = self._curves.get(key)
        return cur.get("smooth") if cur else None

    def read(self, store: Any, run_id: int, key: str) -> tuple[list[float], list[float], list[float]]:
        if hasattr(store, "metric_curve"):
            return self._read_curve(store, run_id, key)
        steps, values, walls = self._series.setdefault(key, ([], [], []))
        since = int(steps[-1]) - 1 if steps else None
        rows = store.metric_series(run_id, key, with_time=True, since_step=since)
        rows = [_row(r) for r in rows] if rows and not isinstance(rows[0], tuple) else rows
        self._merge_rows(steps, values, walls, rows)
        return list(steps), list(values), list(walls)

    @staticmethod
    def _merge_rows(steps: list[float], values: list[float], walls: list[float], rows) -> None:
        if steps and rows:
            first_new = min(float(r[0]) for r in rows)
            while steps and steps[-1] >= first_new:
                steps.pop(), values.pop(), walls.pop()
        nan = float("nan")
        for step, value, wall in rows:
            if value is None:
                continue
            steps.append(float(step))
            values.append(float(value))
            walls.append(nan if wall is None else float(wall))

    def _read_curve(self, store: Any, run_id: int, key: str) -> tuple[list[float], list[float], list[float]]:
        cur = self._curves.get(key)
        since = None
        if cur is not None:
            if cur["level"] == 0 and cur["steps"]:
                since = (0, int(cur["steps"][-1]) - 1)
            elif cur["level"] > 0 and cur["buckets"]:
                since = (cur["level"], cur["buckets"][-1][0])
        got = store.metric_curve(run_id, key, since=since)
        level = got["level"]
        if cur is None or cur["level"] != level or since is None:
            cur = self._curves[key] = {"level": level, "steps": [], "values": [], "walls": [], "buckets": [],
                                       "walls_at": {}}
        if level == 0:
            self._merge_rows(cur["steps"], cur["values"], cur["walls"], got["rows"])
            return list(cur["steps"]), list(cur["values"]), list(cur["walls"])
        held = cur["buckets"]
        if got["buckets"]:
            b0 = got["buckets"][0][0]
            while held and held[-1][0] >= b0:
                held.pop()
            held.extend(got["buckets"])
        cur["walls_at"].update(got["walls"])
        nan = float("nan")
        walls_at = cur["walls_at"]
        points: dict[int, float] = {got["first"][0]: got["first"][1], got["last"][0]: got["last"][1]}
        smooth = []
        for b, n, total, lo_step, lo_value, hi_step, hi_value in held:
            points[lo_step] = lo_value
            points[hi_step] = hi_value
            rep = max(lo_step, hi_step)
            w = walls_at.get(rep)
            smooth.append((float(rep), int(n), total / n, nan if w is None else float(w)))
        cur["smooth"] = smooth
        steps = sorted(points)
        cur["walls_at"] = walls_at = {x: walls_at[x] for x in steps if x in walls_at}  # held points only
        cur["steps"] = [float(x) for x in steps]
        cur["values"] = [float(points[x]) for x in steps]
        cur["walls"] = [nan if walls_at.get(x) is None else float(walls_at[x]) for x in steps]
        return list(cur["steps"]), list(cur["values"]), list(cur["walls"])


def _row(r: Any) -> tuple[Any, Any, Any]:
    if isinstance(r, dict):
        return r.get("step"), r.get("value"), r.get("wall_time")
    return tuple((list(r) + [None, None, None])[:3])


def metric_series(store: Any, run_id: int, key: str, cache: SeriesCache | None = None
                  ) -> tuple[list[float], list[float], list[float]]:
    """(steps, values, wall_times) of one metric (with ``cache``: reading only the points it lacks)."""
    if cache is None:
        cache = SeriesCache()
    steps, values, walls = cache.read(store, run_id, key)
    if any(w != w for w in walls):  # any NaN: no usable wall axis
        walls = []
    return steps, values, walls


def panel_series(store: Any, run_id: int, keys: list[str], panel: Panel, label: str,
                 color: str | None = None, cache: SeriesCache | None = None) -> Series | None:
    key = pick_key(keys, panel.keys)
    if key is None:
        return None
    if cache is None:
        cache = SeriesCache()
    steps, values, walls = metric_series(store, run_id, key, cache)
    s = Series(label=label, steps=steps, values=values, wall=walls, color=color, buckets=cache.buckets(key))
    lo_key, hi_key, std_key = pick_key(keys, panel.low), pick_key(keys, panel.high), pick_key(keys, panel.std)
    at = (lambda k: _values_at(store, run_id, k, steps)) if cache.level(key) else (
        lambda k: _aligned(store, run_id, k, steps, cache))
    if lo_key and hi_key:
        s.low = at(lo_key)
        s.high = at(hi_key)
    elif std_key:
        std = at(std_key)
        s.low = [v - d for v, d in zip(values, std)]
        s.high = [v + d for v, d in zip(values, std)]
    if s.low is not None and (len(s.low) != len(steps) or any(x != x for x in s.low + (s.high or []))):
        s.low = s.high = None
    return s


def _values_at(store: Any, run_id: int, key: str, steps: list[float]) -> list[float]:
    """A spread band's values at the (downsampled) steps of its main series: one index probe per step."""
    by_step = store.metric_values_at(run_id, key, steps)
    return [float(by_step[int(x)]) if int(x) in by_step else float("nan") for x in steps]


def _aligned(store: Any, run_id: int, key: str, steps: list[float], cache: SeriesCache | None = None
             ) -> list[float]:
    st, vals, _ = metric_series(store, run_id, key, cache)
    by_step = dict(zip(st, vals))
    return [by_step.get(x, float("nan")) for x in steps]


MARKER_KINDS = ("resumed", "template_changed", "restarted")
SHOWN_EVENTS = 30  # the Run screen's Overview lists the newest 30
MAX_MARKERS = 500


def run_events(store: Any, run_id: int, after_seq: int | None = None) -> list[dict[str, Any]]:
    """The events the Run screen uses, read with bounded, indexed queries (oldest first, no duplicates): the
    newest :data:`SHOWN_EVENTS`, the newest :data:`MAX_MARKERS` curve markers, the newest start-up events
    that name the judge, and the template rejections after ``after_seq`` (to announce them)."""
    picked: dict[int, dict[str, Any]] = {}
    reads = [dict(limit=SHOWN_EVENTS), dict(kinds=MARKER_KINDS, limit=MAX_MARKERS), dict(kinds=JUDGE_KINDS, limit=5)]
    if after_seq is not None:
        reads.append(dict(kinds=("template_rejected",), after_seq=after_seq, limit=50))
    for kw in reads:
        for e in store.events(run_id, **kw):
            picked[e.get("seq") or 0] = e
    return [picked[k] for k in sorted(picked)]


def event_markers(events: list[dict[str, Any]]) -> list[tuple[float, float | None, str]]:
    """(step, wall time, kind) of events worth a vertical line: resumes and template changes."""
    out = []
    for e in events:
        kind = str(e.get("kind", ""))
        if kind not in MARKER_KINDS:
            continue
        step = e.get("step")
        if step is None:
            continue
        out.append((float(step), _first(e, "ts", "time", "wall_time", "created_at"), kind))
    return out


# ---------------------------------------------------------------------------------------------
# rubric inspector

@dataclass
class GroupView:
    step: int
    group_index: int
    question: str
    ground_truth: str | None
    status: str
    failure: str | None
    criteria: list[CriterionView]
    answers: list[AnswerView]
    template_versions: dict[str, str] = field(default_factory=dict)


def _as_prompt_text(value: Any) -> str:
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except (ValueError, TypeError):
            return value
        value = parsed
    from engine.types import prompt_text

    if isinstance(value, (list, str)):
        return prompt_text(value)
    return str(value)


def group_view(step: int, g: dict[str, Any]) -> GroupView:
    rubric = g.get("rubric") or {}
    raw_criteria = rubric.get("criteria") if isinstance(rubric, dict) else None
    raw_criteria = raw_criteria if raw_criteria is not None else (g.get("criteria") or [])
    criteria = [CriterionView(id=str(_first(c, "key", "crit_key", "criterion_key", default=f"c{i + 1}")),
                              text=str(_first(c, "text", "criterion", default="")),
                              points=int(_first(c, "points", default=0)),
                              category=str(_first(c, "category", default="")))
                for i, c in enumerate(raw_criteria)]
    answers = []
    for a in g.get("answers") or []:
        verdicts = a.get("verdicts")
        if isinstance(verdicts, str):
            verdicts = json.loads(verdicts)
        answers.append(AnswerView(
            kind=str(a.get("kind", "student")), index=int(_first(a, "index", "answer_index", default=0)),
            text=str(_first(a, "text", default="")), reward=a.get("reward"),
            correct=None if a.get("correct") is None else bool(a.get("correct")),
            truncated=bool(a.get("truncated")), clipped=a.get("clipped"),
            verdicts=[None if v is None else bool(v) for v in (verdicts or [])]))
    question = _first(g, "question", default=None)
    if question is None:
        question = _as_prompt_text(g.get("prompt", ""))
    failure = None
    if g.get("failure_stage") or g.get("failure_cause"):
        failure = f"{g.get('failure_stage') or '?'}: {g.get('failure_cause') or ''}"
    return GroupView(step=step, group_index=int(_first(g, "group_index", "index", default=0)),
                     question=str(question), ground_truth=g.get("ground_truth"),
                     status=str(g.get("status", "")), failure=failure, criteria=criteria, answers=answers,
                     template_versions=dict(g.get("template_versions") or {}))


def curves_sig(store: Any, run_id: int, attempt: Any) -> tuple:
    """What moves when a run's curves can change: its attempt, its newest metric row and its newest event.
    The trainer's heartbeat writes the store every few seconds without moving any of them."""
    return (attempt, store.last_seq("metrics", run_id), store.last_seq("events", run_id))


def panel_lines(store: Any, run_id: int, keys: list[str], panel: Panel, label: str,
                cache: SeriesCache | None = None) -> list[Series]:
    """The panel's main series (with spread) and its companion line, if those metrics exist."""
    out = []
    if cache is None:
        cache = SeriesCache()
    main = panel_series(store, run_id, keys, panel, label, cache=cache)
    if main is not None:
        out.append(main)
    ckey = pick_key(keys, panel.companion) if panel.companion else None
    if ckey:
        steps, values, walls = metric_series(store, run_id, ckey, cache)
        out.append(Series(label=panel.companion_label or ckey, steps=steps, values=values, wall=walls,
                          color="orange", buckets=cache.buckets(ckey)))
    if len(out) > 1 and main is not None:
        main.label = panel.main_label or ("student" if panel.companion_label == "teacher" else "prompt")
    return out
