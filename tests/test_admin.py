"""The admin panel: role matrix of every screen, actions refused server-side, CSRF on every
form, audit of every mutation, fleet-scale list behaviour (filters, search, capped counts),
escaping of agent-supplied text, and the dashboard."""
from __future__ import annotations

import inspect
import re

import flask_admin
import pytest
from flask import url_for
from flask_admin import Admin
from flask_admin.contrib.sqla import ModelView
from sqlalchemy import event, select

from cp import audit
from cp.admin import Panel
from cp.admin.audit import AuditLogView
from cp.admin.fleet import AlertView, InstallationView
from cp.extensions import db
from cp.models import (
    Alert,
    AuditLog,
    Installation,
    InstallationEvent,
    Job,
    JobFailure,
    PluginRequest,
    Release,
    RestoreVerification,
    Rollout,
)
from tests.conftest import ROOT, csrf_token_from, empty_tables, login
from tests.panel_seed import XSS, XSS_ESCAPED, seed

ROLES = ("support", "ops", "admin")
RANK = {r: i for i, r in enumerate(ROLES)}

# (path, least role) of the panel's own screens
SCREENS = [
    ("/admin/", "support"),
    ("/admin/installations/", "support"),
    ("/admin/alerts/", "support"),
    ("/admin/job_failures/", "support"),
    ("/admin/audit_log/", "admin"),
]


@pytest.fixture
def fleet(agent):
    return seed(lambda beat: _ok(agent.post("/api/heartbeats", beat)))


def _ok(resp):
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp


def _ids(app, model, *where):
    with app.app_context():
        return [str(i) for i in db.session.scalars(select(model.id).where(*where).order_by(model.id))]


def _one(app, stmt):
    with app.app_context():
        return db.session.execute(stmt).scalar()


def _audit(app, **where):
    with app.app_context():
        stmt = select(AuditLog).order_by(AuditLog.id)
        for k, v in where.items():
            stmt = stmt.where(getattr(AuditLog, k) == v)
        return list(db.session.scalars(stmt))


def _token(client, path):
    return csrf_token_from(client.get(path).get_data(as_text=True))


# --- who sees what --------------------------------------------------------------------------
@pytest.mark.parametrize("path,least", SCREENS)
@pytest.mark.parametrize("role", [None, *ROLES])
def test_role_matrix_of_panel_screens(client, fleet, path, least, role):
    if role:
        login(client, role)
    resp = client.get(path)
    if role is None:
        assert resp.status_code == 302
        assert resp.headers["Location"].startswith("/login?next=")
        assert path.rstrip("/") in resp.headers["Location"]
    elif RANK[role] >= RANK[least]:
        assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
    else:
        assert resp.status_code == 403


def test_every_registered_screen_follows_its_required_role(app, client, fleet):
    """Every screen registered by any area (incl. the rollouts/restores/plugins/outbox ones):
    anonymous -> login, below its required_role -> 403 and absent from the menu, else 200."""
    admin = app.extensions["admin"][0]
    views = [v for v in admin.screens.values() if getattr(v, "required_role", None)]
    assert {"installations", "alerts", "job_failures", "audit_log"} <= {v.endpoint for v in views}
    with app.test_request_context():
        urls = {v.endpoint: url_for(f"{v.endpoint}.index") if v.endpoint == "admin" else
                url_for(f"{v.endpoint}.index_view") for v in views}
    for v in views:
        assert client.get(urls[v.endpoint]).status_code == 302
    for role in ROLES:
        login(client, role)
        menu = client.get("/admin/").get_data(as_text=True)
        for v in views:
            status = client.get(urls[v.endpoint]).status_code
            allowed = RANK[role] >= RANK[v.required_role]
            assert status == (200 if allowed else 403), (role, v.endpoint, status)
            if v.endpoint != "admin":  # a role login is no person: no "My tokens" in its menu
                shown = allowed and not getattr(v, "people_only_menu", False)
                assert (f'href="{urls[v.endpoint]}"' in menu) == shown, (role, v.endpoint)


@pytest.mark.parametrize("role", ROLES)
def test_menu_and_buttons_per_role(client, fleet, role):
    login(client, role)
    alerts = client.get("/admin/alerts/").get_data(as_text=True)
    has_triage = RANK[role] >= RANK["ops"]
    assert ('data-cp-action="acknowledge"' in alerts or "modelActions.execute('acknowledge')" in alerts) == has_triage
    assert ('data-cp-action="resolve"' in alerts or "modelActions.execute('resolve')" in alerts) == has_triage
    assert "action-checkbox" in alerts if has_triage else "action-checkbox" not in alerts
    assert "/admin/alerts/edit/" not in alerts and "/admin/alerts/delete/" not in alerts
    assert "/admin/alerts/new/" not in alerts
    installations = client.get("/admin/installations/").get_data(as_text=True)
    assert ("/admin/installations/edit/" in installations) == (role == "admin")
    assert "/admin/installations/new/" not in installations
    assert "/admin/installations/delete/" not in installations
    assert ("/admin/audit_log/" in client.get("/admin/").get_data(as_text=True)) == (role == "admin")


@pytest.mark.parametrize("role", ROLES)
def test_hidden_forms_are_refused_server_side(app, client, fleet, role):
    login(client, role)
    inst_id = _ids(app, Installation, Installation.instance_id == "acme-001")[0]
    alert_id = _ids(app, Alert)[0]
    token = _token(client, "/admin/alerts/")
    # editing an installation: admin only; never created or deleted by hand
    edit = client.get(f"/admin/installations/edit/?id={inst_id}")
    assert edit.status_code == (200 if role == "admin" else 403)
    assert client.get("/admin/installations/new/").status_code == 403
    assert client.post("/admin/installations/delete/", data={"id": inst_id, "csrf_token": token}).status_code == 403
    # alerts and failures are never edited, created or deleted by hand, whatever the role
    assert client.get(f"/admin/alerts/edit/?id={alert_id}").status_code == 403
    assert client.post(f"/admin/alerts/edit/?id={alert_id}",
                       data={"message": "x", "csrf_token": token}).status_code == 403
    assert client.post("/admin/alerts/delete/", data={"id": alert_id, "csrf_token": token}).status_code == 403
    assert client.get("/admin/job_failures/new/").status_code == 403
    assert client.post("/admin/alerts/ajax/update/", data={"list_form_pk": alert_id, "message": "x",
                                                           "csrf_token": token}).status_code == 403
    assert _one(app, select(Alert.message).where(Alert.id == int(alert_id))) != "x"
    assert _one(app, select(Installation.id).where(Installation.id == int(inst_id))) is not None


@pytest.mark.parametrize("action,least", [("acknowledge", "ops"), ("resolve", "ops"), ("delete", None),
                                          ("no-such-action", None), ("", None)])
@pytest.mark.parametrize("role", ROLES)
def test_alert_actions_refused_server_side(app, client, fleet, role, action, least):
    login(client, role)
    ids = _ids(app, Alert, Alert.resolved_at.is_(None))
    token = _token(client, "/admin/alerts/")
    resp = client.post("/admin/alerts/action/", data={"action": action, "rowid": ids[:2], "csrf_token": token})
    allowed = least is not None and RANK[role] >= RANK[least]
    if allowed:
        assert resp.status_code == 302
    else:
        assert resp.status_code == 403
        assert _one(app, select(Alert.id).where(Alert.acknowledged_at.is_not(None))) is None
        assert _one(app, select(Alert.id).where(Alert.resolved_by == role)) is None
        assert _audit(app, outcome="forbidden", role=role), "a refused attempt is audited"


def test_support_cannot_resolve_job_failures(app, client, fleet):
    login(client, "support")
    ids = _ids(app, JobFailure)
    token = _token(client, "/admin/job_failures/")
    resp = client.post("/admin/job_failures/action/", data={"action": "resolve", "rowid": ids, "csrf_token": token})
    assert resp.status_code == 403
    assert _one(app, select(JobFailure.id).where(JobFailure.resolved_at.is_not(None))) is None


# --- triage, audited --------------------------------------------------------------------------
def test_ops_triages_alerts_and_failures_through_bulk_actions(app, client, fleet):
    login(client, "ops")
    ids = _ids(app, Alert, Alert.resolved_at.is_(None), Alert.level == "warning")
    assert len(ids) == 2
    token = _token(client, "/admin/alerts/")
    resp = client.post("/admin/alerts/action/", data={"action": "acknowledge", "rowid": ids, "csrf_token": token},
                       follow_redirects=True)
    assert resp.status_code == 200
    assert "2 alert(s) acknowledged." in resp.get_data(as_text=True)
    assert _one(app, select(Alert.acknowledged_by).where(Alert.id == int(ids[0]))) == "ops"
    resp = client.post("/admin/alerts/action/", data={"action": "resolve", "rowid": ids, "csrf_token": token},
                       follow_redirects=True)
    assert "2 alert(s) resolved." in resp.get_data(as_text=True)
    assert _one(app, select(Alert.resolved_by).where(Alert.id == int(ids[1]))) == "ops"
    failures = _ids(app, JobFailure)
    resp = client.post("/admin/job_failures/action/", data={"action": "resolve", "rowid": failures,
                                                             "csrf_token": token}, follow_redirects=True)
    assert f"{len(failures)} failure(s) resolved." in resp.get_data(as_text=True)

    ack, res, jf = (_audit(app, action=a) for a in ("admin.alert.acknowledge", "admin.alert.resolve",
                                                    "admin.job_failure.resolve"))
    assert len(ack) == len(res) == len(jf) == 1
    assert ack[0].role == "ops" and ack[0].outcome == "ok" and ack[0].source_ip == "127.0.0.1"
    assert ack[0].target_type == "alert" and ack[0].target_id == ",".join(sorted(ids, key=int))
    assert ack[0].details["count"] == 2


def test_bad_row_ids_are_refused(app, client, fleet):
    login(client, "ops")
    token = _token(client, "/admin/alerts/")
    resp = client.post("/admin/alerts/action/", data={"action": "acknowledge", "rowid": ["1", "x"],
                                                      "csrf_token": token})
    assert resp.status_code == 400
    assert _one(app, select(Alert.id).where(Alert.acknowledged_at.is_not(None))) is None


def test_dangerous_actions_ask_for_confirmation(app, client, fleet):
    """Every bulk action of every screen has a confirmation, except the harmless ones."""
    admin = app.extensions["admin"][0]
    for view in admin.screens.values():
        for name, (_, _, confirmation) in getattr(view, "_actions_data", {}).items():
            if name in getattr(view, "unconfirmed_actions", ()):
                continue
            assert confirmation, f"{view.endpoint}: action {name!r} runs without confirmation"
    login(client, "ops")
    html = client.get("/admin/alerts/").get_data(as_text=True)
    data = re.search(r'id="actions-confirmation-data"[^>]*>(.*?)</div>', html, re.S).group(1)
    assert '"resolve"' in data and '"acknowledge"' not in data


def test_admin_edits_installation_and_the_change_is_audited(app, client, fleet):
    login(client, "admin")
    inst_id = _ids(app, Installation, Installation.instance_id == "acme-001")[0]
    page = client.get(f"/admin/installations/edit/?id={inst_id}").get_data(as_text=True)
    assert 'name="release_channel"' in page and 'name="client"' in page and 'name="domain"' in page
    assert 'name="version"' not in page and 'name="health"' not in page  # the agent owns those
    resp = client.post(f"/admin/installations/edit/?id={inst_id}", data={
        "csrf_token": csrf_token_from(page), "client": "Acme Group", "domain": "erp.acme.com",
        "release_channel": "beta"})
    assert resp.status_code == 302
    assert _one(app, select(Installation.release_channel).where(Installation.id == int(inst_id))) == "beta"
    entry = _audit(app, action="admin.installations.edit")[-1]
    assert entry.role == "admin" and entry.outcome == "ok" and entry.target_id == inst_id
    assert entry.target_type == "installation"
    assert entry.details["changes"] == {"client": ["Acme SA", "Acme Group"], "release_channel": ["stable", "beta"]}
    # the channel change is in the installation's history like a reported one
    with app.app_context():
        events = db.session.execute(select(InstallationEvent.field, InstallationEvent.old_value,
                                           InstallationEvent.new_value)
                                    .where(InstallationEvent.installation_id == int(inst_id))).all()
    assert ("release_channel", "stable", "beta") in events


def test_edit_with_invalid_values_changes_nothing(app, client, fleet):
    login(client, "admin")
    inst_id = _ids(app, Installation, Installation.instance_id == "acme-001")[0]
    page = client.get(f"/admin/installations/edit/?id={inst_id}").get_data(as_text=True)
    resp = client.post(f"/admin/installations/edit/?id={inst_id}", data={
        "csrf_token": csrf_token_from(page), "client": "x" * 300, "release_channel": "c" * 80})
    assert resp.status_code == 200  # the form again, with its errors
    assert _one(app, select(Installation.client).where(Installation.id == int(inst_id))) == "Acme SA"
    assert not _audit(app, action="admin.installations.edit", outcome="ok")


# --- CSRF -------------------------------------------------------------------------------------
def test_panel_forms_carry_a_csrf_token(app, client, fleet):
    login(client, "admin")
    inst_id = _ids(app, Installation)[0]
    for path in ("/admin/alerts/", "/admin/job_failures/", f"/admin/installations/edit/?id={inst_id}"):
        html = client.get(path).get_data(as_text=True)
        assert re.search(r'name="csrf_token"[^>]*value="[^"]+"', html), path


@pytest.mark.parametrize("path,data", [
    ("/admin/alerts/action/", {"action": "acknowledge"}),
    ("/admin/job_failures/action/", {"action": "resolve"}),
    ("/admin/installations/edit/?id={inst}", {"client": "Hacked", "release_channel": "evil"}),
])
def test_post_without_csrf_token_is_refused(app, client, fleet, path, data):
    login(client, "admin")
    inst = _ids(app, Installation, Installation.instance_id == "acme-001")[0]
    data = dict(data, rowid=_ids(app, Alert)[:1] if "alerts" in path else _ids(app, JobFailure)[:1])
    for extra in ({}, {"csrf_token": "forged-token"}):
        resp = client.post(path.format(inst=inst), data={**data, **extra})
        assert resp.status_code == 400, (path, extra)
    assert _one(app, select(Alert.id).where(Alert.acknowledged_at.is_not(None))) is None
    assert _one(app, select(JobFailure.id).where(JobFailure.resolved_at.is_not(None))) is None
    assert _one(app, select(Installation.client).where(Installation.id == int(inst))) == "Acme SA"


def test_delete_and_create_posts_without_csrf_token_are_refused_first(app, client, fleet):
    """CSRFProtect answers before any view: a forged POST learns nothing, changes nothing."""
    login(client, "admin")
    inst = _ids(app, Installation)[0]
    assert client.post("/admin/installations/delete/", data={"id": inst}).status_code == 400
    assert client.post("/admin/installations/new/", data={"instance_id": "forged-001"}).status_code == 400
    assert client.post("/admin/audit_log/delete/", data={"id": "1"}).status_code == 400
    with app.app_context():
        assert db.session.scalar(select(db.func.count()).select_from(Installation)) == 6


def test_csrf_token_of_another_session_is_refused(app, make_app, client, fleet):
    other = app.test_client()
    login(other, "admin")
    foreign = _token(other, "/admin/alerts/")
    login(client, "ops")
    resp = client.post("/admin/alerts/action/", data={"action": "acknowledge", "rowid": _ids(app, Alert)[:1],
                                                      "csrf_token": foreign})
    assert resp.status_code == 400
    assert _one(app, select(Alert.id).where(Alert.acknowledged_at.is_not(None))) is None


# --- lists at fleet scale ------------------------------------------------------------------------
def _rows(html: str) -> int:
    return len(re.findall(r'<tr>\s*<td', html.split("model-list", 1)[1])) if "model-list" in html else 0


def test_installation_filters_and_search(client, fleet):
    login(client, "support")
    page = client.get("/admin/installations/").get_data(as_text=True)
    for name in ("Health", "Channel", "Version", "Backup", "Stale", "Last seen"):
        assert f'"{name}"' in page or f">{name}<" in page, name

    def listed(**params):
        html = client.get("/admin/installations/", query_string=params).get_data(as_text=True)
        return sorted(set(re.findall(r'/installations/([a-z]+-\d{3})"', html)))

    def flt(label, op, value):
        idx = next(i for i, f in enumerate(InstallationView.column_filters)
                   if f.name == label and f.operation() == op)
        return {f"flt0_{idx}": value}

    assert listed(**flt("Health", "equals", "down")) == ["initech-001"]
    assert listed(**flt("Channel", "equals", "lts")) == ["umbrella-001"]
    assert listed(**flt("Version", "equals", "1.2.2")) == ["globex-001"]
    assert listed(**flt("Stale", "is", "yes")) == []
    assert len(listed(**flt("Stale", "is", "no"))) == 6
    assert listed(search="globex") == ["globex-001"]          # instance id / client
    assert listed(search="initech.net") == ["initech-001"]     # domain
    assert listed(search="umbrella") == ["umbrella-001"]
    assert listed(**flt("Last seen", "between", "2000-01-01 00:00:00 to 2000-01-02 00:00:00")) == []
    # an invalid filter value is ignored with a message, never a 500
    resp = client.get("/admin/installations/", query_string=flt("Health", "equals", "<b>bad</b>"))
    assert resp.status_code == 200 and "<b>bad</b>" not in resp.get_data(as_text=True)


def test_alert_filters_search_and_pagination(app, client, fleet):
    def flt(label, value, op=None):
        idx = next(i for i, f in enumerate(AlertView.column_filters)
                   if f.name == label and (op is None or f.operation() == op))
        return idx, value

    login(client, "support")

    def count(*filters, **params):
        for pos, (idx, value) in enumerate(filters):
            params[f"flt{pos}_{idx}"] = value
        html = client.get("/admin/alerts/", query_string=params).get_data(as_text=True)
        return len(re.findall(r'class="badge cp-badge level-', html))

    assert count() == 6  # 3 critical + 2 warning from agents + 1 backup (failed)
    assert count(flt("Level", "critical")) == 4
    assert count(flt("Source", "backup")) == 1
    assert count(flt("Status", "open")) == 6 and count(flt("Status", "resolved")) == 0
    assert count(flt("Acknowledged", "yes")) == 0
    assert count(flt("Instance id", "acme-001")) == 2
    assert count(flt("Level", "warning"), flt("Instance id", "acme-001")) == 1
    assert count(search="globex") == 1
    assert count(flt("Opened", "2000-01-01", "before")) == 0
    assert count(page_size=20) == 6
    html = client.get("/admin/alerts/", query_string={"page_size": 20, "page": 1}).get_data(as_text=True)
    assert "There are no items in the table." in html


def test_list_counts_are_capped(app, client, fleet, monkeypatch):
    monkeypatch.setattr(AlertView, "count_cap", 3)
    login(client, "support")
    html = client.get("/admin/alerts/").get_data(as_text=True)
    assert "List (3+)" in html
    monkeypatch.setattr(AlertView, "count_cap", 100)
    assert "List (6)" in client.get("/admin/alerts/").get_data(as_text=True)


def test_alert_list_queries_do_not_grow_with_the_page(app, client, agent):
    """The installation of every row comes with the page (no N+1), and the total is one query."""
    for i in range(30):
        _ok(agent.heartbeat(f"site-{i:03d}", alerts=[{"level": "warning", "message": f"alert {i}"}],
                            job_failures=[{"queue": "q", "message": f"m {i}"}]))
    login(client, "support")
    statements: list[str] = []
    with app.app_context():
        engine = db.engine

    def count_select(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count_select)
    try:
        for path in ("/admin/alerts/", "/admin/job_failures/", "/admin/installations/"):
            statements.clear()
            assert client.get(path, query_string={"page_size": 20}).status_code == 200
            touching_installations = [s for s in statements if "installations" in s]
            assert len(statements) <= 6, (path, statements)
            assert len(touching_installations) <= 3, (path, touching_installations)
    finally:
        event.remove(engine, "before_cursor_execute", count_select)


# --- escaping -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/admin/", "/admin/installations/", "/admin/alerts/", "/admin/job_failures/",
                                  "/admin/installations/details/?id={inst}", "/admin/alerts/details/?id={alert}",
                                  "/admin/job_failures/details/?id={failure}"])
def test_agent_text_is_escaped_in_admin_pages(app, client, fleet, path):
    inst = _ids(app, Installation, Installation.instance_id == "xss-001")[0]
    alert = _ids(app, Alert, Alert.message.like("%<script>%"))[0]
    failure = _ids(app, JobFailure, JobFailure.queue == XSS)[0]
    login(client, "admin")
    html = client.get(path.format(inst=inst, alert=alert, failure=failure)).get_data(as_text=True)
    assert XSS not in html
    assert XSS_ESCAPED in html


def test_audit_log_screen_escapes_and_filters(app, client, fleet):
    ann = audit.Actor(role="ops", via="sso", person_id=1, email="ann@example.com")
    with app.app_context():
        audit.record_apart("api.test", target_type="x", target_id=XSS, outcome="ok", actor=audit.Actor.for_role("admin"),
                           details={"m": XSS})
        audit.record_apart("api.other", target_type="x", target_id="2", outcome="conflict", actor=ann)
    login(client, "admin")
    html = client.get("/admin/audit_log/").get_data(as_text=True)
    assert XSS not in html and XSS_ESCAPED in html
    idx = next(i for i, f in enumerate(AuditLogView.column_filters) if f.name == "Outcome")
    html = client.get("/admin/audit_log/", query_string={f"flt0_{idx}": "conflict"}).get_data(as_text=True)
    assert "api.other" in html and "api.test" not in html
    idx = next(i for i, f in enumerate(AuditLogView.column_filters) if f.name == "Actor")
    html = client.get("/admin/audit_log/", query_string={f"flt0_{idx}": "ann@example.com"}).get_data(as_text=True)
    assert "api.other" in html and "api.test" not in html and "ann@example.com" in html


# --- dashboard ------------------------------------------------------------------------------------
def test_dashboard_answers_is_the_fleet_ok(app, client, fleet, clock):
    login(client, "support")
    html = client.get("/admin/").get_data(as_text=True)
    assert 'data-verdict="attention"' in html
    assert "1 installation(s) down" in html
    assert re.search(r'id="total">\s*6\s*<', html)
    assert re.search(r'id="critical-count">\s*4\b', html)
    # open critical alerts, newest first, linked to their installation
    table = html.split('class="table table-sm table-striped cp-critical"', 1)[1].split("</table>", 1)[0]
    assert table.count("<tr>") == 1 + 4
    assert 'href="/installations/xss-001"' in table
    # an empty fleet is OK
    with app.app_context():
        empty_tables(db.engine)
    login(client, "support")
    html = client.get("/admin/").get_data(as_text=True)
    assert 'data-verdict="ok"' in html


def test_dashboard_shows_stale_installations(app, client, agent, clock):
    _ok(agent.heartbeat("old-001", health="ok"))
    clock.advance(hours=2)
    _ok(agent.heartbeat("new-001", health="ok"))
    login(client, "support")
    html = client.get("/admin/").get_data(as_text=True)
    assert re.search(r'id="stale-count"><a [^>]*>1<', html)
    stale = html.split("cp-stale", 1)[1].split("</table>", 1)[0]
    assert "old-001" in stale and "new-001" not in stale


def test_dashboard_lists_rollouts_restores_and_plugin_requests(app, client, agent, clock):
    _ok(agent.heartbeat("acme-001", release_channel="stable", version="1.2.3"))
    _ok(agent.heartbeat("acme-002", release_channel="stable", version="1.2.3"))
    with app.app_context():
        inst = {i.instance_id: i for i in db.session.scalars(select(Installation))}
        rel = Release(version="1.3.0", channel="stable", manifest={"version": "1.3.0"}, signature="s", key_id="k")
        db.session.add(rel)
        db.session.flush()
        ro = Rollout(kind="core", release_id=rel.id, channel="stable", batch_size=1, status="active",
                     current_batch=1, batches=2, targets=2)
        db.session.add(ro)
        db.session.flush()
        db.session.add_all([
            Job(kind="update", rollout_id=ro.id, release_id=rel.id, installation_id=inst["acme-001"].id, batch=1,
                status="succeeded"),
            Job(kind="update", rollout_id=ro.id, release_id=rel.id, installation_id=inst["acme-002"].id, batch=2,
                status="pending"),
            RestoreVerification(installation_id=inst["acme-002"].id, status="failed", message=f"restore {XSS}"),
            PluginRequest(installation_id=inst["acme-001"].id, plugin="payments", reason=f"need {XSS}"),
        ])
        db.session.commit()
    login(client, "support")
    html = client.get("/admin/").get_data(as_text=True)
    assert XSS not in html
    rollouts = html.split("cp-rollouts", 1)[1].split("</table>", 1)[0]
    assert "1.3.0" in rollouts and "1 / 2" in rollouts
    assert "<svg" in rollouts and "cp-progress" in rollouts and "cp-batch-chart" in rollouts
    assert re.search(r'id="failed-restores">1<', html)
    assert re.search(r'id="pending-requests">1<', html)
    assert "payments" in html.split("cp-requests", 1)[1]
    assert "1 failed restore verification(s)" in html


# The Flask-Admin hooks cp.admin overrides or calls, with their parameters. All are public; if an
# upgrade renames one or changes what it takes, this fails first: read the release notes, then
# adjust cp/admin/base.py and cp/admin/__init__.py.
FLASK_ADMIN_HOOKS = {
    "get_list": ["self", "page", "sort_column", "sort_desc", "search", "filters", "execute", "page_size"],
    "get_query": ["self"],
    "get_count_query": ["self"],
    "get_actions_list": ["self"],
    "is_action_allowed": ["self", "name"],
    "handle_action": ["self", "return_view"],
    "create_blueprint": ["self", "admin"],
    "is_accessible": ["self"],
    "inaccessible_callback": ["self", "name", "kwargs"],
    "search_placeholder": ["self"],
    "init_search": ["self"],
    "get_filters": ["self"],
    "get_filter_arg": ["self", "index", "flt"],
}


def test_the_flask_admin_hooks_we_rely_on(app):
    assert flask_admin.__version__.split(".")[0] == "2", flask_admin.__version__
    for name, params in FLASK_ADMIN_HOOKS.items():
        assert list(inspect.signature(getattr(ModelView, name)).parameters) == params, name
    assert list(inspect.signature(Admin.add_view).parameters) == ["self", "view"]
    # the panel's own index of its screens, and a blueprint hook on every model screen
    panel = next(a for a in app.extensions["admin"] if isinstance(a, Panel))
    assert panel.view_for("alerts").endpoint == "alerts"
    assert app.before_request_funcs.get("alerts")


def test_no_private_flask_admin_names_in_the_panel():
    """``_underscore`` names of Flask-Admin are not used anywhere in cp/admin/."""
    for path in (ROOT / "cp" / "admin").glob("*.py"):
        text = path.read_text()
        for private in ("_handle_view", "_actions_data", "_apply_search", "_get_deprecated_session", "._views",
                        "._filters", "_auto_joins", "flask_admin.contrib.sqla._compat"):
            assert private not in text, (path.name, private)
