"""Help: the keys of every screen."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: list[tuple[str, list[tuple[str, str]]]] = [
    ("Everywhere", [("?", "this help"), ("ctrl+p", "command palette (all actions)"), ("ctrl+t", "light / dark theme"),
                    ("z", "pause / resume live refresh"),
                    ("esc", "back"), ("ctrl+q", "quit (runs keep going)")]),
    ("Runs", [("enter", "open the run (curves, config, log)"), ("i", "rubric inspector"), ("n", "new run"),
              ("s", "stop"), ("r", "resume from the latest checkpoint"), ("R", "restart from scratch"),
              ("d", "delete (asks first)"), ("/", "filter by name"), ("f", "cycle status filter"),
              ("space", "mark for compare"), ("c", "compare marked runs"), ("q", "quit")]),
    ("Run", [("1 2 3", "curves / overview / log"), ("m", "smoothing 0 → 0.6 → 0.9"), ("x", "x axis: step / wall time"),
             ("i", "rubric inspector"), ("l", "log"), ("f", "follow / pause the log"), ("/", "search the log"),
             ("n N", "next / previous match"), ("s r", "stop / resume")]),
    ("Rubric inspector", [("[ ]", "previous / next step"), ("home end", "first / latest step"), ("g", "go to step"),
                          ("p n", "previous / next prompt"), ("↑ ↓", "move in the verdict matrix"),
                          ("o", "sort rollouts: pool / reward ↓ / reward ↑"), ("F", "show answers failing criterion k (cycle)"),
                          ("w", "run-wide per-criterion pass rates (enter jumps to the prompt)"),
                          ("v", "run-wide: show one verdict (discriminates, never passes, ...)"),
                          ("+", "run-wide: load the next page"),
                          ("/", "search the run's rubrics, answers and judge replies")]),
    ("Search", [("enter", "search (in the query) / open the match in the inspector (in the list)"),
                ("ctrl+f", "kinds: all / criterion / student / teacher / reply"),
                ("ctrl+l", "FTS5 syntax / literal words"), ("+", "more matches"), ("/", "edit the query")]),
    ("Compare", [("m", "smoothing"), ("x", "x axis"), ("d", "curves / config diff")]),
    ("New run", [("tab", "next field"), ("ctrl+r", "check the config (validate + preflight)"), ("ctrl+l", "launch"), ("esc", "cancel")]),
]
EXTRA = [("Templates", "T on runs/run screens or the palette: edit templates"),
         ("Replay", "P or the palette: replay verification on stored answers")]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "app.pop_screen", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Static(self._keys_table(), id="help-text")

    def _keys_table(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for section, keys in KEYS:
            table.add_row(Text(section, style="bold underline"), "")
            for key, what in keys:
                table.add_row(key, what)
            table.add_row("", "")
        for screen in ("templates", "replay"):
            if self.app.has_screen(screen):
                name, what = EXTRA[0] if screen == "templates" else EXTRA[1]
                table.add_row(Text(name, style="bold underline"), what)
        table.add_row(Text("esc / q / ? closes this help", style="dim"), "")
        return table
