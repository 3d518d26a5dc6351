"""Shown instead of the runs when the store cannot be opened: what happened and what to do."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Footer, Header, Static


class StoreProblemScreen(Screen):
    BINDINGS = [Binding("c", "create", "Create store", show=True), Binding("q", "app.quit", "Quit")]

    def __init__(self, path: str, *, missing: bool = False, error: str | None = None) -> None:
        super().__init__()
        self.path = path
        self.missing = missing
        self.error = error

    def compose(self) -> ComposeResult:
        yield Header()
        text = Text()
        if self.missing:
            text.append("No run store at ", style="bold")
            text.append(self.path, style="bold yellow")
            text.append("\n\nWhat to do:\n")
            text.append(" • press c to create an empty store here and start a run from the UI, or\n")
            text.append(" • quit (q) and open an existing store: ropd-tui --store PATH (or set $ROPD_STORE), or\n")
            text.append(" • start a run headless: ropd-tui --headless train --config configs/demo.yaml\n")
        else:
            text.append("The run store could not be opened: ", style="bold red")
            text.append(self.path, style="bold yellow")
            text.append("\n\n")
            text.append(self.error or "", style="red")
            text.append("\n\nWhat to do: if it was written by a newer ropd-tui, upgrade this one "
                        "(pip install -U ropd-tui); if the file is damaged, restore it or open another store "
                        "with --store PATH. Press q to quit.")
        with Vertical(id="problem"):
            yield Static(text, id="problem-text")
        yield Footer()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "create":
            return self.missing
        return True

    async def action_create(self) -> None:
        from pathlib import Path

        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self.app.notify(f"cannot create {self.path}: {err}", severity="error")
            return
        self.app.pop_screen()
        await self.app.open_store(create=True)
