"""Curves on textual-plotext: smoothing, downsampling, step or wall-time x axis, event markers.

What a panel shows, so that a few noisy points are read right: the y axis stays inside the metric's
own range (a reward's spread band never pushes it below 0), steps are labelled with whole numbers, a
series shorter than :data:`SHORT_SERIES` points is drawn raw with visible points (smoothing would hide
its real values), a single point is marked and labelled with its value, and each panel's title ends
with the latest raw value of each line."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from textual.app import RenderResult

from textual_plotext import PlotextPlot

# A stable palette so a run keeps its colour across plots and screens.
PALETTE = ["cyan", "orange", "green", "magenta", "blue", "red", "yellow", "white"]
_RICH_NAMES = {"orange": "dark_orange"}


def rich_color(plotext_color: str) -> str:
    """The Rich colour name for a plotext colour of :data:`PALETTE` (for legends outside the plot)."""
    return _RICH_NAMES.get(plotext_color, plotext_color)


def smooth_ema(values: Sequence[float], weight: float) -> list[float]:
    """Debiased exponential moving average (TensorBoard/W&B style); ``weight`` in [0, 1)."""
    if weight <= 0 or not values:
        return list(values)
    out: list[float] = []
    last = 0.0
    n = 0
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            out.append(out[-1] if out else float("nan"))
            continue
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight**n))
    return out


SHORT_SERIES = 12  # fewer points than this: no smoothing, every point drawn


def y_limits(values: Sequence[float], bounds: tuple[float | None, float | None] = (None, None)
             ) -> tuple[float, float] | None:
    """The y range for ``values`` with a little room, never outside ``bounds`` (the metric's range)."""
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    span = hi - lo
    pad = span * 0.08 if span > 1e-9 else max(abs(lo) * 0.1, 0.05)
    lo, hi = lo - pad, hi + pad
    if bounds[0] is not None:
        lo = max(lo, bounds[0])
    if bounds[1] is not None:
        hi = min(hi, bounds[1])
    if hi - lo < 1e-9:  # a value sitting on a bound: open the range inwards
        lo, hi = (lo, lo + 2 * pad) if bounds[0] is not None and lo <= bounds[0] else (hi - 2 * pad, hi)
    return lo, hi


def clip(values: Sequence[float], bounds: tuple[float | None, float | None]) -> list[float]:
    lo, hi = bounds
    out = []
    for v in values:
        if v == v:
            if lo is not None:
                v = max(lo, v)
            if hi is not None:
                v = min(hi, v)
        out.append(v)
    return out


def step_ticks(xmin: float, xmax: float, most: int = 6) -> list[int]:
    """Whole-number ticks from ``xmin`` to ``xmax`` (at most ``most``, on a 1/2/5 x 10^k spacing)."""
    lo, hi = math.ceil(xmin - 1e-9), math.floor(xmax + 1e-9)
    if hi < lo:
        return [round(xmin)]
    span = hi - lo
    spacing = 1
    for base in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000):
        spacing = base
        if span / base < most:
            break
    else:
        spacing = max(1, math.ceil(span / (most - 1)))
    first = lo if lo % spacing == 0 else lo + (spacing - lo % spacing)
    ticks = list(range(int(first), int(hi) + 1, int(spacing)))
    return ticks or [lo]


def fmt_value(v: float) -> str:
    """A metric value in a title or label: 3 decimals under 10, fewer digits above."""
    if v != v:
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.4g}" if abs(v) < 1e6 else f"{v:.3g}"


def titled(title: str, series: Sequence["Series"], width: int = 10_000) -> str:
    """The panel title with the latest raw value of each line (``· last 0.332`` / ``· last a 0.3, b 0.9``),
    shortened to fit ``width`` (values without labels, then the bare values)."""
    last = [(s.label, s.values[-1]) for s in series if s.values]
    if not last:
        return title
    if len(last) == 1:
        options = [f"{title} · last {fmt_value(last[0][1])}", fmt_value(last[0][1])]
    else:
        options = [f"{title} · last " + ", ".join(f"{label[:12]} {fmt_value(v)}" for label, v in last[:4]),
                   f"{title} · last " + " / ".join(fmt_value(v) for _, v in last[:4]),
                   "last " + ", ".join(f"{label[:12]} {fmt_value(v)}" for label, v in last[:4]),
                   " / ".join(fmt_value(v) for _, v in last[:4])]
    for option in options:
        if len(option) <= width:
            return option
    return options[-1][:max(1, width)]


def downsample(xs: Sequence[float], ys: Sequence[float], max_points: int) -> tuple[list[float], list[float]]:
    """At most ``max_points`` points for a plot about ``max_points // 2`` dot columns wide: ``xs`` (ascending) is cut
    into that many equal x ranges and each keeps its lowest and its highest point (in x order), so a one-step
    spike stays visible however long the series. The first and the last point are always kept; NaN values
    (gaps) are skipped."""
    n = len(xs)
    if n <= max_points or max_points < 4:
        return list(xs), list(ys)
    columns = (max_points - 2) // 2  # two points per column, plus the first and the last
    x0, x1 = xs[0], xs[-1]
    width = (x1 - x0) / columns if x1 > x0 else 0.0
    keep: list[int] = [0]
    lo = hi = -1
    col = 0
    for i in range(1, n - 1):
        c = min(columns - 1, int((xs[i] - x0) / width)) if width else 0
        if c != col:
            keep += sorted({lo, hi} - {-1})
            lo = hi = -1
            col = c
        y = ys[i]
        if y != y:
            continue
        if lo < 0 or y < ys[lo]:
            lo = i
        if hi < 0 or y > ys[hi]:
            hi = i
    keep += sorted({lo, hi} - {-1})
    keep.append(n - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


@dataclass
class Series:
    """One line of a plot. ``wall`` holds wall times (unix seconds), parallel to ``steps``."""

    label: str
    steps: list[float]
    values: list[float]
    wall: list[float] = field(default_factory=list)
    color: str | None = None
    low: list[float] | None = None  # spread band (e.g. min or mean-std), drawn faint
    high: list[float] | None = None
    # A long series read at screen resolution (steps/values: each bucket's minimum and maximum, the first and
    # last points): (step, points, mean, wall time) per bucket, what the smoothed line is computed from.
    buckets: list[tuple[float, int, float, float]] | None = None


def smooth_buckets(buckets: Sequence[tuple[float, int, float, float]], weight: float) -> list[float]:
    """:func:`smooth_ema` over bucket means: a bucket of n points with mean m moves the average as n points of
    value m would (exact for a constant bucket), debiased by the points seen so far."""
    out: list[float] = []
    last, seen = 0.0, 0
    for _, n, mean, _ in buckets:
        w = weight ** n
        last = last * w + (1 - w) * mean
        seen += n
        out.append(last / (1 - weight ** seen))
    return out


def x_values(series: Series, x_axis: str, origin: float | None) -> list[float]:
    """x coordinates: the step, or minutes since ``origin`` (the run's first wall time)."""
    if x_axis == "wall" and series.wall and len(series.wall) == len(series.steps):
        t0 = origin if origin is not None else series.wall[0]
        return [(w - t0) / 60.0 for w in series.wall]
    return list(series.steps)


class CurvePlot(PlotextPlot):
    """A titled plot of one or more series; replot only when the data or the options changed."""

    DEFAULT_CSS = """
    CurvePlot { height: 1fr; min-height: 6; }
    """

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self._series: list[Series] = []
        self._markers: list[tuple[float, float | None, str]] = []  # (step, wall, kind)
        self.smoothing = 0.0
        self.x_axis = "step"
        self._version = 0  # bumped by replot(); the render cache key includes it
        self.bounds: tuple[float | None, float | None] = (None, None)  # the metric's range (y is kept inside)
        self.empty_text = "no data yet"
        self._has_data = False
        self._plotted_width = 0
        self._cache: tuple[object, object] | None = None

    @property
    def series(self) -> list[Series]:
        return self._series

    def set_data(self, series: list[Series], markers: list[tuple[float, float | None, str]] | None = None,
                 *, smoothing: float | None = None, x_axis: str | None = None,
                 bounds: tuple[float | None, float | None] | None = None, empty_text: str | None = None) -> None:
        if smoothing is not None:
            self.smoothing = smoothing
        if x_axis is not None:
            self.x_axis = x_axis
        if bounds is not None:
            self.bounds = bounds
        if empty_text is not None:
            self.empty_text = empty_text
        self._series = series
        self._markers = list(markers or [])
        self._has_data = True
        self.replot()

    def render(self) -> RenderResult:
        """Build the plot only when something changed: data/options (version), size or theme."""
        if not self._has_data:
            return ""
        key = (self._version, self.size, self.app.theme, self.theme)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, super().render())
        return self._cache[1]

    def replot(self) -> None:
        self._version += 1
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        self._plotted_width = self.size.width
        width = max(20, self.size.width or 80)
        plt.title(titled(self.title, self._series, width - 4))  # plotext drops a title that does not fit
        max_points = width * 2
        origin = None
        if self.x_axis == "wall":
            firsts = [s.wall[0] for s in self._series if s.wall]
            origin = min(firsts) if firsts else None
        plt.xlabel("minutes" if self.x_axis == "wall" else "step")
        drawn = 0
        ys_all: list[float] = []
        xs_all: list[float] = []
        singles: list[tuple[float, float, str]] = []
        for i, s in enumerate(self._series):
            if not s.steps:
                continue
            color = s.color or PALETTE[i % len(PALETTE)]
            xs = x_values(s, self.x_axis, origin)
            xs_all += xs
            label = s.label if len(self._series) > 1 else None
            if s.low is not None and s.high is not None and len(s.low) == len(xs):
                for band in (s.low, s.high):
                    bx, by = downsample(xs, clip(band, self.bounds), max_points)
                    ys_all += [y for y in by if y == y]
                    plt.plot(bx, by, color="gray", marker="·")  # spread band: faint dots
            ys = s.values
            if len(ys) == 1:  # one point (e.g. the validation after the last step): mark it, say its value
                plt.scatter(xs, ys, color=color, marker="●", label=label)
                singles.append((xs[0], ys[0], color))
                ys_all += ys
                drawn += 1
                continue
            short = len(ys) < SHORT_SERIES
            sx = xs
            if self.smoothing > 0 and not short:
                rx, ry = downsample(xs, ys, max_points)
                plt.plot(rx, ry, color="gray", marker="braille")  # the raw series under the smoothed one
                if s.buckets:
                    bw = [b[3] for b in s.buckets]
                    bw = bw if s.wall and all(w == w for w in bw) else []  # the main line's x axis, or steps
                    sx = x_values(Series("", [b[0] for b in s.buckets], [], wall=bw), self.x_axis, origin)
                    ys = smooth_buckets(s.buckets, self.smoothing)
                else:
                    ys = smooth_ema(ys, self.smoothing)
            dx, dy = downsample(sx, ys, max_points)
            ys_all += [y for y in dy if y == y] + [y for y in s.values if y == y]
            plt.plot(dx, dy, color=color, marker="braille", label=label)
            if short:  # few points: each real value visible
                plt.scatter(xs, s.values, color=color, marker="●")
            drawn += 1
        limits = y_limits(ys_all, self.bounds)
        if limits is not None:
            plt.ylim(*limits)
        if limits is not None and xs_all:
            mid = (min(xs_all) + max(xs_all)) / 2
            for x, y, color in singles:  # the value next to the point (a row off it, towards the inside)
                off = 0.12 * (limits[1] - limits[0])
                ty = y - off if y + off > limits[1] else y + off
                plt.text(fmt_value(y), x, ty, color=color, alignment="right" if x > mid else "left")
        if xs_all and self.x_axis == "step":
            lo, hi = min(xs_all), max(xs_all)
            if hi - lo < 1:  # one step: room on both sides, the step in the middle
                lo, hi = lo - 1, hi + 1
                plt.xlim(lo, hi)
            ticks = step_ticks(lo, hi)
            plt.xticks(ticks, [str(t) for t in ticks])
        if drawn:
            for step, wall, kind in self._markers:
                if self.x_axis == "wall":
                    if wall is None or origin is None:
                        continue
                    x = (wall - origin) / 60.0
                else:
                    x = step
                plt.vline(x, "red" if kind == "resumed" else "yellow")
        else:
            plt.text(self.empty_text, 0.5, 0.5, alignment="center")
            plt.xlim(0, 1)
            plt.ylim(0, 1)
        self.refresh()

    def on_resize(self) -> None:
        if self._has_data and self.size.width != self._plotted_width:
            self.replot()


def fit_grid(grid, width: int, height: int, panels: int) -> None:
    """Lay curve panels out for the terminal: 2 columns at 80, 3 from 120; taller rows when there is room."""
    cols = max(1, min(3, width // 40, panels))
    rows = -(-panels // cols)
    row_height = max(10, min(24, (height - 6) // min(rows, 2)))
    grid.styles.grid_size_columns = cols
    grid.styles.grid_rows = str(row_height)
