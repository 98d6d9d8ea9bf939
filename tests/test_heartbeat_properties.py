"""Property-based test of the heartbeat (Hypothesis): generated, correctly signed heartbeats with
edge values for every field, valid and not.

Whatever is accepted (200) reads back: the installation through the JSON API (one, the list)
and both HTML pages, with the values sent (text as sent, times in UTC, the agent's open alerts
exactly the set reported). Whatever is refused gets a 4xx in the contract's error shape and
changes nothing. Never a 5xx. Runs on PostgreSQL in CI (and on SQLite);
``CP_PROPERTY_EXAMPLES`` (default 100) examples, well under a minute.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from config import INSTANCE_ID_RE
from cp.signing import sign
from tests.conftest import AGENT_SECRETS, AGENT_TOKEN, bearer, login

MAX_EXAMPLES = int(os.environ.get("CP_PROPERTY_EXAMPLES", "100"))
MISSING = object()  # the field is left out of the body


# --- values: valid ones, edges included ------------------------------------------------------
def maybe(strategy):
    """Left out, null or a value."""
    return st.one_of(st.just(MISSING), st.none(), strategy)


def storable_text(min_size: int = 0, max_size: int = 255):
    """Text the service must take: any character but NUL and lone surrogates, edges first."""
    edges = [t for t in ("x" * max_size, "é" * max_size, "\U0001F600" * max_size, "<script>alert(1)</script>",
                         "' OR 1=1 --", "{{ 7*7 }}", "%s%d", "line\nbreak", "\t", "\u202e", "\ufeff", "\x7f", " ",
                         "NaN", "\x01") if min_size <= len(t) <= max_size]
    return st.one_of(st.sampled_from(edges),
                     st.text(alphabet=st.characters(exclude_characters="\x00"), min_size=min_size,
                             max_size=min(max_size, 300)))


offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


def in_range(dt: datetime) -> bool:
    try:
        dt.astimezone(timezone.utc)
    except OverflowError:
        return False
    return True


VALID_TIMES = ["9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00Z", "0001-01-01T14:00:00+14:00",
               "9999-12-31T09:59:59-14:00", "2026-02-11T02:00:00.5+05:45", "2026-02-11T02:00:00+00:00"]
valid_time = st.one_of(st.sampled_from(VALID_TIMES),
                       st.builds(lambda dt, tz: dt.replace(tzinfo=tz), st.datetimes(), offsets)
                       .filter(in_range).map(datetime.isoformat))
non_negative = st.one_of(st.sampled_from([0, 0.0, -0.0, 1e-300, 1e308, 2**63, 2**64]),
                         st.floats(min_value=0, allow_nan=False, allow_infinity=False), st.integers(min_value=0))
rate = st.one_of(st.sampled_from([0, 1, 0.0, 1.0, 1e-300]), st.floats(min_value=0, max_value=1))
valid_alert = st.fixed_dictionaries({"level": st.sampled_from(["info", "warning", "critical"]),
                                     "message": st.one_of(storable_text(1, 2000), st.just("m" * 2000))})
valid_failure = st.fixed_dictionaries({"queue": storable_text(1, 255), "message": storable_text(1, 2000)})
VALID = {
    "instance_id": st.one_of(st.sampled_from(["acme-001", "globex-001", "mapped-001", "a" * 128, "A.b_c-9", "0", ".."]),
                             st.from_regex(INSTANCE_ID_RE, fullmatch=True)),
    "domain": maybe(storable_text()), "client": maybe(storable_text()),
    "version": maybe(st.one_of(st.sampled_from(["1.2.3", "1.3.0-rc.1"]), storable_text(1, 64))),
    "release_channel": maybe(st.one_of(st.sampled_from(["stable", "beta"]), storable_text(1, 64))),
    "health": maybe(st.sampled_from(["ok", "degraded", "down"])),
    "backup_status": maybe(st.sampled_from(["ok", "running", "failed", "missing"])),
    "last_backup_at": maybe(valid_time),
    "alerts": maybe(st.lists(valid_alert, max_size=4)), "job_failures": maybe(st.lists(valid_failure, max_size=3)),
    "slo_p95_ms": maybe(non_negative), "slo_error_rate": maybe(rate), "slo_webhook_retry_rate": maybe(rate),
    "extra": maybe(st.recursive(st.none() | st.booleans() | storable_text() | non_negative,
                                lambda inner: st.lists(inner, max_size=3) | st.dictionaries(storable_text(), inner,
                                                                                            max_size=3),
                                max_leaves=8)),
}

# --- values: hostile ones (one field of an otherwise valid heartbeat) ---------------------------
UNSTORABLE = ["\x00", "a\x00b", "\ud800", "\udfff", "a\ud83d", "\udc00z"]
unstorable_text = st.one_of(st.sampled_from(UNSTORABLE),
                            st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF,
                                                           categories=["Cs"]), min_size=1, max_size=3))
wrong_type = st.sampled_from([1, 1.5, True, [], {}, ["x"], {"a": "b"}])
BAD_TIMES = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:30:00+01:00", "9999-12-31T20:00:00-04:00",
             "2026-02-11T02:00:00", "2026-02-30T00:00:00Z", "2026-02-11T02:00:00+24:00", "2026-02-11",
             "yesterday", "", "10000-01-01T00:00:00Z", "0000-12-31T23:00:00Z"]
BAD_NUMBERS = [-1, -0.5, -1e-300, 10**400, -(10**400), True, False, "1", "", [], {}]
HOSTILE = {
    "instance_id": st.sampled_from(["", "a" * 129, "acme-001\n", "acme-001\r\n", "acme 001", "acme/001",
                                    "\nacme-001", "acme-001\x00", "\ud800", "ácme", None, 7]),
    "domain": st.one_of(unstorable_text, st.just("x" * 256), wrong_type),
    "client": st.one_of(unstorable_text, st.just("é" * 256), wrong_type),
    "version": st.one_of(unstorable_text, st.just(""), st.just("1" * 65), wrong_type),
    "release_channel": st.one_of(unstorable_text, st.just(""), wrong_type),
    "health": st.one_of(unstorable_text, st.sampled_from(["OK", "sideways", "ok\n"]), wrong_type),
    "backup_status": st.one_of(unstorable_text, st.sampled_from(["great", "ok\n"]), wrong_type),
    "last_backup_at": st.one_of(st.sampled_from(BAD_TIMES), unstorable_text, wrong_type),
    "alerts": st.one_of(
        st.lists(st.fixed_dictionaries({"level": st.sampled_from(["info", "fatal", "", "info\n"]),
                                        "message": st.one_of(unstorable_text, st.just(""), st.just("m" * 2001))}),
                 min_size=1, max_size=3),
        st.just([{"level": "info", "message": f"m{i}"} for i in range(201)]), wrong_type),
    "job_failures": st.one_of(
        st.lists(st.fixed_dictionaries({"queue": st.one_of(unstorable_text, st.just("")),
                                        "message": st.one_of(storable_text(1, 10), unstorable_text)}),
                 min_size=1, max_size=3),
        wrong_type),
    "slo_p95_ms": st.sampled_from(BAD_NUMBERS),
    "slo_error_rate": st.one_of(st.sampled_from(BAD_NUMBERS + [1.0000001, 2]), st.floats(min_value=1.001)),
    "slo_webhook_retry_rate": st.sampled_from(BAD_NUMBERS + [1.5]),
    "extra": st.one_of(unstorable_text, st.dictionaries(unstorable_text, st.none(), min_size=1, max_size=1),
                       st.just(json.loads("[" * 70 + "]" * 70))),
}

valid_heartbeats = st.fixed_dictionaries(VALID).map(lambda d: {k: v for k, v in d.items() if v is not MISSING})


@st.composite
def hostile_heartbeats(draw):
    """A valid heartbeat with one or two fields made hostile."""
    payload = draw(valid_heartbeats)
    for field in draw(st.lists(st.sampled_from(sorted(HOSTILE)), min_size=1, max_size=2, unique=True)):
        payload[field] = draw(HOSTILE[field])
    return payload


heartbeats = st.one_of(valid_heartbeats, hostile_heartbeats())

SIMPLE = ("domain", "client", "version", "release_channel", "health", "backup_status")


# --- the property -----------------------------------------------------------------------------
def detail(client, iid: str):
    return client.get(f"/api/installations/{iid}", headers=bearer("support"))


def as_utc(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(timezone.utc)


def check_read_back(client, payload: dict) -> None:
    iid = payload["instance_id"]
    resp = detail(client, iid)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    got = resp.get_json()
    for field in SIMPLE:
        if payload.get(field) is not None:
            assert got[field] == payload[field], field
    if payload.get("last_backup_at") is not None:
        assert got["last_backup_at"].endswith("Z")
        assert as_utc(got["last_backup_at"].replace("Z", "+00:00")) == as_utc(payload["last_backup_at"])
    # the alerts are the agent's current set (absent, null and [] alike: none)
    open_agent = {(a["level"], a["message"]) for a in got["alerts"]
                  if a["source"] == "agent" and a["resolved_at"] is None}
    assert open_agent == {(a["level"], a["message"]) for a in payload.get("alerts") or []}
    listed = client.get("/api/installations?limit=500", headers=bearer("support"))
    assert listed.status_code == 200, listed.get_data(as_text=True)
    assert iid in {i["instance_id"] for i in listed.get_json()["items"]}
    for page in ("/", f"/installations/{iid}", "/?sort=client", f"/installations/{iid}?window=30d"):
        resp = client.get(page)
        assert resp.status_code == 200, (page, resp.status_code)


def check_refused(resp) -> None:
    assert resp.status_code in (400, 413, 422), resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error", "message", "details"}
    assert isinstance(body["message"], str) and body["message"] and isinstance(body["details"], dict)
    if resp.status_code == 422:
        assert body["error"] == "validation_error" and body["details"]


@pytest.fixture
def logged_in(app):
    client = app.test_client()
    login(client, "support")
    return client


@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payload=heartbeats)
def test_accepted_heartbeats_read_back_and_refused_ones_change_nothing(logged_in, payload):
    client = logged_in
    iid = payload["instance_id"]
    secret = AGENT_SECRETS.get(iid, AGENT_TOKEN) if isinstance(iid, str) else AGENT_TOKEN
    raw = json.dumps(payload).encode()  # \u escapes: a lone surrogate can be sent, as a hostile agent would
    # a valid id: what the API showed of it before (404 when new) is what it shows after a refusal
    before = detail(client, iid) if isinstance(iid, str) and INSTANCE_ID_RE.fullmatch(iid) else None
    resp = client.post("/api/heartbeats", data=raw,
                       headers={"Content-Type": "application/json", "x-agent-signature": sign(secret, raw)})
    assert resp.status_code < 500, resp.get_data(as_text=True)
    event(f"status {resp.status_code}")
    if resp.status_code == 200:
        assert resp.get_json()["installation"] == iid
        check_read_back(client, payload)
    else:
        check_refused(resp)
        if before is not None:
            after = detail(client, iid)
            assert (after.status_code, after.get_json()) == (before.status_code, before.get_json())
