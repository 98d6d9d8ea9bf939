"""Hostile input that the database would store and every later read would trip over: times
outside years 1-9999 in UTC, text with NUL or a lone UTF-16 surrogate, JSON nested too deep,
patterns that let a final newline through. Each is refused in the contract's error shape,
nothing is stored, and what was there before still reads back (docs/security.md, "Input
limits")."""
from __future__ import annotations

import importlib
import inspect
import json
import pkgutil

import pytest
from click.testing import CliRunner
from marshmallow import Schema, fields
from sqlalchemy import func, select

import cp.agent_api
import cp.api
from config import ConfigError, load_settings
from cp.delivery.cli import keys_group
from cp.delivery.plugins import is_plugin_name
from cp.delivery.releases import is_version, sign_manifest
from cp.extensions import db
from cp.models import Alert, Installation, JobFailure, Release
from cp.web.fields import UTCDateTime
from cp.web.parsing import MAX_JSON_DEPTH
from tests.conftest import AGENT_SECRETS, AGENT_TOKEN, Agent, bearer, login
from tests.rollout_helpers import KEY, env, publish, release_body  # noqa: F401  (env is a fixture)

OUT_OF_RANGE = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:30:00+01:00", "9999-12-31T20:00:00-04:00"]
EDGES = {"9999-12-31T23:59:59.999999Z": "9999-12-31T23:59:59.999999Z",
         "0001-01-01T00:00:00Z": "0001-01-01T00:00:00Z",
         "0001-01-01T14:00:00+14:00": "0001-01-01T00:00:00Z",
         "9999-12-31T09:59:59-14:00": "9999-12-31T23:59:59Z"}


def stored(app) -> tuple[int, int, int]:
    with app.app_context():
        return tuple(db.session.scalar(select(func.count()).select_from(m)) for m in (Installation, Alert, JobFailure))


def installation_row(app, instance_id: str) -> dict | None:
    with app.app_context():
        inst = db.session.scalar(select(Installation).where(Installation.instance_id == instance_id))
        return None if inst is None else {c: getattr(inst, c) for c in ("client", "last_backup_at", "heartbeats_total")}


def post_signed(agent, path: str, payload: dict):
    """``payload`` signed as JSON with \\u escapes (a lone surrogate cannot be UTF-8 encoded)."""
    iid = payload.get("instance_id") if isinstance(payload.get("instance_id"), str) else ""
    return agent.raw(path, json.dumps(payload).encode(), secret=AGENT_SECRETS.get(iid, AGENT_TOKEN))


def refused(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error", "message", "details"} and body["message"]
    if code:
        assert body["error"] == code
    return body


def reads_back(client, instance_id: str) -> dict:
    """The installation through the JSON API (one and the list) and both HTML pages (``client``
    is logged in)."""
    one = client.get(f"/api/installations/{instance_id}", headers=bearer("support"))
    assert one.status_code == 200, one.get_data(as_text=True)
    listed = client.get("/api/installations", headers=bearer("support"))
    assert listed.status_code == 200, listed.get_data(as_text=True)
    assert instance_id in [i["instance_id"] for i in listed.get_json()["items"]]
    for page in ("/", f"/installations/{instance_id}"):
        resp = client.get(page)
        assert resp.status_code == 200, (page, resp.status_code)
    return one.get_json()


@pytest.fixture
def support_pages(client):
    """The test client, logged in as support for the HTML pages."""
    login(client, "support")
    return client


# --- times ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_time_outside_years_1_to_9999_in_utc_is_refused_for_a_new_installation(app, agent, support_pages, value):
    body = refused(agent.heartbeat("acme-new", last_backup_at=value), 422, "validation_error")
    assert "last_backup_at" in body["details"]
    assert stored(app) == (0, 0, 0)


@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_time_outside_years_1_to_9999_changes_nothing_on_an_existing_installation(app, agent, support_pages,
                                                                                  value):
    assert agent.heartbeat("acme-001", client="Acme", last_backup_at="2026-02-11T02:00:00Z").status_code == 200
    before = installation_row(app, "acme-001")
    body = refused(agent.heartbeat("acme-001", client="Changed", last_backup_at=value), 422, "validation_error")
    assert list(body["details"]) == ["last_backup_at"]
    assert installation_row(app, "acme-001") == before
    assert reads_back(support_pages, "acme-001")["last_backup_at"] == "2026-02-11T02:00:00Z"
    # and the installation's next heartbeat is fine
    assert agent.heartbeat("acme-001", last_backup_at="2026-02-12T02:00:00+01:00").status_code == 200
    assert reads_back(support_pages, "acme-001")["last_backup_at"] == "2026-02-12T01:00:00Z"


@pytest.mark.parametrize("sent,returned", EDGES.items())
def test_the_edges_of_the_time_range_are_accepted_and_read_back(app, agent, support_pages, sent, returned):
    assert agent.heartbeat("acme-001", last_backup_at=sent).status_code == 200
    assert reads_back(support_pages, "acme-001")["last_backup_at"] == returned
    assert agent.heartbeat("acme-001", health="ok").status_code == 200


@pytest.mark.postgres_only
def test_the_session_time_zone_of_postgresql_cannot_break_reads(make_app, migrated, postgres_only):
    """A server whose ``timezone`` is not UTC hands back 9999-12-31T23:59:59Z as year 10000
    (Tokyo) and 0001-01-01T00:00:00Z as year 0 (New York): the sessions are UTC."""
    for zone, value in (("Asia/Tokyo", "9999-12-31T23:59:59Z"), ("America/New_York", "0001-01-01T00:00:00Z")):
        sep = "&" if "?" in migrated else "?"
        app = make_app(CONTROL_PLANE_DATABASE_URL=f"{migrated}{sep}options=-c%20TimeZone%3D{zone}")
        client = app.test_client()
        assert Agent(client).heartbeat("far-001", last_backup_at=value).status_code == 200
        login(client, "support")
        assert reads_back(client, "far-001")["last_backup_at"] == value


@pytest.mark.parametrize("figure", [1e308, 1.7976931348623157e308, 2**64, 1e-300])
def test_the_largest_and_smallest_slo_figures_read_back(app, agent, support_pages, figure):
    """Any number >= 0 is a valid figure: the page's charts scale to it."""
    assert agent.heartbeat("acme-001", slo_p95_ms=figure, slo_error_rate=1e-300).status_code == 200
    assert reads_back(support_pages, "acme-001")["slo_p95_ms"] == float(figure)


def test_restore_schedule_refuses_a_time_outside_the_range(app, client, agent):
    assert agent.heartbeat("acme-001").status_code == 200
    for value in OUT_OF_RANGE:
        resp = client.post("/api/restores/schedule", json={"instance_ids": ["acme-001"], "scheduled_for": value},
                           headers=bearer("admin"))
        body = refused(resp, 422, "validation_error")
        assert list(body["details"]) == ["scheduled_for"]
    resp = client.get("/api/restores", headers=bearer("admin"))
    assert resp.status_code == 200 and resp.get_json()["total"] == 0


@pytest.mark.parametrize("arg", ["since", "until"])
def test_query_string_times_are_refused_outside_the_range(app, client, arg):
    for value in OUT_OF_RANGE:
        body = refused(client.get("/api/audit", query_string={arg: value}, headers=bearer("admin")), 422,
                       "validation_error")
        assert list(body["details"]) == [arg]


def _schemas():
    for package in (cp.agent_api, cp.api):
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            module = importlib.import_module(info.name)
            for _name, obj in inspect.getmembers(module, inspect.isclass):
                if issubclass(obj, Schema) and obj.__module__ == module.__name__:
                    yield obj


def test_every_schema_takes_times_through_the_one_utc_field():
    """The range rule lives in ``UTCDateTime``: no schema may take a time any other way."""
    checked = 0
    for schema in _schemas():
        for name, field in schema().fields.items():
            if isinstance(field, (fields.DateTime, fields.Date, fields.Time, fields.TimeDelta)):
                assert isinstance(field, UTCDateTime), f"{schema.__name__}.{name}"
                checked += 1
    assert checked > 20


# --- text the database cannot store ----------------------------------------------------------
SURROGATE = "\ud800"


@pytest.mark.parametrize("payload,details", [
    ({"client": SURROGATE}, {"client": ["Text may not contain a lone UTF-16 surrogate (\\ud800-\\udfff)."]}),
    ({"domain": "acme" + "\udfff"}, {"domain": ["Text may not contain a lone UTF-16 surrogate (\\ud800-\\udfff)."]}),
    ({"alerts": [{"level": "info", "message": "ok"}, {"level": "info", "message": "x" + SURROGATE}]},
     {"alerts": {"1": {"message": ["Text may not contain a lone UTF-16 surrogate (\\ud800-\\udfff)."]}}}),
    ({"job_failures": [{"queue": SURROGATE, "message": "m"}]},
     {"job_failures": {"0": {"queue": ["Text may not contain a lone UTF-16 surrogate (\\ud800-\\udfff)."]}}}),
    ({"future": {"labels": {"k": ["a", "b\x00"]}}},
     {"future": {"labels": {"k": {"1": ["Text may not contain NUL (\\u0000) characters."]}}}}),
    ({"version": "1.2.3\x00"}, {"version": ["Text may not contain NUL (\\u0000) characters."]}),
])
def test_unstorable_text_is_422_naming_the_field(app, agent, payload, details):
    body = refused(post_signed(agent, "/api/heartbeats", {"instance_id": "acme-001", **payload}), 422,
                   "validation_error")
    assert body["details"] == details
    assert stored(app) == (0, 0, 0)


@pytest.mark.parametrize("path", ["/api/heartbeats", "/api/updates/next", "/api/plugins/requests"])
@pytest.mark.parametrize("instance_id", ["acme\ud800", "acme\x00", "acme-001\n"])
def test_an_unstorable_instance_id_is_422_before_it_names_a_rate_limit_or_a_lock(app, agent, path, instance_id):
    body = refused(post_signed(agent, path, {"instance_id": instance_id, "plugin": "payments"}), 422,
                   "validation_error")
    assert list(body["details"]) == ["instance_id"]
    assert stored(app) == (0, 0, 0)


def test_unstorable_field_name_is_422(app, agent):
    body = refused(post_signed(agent, "/api/heartbeats", {"instance_id": "acme-001", "x\ud800": 1}), 422)
    assert body["details"] == {"x\\ud800": ["Text may not contain a lone UTF-16 surrogate (\\ud800-\\udfff)."]}
    assert stored(app) == (0, 0, 0)


def test_a_surrogate_encoded_as_utf8_bytes_is_not_json(app, agent):
    raw = b'{"instance_id": "acme-001", "client": "\xed\xa0\x80"}'
    refused(agent.raw("/api/heartbeats", raw), 400, "invalid_json")
    assert stored(app) == (0, 0, 0)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "latin-1"])
def test_a_body_that_is_not_utf8_is_not_json(app, agent, encoding):
    refused(agent.raw("/api/heartbeats", '{"instance_id": "acme-001", "client": "Café"}'.encode(encoding)), 400,
            "invalid_json")
    assert stored(app) == (0, 0, 0)
    # a UTF-8 byte order mark is tolerated (RFC 8259 lets a parser ignore it)
    assert agent.raw("/api/heartbeats", b'\xef\xbb\xbf{"instance_id": "acme-001"}').status_code == 200


def test_a_surrogate_pair_is_text_like_any_other(app, agent, support_pages):
    """``\\ud83d\\ude00`` is one character (an emoji): stored and shown."""
    resp = post_signed(agent, "/api/heartbeats", {"instance_id": "acme-001", "client": "Acme \U0001F600",
                                                  "alerts": [{"level": "info", "message": "\U0001F600"}]})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert reads_back(support_pages, "acme-001")["client"] == "Acme \U0001F600"


def test_unstorable_text_in_a_human_api_body_is_422(app, client):
    """Free-form objects too: a release manifest is stored as it is sent."""
    manifest = {"version": "1.3.0", "notes": {"de": ["ok", SURROGATE]}}
    body = {"version": "1.3.0", "channel": "stable", "manifest": manifest, "signature": "AAAA", "key_id": "k1"}
    resp = client.post("/api/releases", data=json.dumps(body), content_type="application/json",
                       headers=bearer("admin"))
    assert refused(resp, 422, "validation_error")["details"] == {
        "manifest": {"notes": {"de": {"1": ["Text may not contain a lone UTF-16 surrogate (\\ud800-\\udfff)."]}}}}
    with client.application.app_context():
        assert db.session.scalar(select(func.count()).select_from(Release)) == 0


@pytest.mark.parametrize("path", ["/api/installations", "/api/alerts", "/api/job-failures", "/api/audit"])
def test_nul_in_a_query_string_filter_is_422_naming_it(app, client, path):
    arg = "q" if path == "/api/installations" else ("action" if path == "/api/audit" else "instance_id")
    body = refused(client.get(path, query_string={arg: "a\x00b"}, headers=bearer("admin")), 422, "validation_error")
    assert body["details"] == {arg: ["Text may not contain NUL (\\u0000) characters."]}


# --- nesting ----------------------------------------------------------------------------------
def nested(depth: int) -> bytes:
    """A heartbeat whose deepest array is at level ``depth`` (the body object is level 1)."""
    inner = depth - 1
    return b'{"instance_id": "acme-001", "x": ' + b"[" * inner + b"]" * inner + b"}"


def test_json_nested_up_to_the_limit_is_accepted(app, agent):
    assert agent.raw("/api/heartbeats", nested(MAX_JSON_DEPTH)).status_code == 200


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 300, 800, 5000])
def test_json_nested_deeper_than_the_limit_is_400(app, agent, depth):
    body = refused(agent.raw("/api/heartbeats", nested(depth)), 400, "invalid_json")
    if depth < 900:  # deeper still, Python's own parser gives up first: the same 400
        assert body["details"] == {"max_depth": MAX_JSON_DEPTH}
    assert stored(app) == (0, 0, 0)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 500])
def test_json_nested_too_deep_is_400_on_the_human_api_too(app, client, depth):
    manifest = {"version": "1.3.0"}
    node = manifest
    for _ in range(depth):
        node["n"] = {}
        node = node["n"]
    raw = json.dumps(release_body("1.3.0", manifest=manifest))
    refused(client.post("/api/releases", data=raw, content_type="application/json", headers=bearer("admin")), 400,
            "invalid_json")
    with client.application.app_context():
        assert db.session.scalar(select(func.count()).select_from(Release)) == 0


# --- full-match patterns ----------------------------------------------------------------------
@pytest.mark.parametrize("instance_id", ["acme-001\n", "acme-001\r\n", "\nacme-001"])
def test_instance_id_with_a_newline_is_refused(app, agent, instance_id):
    assert agent.heartbeat("acme-001").status_code == 200
    body = refused(agent.heartbeat(instance_id), 422, "validation_error")
    assert list(body["details"]) == ["instance_id"]
    assert stored(app) == (1, 0, 0)


def test_plugin_name_and_release_version_with_a_newline_are_refused(app, client, agent):
    publish(client, "1.3.0")
    resp = client.post("/api/releases", json=release_body("1.4.0\n", manifest={"version": "1.4.0\n"}),
                       headers=bearer("admin"))
    assert "version" in refused(resp, 422, "validation_error")["details"]
    manifest = {"plugin": "payments\n", "version": "2.0.0"}
    resp = client.post("/api/plugins/releases", headers=bearer("admin"), json={
        "plugin": "payments\n", "version": "2.0.0", "manifest": manifest, "signature": sign_manifest(KEY, manifest),
        "key_id": "k1"})
    assert "plugin" in refused(resp, 422, "validation_error")["details"]
    assert agent.heartbeat("acme-001").status_code == 200
    resp = agent.post("/api/plugins/requests", {"instance_id": "acme-001", "plugin": "payments\n"})
    assert "plugin" in refused(resp, 422, "validation_error")["details"]
    versions = client.get("/api/releases", headers=bearer("support")).get_json()
    assert [r["version"] for r in versions["items"]] == ["1.3.0"]


def test_every_pattern_matches_the_whole_value():
    assert not is_version("1.2.3\n") and is_version("1.2.3")
    assert not is_plugin_name("payments\n") and is_plugin_name("payments")
    with pytest.raises(ConfigError, match="CONTROL_PLANE_AGENT_SECRETS"):
        load_settings({"CONTROL_PLANE_AGENT_SECRETS": json.dumps({"acme-001\n": "secret"})})
    result = CliRunner().invoke(keys_group, ["generate", "--key-id", "k1\n", "--out", "/nonexistent/k.key"])
    assert result.exit_code != 0 and "1-128 characters" in result.output


def test_the_openapi_document_states_the_limits(client):
    spec = client.get("/api/openapi.json").get_json()
    assert "nested at most 64 levels" in spec["info"]["description"]
    body = spec["paths"]["/api/heartbeats"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert schema["properties"]["instance_id"]["pattern"] == "^[A-Za-z0-9._-]{1,128}$"
    assert "1-9999" in schema["properties"]["last_backup_at"]["description"]
    assert "64 levels" in spec["paths"]["/api/heartbeats"]["post"]["responses"]["400"]["description"]
