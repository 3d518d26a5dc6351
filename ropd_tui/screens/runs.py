"""Runs: every run in the store, live, with keys to open, launch, stop, resume, restart, delete."""

from __future__ import annotations

from typing import Any, Iterable

from rich.text import Text
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Header, Input, Static

from ..widgets.safe import plain
from .base import LiveScreen
from .views import ACTIVE, RunRow, fmt_duration, fmt_num, run_row

STATUS_STYLE = {
    "running": "bold green", "finished": "cyan", "failed": "bold red", "killed": "red", "oom": "bold red",
    "stalled": "bold yellow", "stopped": "yellow", "created": "dim", "starting": "green",
}
STATUS_FILTERS = ["all", "active", "running", "finished", "failed", "stalled", "stopped"]
SUPERVISE_EVERY = 4  # polls between supervisor refreshes (classify runs that ended while nobody watched)


def status_text(status: str) -> Text:
    return plain(status, STATUS_STYLE.get(status, ""))


class RunsScreen(LiveScreen):
    """The start screen."""

    BINDINGS = [
        Binding("enter", "open_run", "Open", show=True),
        Binding("n", "new_run", "New"),
        Binding("T", "open_extra('templates')", "Templates", show=False),
        Binding("P", "open_extra('replay')", "Replay", show=False),
        Binding("s", "stop", "Stop"),
        Binding("r", "resume", "Resume"),
        Binding("R", "restart", "Restart", show=False),
        Binding("d", "delete", "Delete"),
        Binding("slash", "filter", "Filter"),
        Binding("f", "status_filter", "Status", show=False),
        Binding("space", "mark", "Mark", show=False),
        Binding("c", "compare", "Compare"),
        Binding("i", "inspect", "Inspect", show=False),
        Binding("escape", "clear_filter", "Clear", show=False),
        Binding("q", "app.quit", "Quit", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[RunRow] = []
        self.name_filter = ""
        self.status_filter = "all"
        self.marked: set[int] = set()
        self._polls = 0

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="runs-filterbar", classes="-hidden"):
            yield Input(placeholder="filter runs by name (enter to apply, esc to clear)", id="runs-filter")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="runs-status", classes="statusline")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label in (("mark", " "), ("name", "name"), ("status", "status"), ("backend", "backend"),
                           ("step", "step"), ("reward", "reward"), ("acc", "acc"), ("cost", "judge $"),
                           ("elapsed", "time"), ("now", "now")):
            table.add_column(label, key=key)
        table.focus()
        self.set_interval(1.0, self._tick_elapsed)
        super().on_mount()

    # -- data ---------------------------------------------------------------------------------------
    def load(self, store: Any) -> list[RunRow]:
        return [run_row(d) for d in store.list_runs()]

    def tick(self, store: Any) -> Any:
        """Every few polls, let the supervisor classify runs that ended (re-attach after restarts)."""
        self._polls += 1
        if not getattr(self.app, "supervise", True) or self._polls % SUPERVISE_EVERY:
            return None
        if not any(r.status in ACTIVE for r in self.rows):
            return None
        try:
            self.app.gateway.supervisor().refresh_all()
        except Exception:  # noqa: BLE001 - supervision is best effort here; reads still work
            return None
        rows = self.load(store)
        return rows if [(r.status, r.step) for r in rows] != [(r.status, r.step) for r in self.rows] else None

    async def apply(self, rows: list[RunRow]) -> None:
        self.rows = rows
        self._render_table()

    def visible_rows(self) -> list[RunRow]:
        out = []
        needle = self.name_filter.lower()
        for r in self.rows:
            if needle and needle not in r.name.lower():
                continue
            f = self.status_filter
            if f == "active" and r.status not in ACTIVE:
                continue
            if f not in ("all", "active") and r.status != f:
                continue
            out.append(r)
        return out

    def _render_table(self) -> None:
        table = self.query_one(DataTable)
        current = self.selected()
        table.clear()
        now = self.app.clock()
        rows = self.visible_rows()
        for r in rows:
            table.add_row(
                Text("●" if r.id in self.marked else " ", style="bold magenta"),
                plain(r.name, "bold"), status_text(r.status), plain(r.backend),
                fmt_num(r.step), fmt_num(r.reward), fmt_num(r.accuracy), plain(r.cost), fmt_duration(r.elapsed(now)),
                self._now_cell(r, now), key=str(r.id))
        if current is not None:
            for i, r in enumerate(rows):
                if r.id == current.id:
                    table.move_cursor(row=i)
                    break
        self._render_status()

    def _render_status(self) -> None:
        rows = self.visible_rows()
        current = self.selected()
        now = self.app.clock()
        parts = [f"{len(rows)}/{len(self.rows)} runs"]
        if self.name_filter:
            parts.append(f"name ~ {self.name_filter!r}")
        parts.append(f"status: {self.status_filter}")
        if self.marked:
            parts.append(f"{len(self.marked)} marked for compare")
        live = current.now(now) if current is not None else None
        if live is not None:  # the selected run's step, in full (the "now" column is short)
            parts.append(f"{current.name}: {live.text}")
        if not self.rows:
            parts = ["no runs yet: press n to start one (or ropd-tui --headless train --config configs/demo.yaml)"]
        self.query_one("#runs-status", Static).update(plain(" · ".join(parts)))

    @staticmethod
    def _now_cell(r: RunRow, clock: float) -> Text:
        """What an active run's step is doing (the trainer's heartbeat), yellow when it stopped moving."""
        line = r.now(clock)
        if line is None:
            return Text("")
        return plain(line.short, "bold yellow" if line.quiet else "")

    def _tick_elapsed(self) -> None:
        if not any(r.status in ACTIVE for r in self.rows):
            return
        table = self.query_one(DataTable)
        now = self.app.clock()
        for r in self.visible_rows():
            if r.status in ACTIVE:
                try:
                    table.update_cell(str(r.id), "elapsed", fmt_duration(r.elapsed(now)))
                    table.update_cell(str(r.id), "now", self._now_cell(r, now))
                except Exception:  # noqa: BLE001 - the row went away between polls
                    pass
        self._render_status()

    def selected(self) -> RunRow | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001
            return None
        return next((r for r in self.rows if str(r.id) == key), None)

    # -- actions --------------------------------------------------------------------------------------
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._render_status()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def _need_run(self) -> RunRow | None:
        run = self.selected()
        if run is None:
            self.app.notify("no run selected", severity="warning")
        return run

    def action_open_run(self) -> None:
        run = self._need_run()
        if run:
            self.app.open_screen("run", run_id=run.id, name=run.name)

    def action_inspect(self) -> None:
        run = self._need_run()
        if run:
            self.app.open_screen("inspector", run_id=run.id, name=run.name)

    def action_new_run(self) -> None:
        self.app.open_screen("new_run")

    def _confirm_op(self, op: str, question: str) -> None:
        from .confirm import ConfirmScreen

        run = self._need_run()
        if not run:
            return

        def done(ok: bool | None) -> None:
            if ok:
                self.app.run_operation(op, run.id, run.name)

        self.app.push_screen(ConfirmScreen(question.format(name=run.name)), done)

    def action_stop(self) -> None:
        run = self._need_run()
        if run and run.status not in ACTIVE:
            self.app.notify(f"{run.name} is not running ({run.status})", severity="warning")
            return
        self._confirm_op("stop", "Stop run {name}? (SIGTERM, then SIGKILL after the grace period)")

    def action_resume(self) -> None:
        run = self._need_run()
        if run:
            if run.status in ACTIVE:
                self.app.notify(f"{run.name} is already {run.status}", severity="warning")
                return
            self.app.run_operation("resume", run.id, run.name)

    def action_restart(self) -> None:
        self._confirm_op("restart", "Restart run {name} from scratch as a new attempt? (the old attempt's steps and checkpoints are kept)")

    def action_delete(self) -> None:
        self._confirm_op("delete", "Delete run {name} with all its steps, verdicts and files? This cannot be undone.")

    def action_filter(self) -> None:
        bar = self.query_one("#runs-filterbar")
        bar.remove_class("-hidden")
        self.query_one("#runs-filter", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.name_filter = event.value.strip()
        if not self.name_filter:
            self.query_one("#runs-filterbar").add_class("-hidden")
        self.query_one(DataTable).focus()
        self._render_table()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.name_filter = event.value.strip()
        self._render_table()

    def action_clear_filter(self) -> None:
        self.name_filter = ""
        self.status_filter = "all"
        inp = self.query_one("#runs-filter", Input)
        inp.value = ""
        self.query_one("#runs-filterbar").add_class("-hidden")
        self.query_one(DataTable).focus()
        self._render_table()

    def action_status_filter(self) -> None:
        i = STATUS_FILTERS.index(self.status_filter)
        self.status_filter = STATUS_FILTERS[(i + 1) % len(STATUS_FILTERS)]
        self._render_table()

    def action_mark(self) -> None:
        run = self.selected()
        if run:
            self.marked ^= {run.id}
            self._render_table()

    def action_compare(self) -> None:
        ids = [r.id for r in self.rows if r.id in self.marked]
        if len(ids) < 2:
            self.app.notify("mark two or more runs with space, then press c", severity="warning")
            return
        self.app.open_screen("compare", run_ids=ids)

    def _extra_run_id(self) -> int | None:
        run = self.selected()
        return run.id if run else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "open_extra":
            return self.app.has_screen(str(parameters[0]))
        return True

    def action_open_extra(self, name: str) -> None:
        self.app.open_screen(name, run_id=self._extra_run_id())

    def palette_commands(self) -> Iterable[SystemCommand]:
        yield SystemCommand("New run", "Pick a config, edit overrides, launch", self.action_new_run)
        run = self.selected()
        if run:  # "Open run X" / "Inspect rubrics of X" come from the app's RunsProvider, for every run
            name = run.name
            yield SystemCommand(f"Stop {name}", "Stop the selected run", self.action_stop)
            yield SystemCommand(f"Resume {name}", "Resume from the latest checkpoint", self.action_resume)
            yield SystemCommand(f"Restart {name}", "Start over from scratch", self.action_restart)
            yield SystemCommand(f"Delete {name}", "Delete the run (asks first)", self.action_delete)
        yield SystemCommand("Compare marked runs", "Overlay curves and diff configs", self.action_compare)
        yield SystemCommand("Filter runs by name", "Type part of a name", self.action_filter)
        yield SystemCommand("Cycle status filter", "all / active / running / ...", self.action_status_filter)
