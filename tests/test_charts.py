"""The server-side SVG charts: well-formed, escaped, and drawing what they claim."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

from markupsafe import Markup

from cp.web import charts

T0 = datetime(2026, 11, 27, 0, 0, tzinfo=timezone.utc)
SVG = "{http://www.w3.org/2000/svg}"
EVIL = '<script>alert(1)</script>"&'


def parse(markup: Markup) -> ET.Element:
    assert isinstance(markup, Markup)
    return ET.fromstring(str(markup))  # well-formed XML, or this raises


def test_line_chart_draws_series_and_limit():
    pts = [(T0 + timedelta(minutes=5 * i), v) for i, v in enumerate([100, 200, 900, 300])]
    root = parse(charts.line_chart(pts, start=T0, end=T0 + timedelta(minutes=15), title="p95", unit="ms", limit=500))
    assert root.tag == f"{SVG}svg" and root.get("role") == "img"
    lines = root.findall(f".//{SVG}line[@class='limit']")
    assert len(lines) == 1
    polylines = root.findall(f".//{SVG}polyline")
    assert len(polylines) == 2  # under the limit (blue) and over it (red), clipped
    assert len(polylines[0].get("points").split()) == 4
    assert "limit 500 ms" in "".join(root.itertext())
    # the y axis covers the peak
    ys = [float(p.split(",")[1]) for p in polylines[0].get("points").split()]
    assert min(ys) >= 10  # inside the plot area


def test_line_chart_breaks_on_gaps_and_handles_no_data():
    pts = [(T0, 1.0), (T0 + timedelta(minutes=5), None), (T0 + timedelta(minutes=10), 2.0),
           (T0 + timedelta(minutes=15), 3.0)]
    root = parse(charts.line_chart(pts, start=T0, end=T0 + timedelta(minutes=15), title="x"))
    assert len(root.findall(f".//{SVG}polyline")) == 1
    assert len(root.findall(f".//{SVG}circle")) == 1  # the lone point before the gap
    empty = parse(charts.line_chart([], start=T0, end=T0 + timedelta(hours=1), title="x", limit=1))
    assert "no data in this period" in "".join(empty.itertext())


def test_chart_text_is_escaped():
    ev = charts.TimelineEvent("alerts", T0, EVIL, "critical", end=T0 + timedelta(hours=1))
    for markup in (
        charts.line_chart([(T0, 1.0)], start=T0, end=T0 + timedelta(hours=1), title=EVIL, unit=EVIL, limit=2),
        charts.progress_bar({EVIL: 3, "succeeded": 1}, title=EVIL),
        charts.batch_chart([(1, {EVIL: 2})], current_batch=1, title=EVIL),
        charts.timeline([ev], start=T0, end=T0 + timedelta(hours=2), lanes=["alerts", EVIL], title=EVIL),
        charts.legend([EVIL]),
    ):
        text = str(markup)
        assert "<script>" not in text
        assert "&lt;script&gt;" in text
        if text.startswith("<svg"):
            root = parse(markup)
            assert EVIL in "".join(root.itertext())  # shown, as text


def test_progress_bar_segments_follow_counts():
    root = parse(charts.progress_bar({"succeeded": 6, "failed": 1, "pending": 3}, total=20, width=200))
    segs = {r.get("class"): float(r.get("width")) for r in root.findall(f"{SVG}rect") if r.get("class")}
    assert segs == {"seg-succeeded": 60.0, "seg-failed": 10.0, "seg-pending": 30.0}
    assert "7/20 done" in root.find(f"{SVG}title").text


def test_batch_chart_marks_current_and_unopened_batches():
    batches = [(1, {"succeeded": 2}), (2, {"in_progress": 1, "failed": 1}), (3, {"pending": 2})]
    root = parse(charts.batch_chart(batches, current_batch=2))
    assert len(root.findall(f".//{SVG}rect[@class='current']")) == 1
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert "batch 3: pending 2 (not opened yet)" in titles
    assert "batch 2: failed 1" in titles


def test_timeline_places_points_and_spans_in_lanes():
    events = [
        charts.TimelineEvent("heartbeat", T0 + timedelta(minutes=30), "health: ok → down", "down"),
        charts.TimelineEvent("alerts", T0 + timedelta(minutes=10), "open one", "warning", open_ended=True),
        charts.TimelineEvent("updates", T0 + timedelta(minutes=50), "update", "succeeded"),
        charts.TimelineEvent("elsewhere", T0, "ignored"),
    ]
    root = parse(charts.timeline(events, start=T0, end=T0 + timedelta(hours=1), lanes=["heartbeat", "alerts", "updates"]))
    spans = root.findall(f".//{SVG}rect[@class='span warning']")
    assert len(spans) == 1
    x, w = float(spans[0].get("x")), float(spans[0].get("width"))
    assert abs((x + w) - (1100 - 10)) < 0.2  # open-ended: runs to the end of the window
    assert len(root.findall(f".//{SVG}circle")) == 2
    assert "ignored" not in "".join(root.itertext())


def test_nice_max_and_values():
    assert charts.nice_max(0) == 1.0
    assert charts.nice_max(7.3) == 10
    assert charts.nice_max(0.0023) == 0.0025
    assert charts.fmt_value(None) == "—"
    assert charts.fmt_value(1234.4, "ms") == "1,234 ms"
    assert charts.fmt_value(0.0021) == "0.0021"
