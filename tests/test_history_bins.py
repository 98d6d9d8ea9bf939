"""The SLO charts' long windows binned in SQL: each bin's maximum, the window's breaches and
latest values, and the gaps, all equal to a brute-force computation over the raw samples."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from cp.extensions import db
from cp.fleet import history
from cp.models import Installation, SloSample

NOW = datetime(2026, 11, 27, 12, 2, 30, tzinfo=timezone.utc)  # not on a bucket: the page's clock is not
LIMITS = {"slo_p95_ms": 500.0, "slo_error_rate": 0.01}          # no limit for the webhook retry rate
FIGURES = tuple(history.SLO_FIGURES)


@pytest.fixture
def seeded(make_app):
    """30 days of 5-minute samples ending at NOW, with None values (the retry rate's for the last
    5 hours), a spike above the limit,
    a 20-minute gap, a 10-minute gap and a 6-hour gap; returns (app, installation id, raw rows)."""
    app = make_app(SLO_P95_MS_MAX="500", SLO_ERROR_RATE_MAX="0.01")
    rng = random.Random(21)
    last = NOW.replace(minute=0, second=0)
    gaps = [(last - timedelta(hours=2, minutes=20), timedelta(minutes=20)),   # breaks the line
            (last - timedelta(hours=4), timedelta(minutes=10)),                # does not
            (last - timedelta(days=3), timedelta(hours=6))]                    # breaks every window's
    rows = []
    at = last - timedelta(days=30, minutes=15)
    while at <= last:
        if not any(g <= at < g + length for g, length in gaps):
            rows.append((at, None if rng.random() < 0.02 else rng.uniform(100, 480),
                         rng.uniform(0, 0.012),
                         # the retry rate unreported for the last 5 hours: its latest value lies bins back
                         None if rng.random() < 0.1 or at > last - timedelta(hours=5) else rng.uniform(0, 0.05)))
        at += timedelta(minutes=5)
    spike = next(i for i, r in enumerate(rows) if r[0] >= last - timedelta(days=5, hours=1, minutes=7))
    rows[spike] = (rows[spike][0], 9999.0, *rows[spike][2:])
    with app.app_context():
        inst = Installation(instance_id="bins-1")
        db.session.add(inst)
        db.session.flush()
        db.session.add_all(SloSample(installation_id=inst.id, bucket=b, slo_p95_ms=p, slo_error_rate=e,
                                     slo_webhook_retry_rate=w) for b, p, e, w in rows)
        db.session.commit()
        installation_id = inst.id
    return app, installation_id, [dict(zip(("bucket",) + FIGURES, r)) for r in rows]


def brute_force(raw: list[dict], start: datetime, end: datetime, figure: str):
    """(points, breaches, latest) of one figure, from the raw rows in Python."""
    width = history.bin_seconds(start, end)
    inside = [r for r in raw if start <= r["bucket"] <= end]
    bins: dict[int, list[dict]] = {}
    for r in inside:
        bins.setdefault(int((r["bucket"] - start).total_seconds()) // width, []).append(r)
    points, prev = [], None
    for index in sorted(bins):
        first = min(r["bucket"] for r in bins[index])
        values = [r[figure] for r in bins[index] if r[figure] is not None]
        if prev is not None and (first - prev[1] > timedelta(minutes=15)) and index - prev[0] > 1:
            points.append((prev[1] + timedelta(seconds=width), None))
        points.append((first, max(values) if values else None))
        prev = (index, first)
    values = [r[figure] for r in inside if r[figure] is not None]
    limit = LIMITS.get(figure)
    breaches = sum(1 for v in values if limit is not None and v > limit)
    return points, breaches, (values[-1] if values else None)


def series(app, installation_id: int, window: str) -> dict[str, history.SloSeries]:
    with app.app_context():
        pictures = history.installation_pictures(installation_id, window, now=NOW)
        db.session.remove()
    return {s.figure: s for s in pictures["slo"]}


@pytest.mark.parametrize("window", ["7d", "30d"])
def test_long_windows_keep_each_bins_maximum_breaches_latest_and_gaps(seeded, window):
    app, installation_id, raw = seeded
    start = NOW - history.WINDOWS[window]
    got = series(app, installation_id, window)
    for figure in FIGURES:
        points, breaches, latest = brute_force(raw, start, NOW, figure)
        s = got[figure]
        assert [(t, v) for t, v in s.points] == [
            (t, v if v is None else pytest.approx(v)) for t, v in points]
        assert s.breaches == breaches
        assert s.latest == pytest.approx(latest)
        assert len([v for _, v in s.points if v is not None]) <= history.MAX_POINTS
        assert [t for t, _ in s.points] == sorted(t for t, _ in s.points)
    # the spike survives the binning and is counted; the error rate's breaches too
    assert max(v for _, v in got["slo_p95_ms"].points if v is not None) == 9999.0
    assert got["slo_p95_ms"].breaches == 1
    assert got["slo_error_rate"].breaches > 0
    assert got["slo_webhook_retry_rate"].breaches == 0  # no limit, no breach
    # the 6-hour gap breaks the line: a None between the points on either side of it
    gap = NOW.replace(minute=0, second=0) - timedelta(days=3)
    p95 = got["slo_p95_ms"].points
    breaks = [i for i, (t, v) in enumerate(p95) if v is None and p95[i - 1][0] < gap and p95[i + 1][0] >= gap]
    assert len(breaks) == 1
    # binned: far fewer points than the window's samples
    assert len(p95) < len([r for r in raw if r["bucket"] >= start]) / 5


@pytest.mark.parametrize("window", ["6h", "24h"])
def test_short_windows_stay_exact(seeded, window):
    app, installation_id, raw = seeded
    start = NOW - history.WINDOWS[window]
    assert history.bin_seconds(start, NOW) == history.BUCKET_SECONDS  # one point per sample
    got = series(app, installation_id, window)
    inside = [r for r in raw if start <= r["bucket"] <= NOW]
    for figure in FIGURES:
        # as the raw rows are: every sample, a None break after more than 15 minutes without one
        expected, prev = [], None
        for r in inside:
            if prev is not None and r["bucket"] - prev > timedelta(minutes=15):
                expected.append((prev + timedelta(minutes=5), None))
            expected.append((r["bucket"], r[figure]))
            prev = r["bucket"]
        assert [(t, v) for t, v in got[figure].points] == [
            (t, v if v is None else pytest.approx(v)) for t, v in expected]
    p95 = got["slo_p95_ms"].points
    # the 20-minute gap breaks the line, the 10-minute one does not
    sampled = {r["bucket"] for r in inside}
    breaks = [t for t, v in p95 if v is None and t not in sampled]
    assert breaks == [NOW.replace(minute=0, second=0) - timedelta(hours=2, minutes=20)]
