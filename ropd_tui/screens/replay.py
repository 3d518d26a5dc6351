"""Replay verification: pick stored answers, a template version and a judge; run with progress and
cancel; see old vs new reward per answer, verdict flips per criterion and the summary (with AUC).

Keys: ctrl+r run · ctrl+x cancel · escape back. Past replays of the run are listed under "Replays";
enter opens one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import (Button, Checkbox, DataTable, Footer, Header, Input, Label, ProgressBar, Select, Static,
                             TabbedContent, TabPane)

from ..widgets.safe import clean, one_line, plain


def _f(v: Any, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


class ReplayScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+r", "run", "Run replay", priority=True),
        Binding("ctrl+x", "cancel", "Cancel", priority=True),
    ]
    DEFAULT_CSS = """
    ReplayScreen #rp-main { height: 1fr; }
    ReplayScreen #rp-form { width: 44; padding: 0 1; border-right: solid $panel; }
    ReplayScreen #rp-form Input, ReplayScreen #rp-form Select { margin-bottom: 0; }
    ReplayScreen #rp-form Label { margin-top: 1; color: $text-muted; width: 100%; }  /* wraps at 80 columns */
    ReplayScreen #rp-buttons { height: 3; margin-top: 1; }
    ReplayScreen #rp-right { width: 1fr; }
    ReplayScreen #rp-progress-row { height: 2; padding: 0 1; }
    ReplayScreen #rp-status { height: auto; max-height: 3; background: $panel; padding: 0 1; }
    ReplayScreen #rp-tabs { height: 1fr; }
    ReplayScreen DataTable { height: 1fr; }
    """

    def __init__(self, store_path: str, run_id: int | None = None) -> None:
        super().__init__()
        self.store_path = str(store_path)
        self.run_id = run_id
        self.cancel_event: threading.Event | None = None
        self.running = False
        self.report: Any = None
        self.replays: list[dict[str, Any]] = []
        self.loaded = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="rp-main"):
            with VerticalScroll(id="rp-form"):
                yield Label("Run")
                yield Select([], id="rp-run", prompt="run", allow_blank=True)
                yield Label("Steps (e.g. 1-5,8; empty = all)")
                yield Input(id="rp-steps", placeholder="all steps")
                yield Label("Prompts (hash prefixes or words, comma-separated)")
                yield Input(id="rp-prompts", placeholder="all prompts")
                yield Label("Reward range of a student answer (A:B)")
                yield Input(id="rp-range", placeholder="any reward")
                yield Checkbox("failed groups only", id="rp-failed")
                yield Label("Verifier template (file or stored sha; empty = current file)")
                yield Input(id="rp-tpl-verifier", placeholder="current file")
                yield Label("Rubricator template (file or stored sha)")
                yield Input(id="rp-tpl-rubricator", placeholder="current file")
                yield Label("Judge model (empty = the run's)")
                yield Input(id="rp-model", placeholder="the run's judge model")
                yield Label("Judge base URL")
                yield Input(id="rp-url", placeholder="the run's base URL")
                yield Checkbox("offline judge", id="rp-offline")
                yield Label("Rubric")
                yield Select([("reuse the stored rubric", "reuse"), ("induce a new rubric", "induce")],
                             id="rp-rubric", value="reuse", allow_blank=False)
                yield Checkbox("force (ignore the cache)", id="rp-force")
                with Horizontal(id="rp-buttons"):
                    yield Button("Run", id="rp-run-btn", variant="primary")
                    yield Button("Cancel", id="rp-cancel-btn", disabled=True)
            with Vertical(id="rp-right"):
                with Horizontal(id="rp-progress-row"):
                    yield ProgressBar(id="rp-progress", total=1, show_eta=False)
                yield Static("configure a replay and press ctrl+r", id="rp-status")
                with TabbedContent(id="rp-tabs", initial="rp-summary-tab"):
                    with TabPane("Summary", id="rp-summary-tab"):
                        yield DataTable(id="rp-summary", cursor_type="none", show_header=False)
                    with TabPane("Answers", id="rp-answers-tab"):
                        yield DataTable(id="rp-answers", cursor_type="row", zebra_stripes=True)
                    with TabPane("Criteria flips", id="rp-criteria-tab"):
                        yield DataTable(id="rp-criteria", cursor_type="row", zebra_stripes=True)
                    with TabPane("Replays", id="rp-list-tab"):
                        yield DataTable(id="rp-list", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "replay verification"
        self.query_one("#rp-summary", DataTable).add_columns("what", "value")
        self.query_one("#rp-answers", DataTable).add_columns("step", "group", "answer", "correct", "old", "new",
                                                             "shift", "text")
        self.query_one("#rp-criteria", DataTable).add_columns("step", "group", "criterion", "pts", "T→F", "F→T",
                                                              "agree")
        self.query_one("#rp-list", DataTable).add_columns("id", "status", "judge", "rubric", "groups", "created")
        self.load_runs()

    # -- reading the store -------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="rp-load", exit_on_error=False)
    def load_runs(self) -> None:
        from engine.replay.runner import list_replays
        from engine.store import RunStore

        try:
            with RunStore(self.store_path, create=False) as store:
                runs = [(r["name"], r["id"]) for r in store.list_runs()]
            replays = list_replays(self.store_path)
        except Exception as err:  # noqa: BLE001
            self.app.call_from_thread(self.app.notify, f"cannot read the store: {err}", severity="error")
            runs, replays = [], []
        self.app.call_from_thread(self._apply_runs, runs, replays)

    def _apply_runs(self, runs: list[tuple[str, int]], replays: list[dict[str, Any]]) -> None:
        select = self.query_one("#rp-run", Select)
        select.set_options([(name, rid) for name, rid in runs])
        if self.run_id is not None and any(rid == self.run_id for _, rid in runs):
            select.value = self.run_id
        elif runs and select.is_blank():
            select.value = runs[0][1]
        self.replays = replays
        self._fill_replays()
        self.loaded = True

    def _fill_replays(self) -> None:
        table = self.query_one("#rp-list", DataTable)
        table.clear()
        rid = self._selected_run()
        for r in self.replays:
            if rid is not None and r["run_id"] != rid:
                continue
            s = r.get("settings") or {}
            table.add_row(str(r["id"]), r["status"], plain(s.get("judge") or "", limit=40), s.get("rubric_mode", ""),
                          f"{r.get('n_done')}/{r.get('n_total')}",
                          time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created_at"])), key=str(r["id"]))

    def _selected_run(self) -> int | None:
        value = self.query_one("#rp-run", Select).value
        return None if value is Select.BLANK or value is None else int(value)

    @on(Select.Changed, "#rp-run")
    def _run_changed(self) -> None:
        self.run_id = self._selected_run()
        self._fill_replays()

    @on(DataTable.RowSelected, "#rp-list")
    def _open_replay(self, event: DataTable.RowSelected) -> None:
        if event.row_key and event.row_key.value:
            self.open_report(int(event.row_key.value))

    @work(thread=True, exclusive=True, group="rp-open", exit_on_error=False)
    def open_report(self, replay_id: int) -> None:
        from engine.replay.runner import load_report

        try:
            report = load_report(self.store_path, replay_id)
        except Exception as err:  # noqa: BLE001
            self.app.call_from_thread(self.app.notify, f"cannot open replay {replay_id}: {err}", severity="error")
            return
        self.app.call_from_thread(self.show_report, report)

    # -- running -------------------------------------------------------------------------------------------
    def build_spec(self) -> Any:
        """The form as a ReplaySpec (UserError on bad input)."""
        from engine.errors import ConfigError
        from engine.replay.runner import ReplaySpec, parse_reward_range, parse_steps

        def val(wid: str) -> str:
            return self.query_one(wid, Input).value.strip()

        run = self._selected_run()
        if run is None:
            raise ConfigError("pick a run to replay")
        templates = {role: val(f"#rp-tpl-{role}") for role in ("verifier", "rubricator") if val(f"#rp-tpl-{role}")}
        offline = self.query_one("#rp-offline", Checkbox).value
        if offline and (val("#rp-model") or val("#rp-url")):
            raise ConfigError("offline judge cannot be combined with a judge model or base URL")
        prompts = [p.strip() for p in val("#rp-prompts").split(",") if p.strip()] or None
        return ReplaySpec(
            run=str(run), steps=parse_steps(val("#rp-steps")), prompts=prompts,
            failed_only=self.query_one("#rp-failed", Checkbox).value, reward_range=parse_reward_range(val("#rp-range")),
            templates=templates, judge_model=val("#rp-model") or None, base_url=val("#rp-url") or None,
            offline=offline, rubric_mode=str(self.query_one("#rp-rubric", Select).value),
            force=self.query_one("#rp-force", Checkbox).value)

    @on(Button.Pressed, "#rp-run-btn")
    def action_run(self) -> None:
        from engine.errors import UserError

        if self.running:
            self.app.notify("a replay is already running (ctrl+x cancels it)", severity="warning")
            return
        try:
            spec = self.build_spec()
        except UserError as err:
            self.app.notify(str(err), severity="error", timeout=8)
            return
        self.cancel_event = threading.Event()
        self._set_running(True)
        self.query_one("#rp-progress", ProgressBar).update(total=1, progress=0)
        self.query_one("#rp-status", Static).update("starting…")
        self.run_replay(spec, self.cancel_event)

    @on(Button.Pressed, "#rp-cancel-btn")
    def action_cancel(self) -> None:
        if self.running and self.cancel_event is not None:
            self.cancel_event.set()
            self.query_one("#rp-status", Static).update("cancelling… (groups already judged are kept)")

    def _set_running(self, running: bool) -> None:
        self.running = running
        self.query_one("#rp-run-btn", Button).disabled = running
        self.query_one("#rp-cancel-btn", Button).disabled = not running

    @work(thread=True, exclusive=True, group="rp-run", exit_on_error=False)
    def run_replay(self, spec: Any, cancel: threading.Event) -> None:
        from engine.errors import UserError
        from engine.replay.runner import run_replay_sync

        def progress(p: Any) -> None:
            self.app.call_from_thread(self._progress, p.done_answers, p.total_answers, p.done_groups,
                                      p.total_groups, p.failed_groups, p.cached_calls, p.judge_calls, p.elapsed_s)

        try:
            report = run_replay_sync(self.store_path, spec, progress=progress, cancel=cancel)
        except UserError as err:
            self.app.call_from_thread(self._failed, str(err))
            return
        except Exception as err:  # noqa: BLE001 - shown, never a crash
            self.app.call_from_thread(self._failed, f"{type(err).__name__}: {err}")
            return
        self.app.call_from_thread(self._finished, report)

    def _progress(self, done: int, total: int, groups: int, total_groups: int, failed: int, cached: int,
                  calls: int, elapsed: float) -> None:
        self.query_one("#rp-progress", ProgressBar).update(total=max(total, 1), progress=done)
        self.query_one("#rp-status", Static).update(
            f"{done}/{total} answers · {groups}/{total_groups} groups · {failed} failed · "
            f"cached {cached}/{calls} calls · {elapsed:.1f}s")

    def _failed(self, message: str) -> None:
        self._set_running(False)
        self.query_one("#rp-status", Static).update(plain(f"replay failed: {message}", "red"))
        self.app.notify(clean(message), severity="error", timeout=10)

    def _finished(self, report: Any) -> None:
        self._set_running(False)
        self.show_report(report)
        self.load_runs()

    # -- results -------------------------------------------------------------------------------------------
    def show_report(self, report: Any) -> None:
        self.report = report
        s, st = report.summary, report.stats or {}
        settings = report.settings or {}
        status = Text(f"replay {report.replay_id} of {report.run_name}: {report.status}",
                      style="bold " + ("green" if report.status == "done" else "yellow"))
        status.append_text(plain(f"  judge {settings.get('judge')} · rubric {settings.get('rubric_mode')}"))
        if report.status == "failed" and getattr(report, "cause", None):
            status.append("\n")
            status.append_text(plain(report.cause, "red", limit=300))
        self.query_one("#rp-status", Static).update(status)
        summary = self.query_one("#rp-summary", DataTable)
        summary.clear()
        tpl = ", ".join(f"{r} {v.get('sha256', '')[:12]}" for r, v in (settings.get("templates") or {}).items())
        rows = [
            ("groups (failed)", f"{s.groups} ({s.failed_groups})"), ("student answers compared", str(s.answers)),
            ("mean reward old → new", f"{_f(s.mean_reward_old)} → {_f(s.mean_reward_new)}"),
            ("mean reward shift", _f(s.mean_reward_shift, True)),
            ("verdict agreement", _f(s.verdict_agreement)), ("verdict flips", str(s.verdict_flips)),
            ("AUC reward vs correct old → new", f"{_f(s.auc_old)} → {_f(s.auc_new)}  ({s.answers_with_truth} with truth)"),
            ("teacher mean old → new", f"{_f(s.teacher_mean_old)} → {_f(s.teacher_mean_new)}"),
            ("judge calls (cached)", f"{st.get('judge_calls', '-')} ({st.get('cached_calls', '-')})"),
            ("answers/s", f"{st['answers_per_s']:.1f}" if st.get("answers_per_s") else "-"),
            ("templates", tpl),
        ]
        for k, v in rows:
            summary.add_row(k, plain(v))
        answers = self.query_one("#rp-answers", DataTable)
        answers.clear()
        for a in sorted(report.answers, key=lambda a: -abs(a.shift or 0.0)):
            shift = a.shift
            answers.add_row(str(a.step), str(a.group_index), f"{a.kind[0]}{a.index}",
                            "-" if a.correct is None else ("✓" if a.correct else "✗"), _f(a.old_reward),
                            _f(a.new_reward),
                            Text(_f(shift, True), style="green" if (shift or 0) > 0 else "red" if (shift or 0) < 0 else ""),
                            one_line(a.text, 60))
        crits = self.query_one("#rp-criteria", DataTable)
        crits.clear()
        for g, c in report.criterion_flips():
            crits.add_row(str(g.step), str(g.group_index), one_line(f"{c.criterion_id}: {c.text}", 70), str(c.points),
                          str(c.true_to_false), str(c.false_to_true), _f(c.agreement))

    def action_back(self) -> None:
        if self.running and self.cancel_event is not None:
            self.cancel_event.set()  # leaving cancels; what was judged is stored
        self.app.pop_screen()
