"""Compare: two or more runs' curves overlaid (stable colours) and the config diff (differences only)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from engine.config import config_diff

from ..widgets.curves import PALETTE, CurvePlot, Series, fit_grid, rich_color
from ..widgets.safe import plain
from .base import LiveScreen
from .run import SMOOTHING_STEPS, run_info
from .views import PANELS, curves_sig, panel_series


@dataclass
class CompareData:
    names: list[str]
    panels: list[list[Series]]
    diff: list[tuple[str, list[Any]]]


def _config(info: dict[str, Any]) -> dict[str, Any]:
    cfg = info.get("config") or info.get("config_json") or {}
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except ValueError:
            cfg = {}
    return cfg if isinstance(cfg, dict) else {}


def _value(v: Any) -> str:
    """A config value for the diff table: floats as people write them (1e-05, not 9.999999999999999e-06)."""
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return f"{v:.6g}"
    return json.dumps(v)


def multi_diff(configs: list[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """Flattened keys where any run's config differs from the first one's, with every run's value."""
    keys: dict[str, None] = {}
    for other in configs[1:]:
        for k in config_diff(configs[0], other):
            keys[k] = None

    def get(cfg: dict[str, Any], dotted: str) -> Any:
        cur: Any = cfg
        for part in dotted.split("."):
            if not isinstance(cur, dict) or part not in cur:
                return None
            cur = cur[part]
        return cur

    return [(k, [get(c, k) for c in configs]) for k in sorted(keys)]


class CompareScreen(LiveScreen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("m", "smoothing", "Smooth"),
        Binding("x", "x_axis", "X axis"),
        Binding("d", "toggle_tab", "Curves/diff"),
    ]

    def __init__(self, run_ids: list[int]) -> None:
        super().__init__()
        self.run_ids = list(run_ids)
        self.smoothing = 0.6
        self.x_axis = "step"
        self.data: CompareData | None = None
        self._sig: tuple | None = None  # reader thread: the runs' curves_sig when data was read

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="cmp-legend", classes="statusline")
        with TabbedContent(id="cmp-tabs", initial="cmp-curves"):
            with TabPane("Curves", id="cmp-curves"):
                with VerticalScroll():
                    with Grid(id="curve-grid"):
                        for i, p in enumerate(PANELS):
                            yield CurvePlot(p.title, id=f"cmp-curve-{i}")
            with TabPane("Config diff", id="cmp-diff"):
                yield DataTable(id="cmp-diff-table", zebra_stripes=True)
        yield Footer()

    def on_resize(self, event) -> None:
        fit_grid(self.query_one("#curve-grid", Grid), event.size.width, event.size.height, len(PANELS))

    def on_mount(self) -> None:
        self.sub_title = "compare"
        super().on_mount()

    def load(self, store: Any) -> CompareData:
        infos = [run_info(store, rid) for rid in self.run_ids]
        # a heartbeat alone (every few seconds per running run) moves nothing drawn here: keep what was read
        sig = tuple(curves_sig(store, rid, i.get("attempt")) for rid, i in zip(self.run_ids, infos))
        if self.data is not None and sig == self._sig:
            return self.data
        self._sig = sig
        names = [str(i.get("name", rid)) for i, rid in zip(infos, self.run_ids)]
        panels: list[list[Series]] = [[] for _ in PANELS]
        for n, (rid, name) in enumerate(zip(self.run_ids, names)):
            keys = list(store.metric_keys(rid))
            for i, p in enumerate(PANELS):
                # no spread band: bands of several runs would be unreadable (so none is read)
                s = panel_series(store, rid, keys, replace(p, low=(), high=(), std=()), name,
                                 color=PALETTE[n % len(PALETTE)])
                if s is not None:
                    panels[i].append(s)
        return CompareData(names=names, panels=panels, diff=multi_diff([_config(i) for i in infos]))

    async def apply(self, data: CompareData) -> None:
        if data is self.data:
            return
        self.data = data
        self._plot()
        legend = plain("")
        for n, name in enumerate(data.names):
            legend.append("■ ", style=rich_color(PALETTE[n % len(PALETTE)]))
            legend.append_text(plain(name + "   "))
        legend.append(f"· smoothing {self.smoothing:g} · x: {self.x_axis}", style="dim")
        self.query_one("#cmp-legend", Static).update(legend)
        table = self.query_one("#cmp-diff-table", DataTable)
        table.clear(columns=True)
        table.add_column("key")
        for name in data.names:
            table.add_column(plain(name))
        for key, values in data.diff:
            table.add_row(plain(key), *[plain(_value(v)) for v in values])
        if not data.diff:
            table.add_row(plain("(the configs are identical)"), *["" for _ in data.names])

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        # the diff table takes the keys only on its own tab: focusing it earlier would switch to it,
        # and Compare opens on the curves
        if event.pane.id == "cmp-diff":
            self.query_one("#cmp-diff-table", DataTable).focus()

    def _plot(self) -> None:
        if not self.data:
            return
        for i, (panel, series) in enumerate(zip(PANELS, self.data.panels)):
            self.query_one(f"#cmp-curve-{i}", CurvePlot).set_data(series, [], smoothing=self.smoothing,
                                                                  x_axis=self.x_axis, bounds=panel.bounds)

    async def action_smoothing(self) -> None:
        i = SMOOTHING_STEPS.index(self.smoothing) if self.smoothing in SMOOTHING_STEPS else 0
        self.smoothing = SMOOTHING_STEPS[(i + 1) % len(SMOOTHING_STEPS)]
        if self.data:
            await self.apply(self.data)

    async def action_x_axis(self) -> None:
        self.x_axis = "wall" if self.x_axis == "step" else "step"
        if self.data:
            await self.apply(self.data)

    def action_toggle_tab(self) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = "cmp-diff" if tabs.active == "cmp-curves" else "cmp-curves"
