"""Inline SVG charts for the HTML report: no JavaScript, no CDN, nothing to fetch, so
the page is one file that opens anywhere (and in a mail client). Hover shows values
through SVG <title> elements."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
WIDTH, HEIGHT = 760, 280
LEFT, RIGHT, TOP, BOTTOM = 64, 150, 16, 36


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.4g}"
    return f"{value:.3g}"


def _time(ts: float, span: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%H:%M" if span <= 2 * 86400 else "%m-%d")


def empty(chart_id: str, title: str, message: str) -> str:
    return (
        f'<figure class="chart empty" id="{escape(chart_id)}"><figcaption>{escape(title)}</figcaption>'
        f'<p class="none">{escape(message)}</p></figure>'
    )


def line_chart(
    chart_id: str, title: str, series: Mapping[str, Sequence[tuple[float, float]]], y_label: str
) -> str:
    """One line per series; x values are UNIX seconds. A one-point series is a dot."""
    points = [p for values in series.values() for p in values]
    if not points:
        return empty(chart_id, title, "no data in this window")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 60, x1 + 60
    ticks = nice_ticks(0.0, max(ys))
    y1 = ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h - (y / y1) * plot_h

    parts = [_frame(chart_id, title)]
    for tick in ticks:
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{sy(tick):.1f}" y2="{sy(tick):.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{sy(tick) + 4:.1f}" text-anchor="end">'
            f"{_number(tick)}</text>"
        )
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        parts.append(
            f'<text class="tick" x="{sx(x):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">'
            f"{_time(x, x1 - x0)}</text>"
        )
    parts.append(
        f'<text class="axis" x="14" y="{TOP + plot_h / 2:.0f}" '
        f'transform="rotate(-90 14 {TOP + plot_h / 2:.0f})" text-anchor="middle">{escape(y_label)}</text>'
    )
    for n, (name, values) in enumerate(sorted(series.items())):
        color = PALETTE[n % len(PALETTE)]
        ordered = sorted(values)
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(ordered)
        )
        parts.append(
            f'<path class="series" data-series="{escape(name)}" d="{path}" stroke="{color}" '
            'fill="none" stroke-width="2.5"/>'
        )
        for x, y in ordered:
            parts.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5" fill="{color}">'
                f"<title>{escape(name)} {_time(x, 0)}: {_number(y)}</title></circle>"
            )
        ly = TOP + 14 + n * 18
        parts.append(
            f'<rect x="{LEFT + plot_w + 14}" y="{ly - 9}" width="12" height="12" fill="{color}"/>'
            f'<text class="legend" x="{LEFT + plot_w + 31}" y="{ly + 1}">{escape(name[:18])}</text>'
        )
    parts.append("</svg></figure>")
    return "".join(parts)


def bar_chart(chart_id: str, title: str, bars: Sequence[tuple[str, float]], unit: str) -> str:
    """Horizontal bars, largest first."""
    if not bars:
        return empty(chart_id, title, "no data in this window")
    ordered = sorted(bars, key=lambda b: -b[1])[:12]
    top = max(v for _, v in ordered) or 1.0
    row = 26
    height = TOP + BOTTOM + row * len(ordered)
    plot_w = WIDTH - LEFT - RIGHT - 60
    parts = [_frame(chart_id, title, height)]
    for n, (label, value) in enumerate(ordered):
        y = TOP + n * row
        width = max(value / top * plot_w, 1.0)
        color = PALETTE[n % len(PALETTE)]
        parts.append(
            f'<text class="tick" x="{LEFT + 50}" y="{y + 16}" text-anchor="end">{escape(label[:20])}</text>'
            f'<rect class="bar" x="{LEFT + 56}" y="{y + 3}" width="{width:.1f}" height="{row - 8}" '
            f'fill="{color}"><title>{escape(label)}: {_number(value)} {escape(unit)}</title></rect>'
            f'<text class="tick" x="{LEFT + 62 + width:.1f}" y="{y + 16}">'
            f"{_number(value)} {escape(unit)}</text>"
        )
    parts.append("</svg></figure>")
    return "".join(parts)


def _frame(chart_id: str, title: str, height: int = HEIGHT) -> str:
    return (
        f'<figure class="chart" id="{escape(chart_id)}"><figcaption>{escape(title)}</figcaption>'
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
        f'height="{height}" role="img" aria-label="{escape(title)}">'
    )
