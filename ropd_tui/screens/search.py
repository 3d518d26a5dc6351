"""Full-text search over one run: criterion texts, student and teacher answers, raw judge replies.

Opened with ``/`` in the rubric inspector or from the command palette. Type a query (FTS5 syntax, or
literal with ctrl+l) and press enter: matches are listed by step, prompt and kind, the matched words
highlighted (model text stays literal). ``enter`` on a match opens that prompt in the inspector; the
screen hands its state back so ``/`` shows the same results again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from engine.errors import UserError
from engine.store.search import KINDS, SearchHit

from ..widgets.safe import highlighted, one_line, plain

PAGE = 50
SNIPPET_CHARS = 160
SNIPPET_LEAD = 24  # characters of context kept before the first matched word
INDEXING_NOTICE = 5000  # texts to index before a search that are worth a progress line
KIND_FILTERS: list[tuple[str, ...] | None] = [None, *((k,) for k in KINDS)]  # None: all kinds
KIND_STYLES = {"criterion": "cyan", "student": "", "teacher": "bold", "reply": "magenta"}


@dataclass
class SearchState:
    """What the screen shows; kept by the opener so the next search starts where this one ended."""

    query: str = ""
    kinds: tuple[str, ...] | None = None
    literal: bool = False
    hits: list[SearchHit] = field(default_factory=list)
    cursor: dict[str, int] | None = None
    searched: bool = False  # a search ran (an empty list means: no matches)
    error: str | None = None


@dataclass
class SearchResult:
    state: SearchState
    hit: SearchHit | None = None  # the match chosen with enter (None: closed with esc)

    @property
    def answer_key(self) -> str | None:
        """The inspector's key of the matched answer ("student:2"), for answers only."""
        h = self.hit
        return f"{h.kind}:{h.index}" if h is not None and h.kind in ("student", "teacher") and h.index is not None \
            else None


class SearchScreen(Screen[SearchResult]):
    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("ctrl+f", "kinds", "Kinds"),
        Binding("ctrl+l", "literal", "Literal"),
        Binding("plus", "more", "More"),
        Binding("slash", "focus_query", "Query", show=False),
    ]

    def __init__(self, run_id: int, name: str | None = None, *, state: SearchState | None = None) -> None:
        super().__init__()
        self.run_id = run_id
        self.run_name = name or str(run_id)
        self.state = state or SearchState()
        self.searching = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="search-bar"):
            yield Input(self.state.query, id="search-input",
                        placeholder='search rubrics, answers, judge replies: words, "a phrase", prefix*, AND/OR/NOT')
        yield Static("", id="search-status", classes="statusline")
        yield Static("", id="search-error", classes="-hidden")
        yield DataTable(id="search-table", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.run_name} · search"
        table = self.query_one("#search-table", DataTable)
        for key, label in (("step", "step"), ("prompt", "prompt"), ("kind", "kind"), ("item", "item"),
                           ("match", "match")):
            table.add_column(label, key=key)
        self._show()
        if self.state.hits:
            table.focus()
        else:
            self.query_one("#search-input", Input).focus()

    # -- searching (on the store's reader thread) ---------------------------------------------------------
    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.state.query = event.value
        self._search(more=False)

    def _search(self, *, more: bool) -> None:
        if self.searching:
            return
        self.searching = True
        st = self.state
        query, kinds, literal, after = st.query, st.kinds, st.literal, (st.cursor if more else None)
        self._set_status(Text("searching…", style="dim"))

        def indexing(done: int, total: int) -> None:  # on the reader thread, while new texts are indexed
            if total >= INDEXING_NOTICE:
                self.app.call_from_thread(
                    self._set_status, Text(f"indexing texts written since the last search: {done:,} of {total:,}…",
                                           style="dim"))

        async def run() -> None:
            try:
                page = await self.app.gateway.call(
                    lambda store: store.search(self.run_id, query, kinds=kinds, limit=PAGE, after=after,
                                               literal=literal, progress=indexing))
            except UserError as err:  # a bad query: say why, keep what was shown
                st.error = str(err)
            except Exception as err:  # noqa: BLE001 - a failed read is shown, never crashes the UI
                st.error = f"searching failed: {err!r}"
            else:
                st.error = None
                st.searched = True
                st.hits = (st.hits + page.hits) if more else page.hits
                st.cursor = page.cursor
            finally:
                self.searching = False
            self._show(keep_cursor=more)
            if st.hits and not more:
                self.query_one("#search-table", DataTable).focus()

        self.run_worker(run(), group="search", exclusive=True, exit_on_error=False)

    # -- rendering ---------------------------------------------------------------------------------------
    def _set_status(self, text: Text) -> None:
        self.query_one("#search-status", Static).update(text)

    def _show(self, keep_cursor: bool = False) -> None:
        st = self.state
        t = Text()
        error = self.query_one("#search-error", Static)
        error.set_class(not st.error, "-hidden")
        error.update(plain(st.error or "", "red"))
        if st.error:
            t.append("the query was not searched (why below; the list shows the last results)", style="bold red")
        elif st.searched:
            n = len(st.hits)
            t.append(f"{n}{'+' if st.cursor else ''} match{'es' if n != 1 else ''}", style="bold")
            if st.cursor:
                t.append(" · + more", style="bold")
            if not n:
                t.append(" (try fewer words, a prefix*, or OR between words)", style="dim")
        else:
            t.append("type a query and press enter", style="dim")
        t.append(f" · kinds: {', '.join(st.kinds) if st.kinds else 'all'} (ctrl+f)", style="dim")
        t.append(f" · {'literal words' if st.literal else 'FTS5 syntax'} (ctrl+l)", style="dim")
        self._set_status(t)
        table = self.query_one("#search-table", DataTable)
        row = table.cursor_row
        table.clear()
        for i, h in enumerate(st.hits):
            table.add_row(Text(str(h.step)), Text(str(h.prompt)), plain(h.kind, KIND_STYLES.get(h.kind, "")),
                          one_line(h.item, 24), highlighted(h.parts, limit=SNIPPET_CHARS, lead=SNIPPET_LEAD),
                          key=str(i))
        if keep_cursor and st.hits:
            table.move_cursor(row=min(row, len(st.hits) - 1))

    # -- actions -------------------------------------------------------------------------------------------
    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "search-table" and 0 <= event.cursor_row < len(self.state.hits):
            self.dismiss(SearchResult(self.state, self.state.hits[event.cursor_row]))

    def action_close(self) -> None:
        self.dismiss(SearchResult(self.state, None))

    def action_kinds(self) -> None:
        """Cycle the kinds searched: all, then criterion, student, teacher, reply; searches again."""
        st = self.state
        st.kinds = KIND_FILTERS[(KIND_FILTERS.index(st.kinds) + 1) % len(KIND_FILTERS)] \
            if st.kinds in KIND_FILTERS else None
        self._again()

    def action_literal(self) -> None:
        self.state.literal = not self.state.literal
        self._again()

    def _again(self) -> None:
        self.state.query = self.query_one("#search-input", Input).value
        if self.state.query.strip():
            self._search(more=False)
        else:
            self._show()

    def action_more(self) -> None:
        if self.state.cursor is not None:
            self._search(more=True)

    def action_focus_query(self) -> None:
        self.query_one("#search-input", Input).focus()


def open_search(app: Any, run_id: int, name: str | None = None) -> None:
    """Push a search screen over whatever is shown; a chosen match opens in a rubric inspector."""

    def done(result: SearchResult | None) -> None:
        if result is not None and result.hit is not None:
            app.open_screen("inspector", run_id=run_id, name=name, step=result.hit.step,
                            group_index=result.hit.group_index, select=result.answer_key)

    app.push_screen(SearchScreen(run_id, name), done)
