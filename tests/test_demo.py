"""The demo (``flask --app cp demo``, what ``make run`` serves): on a fresh database it fills
every screen of the panel and the fleet pages, through the real code paths."""
from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from cp.admin import Panel
from cp.delivery.releases import public_key_b64
from cp.extensions import db
from cp.models import AuditLog, Job, OutboxEvent, PluginRequest, RestoreVerification, Rollout
from tests.conftest import login


@pytest.fixture
def demo_key(tmp_path):
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "demo.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path, json.dumps({"demo": public_key_b64(key)})


@pytest.fixture
def demo_app(make_app, demo_key, webhook_receiver):
    app = make_app(CONTROL_PLANE_RELEASE_KEYS=demo_key[1],
                   CONTROL_PLANE_ALERT_WEBHOOK_URL=webhook_receiver.url)
    result = app.test_cli_runner().invoke(args=["demo", "--count", "24", "--key", str(demo_key[0])])
    assert result.exit_code == 0, result.output
    assert "seeded 24 installations" in result.output
    return app


def test_the_demo_fills_every_panel_screen(demo_app):
    client = demo_app.test_client()
    login(client, "admin")
    panel = next(a for a in demo_app.extensions["admin"] if isinstance(a, Panel))
    # "admin": the dashboard; a person's own tokens are not an admin role token's screen
    screens = {e: v for e, v in panel.screens.items() if e != "admin" and not getattr(v, "people_only_menu", False)}
    assert len(screens) >= 12
    for endpoint, view in screens.items():
        page = client.get(view.url + "/")
        assert page.status_code == 200, endpoint
        with demo_app.test_request_context():
            count, rows = view.get_list(0, None, False, None, None)
        assert rows, f"the {view.name} screen is empty"
    assert client.get("/admin/").status_code == 200


def test_the_demo_goes_through_the_product(demo_app):
    """A rollout in progress (a batch done, a failed job, one under way), a pending plugin
    request, restores passed and failed, webhook deliveries waiting, and the audit of it all."""
    with demo_app.app_context():
        core = db.session.scalars(select(Rollout).where(Rollout.kind == "core")).one()
        assert (core.status, core.current_batch) == ("active", 2)
        statuses = {(j.batch, j.status) for j in db.session.scalars(select(Job).where(Job.rollout_id == core.id))}
        assert {(1, "succeeded"), (2, "failed"), (2, "in_progress")} <= statuses
        assert db.session.scalars(select(Rollout).where(Rollout.kind == "plugin")).one().status == "active"
        requests = {r.status for r in db.session.scalars(select(PluginRequest))}
        assert requests == {"pending", "approved", "rejected"}
        restores = {r.status for r in db.session.scalars(select(RestoreVerification))}
        assert restores == {"scheduled", "passed", "failed"}
        assert db.session.scalar(select(func.count()).select_from(OutboxEvent)) > 0
        actions = set(db.session.scalars(select(AuditLog.action)))
        assert {"release.publish", "rollout.create", "rollout.advance", "plugin_request.approve",
                "plugin_request.reject", "restore.schedule", "alert.acknowledge", "alert.resolve"} <= actions
        assert set(db.session.scalars(select(AuditLog.outcome))) == {"ok"}
        # each request is its own caller's: the ops triage is not taken for the admin before it
        assert set(db.session.scalars(select(AuditLog.role).where(AuditLog.action == "alert.resolve"))) == {"ops"}


def test_the_demo_fills_the_fleet_pages(demo_app):
    client = demo_app.test_client()
    login(client, "support")
    fleet = client.get("/")
    assert fleet.status_code == 200 and "acme-001" in fleet.get_data(as_text=True)
    page = client.get("/installations/acme-001").get_data(as_text=True)
    assert "1.3.0" in page or "payments" in page
