"""Charts as inline SVG, built in Python on the server: no JavaScript, no CDN, works offline.

Every function returns ``markupsafe.Markup``; every piece of text that goes into the SVG
(labels, titles, tooltips: possibly agent-supplied) passes through ``escape`` first, and
numbers are formatted by this module, so a chart can be put in a template as ``{{ chart }}``
without ``|safe``.

- ``line_chart``: a time series against its limit (the part above the limit drawn in red);
- ``progress_bar``: one horizontal stacked bar of job counts by status (rollout progress);
- ``batch_chart``: a rollout's per-batch progress, one stacked column per batch;
- ``timeline``: lanes of point and span events (heartbeat changes, alerts, updates, restores).

The module knows nothing of Flask or the database: callers pass plain values.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable, Mapping, Sequence

from markupsafe import Markup, escape

_ids = itertools.count(1)

# Job statuses in the order they are drawn, with their colours (shared by bars and columns).
JOB_STATUS_ORDER = ("succeeded", "failed", "in_progress", "pending", "cancelled")
STATUS_COLORS = {
    "succeeded": "#2e9e5b", "passed": "#2e9e5b", "ok": "#2e9e5b",
    "failed": "#d64545", "down": "#d64545", "critical": "#d64545",
    "in_progress": "#3b82c4", "running": "#3b82c4", "scheduled": "#8fb3d9",
    "pending": "#c9ced6", "cancelled": "#8a8f98",
    "warning": "#e0a100", "degraded": "#e0a100", "info": "#5a8dc8", "change": "#6b5fb5",
}
FONT = "font-family=\"system-ui, sans-serif\" font-size=\"11\""


def _e(value: object) -> str:
    return str(escape(str(value)))


def _n(value: float) -> str:
    """A coordinate: short and locale-free."""
    return f"{value:.1f}".rstrip("0").rstrip(".") if math.isfinite(value) else "0"


def fmt_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if value == 0:
        text = "0"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}".rstrip("0").rstrip(".")
    else:
        text = f"{value:.4f}".rstrip("0").rstrip(".")
    return f"{text} {unit}".strip() if unit else text


def nice_max(value: float) -> float:
    """The smallest 1/2/2.5/5 x 10^n at or above ``value`` (the top of a y axis)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exp = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        # floats throughout: an int 10 ** 308 would not divide a float (any figure >= 0 is valid)
        top = step * 10.0 ** exp
        if top >= value * 0.999999:
            return top if math.isfinite(top) else value
    return value


def _time_label(at: datetime, span: timedelta) -> str:
    return at.strftime("%H:%M") if span <= timedelta(days=2) else at.strftime("%m-%d")


def _time_ticks(start: datetime, end: datetime, count: int = 5) -> list[datetime]:
    if end <= start:
        return [start]
    step = (end - start) / count
    return [start + step * i for i in range(count + 1)]


def _svg(width: int, height: int, title: str, body: str, css_class: str) -> Markup:
    tid = f"cpchart{next(_ids)}"
    return Markup(
        f'<svg class="cp-chart {css_class}" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-labelledby="{tid}" viewBox="0 0 {width} {height}" width="100%" '
        f'preserveAspectRatio="xMinYMin meet" style="max-width:{width}px">'
        f'<title id="{tid}">{_e(title)}</title>{body}</svg>'
    )


# --- a time series against its limit ----------------------------------------------------------
def line_chart(points: Sequence[tuple[datetime, float | None]], *, start: datetime, end: datetime,
               title: str, unit: str = "", limit: float | None = None, width: int = 460,
               height: int = 190) -> Markup:
    """``points`` sorted by time; ``None`` values break the line. The limit is a dashed line and
    the part of the series above it is drawn in red."""
    left, right, top, bottom = 56, 12, 10, 22
    pw, ph = width - left - right, height - top - bottom
    values = [v for _, v in points if v is not None]
    ymax = nice_max(max(values + ([limit] if limit is not None else []) + [0.0]) * 1.1)
    span = max((end - start).total_seconds(), 1.0)

    def x(at: datetime) -> float:
        return left + pw * min(max((at - start).total_seconds() / span, 0.0), 1.0)

    def y(v: float) -> float:
        return top + ph * (1 - min(max(v / ymax, 0.0), 1.0))

    parts = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafbfc" stroke="#d8dce2"/>']
    for i in range(5):  # y grid and labels
        v = ymax * i / 4
        yy = _n(y(v))
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{yy}" y2="{yy}" stroke="#eceef1"/>')
        parts.append(f'<text x="{left - 4}" y="{yy}" dy="3" text-anchor="end" {FONT} fill="#667">'
                     f'{_e(fmt_value(v))}</text>')
    ticks = _time_ticks(start, end, 4)
    for i, tick in enumerate(ticks):  # x labels (the outer ones kept inside the picture)
        anchor = "start" if i == 0 else "end" if i == len(ticks) - 1 else "middle"
        parts.append(f'<text x="{_n(x(tick))}" y="{height - 6}" text-anchor="{anchor}" {FONT} fill="#667">'
                     f'{_e(_time_label(tick, end - start))}</text>')

    segments: list[list[str]] = []
    current: list[str] = []
    for at, v in points:
        if v is None:
            if current:
                segments.append(current)
            current = []
            continue
        current.append(f"{_n(x(at))},{_n(y(v))}")
    if current:
        segments.append(current)

    cid = f"cpclip{next(_ids)}"
    limit_y = y(limit) if limit is not None else top
    if limit is not None:
        parts.append(
            f'<clipPath id="{cid}a"><rect x="{left}" y="{top}" width="{pw}" height="{_n(limit_y - top)}"/></clipPath>'
            f'<clipPath id="{cid}b"><rect x="{left}" y="{_n(limit_y)}" width="{pw}" '
            f'height="{_n(top + ph - limit_y)}"/></clipPath>')
    for seg in segments:
        pts = " ".join(seg)
        if len(seg) == 1:
            cx, cy = seg[0].split(",")
            color = "#d64545" if limit is not None and float(cy) < limit_y else "#3b82c4"
            parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"/>')
            continue
        if limit is None:
            parts.append(f'<polyline points="{pts}" fill="none" stroke="#3b82c4" stroke-width="1.6"/>')
        else:
            parts.append(f'<polyline points="{pts}" fill="none" stroke="#3b82c4" stroke-width="1.6" '
                         f'clip-path="url(#{cid}b)"/>')
            parts.append(f'<polyline class="over-limit" points="{pts}" fill="none" stroke="#d64545" '
                         f'stroke-width="2" clip-path="url(#{cid}a)"/>')
    if limit is not None:
        ly = _n(limit_y)
        parts.append(f'<line class="limit" x1="{left}" x2="{left + pw}" y1="{ly}" y2="{ly}" stroke="#d64545" '
                     f'stroke-dasharray="5 4" stroke-width="1.2"/>')
        parts.append(f'<text x="{left + pw - 4}" y="{ly}" dy="-4" text-anchor="end" {FONT} fill="#d64545">'
                     f'limit {_e(fmt_value(limit, unit))}</text>')
    if not values:
        parts.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" {FONT} fill="#889">'
                     f'no data in this period</text>')
    return _svg(width, height, title, "".join(parts), "cp-line-chart")


# --- rollout progress -------------------------------------------------------------------------
def _ordered(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    known = [(s, counts.get(s, 0)) for s in JOB_STATUS_ORDER]
    other = [(s, n) for s, n in sorted(counts.items()) if s not in JOB_STATUS_ORDER]
    return [(s, n) for s, n in known + other if n]


def progress_bar(counts: Mapping[str, int], *, total: int | None = None, width: int = 320,
                 height: int = 16, title: str = "Progress") -> Markup:
    """One stacked bar of ``counts`` (status -> jobs) over ``total`` (default: their sum)."""
    items = _ordered(counts)
    total = max(total if total is not None else sum(n for _, n in items), 1)
    parts = [f'<rect x="0" y="0" width="{width}" height="{height}" rx="3" fill="#eceef1"/>']
    x = 0.0
    for status, n in items:
        w = width * n / total
        parts.append(f'<rect class="seg-{_e(status)}" x="{_n(x)}" y="0" width="{_n(w)}" height="{height}" '
                     f'fill="{STATUS_COLORS.get(status, "#999")}"><title>{_e(status)}: {n}</title></rect>')
        x += w
    done = sum(n for s, n in items if s in ("succeeded", "failed", "cancelled"))
    summary = f"{title}: {done}/{total} done (" + ", ".join(f"{s} {n}" for s, n in items) + ")"
    return _svg(width, height, summary, "".join(parts), "cp-progress")


def batch_chart(batches: Sequence[tuple[int, Mapping[str, int]]], *, current_batch: int | None = None,
                width: int = 640, height: int = 170, title: str = "Progress per batch") -> Markup:
    """One stacked column per batch (jobs by status); batches not opened yet are hatched grey,
    the current batch is outlined."""
    left, right, top, bottom = 36, 8, 10, 30
    pw, ph = width - left - right, height - top - bottom
    n = max(len(batches), 1)
    slot = pw / n
    bar = max(min(slot * 0.7, 48), 2)
    ymax = max([sum(c.values()) for _, c in batches] + [1])
    parts = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafbfc" stroke="#d8dce2"/>',
             f'<text x="{left - 4}" y="{top}" dy="8" text-anchor="end" {FONT} fill="#667">{ymax}</text>',
             f'<text x="{left - 4}" y="{top + ph}" text-anchor="end" {FONT} fill="#667">0</text>']
    label_every = max(1, math.ceil(n / 20))
    for i, (number, counts) in enumerate(batches):
        x = left + slot * i + (slot - bar) / 2
        y = top + ph
        opened = current_batch is None or number <= current_batch
        for status, count in _ordered(counts):
            h = ph * count / ymax
            y -= h
            fill = STATUS_COLORS.get(status, "#999") if opened else "#e3e6ea"
            parts.append(f'<rect class="seg-{_e(status)}" x="{_n(x)}" y="{_n(y)}" width="{_n(bar)}" height="{_n(h)}" '
                         f'fill="{fill}"><title>batch {number}: {_e(status)} {count}'
                         f'{"" if opened else " (not opened yet)"}</title></rect>')
        if current_batch is not None and number == current_batch:
            parts.append(f'<rect class="current" x="{_n(x - 2)}" y="{top + 1}" width="{_n(bar + 4)}" '
                         f'height="{ph - 2}" fill="none" stroke="#1d2430" stroke-dasharray="3 2"/>')
        if i % label_every == 0 or (current_batch is not None and number == current_batch):
            parts.append(f'<text x="{_n(x + bar / 2)}" y="{top + ph + 13}" text-anchor="middle" {FONT} '
                         f'fill="#445">{number}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 3}" text-anchor="middle" {FONT} fill="#667">batch</text>')
    return _svg(width, height, title, "".join(parts), "cp-batch-chart")


# --- timeline -----------------------------------------------------------------------------------
@dataclass
class TimelineEvent:
    lane: str                      # e.g. "heartbeat", "alerts", "updates", "restores"
    at: datetime
    label: str                     # shown in the tooltip (escaped)
    kind: str = "change"           # colour key: a level or a status
    end: datetime | None = None    # a span (e.g. an alert open until resolved)
    open_ended: bool = False       # a span still going on at the end of the window
    extra: dict = field(default_factory=dict)


def timeline(events: Iterable[TimelineEvent], *, start: datetime, end: datetime, lanes: Sequence[str],
             width: int = 1100, title: str = "Timeline") -> Markup:
    lane_h, left, right, top, bottom = 26, 84, 10, 6, 22
    height = top + lane_h * len(lanes) + bottom
    pw = width - left - right
    span = max((end - start).total_seconds(), 1.0)

    def x(at: datetime) -> float:
        return left + pw * min(max((at - start).total_seconds() / span, 0.0), 1.0)

    parts = []
    for i, lane in enumerate(lanes):
        y0 = top + lane_h * i
        fill = "#fafbfc" if i % 2 == 0 else "#f2f4f6"
        parts.append(f'<rect x="{left}" y="{y0}" width="{pw}" height="{lane_h}" fill="{fill}"/>')
        parts.append(f'<text x="{left - 6}" y="{y0 + lane_h / 2}" dy="4" text-anchor="end" {FONT} '
                     f'fill="#334">{_e(lane)}</text>')
    ticks = _time_ticks(start, end, 6)
    for i, tick in enumerate(ticks):
        xx = _n(x(tick))
        anchor = "start" if i == 0 else "end" if i == len(ticks) - 1 else "middle"
        parts.append(f'<line x1="{xx}" x2="{xx}" y1="{top}" y2="{top + lane_h * len(lanes)}" stroke="#e3e6ea"/>')
        parts.append(f'<text x="{xx}" y="{height - 6}" text-anchor="{anchor}" {FONT} fill="#667">'
                     f'{_e(_time_label(tick, end - start))}</text>')
    lane_index = {lane: i for i, lane in enumerate(lanes)}
    for ev in sorted(events, key=lambda e: e.at):
        if ev.lane not in lane_index:
            continue
        cy = top + lane_h * lane_index[ev.lane] + lane_h / 2
        color = STATUS_COLORS.get(ev.kind, "#6b5fb5")
        tip = f"<title>{_e(ev.label)}</title>"
        if ev.end is not None or ev.open_ended:
            x1, x2 = x(ev.at), x(ev.end or end)
            parts.append(f'<rect class="span {_e(ev.kind)}" x="{_n(x1)}" y="{_n(cy - 5)}" width="{_n(max(x2 - x1, 2))}" '
                         f'height="10" rx="3" fill="{color}" fill-opacity="0.75">{tip}</rect>')
        else:
            parts.append(f'<circle class="point {_e(ev.kind)}" cx="{_n(x(ev.at))}" cy="{_n(cy)}" r="5" '
                         f'fill="{color}" stroke="#fff" stroke-width="1">{tip}</circle>')
    return _svg(width, height, title, "".join(parts), "cp-timeline")


def legend(keys: Iterable[str]) -> Markup:
    """A small HTML legend of colour keys (escaped)."""
    items = "".join(
        f'<span class="cp-legend-item"><span class="cp-swatch" style="background:{STATUS_COLORS.get(k, "#999")}">'
        f'</span>{_e(k.replace("_", " "))}</span>' for k in keys)
    return Markup(f'<span class="cp-legend">{items}</span>')
