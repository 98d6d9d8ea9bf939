"""Agent signing: per-instance secrets, the shared token, constant-time verification over raw bytes."""
import json

import pytest
from sqlalchemy import func, select

from cp.extensions import db
from cp.models import Installation
from cp.signing import sign
from tests.conftest import AGENT_SECRETS, AGENT_TOKEN, Agent


def count(app):
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Installation))


def body(instance_id="acme-001", **extra):
    return json.dumps({"instance_id": instance_id, **extra}).encode()


def assert_invalid_signature(resp):
    assert resp.status_code == 401
    data = resp.get_json()
    assert data["error"] == "invalid_signature"
    assert set(data) == {"error", "message", "details"}


def test_shared_token_signs_unlisted_instances(app, agent):
    assert agent.raw("/api/heartbeats", body(), secret=AGENT_TOKEN).status_code == 200
    assert count(app) == 1


def test_listed_instance_signs_with_its_own_secret(app, agent):
    assert agent.raw("/api/heartbeats", body("mapped-001"), secret=AGENT_SECRETS["mapped-001"]).status_code == 200


def test_listed_instance_signed_with_shared_token_is_refused(app, agent):
    assert_invalid_signature(agent.raw("/api/heartbeats", body("mapped-001"), secret=AGENT_TOKEN))
    assert count(app) == 0


def test_listed_instance_signed_with_another_instances_secret_is_refused(app, agent):
    assert_invalid_signature(agent.raw("/api/heartbeats", body("mapped-001"), secret=AGENT_SECRETS["mapped-002"]))
    assert count(app) == 0


@pytest.mark.parametrize("signature", ["", "zz" * 32, "abc", "é" * 64, "0" * 64, " " * 10, "g" * 64])
def test_bad_or_non_hex_signature(app, agent, signature):
    assert_invalid_signature(agent.raw("/api/heartbeats", body(), signature=signature))
    assert count(app) == 0


def test_missing_signature_header(app, agent):
    assert_invalid_signature(agent.raw("/api/heartbeats", body(), secret=None))
    assert count(app) == 0


def test_signature_is_over_the_exact_bytes(app, agent):
    raw = body()
    sig = sign(AGENT_TOKEN, raw)
    reformatted = json.dumps(json.loads(raw), indent=2).encode()
    assert_invalid_signature(agent.raw("/api/heartbeats", reformatted, signature=sig))
    assert agent.raw("/api/heartbeats", raw, signature=sig.upper()).status_code == 200  # hex is case-insensitive


def test_signature_checked_before_validation(app, agent):
    bad = body(health="sideways")
    assert_invalid_signature(agent.raw("/api/heartbeats", bad, secret="wrong"))
    resp = agent.raw("/api/heartbeats", bad, secret=AGENT_TOKEN)
    assert resp.status_code == 422 and "health" in resp.get_json()["details"]


def test_body_without_readable_instance_id_is_checked_against_shared_token(app, agent):
    raw = b'{"instance_id": 42}'
    assert agent.raw("/api/heartbeats", raw, secret=AGENT_TOKEN).status_code == 422
    assert_invalid_signature(agent.raw("/api/heartbeats", raw, secret=AGENT_SECRETS["mapped-001"]))
    not_json = b"not json"
    assert agent.raw("/api/heartbeats", not_json, secret=AGENT_TOKEN).status_code == 400
    assert_invalid_signature(agent.raw("/api/heartbeats", not_json, secret="wrong"))


def test_no_secret_configured_refuses_everything(make_app):
    app = make_app(CONTROL_PLANE_AGENT_TOKEN="", CONTROL_PLANE_AGENT_SECRETS="")
    client = app.test_client()
    raw = body()
    resp = client.post("/api/heartbeats", data=raw, headers={"Content-Type": "application/json",
                                                              "x-agent-signature": sign("", raw)})
    assert_invalid_signature(resp)


def test_signing_uses_constant_time_compare(monkeypatch, app, agent):
    import hmac

    import cp.signing

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(cp.signing.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    agent.raw("/api/heartbeats", body(), signature="0" * 64)
    assert calls


DEEP = b'{"instance_id": "acme-001", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize("secrets", ["", '{"mapped-001": "mapped-secret-001"}'], ids=["shared-only", "listed"])
def test_the_signature_is_checked_before_a_hostile_body_is_decoded(make_app, secrets):
    """A wrongly signed body is refused 401 whatever it holds (here JSON nested 100,000 levels
    deep, which a decoder must refuse): with the shared token alone it is never decoded."""
    app = make_app(CONTROL_PLANE_AGENT_SECRETS=secrets)
    agent = Agent(app.test_client())
    resp = agent.raw("/api/heartbeats", DEEP, secret="not-the-secret-0123456789")
    assert resp.status_code == 401 and resp.get_json()["error"] == "invalid_signature"
    resp = agent.raw("/api/heartbeats", b"\xff\xfe not json", secret="not-the-secret-0123456789")
    assert resp.status_code == 401 and resp.get_json()["error"] == "invalid_signature"
    # correctly signed, the same bytes reach the decoder, which refuses them
    assert agent.raw("/api/heartbeats", b"\xff\xfe not json").status_code == 400
