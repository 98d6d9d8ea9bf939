"""Signed releases: publishing, verification, semantic versions, the CLI, the list."""
from __future__ import annotations

import json
import os
import stat

import pytest

from cp.delivery.releases import canonical_manifest, compare_versions, is_version, parse_version
from tests.conftest import bearer
from tests.rollout_helpers import (  # noqa: F401  (env is a fixture)
    KEY,
    OTHER_KEY,
    assert_error,
    env,
    publish,
    release_body,
    snapshot,
)


# --- semantic versions ----------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0.0.0", "1.2.3", "10.20.30", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-0.3.7",
                                   "1.0.0-x.7.z.92", "1.0.0+20130313144700", "1.0.0-beta+exp.sha.5114f85"])
def test_valid_versions(value):
    assert is_version(value)


@pytest.mark.parametrize("value", ["", "1", "1.2", "v1.2.3", "01.2.3", "1.02.3", "1.2.3-", "1.2.3-01", "1.2.3+",
                                   "1.2.3.4", " 1.2.3", "1.2.3 ", "1.2.3-a..b", None, 123, "1." * 40 + "1"])
def test_invalid_versions(value):
    assert not is_version(value)


def test_semver_precedence():
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
               "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "1.10.0", "2.0.0"]
    assert sorted(ordered, key=parse_version) == ordered
    for a, b in zip(ordered, ordered[1:]):
        assert compare_versions(a, b) == -1 and compare_versions(b, a) == 1
    assert compare_versions("1.0.0+build.1", "1.0.0+build.2") == 0  # build metadata is ignored


def test_canonical_manifest_bytes():
    assert canonical_manifest({"b": 1, "a": "é", "c": [1, {"z": 0, "y": None}]}) == \
        '{"a":"é","b":1,"c":[1,{"y":null,"z":0}]}'.encode()


# --- publishing -----------------------------------------------------------------------------
def test_publish_and_list(app, client):
    created = publish(client, "1.3.0")
    assert set(created) == {"id", "version", "channel", "key_id", "created_at"}
    assert created["version"] == "1.3.0" and created["channel"] == "stable" and created["key_id"] == "k1"
    assert created["created_at"].endswith("Z")
    publish(client, "1.4.0-beta.1", "beta")

    resp = client.get("/api/releases", headers=bearer("support"))
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["total"] == 2
    assert [i["version"] for i in body["items"]] == ["1.4.0-beta.1", "1.3.0"]  # newest first
    stored = body["items"][1]
    sent = release_body("1.3.0")
    assert stored["manifest"] == sent["manifest"] and stored["signature"] == sent["signature"]

    resp = client.get("/api/releases?channel=beta&limit=1", headers=bearer("support"))
    assert [i["version"] for i in resp.get_json()["items"]] == ["1.4.0-beta.1"]


def test_roles(app, client):
    body = release_body("1.3.0")
    assert_error(client.post("/api/releases", json=body), 401)
    for role in ("support", "ops"):
        assert_error(client.post("/api/releases", json=body, headers=bearer(role)), 403)
    assert_error(client.get("/api/releases"), 401)
    assert snapshot(app)["releases"] == 0


def _bad(app, client, body, status, code):
    before = snapshot(app)
    data = assert_error(client.post("/api/releases", json=body, headers=bearer("admin")), status, code)
    assert snapshot(app) == before
    return data


def test_unknown_key(app, client):
    body = release_body("1.3.0", key_id="k9")
    data = _bad(app, client, body, 422, "invalid_signature")
    assert "key_id" in data["details"]


def test_bad_signature(app, client):
    body = release_body("1.3.0", key=OTHER_KEY)  # signed by a key that is not k1
    _bad(app, client, body, 422, "invalid_signature")


def test_tampered_manifest(app, client):
    body = release_body("1.3.0")
    body["manifest"]["sha256"] = "cd" * 32
    _bad(app, client, body, 422, "invalid_signature")


@pytest.mark.parametrize("signature", ["not base64!", "", "QUJD", "A" * 88 + "=="])
def test_malformed_signature(app, client, signature):
    body = release_body("1.3.0")
    body["signature"] = signature
    _bad(app, client, body, 422, "validation_error" if signature == "" else "invalid_signature")


def test_manifest_version_mismatch(app, client):
    manifest = {"version": "1.3.1", "artifact": "x"}
    body = release_body("1.3.0", manifest=manifest)  # validly signed, but for another version
    data = _bad(app, client, body, 422, "validation_error")
    assert "manifest" in data["details"]


def test_manifest_without_version(app, client):
    body = release_body("1.3.0", manifest={"artifact": "x"})
    _bad(app, client, body, 422, "validation_error")


@pytest.mark.parametrize("version", ["1.3", "v1.3.0", "latest", "1.3.0.1"])
def test_not_semver(app, client, version):
    body = release_body(version, manifest={"version": version})
    data = _bad(app, client, body, 422, "validation_error")
    assert "version" in data["details"]


@pytest.mark.parametrize("field", ["version", "channel", "manifest", "signature", "key_id"])
def test_missing_field(app, client, field):
    body = release_body("1.3.0")
    del body[field]
    data = _bad(app, client, body, 422, "validation_error")
    assert field in data["details"]


@pytest.mark.parametrize("manifest", [[1, 2], "text", 5, None])
def test_manifest_not_an_object(app, client, manifest):
    body = release_body("1.3.0")
    body["manifest"] = manifest
    _bad(app, client, body, 422, "validation_error")


def test_same_version_again(app, client):
    publish(client, "1.3.0")
    before = snapshot(app)
    other = release_body("1.3.0", manifest={"version": "1.3.0", "different": True})
    data = assert_error(client.post("/api/releases", json=other, headers=bearer("admin")), 409, "release_exists")
    assert data["details"]["version"] == "1.3.0"
    assert snapshot(app) == before


def test_no_keys_configured(make_app):
    app = make_app(CONTROL_PLANE_RELEASE_KEYS="")
    client = app.test_client()
    _bad(app, client, release_body("1.3.0"), 422, "invalid_signature")


def test_not_json(app, client):
    resp = client.post("/api/releases", data="{", headers={**bearer("admin"), "Content-Type": "application/json"})
    assert_error(resp, 400, "invalid_json")
    resp = client.post("/api/releases", data="x", headers={**bearer("admin"), "Content-Type": "text/plain"})
    assert_error(resp, 415)


# --- the CLI --------------------------------------------------------------------------------
def test_cli_generate_sign_publish(app, runner, tmp_path, make_app):
    key_file = tmp_path / "rel.key"
    result = runner.invoke(args=["keys", "generate", "--key-id", "rel", "--out", str(key_file)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("CONTROL_PLANE_RELEASE_KEYS="))
    keys_json = line.split("=", 1)[1].strip("'")
    assert set(json.loads(keys_json)) == {"rel"}
    assert "PRIVATE KEY" not in result.stdout  # the private key never goes to the terminal

    # generating again onto the same file refuses to overwrite the private key
    again = runner.invoke(args=["keys", "generate", "--key-id", "rel", "--out", str(key_file)])
    assert again.exit_code != 0 and "exists" in again.output

    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"version": "2.0.0", "artifact": "https://x/erp-2.0.0.tgz", "notes": "Café"}))
    signed = runner.invoke(args=["releases", "sign", str(manifest), "--key", str(key_file), "--channel", "beta"])
    assert signed.exit_code == 0, signed.output
    body = json.loads(signed.stdout)
    assert body["key_id"] == "rel" and body["channel"] == "beta" and body["version"] == "2.0.0"

    # a server trusting that public key accepts the body as printed
    server = make_app(CONTROL_PLANE_RELEASE_KEYS=keys_json)
    resp = server.test_client().post("/api/releases", data=signed.stdout,
                                     headers={**bearer("admin"), "Content-Type": "application/json"})
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert resp.get_json()["channel"] == "beta"


def test_cli_sign_plugin_manifest(runner, tmp_path):
    key_file = tmp_path / "k1.key"
    assert runner.invoke(args=["keys", "generate", "--out", str(key_file)]).exit_code == 0
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"version": "2.0.1", "plugin": "payments"}))
    result = runner.invoke(args=["releases", "sign", str(manifest), "--key", str(key_file), "--plugin", "payments"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["plugin"] == "payments" and body["key_id"] == "k1" and "channel" not in body
    from cp.delivery.releases import verify_manifest_signature
    from cryptography.hazmat.primitives import serialization
    import base64

    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    raw = base64.b64decode(base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)))
    verify_manifest_signature(body["manifest"], body["signature"], "k1", keys={"k1": raw})  # no exception


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"), ("[1]", "JSON object"), ('{"version": "one"}', "semantic version")])
def test_cli_sign_bad_manifest(runner, tmp_path, content, message):
    key_file = tmp_path / "k1.key"
    assert runner.invoke(args=["keys", "generate", "--out", str(key_file)]).exit_code == 0
    manifest = tmp_path / "m.json"
    manifest.write_text(content)
    result = runner.invoke(args=["releases", "sign", str(manifest), "--key", str(key_file)])
    assert result.exit_code != 0 and message in result.output


def test_cli_sign_rejects_a_non_key(runner, tmp_path):
    bogus = tmp_path / "k1.key"
    bogus.write_text("hello")
    manifest = tmp_path / "m.json"
    manifest.write_text('{"version": "1.0.0"}')
    result = runner.invoke(args=["releases", "sign", str(manifest), "--key", str(bogus)])
    assert result.exit_code != 0 and "private key" in result.output


def test_sign_matches_library(tmp_path):
    """The scheme the CLI uses is the one the server verifies (written once)."""
    from cp.delivery.releases import sign_manifest, verify_manifest_signature
    from cryptography.hazmat.primitives import serialization

    manifest = {"version": "1.0.0", "z": [3, 2, 1], "a": {"é": "ü"}}
    raw = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    verify_manifest_signature(manifest, sign_manifest(KEY, manifest), "k", keys={"k": raw})


def test_newest_release(app, client):
    from cp.delivery.releases import newest_release

    for v in ("1.10.0", "1.9.0", "1.10.0-rc.1"):
        publish(client, v)
    publish(client, "2.0.0", "beta")
    with app.app_context():
        assert newest_release(channel="stable").version == "1.10.0"
        assert newest_release(channel="beta").version == "2.0.0"
        assert newest_release(channel="lts") is None


def test_manifest_with_nan_is_refused(app, client):
    """NaN is not JSON: the body is refused as such (400), before any signature check."""
    from cp.delivery.releases import sign_manifest

    manifest = {"version": "1.3.0", "size": float("nan")}
    raw = ('{"version": "1.3.0", "channel": "stable", "key_id": "k1", "signature": "%s", '
           '"manifest": {"version": "1.3.0", "size": NaN}}' % sign_manifest(KEY, manifest))
    before = snapshot(app)
    resp = client.post("/api/releases", data=raw, headers={**bearer("admin"), "Content-Type": "application/json"})
    assert_error(resp, 400, "invalid_json")
    assert snapshot(app) == before
