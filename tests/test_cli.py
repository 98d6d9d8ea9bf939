"""CLI commands and the reference agent client."""
import json

import requests
from sqlalchemy import func, select

from config import SETTINGS
from cp.agent_client import AgentClient, build_request, main as agent_main
from cp.extensions import db
from cp.models import Alert, Installation
from tests.conftest import AGENT_TOKEN, bearer


def test_seed_demo_fills_a_realistic_fleet_through_heartbeats(app, runner):
    result = runner.invoke(args=["seed-demo", "--count", "30"])
    assert result.exit_code == 0, result.output
    assert "seeded 30" in result.output
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Installation)) == 30
        channels = set(db.session.scalars(select(Installation.release_channel)).all())
        assert len(channels) >= 2
        assert db.session.scalar(select(func.count()).select_from(Alert)) > 0
        assert db.session.scalar(select(func.sum(Installation.heartbeats_total))) == 30


def test_seed_demo_is_repeatable(app, runner):
    runner.invoke(args=["seed-demo", "--count", "5"])
    runner.invoke(args=["seed-demo", "--count", "5"])
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Installation)) == 5


def test_env_table_lists_every_setting(runner):
    out = runner.invoke(args=["env-table"]).output
    for s in SETTINGS:
        assert f"`{s.env}`" in out


def test_agent_client_against_live_server(live_server, client):
    agent = AgentClient(live_server.url, "live-001", AGENT_TOKEN)
    body = agent.heartbeat(version="1.2.3", health="degraded", alerts=[{"level": "critical", "message": "<b>x</b>"}])
    assert body["installation"] == "live-001"
    # the timestamped signature cannot be replayed
    req = build_request("/api/heartbeats", {"instance_id": "live-001"}, AGENT_TOKEN)
    assert requests.post(live_server.url + req.path, data=req.body, headers=req.headers).status_code == 200
    replay = requests.post(live_server.url + req.path, data=req.body, headers=req.headers)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_signature"
    listed = client.get("/api/installations/live-001", headers=bearer("support")).get_json()
    assert listed["health"] == "degraded" and listed["alerts"][0]["message"] == "<b>x</b>"


def test_agent_cli_heartbeat(live_server, capsys):
    code = agent_main(["--url", live_server.url, "--instance", "cli-001", "--secret", AGENT_TOKEN, "heartbeat",
                       "--health", "ok", "--version", "2.0.0", "--alert", "warning:Low disk",
                       "--job-failure", "billing:Timeout", "--slo-p95-ms", "120"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["installation"] == "cli-001"


def test_agent_cli_reports_errors(live_server, capsys):
    code = agent_main(["--url", live_server.url, "--instance", "cli-001", "--secret", "wrong", "heartbeat"])
    assert code == 1
    assert "invalid_signature" in capsys.readouterr().err
