"""Server-rendered SVG charts for the admin page: data in, an ``<svg>`` string out.

Pure functions, no JavaScript and nothing fetched. Every chart is an image to
assistive technology (``role="img"``, labelled by its ``<title>`` and ``<desc>``);
the page puts a data table beside each, which is where the exact numbers are.
Every label is escaped, so a role or source named ``<script>`` is only text.
Colours are SVG presentation attributes (not ``style``), which a
``Content-Security-Policy`` without ``'unsafe-inline'`` allows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from html import escape

PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442",
           "#000000")
"""Okabe and Ito's colour-blind safe palette, in the order series take it."""

_ID = re.compile(r"[a-z][a-z0-9-]*\Z")
_FONT = 'font-family="system-ui, sans-serif" font-size="12"'
_LABEL_CHARS = 22


@dataclass(frozen=True)
class Series:
    """One named row of values, one value per category (or per day)."""

    name: str
    values: Sequence[int]


def _x(text: str) -> str:
    """Text or an attribute value, escaped for XML (and HTML)."""
    return escape(text, quote=True)


def _short(label: str) -> str:
    return label if len(label) <= _LABEL_CHARS else label[: _LABEL_CHARS - 1] + "…"


def _num(value: int) -> str:
    return f"{value:,}"


def nice_step(largest: int, ticks: int = 4) -> int:
    """A round tick step (1, 2 or 5 times a power of ten) so ``ticks`` steps cover ``largest``."""
    if largest <= 0:
        return 1
    raw = largest / ticks
    power = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    for multiple in (1, 2, 5, 10):
        if multiple * power >= raw:
            return int(multiple * power)
    return int(10 * power)  # pragma: no cover - the loop always returns


def _open(chart_id: str, title: str, description: str, width: int, height: int) -> str:
    if not _ID.match(chart_id):
        raise ValueError(f"chart id must match [a-z][a-z0-9-]*, not {chart_id!r}")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" id="{chart_id}" '
        f'aria-labelledby="{chart_id}-title {chart_id}-desc" viewBox="0 0 {width} {height}" '
        f'width="100%" preserveAspectRatio="xMinYMin meet">'
        f'<title id="{chart_id}-title">{_x(title)}</title>'
        f'<desc id="{chart_id}-desc">{_x(description)}</desc>'
    )


def _legend(series: Sequence[Series], x: int, y: int, width: int) -> tuple[str, int]:
    """Swatches and names in rows from (x, y); returns the SVG and the height used."""
    parts, column, row = [], 0, 0
    for index, s in enumerate(series):
        label = _short(s.name)
        item = 18 + 7 * len(label) + 16
        if column and x + column + item > width:
            column, row = 0, row + 1
        top = y + 18 * row
        parts.append(
            f'<rect x="{x + column}" y="{top}" width="12" height="12" '
            f'fill="{PALETTE[index % len(PALETTE)]}"/>'
            f'<text x="{x + column + 16}" y="{top + 10}" {_FONT}>{_x(label)}</text>')
        column += item
    return "".join(parts), (18 * (row + 1) if series else 0)


def bar_chart(chart_id: str, title: str, description: str, categories: Sequence[str],
              series: Sequence[Series], *, unit: str = "") -> str:
    """Horizontal grouped bars: one group per category, one bar per series.

    Negative values are drawn as empty bars (the table beside the chart shows them).

    Raises:
        ValueError: a bad ``chart_id``, or a series without one value per category.
    """
    for s in series:
        if len(s.values) != len(categories):
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for "
                             f"{len(categories)} categories")
    width, left, right, bar = 640, 170, 90, 16
    group = 8 + bar * max(len(series), 1)
    plot = width - left - right
    largest = max((v for s in series for v in s.values), default=0)
    scale = plot / max(largest, 1)
    top = 24
    body = []
    for i, category in enumerate(categories):
        y0 = top + i * group
        body.append(f'<text x="{left - 8}" y="{y0 + group / 2 + 4:.1f}" text-anchor="end" '
                    f'{_FONT}>{_x(_short(category))}</text>')
        for j, s in enumerate(series):
            value = s.values[i]
            y = y0 + 4 + j * bar
            length = max(value, 0) * scale
            body.append(
                f'<rect x="{left}" y="{y}" width="{length:.1f}" height="{bar - 2}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{_x(category)}, {_x(s.name)}: '
                f'{_num(value)}{_x(" " + unit if unit else "")}</title></rect>'
                f'<text x="{left + length + 4:.1f}" y="{y + bar - 5}" {_FONT}>'
                f'{_num(value)}</text>')
    plot_bottom = top + group * max(len(categories), 1)
    step = nice_step(largest)
    ticks = []
    for k in range(0, largest // step + 1):
        x = left + k * step * scale
        ticks.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{plot_bottom}" '
                     f'stroke="#d4d4d4"/><text x="{x:.1f}" y="{top - 8}" text-anchor="middle" '
                     f'{_FONT}>{_num(k * step)}</text>')
    if not categories:
        body.append(f'<text x="{left}" y="{top + 16}" {_FONT}>No data yet.</text>')
    legend, legend_height = _legend(series, left, plot_bottom + 12, width)
    height = plot_bottom + 12 + legend_height + 6
    return (_open(chart_id, title, description, width, height) + "".join(ticks)
            + f'<line x1="{left}" y1="{top - 4}" x2="{left}" y2="{plot_bottom}" stroke="#555"/>'
            + "".join(body) + legend + "</svg>")


def daily_chart(chart_id: str, title: str, description: str, days: Sequence[date],
                series: Sequence[Series]) -> str:
    """Stacked columns per day: positive values stack up from the zero line, negative down.

    Raises:
        ValueError: a bad ``chart_id``, or a series without one value per day.
    """
    for s in series:
        if len(s.values) != len(days):
            raise ValueError(f"series {s.name!r} has {len(s.values)} values for {len(days)} days")
    width, left, right, top, plot_h = 720, 70, 16, 16, 220
    plot_w = width - left - right
    up = [sum(max(s.values[i], 0) for s in series) for i in range(len(days))]
    down = [sum(-min(s.values[i], 0) for s in series) for i in range(len(days))]
    most_up, most_down = max(up, default=0), max(down, default=0)
    span = max(most_up + most_down, 1)
    zero = top + plot_h * most_up / span if most_up or most_down else top + plot_h / 2
    scale = plot_h / span
    column = plot_w / max(len(days), 1)
    bars = []
    for i, day in enumerate(days):
        x = left + i * column + 1
        above, below = zero, zero
        for j, s in enumerate(series):
            value = s.values[i]
            if value == 0:
                continue
            height = abs(value) * scale
            if value > 0:
                above -= height
                y = above
            else:
                y, below = below, below + height
            bars.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{column - 2:.1f}" height="{height:.1f}" '
                f'fill="{PALETTE[j % len(PALETTE)]}"><title>{day.isoformat()}, {_x(s.name)}: '
                f'{_num(value)} credits</title></rect>')
    labels = [
        f'<text x="{left + i * column + column / 2:.1f}" y="{top + plot_h + 16}" '
        f'text-anchor="middle" {_FONT}>{day.strftime("%m-%d")}</text>'
        for i, day in enumerate(days) if i % 5 == 0 or i == len(days) - 1
    ]
    axis = (f'<line x1="{left}" y1="{zero:.1f}" x2="{width - right}" y2="{zero:.1f}" '
            f'stroke="#555"/><text x="{left - 6}" y="{zero + 4:.1f}" text-anchor="end" '
            f'{_FONT}>0</text>')
    # The extremes' labels, unless they would overlap the zero label.
    if most_up and zero - top >= 14:
        axis += (f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" {_FONT}>'
                 f'+{_num(most_up)}</text>')
    if most_down and top + plot_h - zero >= 14:
        axis += (f'<text x="{left - 6}" y="{top + plot_h + 4}" text-anchor="end" {_FONT}>'
                 f'&#8722;{_num(most_down)}</text>')
    if not series:
        axis += (f'<text x="{left + 8}" y="{top + 20}" {_FONT}>No allocations or spending in '
                 "these days.</text>")
    legend, legend_height = _legend(series, left, top + plot_h + 30, width)
    height = top + plot_h + 30 + legend_height + 6
    return (_open(chart_id, title, description, width, height) + axis + "".join(bars)
            + "".join(labels) + legend + "</svg>")
