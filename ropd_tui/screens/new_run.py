"""New run: pick a config from configs/, edit overrides, validate (engine.config.load_config), launch.

The launch does what ``ropd-tui --headless train --detach`` does: preflight checks, create the run in
the store, and let the supervisor start ``python -m engine.runs.worker --store PATH --run ID`` in its
own session (so the run outlives the UI).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Header, Input, Label, ListItem, ListView, Static, TextArea

from engine.errors import UserError

from ..widgets.safe import plain

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def find_configs(root: Path) -> list[Path]:
    """YAML run configs directly under ``root`` (configs/verl holds Hydra configs, not run configs)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def parse_overrides(text: str) -> list[str]:
    """One ``key.sub=value`` per line; blank lines and ``#`` comments are ignored."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def validate(config_path: Path, overrides: list[str], name: str) -> Any:
    """The loaded Config (with the run name applied), or raise a UserError saying what is wrong."""
    from engine.config import load_config
    from engine.errors import ConfigError

    if name and not NAME_RE.match(name):
        raise ConfigError(f"run name {name!r} is not valid",
                          hint="use letters, digits, '.', '_' or '-' (at most 64 characters)")
    ovs = list(overrides)
    if name:
        ovs.append(f"run.name={name}")
    return load_config(config_path, ovs)


def resolve_name(cfg: Any, store_path: str, name: str) -> Any:
    """The RunName a launch creates, by the same rule as ``ropd-tui --headless train``
    (:func:`engine.runs.launch.choose_run_name`): ``name`` (the form's field) must be free, the
    config's run.name gets a free -2, -3 ... suffix. Raises ConfigError for a taken ``name``."""
    from engine.runs.launch import RunName, choose_run_name
    from engine.store import RunStore

    if not Path(store_path).exists():
        return RunName(name=name or cfg.run.name, requested=name or cfg.run.name)
    store = RunStore(store_path)
    try:
        return choose_run_name(store, cfg.run.name, name or None)
    finally:
        store.close()


def launch(cfg: Any, store_path: str, name: str) -> tuple[str, list[str]]:
    """Check, create and start the run the way ``ropd-tui --headless train --detach`` does.

    ``name`` is the exact name the check showed (:func:`resolve_name`); a run created under it in the
    meantime fails the launch instead of getting another name. Returns (run name, preflight notes).
    Raises UserError (bad config, taken name, launch failure)."""
    from engine.runs.launch import launch_run
    from engine.store import RunStore
    from engine.trainers.preflight import preflight

    notes = preflight(cfg)
    store = RunStore(store_path)
    try:
        run = launch_run(cfg, store, name)
        return run.name, notes
    finally:
        store.close()


class NewRunScreen(Screen):
    AUTO_FOCUS = "#new-run-configs"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Cancel"),
        Binding("ctrl+r", "check", "Check", priority=True),
        Binding("ctrl+l", "launch", "Launch", priority=True),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.configs: list[Path] = []
        self.valid_cfg: Any = None
        self.run_name: Any = None  # the RunName the launch will create (set by a successful check)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="new-run"):
            with Vertical(id="new-run-left"):
                yield Label("Config (configs/)", classes="section-title")
                yield ListView(id="new-run-configs")
            with VerticalScroll(id="new-run-right", can_focus=False):
                yield Label("Run name", classes="section-title")
                yield Input(placeholder="e.g. demo-lr1e-5 (default: the config's run.name)", id="new-run-name")
                yield Label("Overrides: one key.sub=value per line", classes="section-title")
                yield TextArea("", id="new-run-overrides", soft_wrap=True, show_line_numbers=False)
                yield Static("", id="new-run-result")
                with Horizontal(id="new-run-buttons"):
                    yield Button("Check (ctrl+r)", id="new-run-validate")
                    yield Button("Launch (ctrl+l)", id="new-run-launch", variant="success")
                yield Static("", id="new-run-preview")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "new run"
        self.configs = find_configs(self.app.configs_dir)
        lv = self.query_one(ListView)
        for p in self.configs:
            lv.append(ListItem(Label(plain(p.name))))
        if not self.configs:
            self._result(Text(f"no configs found in {self.app.configs_dir}/: add a YAML run config there "
                              "(see configs/demo.yaml in the repository)", style="yellow"))
        else:
            lv.index = 0
            self._preview()

    @property
    def config_path(self) -> Path | None:
        idx = self.query_one(ListView).index
        if idx is None or not self.configs:
            return None
        return self.configs[idx]

    def on_list_view_highlighted(self, event: ListView.Highlighted) -> None:
        self.valid_cfg = None
        self._preview()

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        self.valid_cfg = None

    def on_input_changed(self, event: Input.Changed) -> None:
        self.valid_cfg = None

    def _preview(self) -> None:
        path = self.config_path
        if path is None:
            return
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            text = f"cannot read {path}: {err}"
        preview = Text(f"{path}\n", style="bold")
        preview.append_text(plain(text, "dim"))
        self.query_one("#new-run-preview", Static).update(preview)

    def _result(self, text: Text) -> None:
        self.query_one("#new-run-result", Static).update(text)

    def _inputs(self) -> tuple[Path | None, list[str], str]:
        return (self.config_path, parse_overrides(self.query_one("#new-run-overrides", TextArea).text),
                self.query_one("#new-run-name", Input).value.strip())

    def action_validate(self) -> bool:
        path, overrides, name = self._inputs()
        if path is None:
            self._result(Text("pick a config first", style="yellow"))
            return False
        try:
            cfg = validate(path, overrides, name)
            run_name = resolve_name(cfg, self.app.store_path, name)
        except UserError as err:
            self.valid_cfg = None
            t = Text("✗ ", style="bold red")
            t.append_text(plain(str(err), "red"))
            if err.hint:
                t.append_text(plain(f"\n  {err.hint}", "dim"))
            self._result(t)
            return False
        self.valid_cfg, self.run_name = cfg, run_name
        self._result(self._valid_text(cfg, None))
        return True

    def _valid_text(self, cfg: Any, notes: list[str] | None) -> Text:
        t = Text("✓ valid: ", style="bold green")
        name = self.run_name.name if self.run_name is not None else cfg.run.name
        t.append_text(plain(f"creates run {name!r}, backend {cfg.run.backend}, "
                            f"judge {'llm' if cfg.judge_is_llm() else 'offline'}"))
        note = self.run_name.note(f"esc, select {self.run_name.requested} on the Runs screen, press r") \
            if self.run_name is not None else None
        if note:
            t.append("\n  ")
            t.append_text(plain(note, "yellow"))
        if notes is None:
            t.append("  (checking model, judge, templates…)", style="dim")
        for note in notes or []:
            t.append("\n  ")
            t.append_text(plain(note, "dim"))
        return t

    def action_check(self) -> None:
        """Validate, then run the preflight checks (model, judge, templates, teacher index) off the UI thread."""
        if self.action_validate():
            self._preflight(self.valid_cfg)

    @work(thread=True, exclusive=True, group="preflight")
    def _preflight(self, cfg: Any) -> None:
        from engine.trainers.preflight import preflight

        try:
            notes = preflight(cfg)
        except UserError as err:
            self.app.call_from_thread(self._preflight_done, cfg, None, str(err))
            return
        except Exception as err:  # noqa: BLE001
            self.app.call_from_thread(self._preflight_done, cfg, None, f"{type(err).__name__}: {err}")
            return
        self.app.call_from_thread(self._preflight_done, cfg, notes, None)

    def _preflight_done(self, cfg: Any, notes: list[str] | None, error: str | None) -> None:
        if cfg is not self.valid_cfg:
            return  # the form changed meanwhile
        if error is not None:
            self.valid_cfg = None
            t = Text("✗ ", style="bold red")
            t.append_text(plain(error, "red"))
            self._result(t)
            return
        self._result(self._valid_text(cfg, notes))

    def action_launch(self) -> None:
        if not self.action_validate():
            return
        path, overrides, name = self._inputs()
        cfg, run_name = self.valid_cfg, self.run_name.name
        self._result(Text(f"launching {run_name}…", style="cyan"))
        self.query_one("#new-run-launch", Button).disabled = True
        self._launch(cfg, run_name)

    @work(thread=True, exclusive=True, group="launch")
    def _launch(self, cfg: Any, run_name: str) -> None:
        try:
            name, _notes = launch(cfg, self.app.store_path, run_name)
        except UserError as err:
            self.app.call_from_thread(self._launch_failed, str(err))
            return
        except Exception as err:  # noqa: BLE001 - show anything that went wrong, keep the form
            self.app.call_from_thread(self._launch_failed, f"{type(err).__name__}: {err}")
            return
        self.app.call_from_thread(self._launched, name)

    def _launch_failed(self, message: str) -> None:
        self.query_one("#new-run-launch", Button).disabled = False
        t = Text("✗ launch failed: ", style="bold red")
        t.append_text(plain(message, "red"))
        t.append("\nFix the config or overrides and launch again; nothing was lost.", style="dim")
        self._result(t)

    def _launched(self, name: str) -> None:
        self.app.notify(f"run {name} launched")
        self.app.pop_screen()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "new-run-validate":
            self.action_check()
        elif event.button.id == "new-run-launch":
            self.action_launch()
