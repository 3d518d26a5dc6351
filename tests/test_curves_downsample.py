"""Curve downsampling for the screen (ropd_tui.widgets.curves.downsample): bounded output that keeps every
column's minimum and maximum, so a one-step spike in a long series stays visible."""

from __future__ import annotations

import math

from ropd_tui.widgets.curves import downsample


def test_short_series_are_kept_whole():
    xs, ys = [1.0, 2.0, 3.0], [0.1, 0.2, 0.3]
    assert downsample(xs, ys, 160) == (xs, ys)


def test_long_series_keep_spikes_ends_and_order():
    n = 50_000
    xs = [float(i) for i in range(n)]
    ys = [0.5 + 0.01 * math.sin(i / 100) for i in range(n)]
    ys[12_345], ys[40_001] = 9.0, -7.0  # one-step spikes up and down
    dx, dy = downsample(xs, ys, 160)
    assert len(dx) <= 160 and len(dx) == len(dy)
    assert dx == sorted(dx) and dx[0] == 0.0 and dx[-1] == n - 1
    assert 9.0 in dy and -7.0 in dy
    assert max(dy) == max(ys) and min(dy) == min(ys)
    assert all(ys[int(x)] == y for x, y in zip(dx, dy))  # real points, not averages


def test_gaps_are_skipped_not_drawn_as_extremes():
    xs = [float(i) for i in range(1000)]
    ys = [float("nan") if i % 3 == 0 and 0 < i < 999 else float(i % 7) for i in range(1000)]
    dx, dy = downsample(xs, ys, 40)
    assert len(dx) <= 40
    assert all(y == y for y in dy[1:-1])
    assert max(dy) == 6.0 and min(dy) == 0.0
