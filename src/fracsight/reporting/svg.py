"""Inline SVG charts: line charts with confidence bands or error bars, and bar charts with CIs.

Charts are plain SVG text inside the page, so a report needs no plotting library, no
JavaScript and no network. Colours are the Okabe-Ito palette, readable with the common
colour-vision deficiencies; every series also has a legend entry in words.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from fracsight.reporting.html import Markup, escape

__all__ = ["PALETTE", "IntervalStyle", "LineSeries", "MarkedPoint", "BarSeries", "line_chart", "bar_chart"]

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")

_ids = itertools.count(1)


class IntervalStyle(str, enum.Enum):
    """How a series' confidence interval is drawn: a shaded band or error bars at each point."""

    BAND = "band"
    BARS = "bars"


@dataclass(frozen=True)
class LineSeries:
    """One line; ``lower``/``upper`` (same length as ``x``) draw its confidence interval."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    lower: Sequence[float] | None = None
    upper: Sequence[float] | None = None
    interval: IntervalStyle = IntervalStyle.BAND
    markers: bool = False
    dashed: bool = False
    color: str | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"series {self.name!r}: x has {len(self.x)} values, y has {len(self.y)}")
        for side, values in (("lower", self.lower), ("upper", self.upper)):
            if values is not None and len(values) != len(self.x):
                raise ValueError(
                    f"series {self.name!r}: {side} has {len(values)} values, x has {len(self.x)}"
                )


@dataclass(frozen=True)
class MarkedPoint:
    """A labelled point (e.g. an operating point), with optional CI whiskers in x and y."""

    x: float
    y: float
    label: str
    x_lower: float | None = None
    x_upper: float | None = None
    y_lower: float | None = None
    y_upper: float | None = None
    color: str | None = None


@dataclass(frozen=True)
class BarSeries:
    """One set of bars, one value per category; ``None`` marks a value withheld (e.g. too few cases)."""

    name: str
    values: Sequence[float | None]
    lower: Sequence[float | None] | None = None
    upper: Sequence[float | None] | None = None
    color: str | None = None


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def nice_ticks(low: float, high: float, target: int = 6) -> list[float]:
    """Round tick values covering [low, high], about ``target`` of them."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        raise ValueError(f"axis range [{low}, {high}] must be finite with high > low")
    raw = (high - low) / max(target - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _tick_label(value: float) -> str:
    text = f"{value:.3g}"
    return "0" if text in ("-0", "0") else text


class _Frame:
    """Maps data coordinates to the SVG plot area and draws the axes."""

    def __init__(
        self,
        width: int,
        height: int,
        x_range: tuple[float, float],
        y_range: tuple[float, float],
        left: int = 58,
        right: int = 16,
        top: int = 34,
        bottom: int = 48,
    ) -> None:
        self.width, self.height = width, height
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        self.left, self.right, self.top, self.bottom = left, right, top, bottom
        self.plot_w = width - left - right
        self.plot_h = height - top - bottom

    def px(self, x: float) -> float:
        x = min(max(x, self.x0), self.x1)
        return self.left + (x - self.x0) / (self.x1 - self.x0) * self.plot_w

    def py(self, y: float) -> float:
        y = min(max(y, self.y0), self.y1)
        return self.top + (1 - (y - self.y0) / (self.y1 - self.y0)) * self.plot_h

    def axes(self, x_label: str | None, y_label: str, x_ticks: bool = True) -> str:
        parts = [
            f'<rect x="{self.left}" y="{self.top}" width="{self.plot_w}" height="{self.plot_h}" '
            'fill="#fff" stroke="#9aa5b1"/>'
        ]
        for tick in nice_ticks(self.y0, self.y1):
            y = _fmt(self.py(tick))
            parts.append(
                f'<line x1="{self.left}" x2="{self.left + self.plot_w}" y1="{y}" y2="{y}" stroke="#eceff2"/>'
                f'<text x="{self.left - 6}" y="{y}" text-anchor="end" dominant-baseline="middle" '
                f'font-size="11">{_tick_label(tick)}</text>'
            )
        if x_ticks:
            for tick in nice_ticks(self.x0, self.x1):
                x = _fmt(self.px(tick))
                base = self.top + self.plot_h
                parts.append(
                    f'<line x1="{x}" x2="{x}" y1="{self.top}" y2="{base}" stroke="#eceff2"/>'
                    f'<text x="{x}" y="{base + 15}" text-anchor="middle" font-size="11">'
                    f"{_tick_label(tick)}</text>"
                )
        parts.append(
            f'<rect x="{self.left}" y="{self.top}" width="{self.plot_w}" height="{self.plot_h}" '
            'fill="none" stroke="#9aa5b1"/>'
        )
        if x_label:
            parts.append(
                f'<text x="{_fmt(self.left + self.plot_w / 2)}" y="{self.top + self.plot_h + 36}" '
                f'text-anchor="middle" font-size="12">{escape(x_label)}</text>'
            )
        cy = _fmt(self.top + self.plot_h / 2)
        parts.append(
            f'<text x="14" y="{cy}" text-anchor="middle" font-size="12" '
            f'transform="rotate(-90 14 {cy})">{escape(y_label)}</text>'
        )
        return "".join(parts)


def _svg_open(width: int, height: int, title: str, css_class: str, element_id: str | None) -> tuple[str, str]:
    title_id = f"chart-title-{next(_ids)}"
    attr_id = f' id="{escape(element_id)}"' if element_id else ""
    opening = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {css_class}"{attr_id} width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-labelledby="{title_id}" '
        'font-family="system-ui, -apple-system, Segoe UI, Roboto, Arial, sans-serif">'
        f'<title id="{title_id}">{escape(title)}</title>'
        f'<text x="{width / 2:.1f}" y="18" text-anchor="middle" font-size="13" font-weight="600">'
        f"{escape(title)}</text>"
    )
    return opening, "</svg>"


def _legend(entries: Sequence[tuple[str, str, str]], x: float, y: float) -> str:
    """Legend rows of (name, colour, kind) with kind 'line', 'dashed', 'point', 'box' or 'band'."""
    parts = []
    for i, (name, color, kind) in enumerate(entries):
        row_y = y + i * 16
        if kind == "point":
            symbol = f'<circle cx="{_fmt(x + 9)}" cy="{_fmt(row_y)}" r="4" fill="{color}" stroke="#fff"/>'
        elif kind == "box":
            symbol = f'<rect x="{_fmt(x + 2)}" y="{_fmt(row_y - 5)}" width="14" height="10" fill="{color}"/>'
        elif kind == "band":
            symbol = (
                f'<rect x="{_fmt(x + 2)}" y="{_fmt(row_y - 5)}" width="14" height="10" fill="{color}" '
                'fill-opacity="0.18"/>'
            )
        else:
            dash = ' stroke-dasharray="5 4"' if kind == "dashed" else ""
            symbol = (
                f'<line x1="{_fmt(x)}" x2="{_fmt(x + 18)}" y1="{_fmt(row_y)}" y2="{_fmt(row_y)}" '
                f'stroke="{color}" stroke-width="2"{dash}/>'
            )
        parts.append(
            f'{symbol}<text x="{_fmt(x + 24)}" y="{_fmt(row_y)}" dominant-baseline="middle" '
            f'font-size="11">{escape(name)}</text>'
        )
    return f'<g class="legend">{"".join(parts)}</g>'


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def line_chart(
    series: Sequence[LineSeries],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float] = (0.0, 1.0),
    y_range: tuple[float, float] = (0.0, 1.0),
    points: Sequence[MarkedPoint] = (),
    diagonal: str | None = None,
    width: int = 460,
    height: int = 420,
    element_id: str | None = None,
    ci_label: str = "95% CI",
) -> Markup:
    """A line chart; ``diagonal`` names a dashed y = x reference line (chance, perfect calibration).

    ``ci_label`` names the bands' level in the legend (the caller knows what it computed).
    """
    colors = itertools.cycle(PALETTE)
    styled = [(s, s.color or next(colors)) for s in series]
    point_colors = [p.color or next(colors) for p in points]
    legend_entries: list[tuple[str, str, str]] = []
    for s, color in styled:
        banded = s.lower is not None and s.interval is IntervalStyle.BAND
        band_only = banded and not any(_finite(v) for v in s.y)
        name = s.name + (f" (shaded: {ci_label})" if banded and not band_only else "")
        legend_entries.append((name, color, "band" if band_only else "dashed" if s.dashed else "line"))
    legend_entries += [(p.label, c, "point") for p, c in zip(points, point_colors, strict=True)]
    if diagonal:
        legend_entries.append((diagonal, "#7b8794", "dashed"))
    plot_height = height
    height = plot_height + 16 * len(legend_entries) + 6
    frame = _Frame(width, plot_height, x_range, y_range)
    opening, closing = _svg_open(width, height, title, "line-chart", element_id)
    parts = [opening, frame.axes(x_label, y_label)]
    if diagonal:
        parts.append(
            f'<line class="reference" x1="{_fmt(frame.px(x_range[0]))}" y1="{_fmt(frame.py(x_range[0]))}" '
            f'x2="{_fmt(frame.px(x_range[1]))}" y2="{_fmt(frame.py(x_range[1]))}" stroke="#7b8794" '
            'stroke-dasharray="5 4"/>'
        )
    for s, color in styled:
        xs, ys = list(s.x), list(s.y)
        if s.lower is not None and s.upper is not None:
            lows, highs = list(s.lower), list(s.upper)
            if s.interval is IntervalStyle.BAND:
                upper_path = [
                    (frame.px(x), frame.py(hi)) for x, hi in zip(xs, highs, strict=True) if _finite(x, hi)
                ]
                lower_path = [
                    (frame.px(x), frame.py(lo)) for x, lo in zip(xs, lows, strict=True) if _finite(x, lo)
                ]
                polygon = upper_path + lower_path[::-1]
                if polygon:
                    coords = " ".join(f"{_fmt(a)},{_fmt(b)}" for a, b in polygon)
                    parts.append(
                        f'<polygon class="ci-band" points="{coords}" fill="{color}" fill-opacity="0.18"/>'
                    )
            else:
                for x, lo, hi in zip(xs, lows, highs, strict=True):
                    if _finite(x, lo, hi):
                        cx = frame.px(x)
                        parts.append(
                            f'<line class="error-bar" x1="{_fmt(cx)}" x2="{_fmt(cx)}" '
                            f'y1="{_fmt(frame.py(lo))}" y2="{_fmt(frame.py(hi))}" stroke="{color}" '
                            'stroke-width="1.5"/>'
                        )
        path = [(frame.px(x), frame.py(y)) for x, y in zip(xs, ys, strict=True) if _finite(x, y)]
        if path:
            coords = " ".join(f"{_fmt(a)},{_fmt(b)}" for a, b in path)
            dash = ' stroke-dasharray="6 4"' if s.dashed else ""
            parts.append(
                f'<polyline class="series" points="{coords}" fill="none" stroke="{color}" '
                f'stroke-width="2"{dash}><title>{escape(s.name)}</title></polyline>'
            )
            if s.markers:
                parts.extend(
                    f'<circle cx="{_fmt(a)}" cy="{_fmt(b)}" r="3.5" fill="{color}" stroke="#fff"/>'
                    for a, b in path
                )
    for p, color in zip(points, point_colors, strict=True):
        if not _finite(p.x, p.y):
            continue
        cx, cy = frame.px(p.x), frame.py(p.y)
        if _finite(p.x_lower, p.x_upper):
            parts.append(
                f'<line x1="{_fmt(frame.px(p.x_lower))}" x2="{_fmt(frame.px(p.x_upper))}" y1="{_fmt(cy)}" '
                f'y2="{_fmt(cy)}" stroke="{color}" stroke-width="1.5"/>'
            )
        if _finite(p.y_lower, p.y_upper):
            parts.append(
                f'<line x1="{_fmt(cx)}" x2="{_fmt(cx)}" y1="{_fmt(frame.py(p.y_lower))}" '
                f'y2="{_fmt(frame.py(p.y_upper))}" stroke="{color}" stroke-width="1.5"/>'
            )
        parts.append(
            f'<circle class="marked-point" cx="{_fmt(cx)}" cy="{_fmt(cy)}" r="5.5" fill="{color}" '
            f'stroke="#fff" stroke-width="1.5"><title>{escape(p.label)}</title></circle>'
        )
    parts.append(_legend(legend_entries, frame.left + 4, plot_height + 6))
    parts.append(closing)
    return Markup("".join(parts))


def bar_chart(
    categories: Sequence[str],
    series: Sequence[BarSeries],
    *,
    title: str,
    y_label: str,
    y_range: tuple[float, float] = (0.0, 1.0),
    category_notes: Sequence[str] | None = None,
    missing_text: str = "n/a",
    width: int | None = None,
    height: int = 320,
    element_id: str | None = None,
    ci_label: str = "95% CI",
) -> Markup:
    """Grouped vertical bars with CI error bars; a withheld value shows ``missing_text`` instead.

    ``category_notes`` go under each category label (up to two lines, split at ``\\n``), e.g. its n;
    ``ci_label`` names the whiskers' level in the legend.
    """
    for s in series:
        if len(s.values) != len(categories):
            raise ValueError(
                f"bar series {s.name!r} has {len(s.values)} values for {len(categories)} categories"
            )
    if category_notes is not None and len(category_notes) != len(categories):
        raise ValueError(f"{len(category_notes)} category notes for {len(categories)} categories")
    group_w = max(28 * len(series) + 24, 70)
    width = width or max(360, 58 + 16 + group_w * len(categories))
    legend_rows = len(series) + 1
    plot_height = height
    height = plot_height + 16 * legend_rows + 6
    frame = _Frame(width, plot_height, (0.0, 1.0), y_range, bottom=62)
    opening, closing = _svg_open(width, height, title, "bar-chart", element_id)
    parts = [opening, frame.axes(None, y_label, x_ticks=False)]
    colors = itertools.cycle(PALETTE)
    styled = [(s, s.color or next(colors)) for s in series]
    slot = frame.plot_w / max(len(categories), 1)
    bar_w = min(26.0, (slot - 14) / max(len(series), 1))
    base_y = frame.py(max(y_range[0], 0.0))
    for ci, category in enumerate(categories):
        center = frame.left + slot * (ci + 0.5)
        start = center - bar_w * len(series) / 2
        for si, (s, color) in enumerate(styled):
            x = start + si * bar_w
            value = s.values[ci]
            if value is None or not math.isfinite(value):
                parts.append(
                    f'<text class="withheld" x="{_fmt(x + bar_w / 2)}" y="{_fmt(base_y - 6)}" font-size="10" '
                    f'text-anchor="start" fill="#5a6470" transform="rotate(-90 {_fmt(x + bar_w / 2)} '
                    f'{_fmt(base_y - 6)})">{escape(missing_text)}</text>'
                )
                continue
            top = frame.py(value)
            parts.append(
                f'<rect class="bar" x="{_fmt(x + 1)}" y="{_fmt(min(top, base_y))}" width="{_fmt(bar_w - 2)}" '
                f'height="{_fmt(abs(base_y - top))}" fill="{color}" fill-opacity="0.85">'
                f"<title>{escape(f'{s.name}, {category}: {value:.3g}')}</title></rect>"
            )
            lo = s.lower[ci] if s.lower is not None else None
            hi = s.upper[ci] if s.upper is not None else None
            if _finite(lo, hi):
                cx = x + bar_w / 2
                y_lo, y_hi = frame.py(lo), frame.py(hi)
                parts.append(
                    f'<path class="error-bar" d="M{_fmt(cx)},{_fmt(y_lo)}V{_fmt(y_hi)}'
                    f"M{_fmt(cx - 4)},{_fmt(y_lo)}H{_fmt(cx + 4)}"
                    f'M{_fmt(cx - 4)},{_fmt(y_hi)}H{_fmt(cx + 4)}" stroke="#1d2327" '
                    'stroke-width="1.3" fill="none"/>'
                )
        label_y = frame.top + frame.plot_h + 16
        parts.append(
            f'<text x="{_fmt(center)}" y="{label_y}" text-anchor="middle" font-size="12">'
            f"{escape(category)}</text>"
        )
        if category_notes is not None:
            for li, line in enumerate(category_notes[ci].split("\n")[:2]):
                parts.append(
                    f'<text x="{_fmt(center)}" y="{label_y + 14 + 12 * li}" text-anchor="middle" '
                    f'font-size="10" fill="#5a6470">{escape(line)}</text>'
                )
    entries = [(s.name, color, "box") for s, color in styled]
    entries.append((f"whiskers: {ci_label}", "#1d2327", "line"))
    parts.append(_legend(entries, frame.left + 4, plot_height + 6))
    parts.append(closing)
    return Markup("".join(parts))
