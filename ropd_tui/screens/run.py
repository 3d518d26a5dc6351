"""Run: curves (reward with spread, accuracy, judge failures/latency/tokens, response length, judge cost),
key figures, config and exit cause, and the subprocess log with follow / pause / search."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import yaml
from rich.text import Text
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Grid, Horizontal, VerticalScroll
from textual.widgets import Footer, Header, Input, Static, TabbedContent, TabPane

from ..widgets.curves import CurvePlot, Series, fit_grid
from ..widgets.log_view import LogChunk, LogTail, LogView
from ..widgets.safe import plain
from .base import LiveScreen
from .views import (ACTIVE, PANELS, SHOWN_EVENTS, SeriesCache, curves_sig, empty_text, event_markers, fmt_duration,
                    fmt_num, panel_lines, run_events, run_judge, run_row)

SMOOTHING_STEPS = [0.0, 0.6, 0.9]


@dataclass
class RunData:
    info: dict[str, Any]
    series: list[list[Series]]  # per panel: its lines
    markers: list[tuple[float, float | None, str]]
    events: list[dict[str, Any]]
    keys: list[str]
    latest: dict[str, float] = field(default_factory=dict)
    log: LogChunk | None = None
    cost: dict[str, Any] = field(default_factory=dict)  # engine.judging.cost.cost_summary


def run_info(store: Any, run_id: int) -> dict[str, Any]:
    """The run record as a dict (config snapshot, status, cause, paths)."""
    rec = store.get_run(run_id)
    out = rec.to_dict()
    out["log_path"] = str(rec.log_path)
    return out


def log_path_of(info: dict[str, Any]) -> str | None:
    from pathlib import Path

    for key in ("log_path", "log_file", "log"):
        if info.get(key):
            return str(info[key])
    if info.get("run_dir"):
        return str(Path(info["run_dir"]) / "run.log")
    return None


class RunScreen(LiveScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("1", "tab('curves')", "Curves", show=False),
        Binding("2", "tab('overview')", "Overview", show=False),
        Binding("3", "tab('log')", "Log", show=False),
        Binding("m", "smoothing", "Smooth"),
        Binding("x", "x_axis", "X axis"),
        Binding("i", "inspect", "Inspect"),
        Binding("l", "tab('log')", "Log"),
        Binding("f", "follow", "Follow", show=False),
        Binding("slash", "search", "Search", show=False),
        Binding("n", "next_match", "Next", show=False),
        Binding("N", "prev_match", "Prev", show=False),
        Binding("T", "open_extra('templates')", "Templates", show=False),
        Binding("P", "open_extra('replay')", "Replay", show=False),
        Binding("s", "stop", "Stop", show=False),
        Binding("r", "resume", "Resume", show=False),
    ]

    def __init__(self, run_id: int, name: str | None = None) -> None:
        super().__init__()
        self.run_id = run_id
        self.run_name = name or str(run_id)
        self.smoothing = 0.6
        self.x_axis = "step"
        self.data: RunData | None = None
        self._tail: LogTail | None = None
        self._series_cache = SeriesCache()  # reader thread only: a new step reads only its new points
        self._curves_sig: tuple | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="run-summary", classes="statusline")
        with TabbedContent(id="run-tabs", initial="curves"):
            with TabPane("Curves", id="curves"):
                with VerticalScroll():
                    with Grid(id="curve-grid"):
                        for i, p in enumerate(PANELS):
                            yield CurvePlot(p.title, id=f"curve-{i}")
            with TabPane("Overview", id="overview"):
                with VerticalScroll():
                    yield Static("", id="run-figures")
                    yield Static("", id="run-exit")
                    yield Static("", id="run-events")
                    yield Static("", id="run-config")
                    yield Static("", id="run-metrics")
            with TabPane("Log", id="log"):
                with Horizontal(id="log-searchbar", classes="-hidden"):
                    yield Input(placeholder="search the log (enter: next match, esc: close)", id="log-search")
                yield LogView(id="run-log")
                yield Static("", id="log-status", classes="statusline")
        yield Footer()

    def on_resize(self, event) -> None:
        fit_grid(self.query_one("#curve-grid", Grid), event.size.width, event.size.height, len(PANELS))

    def on_mount(self) -> None:
        self.sub_title = self.run_name
        self.set_interval(1.0, self._tick)
        super().on_mount()

    # -- data ---------------------------------------------------------------------------------------
    def load(self, store: Any) -> RunData:
        info = run_info(store, self.run_id)
        info["progress"] = store.progress([self.run_id]).get(self.run_id)
        # the trainer's heartbeat moves the store every few seconds: re-read the curves only when the
        # run's metrics or events did
        sig = curves_sig(store, self.run_id, info.get("attempt"))
        if self.data is not None and sig == self._curves_sig:
            d = self.data
            return RunData(info=info, series=d.series, markers=d.markers, events=d.events, keys=d.keys,
                           latest=d.latest, log=self._tail.read() if self._tail is not None else None, cost=d.cost)
        self._curves_sig = sig
        keys = list(store.metric_keys(self.run_id))
        self._series_cache.check(info.get("attempt"), info.get("last_step"))
        series = [panel_lines(store, self.run_id, keys, p, self.run_name, self._series_cache) for p in PANELS]
        events = run_events(store, self.run_id, getattr(self, "_last_event_seq", None))
        latest = {}
        try:
            lm = store.latest_metrics([self.run_id])
            latest = dict(lm.get(self.run_id, {}) if isinstance(lm, dict) else {})
        except Exception:  # noqa: BLE001 - key figures are optional
            latest = {}
        if self._tail is None:
            self._tail = LogTail(log_path_of(info))
        from engine.judging.cost import cost_summary

        return RunData(info=info, series=series, markers=event_markers(events), events=events, keys=keys,
                       latest=latest, log=self._tail.read(), cost=cost_summary(info.get("config") or {}, latest))

    def tick(self, store: Any) -> Any:
        if self._tail is None:
            return None
        chunk = self._tail.read()
        return chunk if (chunk.lines or chunk.reset) else None

    async def apply(self, data: Any) -> None:
        if isinstance(data, LogChunk):
            self._apply_log(data)
            return
        self._announce_rejections(data.events)
        same_curves = self.data is not None and data.series is self.data.series
        self.data = data
        if not same_curves:  # only the run's state or its step's progress moved: no replot
            self._apply_curves()
        self._apply_overview()
        if data.log is not None:
            self._apply_log(data.log)

    def _announce_rejections(self, events: list[dict[str, Any]]) -> None:
        """A template edit the running run rejected pops up once (it is also in Overview's events)."""
        last_seen = getattr(self, "_last_event_seq", None)
        newest = max((e.get("seq") or 0 for e in events), default=0)
        if last_seen is not None:
            for e in events:
                if (e.get("seq") or 0) > last_seen and e.get("kind") == "template_rejected":
                    text = plain(f"{self.run_name}: template edit rejected; the previous version stays in use. "
                                 f"{e.get('message') or ''}", limit=400).plain
                    self.app.notify(text, severity="error", timeout=12, markup=False)
        self._last_event_seq = newest

    def _apply_curves(self) -> None:
        if not self.data:
            return
        judge = run_judge(self.data.events)
        for i, (panel, s) in enumerate(zip(PANELS, self.data.series)):
            plot = self.query_one(f"#curve-{i}", CurvePlot)
            plot.set_data(s, self.data.markers, smoothing=self.smoothing, x_axis=self.x_axis, bounds=panel.bounds,
                          empty_text=empty_text(panel, judge))

    def _render_summary(self) -> None:
        if self.data is None:
            return
        row = run_row(self.data.info)
        elapsed = fmt_duration(row.elapsed(self.app.clock()))
        summary = Text()
        summary.append_text(plain(row.name, "bold"))
        summary.append(f"  {row.status}", style="bold green" if row.status in ACTIVE else "bold")
        summary.append(f" {row.backend} step {fmt_num(row.step)} {elapsed}")
        if self.data.cost.get("total_usd") is not None:
            summary.append_text(plain(f" · judge {self.data.cost['text']}"))
        summary.append(f" · smooth {self.smoothing:g} · x {self.x_axis}")
        line = row.now(self.app.clock())
        if line is not None:  # inside a step: what the trainer is doing (its heartbeat in the store)
            summary.append("\nnow: ", style="bold")
            summary.append_text(plain(line.text, "bold yellow" if line.quiet else ""))
        self.query_one("#run-summary", Static).update(summary)

    def _tick(self) -> None:
        """Elapsed time of a live run moves every second without reading the store."""
        if self.data is not None and run_row(self.data.info).status in ACTIVE:
            self._render_summary()

    def _apply_overview(self) -> None:
        d = self.data
        assert d is not None
        row = run_row(d.info)
        status = row.status
        self._render_summary()

        figures = Text("Key figures\n", style="bold")
        for panel, lines in zip(PANELS, d.series):
            for line in lines:
                if not line.values:
                    continue
                vals = line.values
                name = panel.title.split(" (")[0] + ("" if len(lines) == 1 else f" ({line.label})")
                figures.append_text(plain(f"  {name:<28} last {vals[-1]:<10.4g} min {min(vals):<10.4g} "
                                          f"max {max(vals):.4g}\n"))
        if not any(d.series):
            figures.append("  no metrics logged yet\n", style="dim")
        if d.cost:
            from engine.judging.cost import describe_run_cost

            figures.append_text(plain(f"  {'judge cost':<28} {describe_run_cost(d.cost)}\n"))
        metrics = Text("\nLatest value of every metric\n", style="bold")
        for key in sorted(d.latest):
            metrics.append_text(plain(f"  {key:<36} {fmt_num(d.latest[key], 4)}\n"))
        self.query_one("#run-metrics", Static).update(metrics)
        self.query_one("#run-figures", Static).update(figures)

        exit_text = Text()
        cause = d.info.get("cause") or d.info.get("exit_cause")
        if status not in ACTIVE and status not in ("created",):
            exit_text.append("\nEnded: ", style="bold")
            exit_text.append_text(plain(f"{status}"))
            if d.info.get("exit_code") is not None:
                exit_text.append_text(plain(f"  exit code {d.info['exit_code']}"))
            if d.info.get("exit_signal"):
                exit_text.append_text(plain(f"  signal {d.info['exit_signal']}"))
            if cause:
                exit_text.append("\n  ")
                exit_text.append_text(plain(cause, "red" if status in ("failed", "oom", "killed") else ""))
            tail = d.info.get("stderr_tail")
            if tail and status != "finished":
                exit_text.append("\n  last lines of stderr:\n", style="bold")
                exit_text.append_text(plain(tail, "dim"))
        self.query_one("#run-exit", Static).update(exit_text)

        ev = Text("\nEvents\n", style="bold")
        for e in d.events[-SHOWN_EVENTS:]:
            step = e.get("step")
            ev.append_text(plain(f"  {e.get('kind', '?'):<18} step {fmt_num(step):<6} {e.get('message', '')}\n"))
        self.query_one("#run-events", Static).update(ev)

        config = d.info.get("config") or d.info.get("config_json") or {}
        if isinstance(config, str):
            try:
                import json

                config = json.loads(config)
            except ValueError:
                pass
        cfg_text = Text("\nConfig\n", style="bold")
        cfg_text.append_text(plain(yaml.safe_dump(config, sort_keys=False) if isinstance(config, dict)
                                   else str(config)))
        self.query_one("#run-config", Static).update(cfg_text)

    def _apply_log(self, chunk: LogChunk) -> None:
        view = self.query_one(LogView)
        if chunk.reset:
            view.clear()
        view.append(chunk.lines)
        self._log_status(missing=chunk.missing and not view.lines)

    def _log_status(self, missing: bool = False) -> None:
        view = self.query_one(LogView)
        if missing:
            text = "no log file yet for this run"
        else:
            state = "following" if view.follow else "paused (f to follow)"
            text = f"{len(view.lines)} lines · {state}"
            if view.search:
                text += f" · '{view.search}': {len(view.matches())} matches (n/N)"
        self.query_one("#log-status", Static).update(plain(text))

    # -- actions --------------------------------------------------------------------------------------
    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        if tab == "log":
            self.query_one(LogView).focus()

    def action_smoothing(self) -> None:
        i = SMOOTHING_STEPS.index(self.smoothing) if self.smoothing in SMOOTHING_STEPS else 0
        self.smoothing = SMOOTHING_STEPS[(i + 1) % len(SMOOTHING_STEPS)]
        self._apply_curves()
        if self.data:
            self._apply_overview()

    def action_x_axis(self) -> None:
        self.x_axis = "wall" if self.x_axis == "step" else "step"
        self._apply_curves()
        if self.data:
            self._apply_overview()

    def action_inspect(self) -> None:
        self.app.open_screen("inspector", run_id=self.run_id, name=self.run_name)

    def action_follow(self) -> None:
        view = self.query_one(LogView)
        view.follow = not view.follow
        self._log_status()

    def action_search(self) -> None:
        self.action_tab("log")
        self.query_one("#log-searchbar").remove_class("-hidden")
        self.query_one("#log-search", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter runs the search and hands the keys back to the log (n/N/f work at once); the term and
        its matches stay in the status line, / opens the bar again."""
        view = self.query_one(LogView)
        if view.search != event.value:
            view.search = event.value
        view.next_match()
        self.query_one("#log-searchbar").add_class("-hidden")
        view.focus()
        self._log_status()

    def action_back(self) -> None:
        if self.focused is self.query_one("#log-search", Input):
            self.query_one("#log-searchbar").add_class("-hidden")
            self.query_one(LogView).focus()
            return
        self.app.pop_screen()

    def action_next_match(self) -> None:
        self.query_one(LogView).next_match()
        self._log_status()

    def action_prev_match(self) -> None:
        self.query_one(LogView).next_match(backwards=True)
        self._log_status()

    def action_stop(self) -> None:
        from .confirm import ConfirmScreen

        def done(ok: bool | None) -> None:
            if ok:
                self.app.run_operation("stop", self.run_id, self.run_name)

        self.app.push_screen(ConfirmScreen(f"Stop run {self.run_name}?"), done)

    def action_resume(self) -> None:
        self.app.run_operation("resume", self.run_id, self.run_name)

    def _extra_run_id(self) -> int | None:
        return self.run_id

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "open_extra":
            return self.app.has_screen(str(parameters[0]))
        return True

    def action_open_extra(self, name: str) -> None:
        self.app.open_screen(name, run_id=self._extra_run_id())

    def palette_commands(self) -> Iterable[SystemCommand]:
        yield SystemCommand("Smoothing: cycle 0 / 0.6 / 0.9", "Exponential moving average of the curves",
                            self.action_smoothing)
        yield SystemCommand("X axis: step / wall time", "Toggle the x axis of the curves", self.action_x_axis)
        yield SystemCommand("Inspect rubrics", "Open the rubric inspector for this run", self.action_inspect)
        yield SystemCommand("Search this run…", "Full text: criteria, student and teacher answers, judge replies",
                            lambda: self.app.open_search(self.run_id, self.run_name))
        yield SystemCommand("Log: search", "Search the run's log", self.action_search)
        yield SystemCommand("Log: follow / pause", "Toggle following the end of the log", self.action_follow)
        yield SystemCommand("Stop this run", "SIGTERM, then SIGKILL", self.action_stop)
        yield SystemCommand("Resume this run", "From the latest checkpoint", self.action_resume)
