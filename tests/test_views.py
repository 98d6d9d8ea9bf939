"""The HTML pages for people: role matrix, the fleet list's filters/search/sort/pagination and
stale marking, the installation page (charts, timeline, 404), and escaping of agent text."""
from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from cp.extensions import db
from cp.models import Installation, SloSample
from tests.conftest import login
from tests.panel_seed import XSS, XSS_ESCAPED, seed

ROLES = ("support", "ops", "admin")
PAGES = ["/", "/?health=down", "/installations/acme-001", "/installations/acme-001?window=24h"]


@pytest.fixture
def fleet(agent):
    def send(beat):
        resp = agent.post("/api/heartbeats", beat)
        assert resp.status_code == 200, resp.get_data(as_text=True)

    return seed(send)


def listed(client, **params) -> list[str]:
    html = client.get("/", query_string=params).get_data(as_text=True)
    table = html.split('<table class="fleet ', 1)[1].split("</table>", 1)[0]
    return re.findall(r'href="/installations/([^"]+)"', table)


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("role", [None, *ROLES])
def test_role_matrix_of_pages(client, fleet, path, role):
    """Every page needs a login (any role); anonymous users go to the login page and back."""
    if role:
        login(client, role)
    resp = client.get(path)
    if role is None:
        assert resp.status_code == 302
        location = resp.headers["Location"]
        assert location.startswith("/login?next=")
        from urllib.parse import parse_qs, urlsplit

        assert parse_qs(urlsplit(location).query)["next"][0] == path
    else:
        assert resp.status_code == 200


def test_login_then_back_to_the_page(client, fleet):
    resp = login(client, "support", "/installations/acme-001")
    assert resp.headers["Location"] == "/installations/acme-001"


def test_unknown_installation_is_a_404_page(client, fleet):
    login(client, "support")
    resp = client.get("/installations/nope-404")
    assert resp.status_code == 404
    html = resp.get_data(as_text=True)
    assert "<h1>404</h1>" in html and "nope-404" in html
    resp = client.get(f"/installations/{XSS}")
    assert resp.status_code == 404
    assert XSS not in resp.get_data(as_text=True)


# --- the fleet list ----------------------------------------------------------------------------
def test_fleet_list_filters_and_search(client, fleet):
    login(client, "support")
    assert len(listed(client)) == 6
    assert listed(client, health="down") == ["initech-001"]
    assert listed(client, release_channel="lts") == ["umbrella-001"]
    assert listed(client, version="1.2.2") == ["globex-001"]
    assert listed(client, q="globex") == ["globex-001"]            # instance id
    assert listed(client, q="Acme SA") == ["acme-001"]             # client
    assert listed(client, q="erp.umbrella") == ["umbrella-001"]    # domain
    assert sorted(listed(client, release_channel="stable", health="ok")) == ["acme-001", "hooli-001", "xss-001"]
    assert listed(client, q="100%") == []                           # LIKE wildcards are literal
    html = client.get("/", query_string={"health": "purple"}).get_data(as_text=True)
    assert "Some filters were ignored" in html


def test_fleet_list_sort_and_pagination(client, fleet):
    login(client, "support")
    by_id = listed(client, sort="instance_id")
    assert by_id == sorted(by_id)
    first = listed(client, sort="instance_id", limit=2)
    second = listed(client, sort="instance_id", limit=2, offset=2)
    assert first == by_id[:2] and second == by_id[2:4]
    html = client.get("/", query_string={"sort": "instance_id", "limit": 2, "offset": 2}).get_data(as_text=True)
    assert "3–4 of 6" in html
    assert "offset=0" in html and "offset=4" in html          # newer / older links keep the filters
    assert "sort=instance_id" in html.split('class="pager"', 1)[1]
    assert listed(client, sort="bogus") == listed(client)     # an unknown sort falls back to last seen


def test_stale_installations_are_marked_and_filterable(client, agent, clock):
    assert agent.heartbeat("old-001", health="ok").status_code == 200
    clock.advance(hours=1)
    assert agent.heartbeat("new-001", health="ok").status_code == 200
    login(client, "support")
    html = client.get("/").get_data(as_text=True)
    rows = {m.group(2): m.group(1) for m in re.finditer(
        r'<tr class="([^"]*)">\s*<td><a href="/installations/([^"]+)"', html)}
    assert rows == {"old-001": "stale", "new-001": ""}
    assert listed(client, stale="true") == ["old-001"]
    assert listed(client, stale="false") == ["new-001"]
    page = client.get("/installations/old-001").get_data(as_text=True)
    assert 'class="badge stale"' in page and "No heartbeat since" in page
    assert 'class="badge stale"' not in client.get("/installations/new-001").get_data(as_text=True)


# --- the installation page ------------------------------------------------------------------------
def test_installation_page_shows_alerts_failures_and_history(client, agent, fleet):
    assert agent.heartbeat("acme-001", version="1.2.4", health="degraded").status_code == 200
    login(client, "support")
    html = client.get("/installations/acme-001").get_data(as_text=True)
    assert "Mail queue stuck for 2 hours" in html and "Timeout talking to gateway" in html
    assert "1.2.3" in html and "1.2.4" in html
    assert 'id="slo-charts"' in html and html.count('class="cp-chart cp-line-chart"') == 3
    assert 'id="timeline"' in html and "cp-timeline" in html


def test_slo_charts_draw_history_against_limits(make_app, clock):
    from tests.conftest import Agent

    app = make_app(SLO_P95_MS_MAX="500", SLO_ERROR_RATE_MAX="0.05")
    client = app.test_client()
    agent = Agent(client)
    for p95 in (300, 450, 800, 350):
        assert agent.heartbeat("acme-001", slo_p95_ms=p95, slo_error_rate=0.01).status_code == 200
        clock.advance(minutes=5)
    with app.app_context():
        assert db.session.scalar(select(db.func.count()).select_from(SloSample)) == 4
    login(client, "support")
    html = client.get("/installations/acme-001?window=24h").get_data(as_text=True)
    card = html.split('data-figure="slo_p95_ms"', 1)[1].split("</section>", 1)[0]
    assert "limit 500 ms" in card and 'class="limit"' in card and "<polyline" in card
    assert "1 sample above the limit" in card
    assert "now 350 ms" in card
    retry = html.split('data-figure="slo_webhook_retry_rate"', 1)[1].split("</section>", 1)[0]
    assert "no limit set" in retry and "no data in this period" in retry
    # the breach opened and resolved an slo alert: it is on the timeline as a span
    timeline = html.split('id="timeline"', 1)[1].split("</svg>", 1)[0]
    assert 'class="span critical"' in timeline and "SLO breached" in timeline


def test_timeline_lists_heartbeat_changes_alerts_updates_and_restores(app, client, agent, clock):
    from cp.models import Job, Release, RestoreVerification

    assert agent.heartbeat("acme-001", version="1.2.3", health="ok",
                           alerts=[{"level": "warning", "message": "Low disk"}]).status_code == 200
    clock.advance(minutes=30)
    assert agent.heartbeat("acme-001", version="1.2.4", health="down").status_code == 200
    with app.app_context():
        inst = db.session.scalars(select(Installation)).one()
        rel = Release(version="1.2.4", channel="stable", manifest={"version": "1.2.4"}, signature="s", key_id="k")
        db.session.add(rel)
        db.session.flush()
        db.session.add_all([
            Job(kind="update", release_id=rel.id, installation_id=inst.id, status="succeeded",
                finished_at=clock.now, message=f"done {XSS}"),
            RestoreVerification(installation_id=inst.id, status="failed", scheduled_for=clock.now,
                                reported_at=clock.now, message=f"bad {XSS}"),
        ])
        db.session.commit()
    login(client, "support")
    html = client.get("/installations/acme-001?window=6h").get_data(as_text=True)
    timeline = html.split('id="timeline"', 1)[1].split("</details>", 1)[0]
    assert "version: 1.2.3 → 1.2.4" in timeline and "health: ok → down" in timeline
    assert "[warning/agent] Low disk" in timeline
    assert "update to 1.2.4: succeeded" in timeline
    assert "restore verification: failed" in timeline
    assert XSS not in html and XSS_ESCAPED in timeline
    for lane in ("heartbeat", "alerts", "updates", "restores"):
        assert f">{lane}</text>" in timeline
    # the period selector
    assert 'href="?window=30d"' in html and 'class="current">6h<' in html


def test_window_argument_is_validated(client, fleet):
    login(client, "support")
    html = client.get("/installations/acme-001?window=<script>").get_data(as_text=True)
    assert 'class="current">7d<' in html  # unknown -> the default period


# --- escaping ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/?q=xss", "/installations/xss-001", "/installations/xss-001?window=30d"])
def test_agent_text_is_escaped_in_pages(client, fleet, path):
    login(client, "support")
    html = client.get(path).get_data(as_text=True)
    assert XSS not in html
    assert XSS_ESCAPED in html


def test_search_text_is_escaped(client, fleet):
    login(client, "support")
    html = client.get("/", query_string={"q": XSS}).get_data(as_text=True)
    assert XSS not in html and XSS_ESCAPED in html
