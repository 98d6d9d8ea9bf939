def test_heartbeat_roundtrip(agent, client):
    from tests.conftest import bearer

    resp = agent.heartbeat("acme-001", version="1.2.3", health="ok",
                           alerts=[{"level": "warning", "message": "Low disk"}],
                           job_failures=[{"queue": "billing", "message": "Timeout"}])
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["installation"] == "acme-001"
    assert body["pending"] == {"update": False, "plugin": False, "restore_verifications": []}
    r = client.get("/api/installations", headers=bearer("support"))
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["total"] == 1
    assert r.get_json()["items"][0]["open_alerts"] == 1
