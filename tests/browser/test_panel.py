"""End to end in Chromium: what each role is shown and refused, ops triage, admin actions,
escaping of agent-supplied text, and screenshots of the dashboard and an installation page."""
from __future__ import annotations

import re

import pytest
import requests
import sqlalchemy as sa

from cp.agent_client import AgentClient
from tests.browser.conftest import STALE_ID, save_screenshot
from tests.conftest import AGENT_TOKEN, TOKENS
from tests.panel_seed import XSS
from tests.plugin_helpers import plugin_body

pytestmark = [pytest.mark.browser, pytest.mark.live]

XSS_DIALOG = "xss"


def csp_errors(s) -> list[str]:
    """Scripts or styles the Content-Security-Policy blocked (a blocked ``javascript:void(0)``
    placeholder link of Flask-Admin's dropdown toggles does nothing either way: not counted)."""
    return [e for e in s.console_errors if ("Content Security Policy" in e or "Refused to" in e)
            and "Running the JavaScript URL" not in e]


def flash(s) -> str:
    return " ".join(s.page.locator(".alert").all_inner_texts())


def select_rows(s, *texts: str) -> None:
    for text in texts:
        s.page.locator("table.model-list tr", has_text=text).locator("input.action-checkbox").check()


def run_bulk(s, label: str) -> None:
    s.page.click("a.dropdown-toggle:has-text('With selected')")
    with s.page.expect_navigation():
        s.page.locator(".dropdown-menu.show a.dropdown-item").get_by_text(label, exact=True).click()
    s.page.wait_for_load_state()


# --- who sees what ----------------------------------------------------------------------------
def test_anonymous_is_sent_to_login_and_back(session_as):
    s = session_as(None)
    s.goto("/admin/alerts/")
    assert "/login?next=" in s.page.url
    s.page.fill("input[name=token]", "wrong-token")
    s.page.click("button[type=submit]")
    assert s.page.locator("text=That token is not valid.").is_visible()
    s.login("support", "/admin/alerts/")
    assert s.page.url.endswith("/admin/alerts/")
    assert s.page.locator("table.model-list").is_visible()


def test_support_sees_read_only_screens(session_as):
    s = session_as("support")
    s.goto("/admin/")
    menu = s.menu()
    for item in ("Installations", "Alerts", "Job failures"):
        assert item in menu, menu
    assert "Audit log" not in menu
    assert s.page.locator(".cp-role").inner_text() == "role: support"
    s.goto("/admin/alerts/")
    assert s.page.locator("table.model-list tbody tr").count() > 5
    assert s.page.locator("text=With selected").count() == 0
    assert s.page.locator("input.action-checkbox").count() == 0
    assert s.page.locator("a[href*='/admin/alerts/edit/']").count() == 0
    s.goto("/admin/installations/")
    assert s.page.locator("a[href*='/admin/installations/edit/']").count() == 0
    assert s.page.locator("text=With selected").count() == 0
    # hidden screens and actions are refused server-side too
    assert s.goto("/admin/audit_log/").status == 403
    assert s.goto("/admin/installations/edit/?id=1").status == 403
    s.goto("/admin/alerts/")
    token = s.csrf_token()
    resp = s.post("/admin/alerts/action/", {"action": "resolve", "rowid": "1", "csrf_token": token})
    assert resp.status == 403
    resp = s.post("/admin/alerts/action/", {"action": "acknowledge", "rowid": "1"})  # no CSRF token
    assert resp.status == 400


def test_ops_sees_triage_but_not_admin_actions(session_as):
    s = session_as("ops")
    s.goto("/admin/alerts/")
    assert "Audit log" not in s.menu()
    s.page.click("a.dropdown-toggle:has-text('With selected')")
    items = [t.strip() for t in s.page.locator(".dropdown-menu.show a.dropdown-item").all_inner_texts()]
    assert items == ["Acknowledge", "Resolve"], items
    assert s.page.locator("input.action-checkbox").count() > 5
    s.goto("/admin/installations/")
    assert s.page.locator("a[href*='/admin/installations/edit/']").count() == 0
    assert s.page.locator("text=With selected").count() == 0  # scheduling restores is admin's
    assert s.goto("/admin/audit_log/").status == 403
    s.goto("/admin/installations/")
    resp = s.post("/admin/installations/action/", {"action": "schedule_restore", "rowid": "1",
                                                   "csrf_token": s.csrf_token()})
    assert resp.status == 403
    assert not csp_errors(s), s.console_errors


def test_admin_sees_everything(session_as):
    s = session_as("admin")
    s.goto("/admin/")
    assert "Audit log" in s.menu()
    s.goto("/admin/installations/")
    assert s.page.locator("a[href*='/admin/installations/edit/']").count() > 5
    s.page.click("a.dropdown-toggle:has-text('With selected')")
    assert "Schedule restore verification" in s.page.locator(".dropdown-menu.show").inner_text()
    s.goto("/admin/audit_log/")
    assert s.page.locator("table.model-list").is_visible()


# --- ops triage ---------------------------------------------------------------------------------
def test_ops_triages_an_alert(session_as, panel, db_engine):
    s = session_as("ops")
    s.goto("/admin/alerts/?search=globex-001")
    message = "Search index rebuild running long"
    assert s.page.locator("table.model-list tr", has_text=message).count() == 1
    select_rows(s, message)
    run_bulk(s, "Acknowledge")
    assert "1 alert(s) acknowledged." in flash(s)
    assert s.dialogs == []  # acknowledging is harmless: no confirmation
    row = s.page.locator("table.model-list tr", has_text=message)
    assert "acknowledged by ops" in row.inner_text()
    select_rows(s, message)
    run_bulk(s, "Resolve")
    assert s.dialogs and "Resolve the selected alerts?" in s.dialogs[-1]  # confirmed first
    assert "1 alert(s) resolved." in flash(s)
    assert "resolved" in s.page.locator("table.model-list tr", has_text=message).inner_text()
    with db_engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT a.acknowledged_by, a.resolved_by FROM alerts a JOIN installations i ON i.id = a.installation_id "
            "WHERE a.message = :m AND i.instance_id = 'globex-001'"), {"m": message}).one()
        audit = conn.execute(sa.text("SELECT role, outcome FROM audit_log WHERE action = 'admin.alert.resolve'")).all()
    assert tuple(row) == ("ops", "ops")
    assert [tuple(a) for a in audit] == [("ops", "ok")]
    assert not csp_errors(s), s.console_errors


# --- admin actions ------------------------------------------------------------------------------
def test_admin_advances_a_rollout(session_as, panel):
    rid = panel.rollout["id"]
    s = session_as("admin")
    s.goto("/admin/rollouts/")
    row = s.page.locator("table.model-list tr", has=s.page.locator(f"form[action*='/row/{rid}/advance']"))
    assert "batch 1 /" in row.inner_text()
    with s.page.expect_navigation():
        row.locator(f"form[action$='/row/{rid}/advance'] button").click()
    assert re.search(rf"rollout {rid}: active, batch 2/\d+", flash(s)), flash(s)
    s.goto("/admin/")
    assert s.page.locator(f"tr.cp-rollout[data-rollout='{rid}']").inner_text().count("2 /") >= 1
    # ops may pause but not advance: the button is not there
    ops = session_as("ops")
    ops.goto("/admin/rollouts/")
    assert ops.page.locator(f"form[action$='/row/{rid}/advance']").count() == 0
    assert ops.page.locator(f"form[action$='/row/{rid}/pause']").count() == 1


def test_dangerous_row_buttons_ask_for_confirmation(session_as, panel):
    """Cancelling a rollout from its row asks first; dismissing the question changes nothing."""
    resp = requests.post(panel.url + "/api/rollouts", json={"release": "1.3.0", "channel": "beta", "batch_size": 1},
                         headers={"Authorization": f"Bearer {TOKENS['admin']}"}, timeout=10)
    assert resp.status_code == 201, resp.text
    rid = resp.json()["id"]
    s = session_as("admin")
    s.goto("/admin/rollouts/")
    cancel = s.page.locator(f"form[action$='/row/{rid}/cancel'] button")
    s.page.remove_listener("dialog", s._dialog)
    asked: list[str] = []

    def dismiss(dialog):
        asked.append(dialog.message)
        dialog.dismiss()

    s.page.once("dialog", dismiss)
    cancel.click()
    s.page.wait_for_timeout(300)
    assert asked and "Cancel this rollout?" in asked[0]
    s.goto("/admin/rollouts/")
    assert s.page.locator(f"form[action$='/row/{rid}/cancel']").count() == 1  # still open
    s.page.once("dialog", lambda d: d.accept())
    with s.page.expect_navigation():
        s.page.locator(f"form[action$='/row/{rid}/cancel'] button").click()
    assert f"rollout {rid}: cancelled" in flash(s)


def test_admin_schedules_a_restore_verification(session_as, db_engine):
    s = session_as("admin")
    s.goto("/admin/installations/?search=umbrella-001")
    select_rows(s, "umbrella-001")
    run_bulk(s, "Schedule restore verification")
    assert s.dialogs and "restore verification" in s.dialogs[-1]
    assert "1 restore verification(s) scheduled." in flash(s)
    s.goto("/admin/restore_verifications/")
    assert s.page.locator("table.model-list tr", has_text="umbrella-001").count() >= 1
    with db_engine.connect() as conn:
        n = conn.execute(sa.text(
            "SELECT count(*) FROM restore_verifications r JOIN installations i ON i.id = r.installation_id "
            "WHERE i.instance_id = 'umbrella-001' AND r.status = 'scheduled' AND r.created_by = 'admin'")).scalar()
    assert n == 1


def test_admin_edits_an_installation_channel(session_as, db_engine):
    s = session_as("admin")
    s.goto("/admin/installations/?search=hooli-001")
    s.page.locator("table.model-list tr", has_text="hooli-001").locator("a[href*='/edit/']").click()
    s.page.wait_for_load_state()
    s.page.fill("input[name=client]", "Hooli XYZ")
    with s.page.expect_navigation():
        s.page.click("input[type=submit][value='Save']")
    assert "Record was successfully saved." in flash(s)
    with db_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT client FROM installations WHERE instance_id = 'hooli-001'")).scalar() \
            == "Hooli XYZ"
    s.goto("/admin/audit_log/")
    assert s.page.locator("table.model-list tr", has_text="admin.installations.edit").count() == 1


# --- escaping -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path,where", [
    ("/", "fleet list (client)"),
    ("/installations/xss-001", "installation page (client, alert, job failure queue)"),
    ("/admin/", "dashboard"),
    ("/admin/installations/?search=xss-001", "admin installations (client)"),
    ("/admin/alerts/?search=xss-001", "admin alerts (message)"),
    ("/admin/job_failures/?search=xss-001", "admin job failures (queue)"),
])
def test_agent_text_is_shown_escaped(session_as, path, where):
    s = session_as("admin")
    s.goto(path)
    s.page.wait_for_timeout(50)  # let any (unwanted) script run
    assert s.dialogs == [], f"script ran on {where}: {s.dialogs}"
    assert s.page.locator("script", has_text="alert('xss')").count() == 0
    if path != "/admin/":
        assert s.page.get_by_text(XSS, exact=False).count() >= 1, f"{where}: the text is not shown as text"


# --- pictures -----------------------------------------------------------------------------------
def test_dashboard_screenshot(session_as):
    s = session_as("admin")
    s.goto("/admin/")
    page = s.page
    assert page.locator(".cp-verdict[data-verdict='attention']").is_visible()
    assert int(page.locator("#total").inner_text()) >= 28
    assert page.locator("table.cp-critical tbody tr").count() >= 3
    assert page.locator("table.cp-stale").inner_text().count(STALE_ID) == 1
    assert page.locator("tr.cp-rollout svg.cp-progress").count() >= 1
    assert int(page.locator("#failed-restores").inner_text()) >= 1
    assert not csp_errors(s), s.console_errors
    save_screenshot(page, "dashboard.png")


def test_installation_page_screenshot(session_as):
    s = session_as("support")
    s.goto("/installations/acme-001?window=24h")
    page = s.page
    assert page.locator("svg.cp-line-chart").count() == 3
    p95 = page.locator("section.chart-card[data-figure='slo_p95_ms']")
    assert "limit 800 ms" in p95.inner_text()
    assert p95.locator("line.limit").count() == 1
    timeline = page.locator("svg.cp-timeline")
    assert timeline.locator("rect.span").count() >= 3
    assert timeline.locator("circle.point").count() >= 5
    assert not csp_errors(s), s.console_errors
    save_screenshot(page, "installation.png")
    stale = session_as("support")
    stale.goto(f"/installations/{STALE_ID}")
    assert stale.page.locator("h1 .badge.stale").is_visible()
    stale.goto("/?stale=true")
    assert stale.page.locator(f"tr.stale a:has-text('{STALE_ID}')").count() == 1


def test_admin_approves_a_plugin_request(session_as, panel, db_engine):
    """Bulk approve on the Plugin requests screen asks first, then creates the install job
    that the agent sees as pending.plugin."""
    resp = requests.post(panel.url + "/api/plugins/releases", json=plugin_body("payments", "2.0.0"),
                         headers={"Authorization": f"Bearer {TOKENS['admin']}"}, timeout=10)
    assert resp.status_code == 201, resp.text
    agent = AgentClient(panel.url, "wonka-001", AGENT_TOKEN)
    agent.heartbeat(version="1.2.3")
    request_id = agent.request_plugin("payments", reason="Card payments")["id"]
    # ops may not see the screen at all
    ops = session_as("ops")
    ops.goto("/admin/")
    assert ops.page.locator("a[href*='/admin/plugin_requests/']").count() == 0
    s = session_as("admin")
    s.goto("/admin/plugin_requests/")
    select_rows(s, "wonka-001")
    run_bulk(s, "Approve")
    assert s.dialogs and "Approve the selected pending requests" in s.dialogs[-1]
    assert "approved" in flash(s).lower(), flash(s)
    with db_engine.connect() as conn:
        status, job_id = conn.execute(sa.text("SELECT status, job_id FROM plugin_requests WHERE id = :i"),
                                      {"i": request_id}).one()
    assert status == "approved" and job_id is not None
    assert agent.heartbeat()["pending"]["plugin"] is True
    job = agent.next_plugin()["job"]
    assert (job["id"], job["plugin"], job["version"]) == (job_id, "payments", "2.0.0")


def navbar(s) -> dict:
    """What the navigation bar shows: brand, menu entries (with their links), role, log out."""
    bar = s.page.locator("nav.navbar")
    assert bar.count() == 1
    links = bar.locator("#admin-navbar-collapse .navbar-nav > li > a")
    return {
        "brand": bar.locator(".navbar-brand").inner_text().strip(),
        "menu": [(a.inner_text().strip(), a.get_attribute("href")) for a in links.all()],
        "role": bar.locator(".cp-role").inner_text().strip(),
        "logout": bar.locator("form.cp-logout button").inner_text().strip(),
        "theme": s.page.evaluate("getComputedStyle(document.querySelector('nav.navbar')).backgroundColor"),
    }


@pytest.mark.parametrize("role", ["support", "admin"])
def test_fleet_pages_and_panel_share_one_navigation_bar(session_as, role):
    """The fleet list, an installation page and the panel's screens show the same bar (the
    panel's menu, Fleet included, the role, log out) in the same theme; Fleet is marked on the
    fleet pages."""
    s = session_as(role)
    bars = {}
    for path in ("/", "/installations/acme-001", "/admin/", "/admin/alerts/"):
        s.goto(path)
        bars[path] = navbar(s)
        assert not csp_errors(s), (path, s.console_errors)
        save_screenshot(s.page, f"navbar-{role}-{path.strip('/').replace('/', '-') or 'fleet'}.png")
    first = bars["/"]
    assert ("Fleet", "/") in first["menu"] and any(name == "Alerts" for name, _ in first["menu"]), first
    assert first["role"] == f"role: {role}"
    for path, bar in bars.items():
        assert bar == first, (path, bar, first)
    s.goto("/")
    assert s.page.locator("#admin-navbar-collapse li.active > a").inner_text().strip() == "Fleet"
    # the menu's dropdowns work on the fleet pages too (the panel's scripts are loaded)
    s.page.click("#admin-navbar-collapse a.dropdown-toggle:has-text('Releases')")
    with s.page.expect_navigation():
        s.page.locator(".dropdown-menu.show a.dropdown-item").get_by_text("Rollouts", exact=True).click()
    assert s.page.url.endswith("/admin/rollouts/")
