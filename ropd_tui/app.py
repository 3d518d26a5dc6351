"""The ropd-tui Textual app: runs, run curves and log, rubric inspector, compare, new run.

Layering: screens read the run store only through :class:`~ropd_tui.screens.base.StoreGateway`
(one reader thread; polls never overlap and are gated on ``PRAGMA data_version``); training runs are
subprocesses owned by the supervisor, so closing the app never stops a run and reopening (or a new
browser tab under ``textual serve``) re-attaches from the store alone.

Screens are registered by name in :data:`SCREENS` (name -> factory). A factory is called as
``factory(app, **kwargs)`` and returns a Screen; :meth:`RopdApp.open_screen` pushes it. Optional
screens from other modules (the template editor and replay) are registered when their module exists:
``ropd_tui.screens.templates.TemplatesScreen`` and ``ropd_tui.screens.replay.ReplayScreen``, each
constructed as ``Cls(store_path=app.store_path, run_id=<int or None>)``; they can use ``app.gateway``
(``await app.gateway.call(fn)`` runs ``fn(store)`` on the reader thread) or open their own store.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from functools import partial

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.screen import Screen

from engine.errors import StoreError, UserError

from .screens.base import StoreGateway

LIGHT_THEME, DARK_THEME = "textual-light", "textual-dark"

ScreenFactory = Callable[..., Screen]


def _builtin(module: str, cls: str) -> ScreenFactory:
    def factory(app: "RopdApp", **kwargs: Any) -> Screen:
        mod = importlib.import_module(f"ropd_tui.screens.{module}")
        return getattr(mod, cls)(**kwargs)

    return factory


def _optional(module: str, cls: str) -> ScreenFactory | None:
    """A factory for a screen in another engineer's module, or None when the module isn't there."""
    try:
        spec = importlib.util.find_spec(f"ropd_tui.screens.{module}")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None

    def factory(app: "RopdApp", run_id: int | None = None, **kwargs: Any) -> Screen:
        mod = importlib.import_module(f"ropd_tui.screens.{module}")
        return getattr(mod, cls)(store_path=app.store_path, run_id=run_id, **kwargs)

    return factory


SCREENS: dict[str, ScreenFactory] = {
    "runs": _builtin("runs", "RunsScreen"),
    "run": _builtin("run", "RunScreen"),
    "inspector": _builtin("inspector", "InspectorScreen"),
    "compare": _builtin("compare", "CompareScreen"),
    "new_run": _builtin("new_run", "NewRunScreen"),
    "help": _builtin("help", "HelpScreen"),
}
for _name, (_mod, _cls) in {"templates": ("templates", "TemplatesScreen"),
                            "replay": ("replay", "ReplayScreen")}.items():
    _factory = _optional(_mod, _cls)
    if _factory is not None:
        SCREENS[_name] = _factory


class RunsProvider(Provider):
    """Palette: "open <run>", "inspect <run>" for every run the runs screen knows (no store read)."""

    def _runs(self) -> list[Any]:
        from .screens.runs import RunsScreen

        for screen in self.app.screen_stack:
            if isinstance(screen, RunsScreen):
                return list(screen.rows)
        return []

    def _commands(self) -> list[tuple[str, Any, str]]:
        out = []
        for run in self._runs():
            out.append((f"Open run {run.name}", partial(self.app.open_screen, "run", run_id=run.id, name=run.name),
                        f"{run.status} · step {run.step if run.step is not None else '-'} · curves, config, log"))
            out.append((f"Inspect rubrics of {run.name}",
                        partial(self.app.open_screen, "inspector", run_id=run.id, name=run.name),
                        "rubric inspector: teacher vs student answers, verdict matrix"))
            out.append((f"Search run {run.name}", partial(self.app.open_search, run.id, run.name),
                        "full text: criteria, student and teacher answers, judge replies"))
        return out

    async def discover(self) -> Hits:
        for title, command, help_text in self._commands()[:20]:
            yield DiscoveryHit(title, command, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, command, help_text in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), command, text=title, help=help_text)


class RopdApp(App[int]):
    """ropd-tui. ``live=False`` turns off polling (snapshot tests); ``clock`` freezes elapsed times."""

    CSS_PATH = "ropd.tcss"
    TITLE = "ropd-tui"
    COMMANDS = App.COMMANDS | {RunsProvider}
    BINDINGS = [
        Binding("question_mark", "help", "Help"),
        Binding("ctrl+t", "toggle_theme", "Theme", show=False),
        Binding("z", "toggle_pause", "Pause live", show=False),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(self, store_path: str | os.PathLike, *, live: bool = True,
                 clock: Callable[[], float] = time.time, supervise: bool = True,
                 configs_dir: str | os.PathLike = "configs",
                 start: tuple[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.store_path = str(store_path)
        self.live = live
        self.paused = False  # live refresh frozen by the user (z)
        self.clock = clock
        self.supervise = supervise
        self.configs_dir = Path(configs_dir)
        self.start = start  # (screen name, kwargs) to open on top of the runs, e.g. ("run", {"run_id": 3})
        self.gateway = StoreGateway(self.store_path)
        self.theme = DARK_THEME
        self.sub_title = self.store_path

    # -- start-up ----------------------------------------------------------------------------------
    async def on_mount(self) -> None:
        await self.open_store(create=False)

    async def open_store(self, *, create: bool) -> None:
        from .screens.errors import StoreProblemScreen

        if not create and not Path(self.store_path).exists():
            await self.push_screen(StoreProblemScreen(self.store_path, missing=True))
            return
        try:
            await self.gateway.call(lambda store: store.data_version())
        except UserError as err:
            await self.push_screen(StoreProblemScreen(self.store_path, error=str(err)))
            return
        except Exception as err:  # noqa: BLE001 - a corrupt file etc.: say so, don't crash
            await self.push_screen(StoreProblemScreen(self.store_path, error=f"{type(err).__name__}: {err}"))
            return
        await self.push_screen(SCREENS["runs"](self))
        if self.start is not None:
            name, kwargs = self.start
            self.open_screen(name, **kwargs)

    def on_unmount(self) -> None:
        self.gateway.close()

    # -- navigation --------------------------------------------------------------------------------
    def has_screen(self, screen_name: str) -> bool:
        return screen_name in SCREENS

    def open_screen(self, screen_name: str, /, **kwargs: Any) -> None:
        factory = SCREENS.get(screen_name)
        if factory is None:
            self.notify(f"the {screen_name} screen is not available in this build", severity="warning")
            return
        try:
            screen = factory(self, **kwargs)
        except UserError as err:
            self.notify(str(err), severity="error", timeout=8)
            return
        self.push_screen(screen)

    def open_search(self, run_id: int, name: str | None = None) -> None:
        """Full-text search over a run; enter on a match opens that prompt in the rubric inspector."""
        from .screens.search import open_search

        open_search(self, run_id, name)

    def action_help(self) -> None:
        from .screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.open_screen("help")

    def action_toggle_theme(self) -> None:
        self.theme = LIGHT_THEME if self.theme == DARK_THEME else DARK_THEME

    def action_toggle_pause(self) -> None:
        """Freeze live refresh (rows stop moving while you read); keys that change the view still load."""
        self.paused = not self.paused
        self.sub_title = f"{self.store_path} · paused (z resumes)" if self.paused else self.store_path
        self.notify("live refresh paused: press z to resume" if self.paused else "live refresh resumed", timeout=3)

    # -- run operations (each in its own thread with its own store connection) -------------------
    def run_operation(self, op: str, run_id: int, name: str) -> None:
        """stop / resume / restart / delete a run, off the UI thread; the result shows as a notice."""
        self.run_worker(lambda: self._run_operation(op, run_id, name), thread=True, group="run-op",
                        exit_on_error=False)

    def _run_operation(self, op: str, run_id: int, name: str) -> None:
        from engine.store import RunStore
        from engine.runs.supervisor import Supervisor

        try:
            store = RunStore(self.store_path)
            try:
                getattr(Supervisor(store), op)(run_id)
            finally:
                closer = getattr(store, "close", None)
                if closer:
                    closer()
        except UserError as err:
            self.call_from_thread(self.notify, f"{op} {name}: {err}", severity="error", timeout=10)
            return
        except Exception as err:  # noqa: BLE001
            self.call_from_thread(self.notify, f"{op} {name} failed: {err!r}", severity="error", timeout=10)
            return
        done = {"stop": "stopped", "resume": "resumed", "restart": "restarted", "delete": "deleted"}[op]
        self.call_from_thread(self.notify, f"{name}: {done}")

    # -- command palette ---------------------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        provided = getattr(screen, "palette_commands", None)
        if provided:
            yield from provided()
        yield SystemCommand("Help: keys", "Show the keys of every screen", self.action_help)
        yield SystemCommand("Toggle light/dark theme", "Switch between light and dark", self.action_toggle_theme)
        if "templates" in SCREENS:
            yield SystemCommand("Templates: edit", "Open the template editor",
                                lambda: self.open_screen("templates", run_id=getattr(screen, "run_id", None)))
        if "replay" in SCREENS:
            yield SystemCommand("Replay verification", "Replay judging on stored answers",
                                lambda: self.open_screen("replay", run_id=getattr(screen, "run_id", None)))
        yield from super().get_system_commands(screen)


def run_app(store: str | None) -> int:
    """Open the UI on ``store`` (None: $ROPD_STORE, then ./runs/ropd.db). Returns the exit code."""
    from engine.config import store_path

    path = Path(store) if store else store_path(None)
    app = RopdApp(path)
    try:
        result = app.run()
    except StoreError as err:  # pragma: no cover - shown in the UI normally
        print(f"error: {err}")
        return err.exit_code
    return int(result or 0)
