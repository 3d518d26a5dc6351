"""Rubric inspector: one step and prompt at a time (question, ground truth, rubric, teacher answers and
student rollouts side by side, verdict matrix), plus run-wide per-criterion pass rates."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Footer, Header, Input, Static, TabbedContent, TabPane

from engine.scoring.criterion_stats import VERDICT_ORDER, RunWide

from ..widgets.answers import AnswerPanes
from ..widgets.safe import one_line, plain
from ..widgets.verdicts import AnswerView, VerdictMatrix
from .base import LiveScreen
from .views import GroupView, group_view

SORTS = ["pool", "reward ↓", "reward ↑"]
STAT_LIMIT = 200  # rows per run-wide list (the most telling ones); never the whole run
DETAIL_CACHE = 32  # groups (answers, criteria, verdicts) held, the most recently shown ones


@dataclass(frozen=True)
class GroupSummary:
    """One prompt of a step, without its texts (RunStore.step_group_summaries): enough for the
    navigation and the status line; ``id`` names the group's rows, which never change once written."""
    id: int
    step: int
    group_index: int
    status: str


@dataclass
class StepData:
    nav: dict  # RunStore.step_nav of the step: first, last, prev, next, index, count
    step: int | None
    groups: list[GroupSummary]
    details: dict[int, GroupView] = field(default_factory=dict)  # by group id: the one to show, as read


def order_answers(answers: list[AnswerView], sort: str, failed_criterion: int | None) -> list[AnswerView]:
    """Sort (pool order, reward descending or ascending) and filter (answers failing one criterion)."""
    out = list(answers)
    if failed_criterion is not None:
        out = [a for a in out if a.failed(failed_criterion)]
    if sort == "reward ↓":
        out.sort(key=lambda a: (a.reward is None, -(a.reward or 0.0)))
    elif sort == "reward ↑":
        out.sort(key=lambda a: (a.reward is None, a.reward or 0.0))
    else:
        out.sort(key=lambda a: (a.kind != "teacher", a.index))
    return out


class InspectorScreen(LiveScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("right_square_bracket", "step(1)", "Step+"),
        Binding("left_square_bracket", "step(-1)", "Step-"),
        Binding("n", "prompt(1)", "Prompt+"),
        Binding("p", "prompt(-1)", "Prompt-"),
        Binding("g", "goto", "Go to step", show=False),
        Binding("home", "edge_step(-1)", "First step", show=False),
        Binding("end", "edge_step(1)", "Last step", show=False),
        Binding("o", "sort", "Sort"),
        Binding("F", "filter_failed", "Filter"),
        Binding("w", "run_wide", "Run-wide"),
        Binding("v", "rw_filter", "Verdict filter", show=False),
        Binding("plus", "rw_more", "More", show=False),
        Binding("slash", "search", "Search", show=False),
    ]

    def __init__(self, run_id: int, name: str | None = None, step: int | None = None,
                 group_index: int | None = None, select: str | None = None) -> None:
        super().__init__()
        self.run_id = run_id
        self.run_name = name or str(run_id)
        self.step: int | None = step  # None: the latest step
        self.follow_latest = step is None
        self.group_pos = 0
        self._want_group: int | None = group_index  # show this prompt (group_index) once the step is loaded
        self._want_answer: str | None = select  # then select this answer ("student:2")
        self.search_state: Any = None  # the last search (query, kinds, results), shown again on /
        self.sort = "pool"
        self.failed_criterion: int | None = None
        self.data: StepData | None = None
        self._want_run_wide = False
        self.run_wide: RunWide | None = None
        self._run_wide_version: Any = None
        self.rw_filter: str | None = None  # run-wide list: one verdict only (None: all)
        self._rw_reset = False  # re-read the first page (filter changed)
        self._rw_more = False  # read the next page (keyset) and append it
        self._quiet_until = 0.0  # highlight events caused by a re-render don't scroll the page
        # the groups read in full, by id (the reader thread only reads this; the UI thread fills it)
        self._details: OrderedDict[int, GroupView] = OrderedDict()
        self._render_pending = False  # a load came without the shown prompt's details: draw it on the next

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="insp-status", classes="statusline")
        with TabbedContent(id="insp-tabs", initial="prompt"):
            with TabPane("Prompt", id="prompt"):
                with VerticalScroll(id="insp-scroll"):
                    yield Static("", id="insp-question")
                    yield Static("", id="insp-rubric")
                    yield VerdictMatrix(id="insp-matrix")
                    yield AnswerPanes(id="insp-answers")
            with TabPane("Run-wide criteria", id="runwide"):
                yield Static("", id="runwide-summary")
                yield DataTable(id="runwide-table", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="insp-gotobar", classes="-hidden"):
            yield Input(placeholder="go to step (number, enter)", id="insp-goto", type="integer")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.run_name} · rubric inspector"
        table = self.query_one("#runwide-table", DataTable)
        for key, label in (("verdict", "verdict"), ("t", "teacher"), ("s", "students"), ("step", "step"),
                           ("g", "prompt"), ("id", "id"), ("text", "criterion")):
            table.add_column(label, key=key)
        self.query_one("#insp-matrix", VerdictMatrix).focus(scroll_visible=False)
        super().on_mount()

    # -- data (reader thread) ---------------------------------------------------------------------------
    def load(self, store: Any) -> Any:
        with store.read_snapshot():  # one snapshot: the group to show is one of the step's groups
            nav = store.step_nav(self.run_id, None if self.follow_latest else self.step)
            step = nav["step"]
            groups = [GroupSummary(id=int(g["id"]), step=int(g["step"]), group_index=int(g["group_index"]),
                                   status=str(g["status"] or ""))
                      for g in store.step_group_summaries(self.run_id, step)] if step is not None else []
            data = StepData(nav=nav, step=step, groups=groups)
            if groups:  # the details of the shown group only (read unless already held)
                gid = groups[self._target_pos(groups)].id
                view = self._details.get(gid)
                data.details[gid] = view if view is not None else _read_group(store, gid)
        if self._want_run_wide:
            if self.run_wide is None or self._rw_reset or self._run_wide_version != self.loading_version:
                self._rw_reset = self._rw_more = False
                self._run_wide_version = self.loading_version
                return data, ("page", store.criterion_page(self.run_id, STAT_LIMIT, verdict=self.rw_filter))
            if self._rw_more and self.run_wide.cursor is not None:
                self._rw_more = False
                return data, ("more", store.criterion_page(self.run_id, STAT_LIMIT, verdict=self.rw_filter,
                                                           after=self.run_wide.cursor, with_counts=False))
        return data

    async def apply(self, data: Any) -> None:
        if isinstance(data, tuple):
            data, (kind, page) = data
            if kind == "more" and self.run_wide is not None:
                self.run_wide.top += page.top
                self.run_wide.cursor = page.cursor
            else:
                self.run_wide = page
            self._render_run_wide(keep_cursor=kind == "more")
        changed = self.data is None or self.data.step != data.step or self._group_sig(self.data) != self._group_sig(data)
        for gid, view in data.details.items():
            self._hold(gid, view)
        self.data = data
        self.step = data.step
        if self._want_group is not None or self._render_pending:
            changed = True
        self.group_pos = self._target_pos(data.groups)
        self._want_group = None
        self._render_pending = False
        if self.data.groups and self.group is None:
            # moved to another prompt while this was read: the next load reads that one, then draws it
            self._render_pending = True
            self._render_status()
            self.reload()
            return
        if changed:
            await self._render_group()
        else:
            self._render_status()

    @staticmethod
    def _group_sig(d: StepData) -> list[tuple[int, int, str]]:
        return [(g.group_index, g.id, g.status) for g in d.groups]

    def _target_pos(self, groups: list[GroupSummary]) -> int:
        """The position to show among ``groups``: the prompt asked for (jump_to), else the current one."""
        pos = self.group_pos
        if self._want_group is not None:
            pos = next((i for i, g in enumerate(groups) if g.group_index == self._want_group), pos)
        return min(pos, max(0, len(groups) - 1))

    def _hold(self, gid: int, view: GroupView) -> None:
        self._details[gid] = view
        self._details.move_to_end(gid)
        while len(self._details) > DETAIL_CACHE:
            self._details.popitem(last=False)

    async def _fetch_shown(self) -> bool:
        """Read the details of the prompt at ``group_pos`` unless held; False when it could not be read
        (e.g. the step was rewritten meanwhile: then the step is read again)."""
        for _ in range(3):  # a poll may replace the step while the read runs: then read its group
            d = self.data
            if not d or not d.groups:
                return True
            gid = d.groups[min(self.group_pos, len(d.groups) - 1)].id
            if gid in self._details:
                return True
            try:
                view = await self.app.gateway.call(_read_group, gid)
            except Exception:  # noqa: BLE001 - the group is gone (step rewritten): read the step again
                return False
            self._hold(gid, view)
        return self.group is not None

    # -- rendering ----------------------------------------------------------------------------------------
    @property
    def group(self) -> GroupView | None:
        if not self.data or not self.data.groups:
            return None
        pos = min(self.group_pos, len(self.data.groups) - 1)
        return self._details.get(self.data.groups[pos].id)

    def _render_status(self) -> None:
        d = self.data
        t = Text()
        if not d or d.step is None:
            t.append("no steps with judged groups yet", style="yellow")
        else:
            t.append(f"step {d.step} ({d.nav['index']}/{d.nav['count']})", style="bold")
            t.append(f" · prompt {self.group_pos + 1}/{len(d.groups)}")
            g = self.group
            if g:
                t.append(" · ")
                t.append_text(plain(g.status, "green" if g.status == "ok" else "bold red"))
            t.append(f" · sort {self.sort}")
            if self.failed_criterion is not None and g and self.failed_criterion < len(g.criteria):
                t.append(" · failing ")
                t.append_text(plain(g.criteria[self.failed_criterion].id))
                if not any(a.failed(self.failed_criterion) for a in g.answers):
                    t.append(" (no answer fails it; F: next criterion)", style="yellow")
            if self.follow_latest:
                t.append(" · following latest", style="dim")
        self.query_one("#insp-status", Static).update(t)

    async def _render_group(self) -> None:
        self._render_status()
        g = self.group
        q = Text()
        rubric = self.query_one("#insp-rubric", Static)
        matrix = self.query_one("#insp-matrix", VerdictMatrix)
        panes = self.query_one("#insp-answers", AnswerPanes)
        if g is None:
            self.query_one("#insp-question", Static).update(Text("nothing to show yet", style="dim"))
            rubric.update("")
            matrix.show([], [])
            await panes.show([], 0)
            return
        q.append("Question  ", style="bold")
        q.append_text(plain(g.question))
        if g.ground_truth is not None:
            q.append("\nGround truth  ", style="bold")
            q.append_text(plain(g.ground_truth, "green"))
        if g.failure:
            q.append("\nFailed  ", style="bold red")
            q.append_text(plain(g.failure, "red"))
        if g.template_versions:
            q.append("\nTemplates  ", style="dim")
            q.append_text(plain(" ".join(f"{r}={s[:8]}" for r, s in sorted(g.template_versions.items())), "dim"))
        self.query_one("#insp-question", Static).update(q)
        teachers = [a for a in g.answers if a.kind == "teacher"]
        students = [a for a in g.answers if a.kind == "student"]
        rubric.update(rubric_table(g, teachers, students))
        shown = order_answers(g.answers, self.sort, self.failed_criterion)
        self._quiet_until = time.monotonic() + 0.5
        matrix.show(g.criteria, shown)
        await panes.show(shown, len(g.criteria))
        want, self._want_answer = self._want_answer, None
        keys = [a.key for a in shown]
        if want in keys:
            matrix.move_cursor(row=keys.index(want))
            panes.select(want, scroll=True)
        elif shown:
            panes.select(shown[min(matrix.cursor_row, len(shown) - 1)].key, scroll=False)

    def _render_run_wide(self, keep_cursor: bool = False) -> None:
        rw = self.run_wide
        if rw is None:
            return
        t = Text("Per-criterion pass rates over the whole run: teacher vs students\n", style="bold")
        for verdict in VERDICT_ORDER:
            if rw.counts.get(verdict):
                t.append(f"  {verdict}: {rw.counts[verdict]}")
        t.append(f"   (of {rw.n_total} criteria)", style="dim")
        t.append(f"\n  showing {len(rw.top)} of {rw.n_matching} · {rw.verdict or 'all verdicts'} (v: filter)", style="bold")
        if rw.cursor is not None:
            t.append(" · + for more", style="bold")
        t.append(" · / searches every rubric, answer and judge reply of the run", style="dim")
        if not rw.top:
            t.append("\n  no criterion of this run " + (f"is '{rw.verdict}'; v shows the next verdict" if rw.verdict
                                                        else "has verdicts yet"), style="yellow")
        for cat in rw.categories:
            t.append("\n  ")
            t.append_text(one_line(cat.get("category") or "(no category)", 30))
            t.append(f"  teacher {_pct(cat.get('teacher_pass_rate')).plain.strip()}"
                     f"  students {_pct(cat.get('student_pass_rate')).plain.strip()}"
                     f"  ({cat.get('n_criteria', 0)} criteria)", style="dim")
        self.query_one("#runwide-summary", Static).update(t)
        table = self.query_one("#runwide-table", DataTable)
        row = table.cursor_row
        table.clear()
        styles = {"discriminates": "green", "never passes": "red", "always passes": "yellow", "students ahead": "magenta"}
        for i, s in enumerate(rw.top):
            table.add_row(plain(s.verdict, styles.get(s.verdict, "dim")), _pct(s.teacher_rate), _pct(s.student_rate),
                          str(s.step if s.step is not None else "-"),
                          str(s.group_index + 1 if s.group_index is not None else "-"),
                          plain(s.criterion), one_line(s.text, 200), key=str(i))
        if keep_cursor and rw.top:
            table.move_cursor(row=min(row, len(rw.top) - 1))

    # -- events and actions ---------------------------------------------------------------------------
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "insp-matrix" and event.row_key is not None and event.row_key.value:
            panes = self.query_one("#insp-answers", AnswerPanes)
            # a re-render highlights the row already selected: only a cursor move scrolls to its card
            scroll = event.row_key.value != panes.selected_key and time.monotonic() > self._quiet_until
            panes.select(event.row_key.value, scroll=scroll)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "runwide-table" and self.run_wide:
            s = self.run_wide.top[event.cursor_row]
            if s.step is not None:
                self.jump_to(int(s.step), int(s.group_index or 0))

    def jump_to(self, step: int, group_index: int, answer: str | None = None) -> None:
        """Show one prompt of one step (and select ``answer``, e.g. "student:2"), on the Prompt tab."""
        self.step, self.follow_latest = int(step), False
        self._want_group, self._want_answer = int(group_index), answer
        self.failed_criterion = None  # the answer to select must not be filtered out
        self.query_one(TabbedContent).active = "prompt"
        self.reload()

    def action_search(self) -> None:
        """Full-text search over the run (criteria, answers, judge replies); enter on a match comes back here."""
        from .search import SearchScreen

        def done(result: Any) -> None:
            if result is None:
                return
            self.search_state = result.state
            if result.hit is not None:
                self.jump_to(result.hit.step, result.hit.group_index, result.answer_key)

        self.app.push_screen(SearchScreen(self.run_id, self.run_name, state=self.search_state), done)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        # the tab's own table takes the keys at once (no Tab presses into a hidden widget's focus)
        self.query_one("#runwide-table" if event.pane.id == "runwide" else "#insp-matrix").focus(scroll_visible=False)
        if event.pane.id == "runwide" and not self._want_run_wide:
            self._want_run_wide = True
            self.query_one("#runwide-summary", Static).update(Text("loading…", style="dim"))
            self.reload()

    def action_rw_filter(self) -> None:
        """Cycle the run-wide list through: all, then each verdict (discriminates, never passes, ...)."""
        if not self._want_run_wide:
            return
        options: list[str | None] = [None, *VERDICT_ORDER]
        self.rw_filter = options[(options.index(self.rw_filter) + 1) % len(options)]
        self._rw_reset = True
        self.reload()

    def action_rw_more(self) -> None:
        if self.run_wide is not None and self.run_wide.cursor is not None:
            self._rw_more = True
            self.reload()

    def action_run_wide(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = "prompt" if tabs.active == "runwide" else "runwide"

    def action_back(self) -> None:
        if not self.query_one("#insp-gotobar").has_class("-hidden"):
            self.query_one("#insp-gotobar").add_class("-hidden")
            self.query_one("#insp-matrix").focus()
            return
        self.app.pop_screen()

    def action_step(self, delta: int) -> None:
        d = self.data
        if not d or not d.nav["count"] or d.step is None:
            return
        target = d.nav["next"] if delta > 0 else d.nav["prev"]
        self.step = d.step if target is None else target
        self.follow_latest = delta > 0 and self.step == d.nav["last"]
        self.reload()

    def action_edge_step(self, direction: int) -> None:
        d = self.data
        if not d or not d.nav["count"]:
            return
        self.step = d.nav["first"] if direction < 0 else d.nav["last"]
        self.follow_latest = direction > 0
        self.reload()

    async def action_prompt(self, delta: int) -> None:
        d = self.data
        if not d or not d.groups:
            return
        self.group_pos = (self.group_pos + delta) % len(d.groups)
        self.failed_criterion = None
        if not await self._fetch_shown():  # the next load reads the step and this prompt, then draws it
            self._render_pending = True
            self._render_status()
            self.reload()
            return
        await self._render_group()

    async def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        await self._render_group()

    async def action_filter_failed(self) -> None:
        g = self.group
        if not g or not g.criteria:
            return
        if self.failed_criterion is None:
            self.failed_criterion = 0
        elif self.failed_criterion + 1 < len(g.criteria):
            self.failed_criterion += 1
        else:
            self.failed_criterion = None
        await self._render_group()

    def action_goto(self) -> None:
        self.query_one("#insp-gotobar").remove_class("-hidden")
        self.query_one("#insp-goto", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#insp-gotobar").add_class("-hidden")
        self.query_one("#insp-matrix").focus()
        try:
            self.step = int(event.value)
        except ValueError:
            return
        self.follow_latest = False
        self.reload()

    def palette_commands(self) -> Iterable[SystemCommand]:
        yield SystemCommand("Next step", "Inspect the next step", lambda: self.action_step(1))
        yield SystemCommand("Previous step", "Inspect the previous step", lambda: self.action_step(-1))
        yield SystemCommand("Go to step…", "Type a step number", self.action_goto)
        yield SystemCommand("Sort rollouts", "pool order / reward descending / ascending", self.action_sort)
        yield SystemCommand("Filter by failed criterion", "Cycle through criteria", self.action_filter_failed)
        yield SystemCommand("Run-wide criterion pass rates", "Teacher vs students over the run", self.action_run_wide)
        yield SystemCommand("Search this run…", "Full text: criteria, student and teacher answers, judge replies",
                            self.action_search)


def _read_group(store: Any, group_id: int) -> GroupView:
    """One group in full (question, rubric, answers, verdicts; no judge calls), on the reader thread."""
    g = store.group(group_id, include_calls=False)
    return group_view(int(g["step"]), g)


def rubric_table(g: GroupView, teachers: list[AnswerView], students: list[AnswerView]) -> Table:
    """The rubric: id, points, teacher and student pass rates, the criterion (wrapped) and its category."""
    table = Table(box=None, padding=(0, 1), expand=True, show_edge=False, header_style="bold")
    table.add_column("id", no_wrap=True)
    table.add_column("pts", justify="right", no_wrap=True)
    table.add_column("T", justify="right", no_wrap=True)
    table.add_column("S", justify="right", no_wrap=True)
    table.add_column(Text(f"criterion ({sum(c.points for c in g.criteria)} points; T/S = teacher/student pass rate)"),
                     ratio=1)
    table.add_column("category", no_wrap=True, max_width=18, style="dim")
    for i, c in enumerate(g.criteria):
        table.add_row(plain(c.id), Text(str(c.points)), _rate(teachers, i), _rate(students, i), plain(c.text),
                      one_line(c.category, 18))
    return table


def _rate(answers: list[AnswerView], i: int) -> Text:
    vals = [a.verdicts[i] for a in answers if i < len(a.verdicts) and a.verdicts[i] is not None]
    if not vals:
        return Text("-", style="dim")
    return _pct(sum(vals) / len(vals))


def _pct(v: float | None) -> Text:
    if v is None:
        return Text("-", style="dim")
    style = "green" if v >= 0.75 else "red" if v <= 0.25 else ""
    return Text(f"{v * 100:3.0f}%", style=style)
