"""Plugin marketplace helpers shared by the plugin tests (API, concurrency, browser)."""
from __future__ import annotations

from cp.delivery.releases import sign_manifest
from tests.conftest import bearer
from tests.rollout_helpers import KEY


def plugin_body(plugin: str, version: str, manifest: dict | None = None, key=KEY, key_id: str = "k1") -> dict:
    manifest = manifest if manifest is not None else {
        "plugin": plugin, "version": version, "artifact": f"https://dl.example.com/{plugin}-{version}.zip",
        "sha256": "cd" * 32}
    return {"plugin": plugin, "version": version, "manifest": manifest, "signature": sign_manifest(key, manifest),
            "key_id": key_id}


def publish_plugin(client, plugin: str, version: str, **kw) -> dict:
    resp = client.post("/api/plugins/releases", json=plugin_body(plugin, version, **kw), headers=bearer("admin"))
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()


def ask(agent, instance_id: str, plugin: str, version: str | None = None, reason: str | None = None):
    return agent.post("/api/plugins/requests",
                      {"instance_id": instance_id, "plugin": plugin, "version": version, "reason": reason})


def ask_ok(agent, instance_id: str, plugin: str, version: str | None = None, reason: str | None = None) -> dict:
    resp = ask(agent, instance_id, plugin, version, reason)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return resp.get_json()
