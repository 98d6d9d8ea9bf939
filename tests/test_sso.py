"""Single sign-on against a real OpenID Connect provider process (``oidc-provider-mock``).

The provider runs as its own process on a free port; the app talks to it over HTTP for the
discovery document, the keys and the token exchange, exactly as it would to a real issuer.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import select

from cp import people
from cp.extensions import db
from cp.models import AuditLog, User
from tests.conftest import free_port

CLIENT_ID = "control-plane"


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("oidc") / "provider.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "oidc_provider_mock", "--port", str(port), "--require-nonce"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(url + "/.well-known/openid-configuration", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the OIDC provider did not start: " + log.read_text(errors="replace")[-2000:])
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def sso_app(make_app, env, provider, monkeypatch):
    # the provider speaks plain HTTP on loopback; Authlib refuses that unless told (tests only)
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
    env.update({
        "CONTROL_PLANE_OIDC_ISSUER": provider,
        "CONTROL_PLANE_OIDC_CLIENT_ID": CLIENT_ID,
        "CONTROL_PLANE_OIDC_CLIENT_SECRET": "provider-secret-for-tests",
        "CONTROL_PLANE_OIDC_AUTO_DOMAINS": "auto.example",
    })
    return make_app()


@pytest.fixture
def sso_client(sso_app):
    return sso_app.test_client()


def add_person(app, email: str, role: str = "ops", active: bool = True) -> None:
    with app.app_context():
        person = people.create_person(email, None, role, by="admin")
        person.active = active
        db.session.commit()


def provider_user(provider: str, sub: str, **claims) -> None:
    assert requests.put(f"{provider}/users/{sub}", json=claims, timeout=5).status_code == 204


def sign_in(client, provider: str, sub: str, next_url: str | None = None, tamper=None):
    """Start at /login/sso, let the provider authorise ``sub``, return the callback's answer."""
    start = client.get("/login/sso" + (f"?next={next_url}" if next_url else ""))
    assert start.status_code == 302
    authorize = start.headers["Location"]
    query = parse_qs(urlsplit(authorize).query)
    assert authorize.startswith(provider)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["state"][0] and query["nonce"][0]
    answer = requests.post(authorize, data={"sub": sub}, allow_redirects=False, timeout=5)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["Location"])
    assert back.path == "/login/sso/callback"
    callback = back.path + "?" + back.query
    if tamper:
        callback = tamper(client, callback)
    return client.get(callback)


def me(client):
    return client.get("/api/me")


def test_a_known_person_signs_in_and_is_named(sso_app, sso_client, provider):
    add_person(sso_app, "Ana@Vendor.example", role="ops")
    provider_user(provider, "ana", email="ana@vendor.example", email_verified=True)
    r = sign_in(sso_client, provider, "ana", next_url="/installations/x")
    assert r.status_code == 303 and r.headers["Location"].endswith("/installations/x")
    who = me(sso_client).get_json()
    assert (who["email"], who["role"], who["via"]) == ("ana@vendor.example", "ops", "sso")


def test_an_unknown_person_is_refused(sso_app, sso_client, provider):
    provider_user(provider, "stranger", email="stranger@elsewhere.example", email_verified=True)
    r = sign_in(sso_client, provider, "stranger")
    assert r.status_code == 403
    assert me(sso_client).status_code == 401
    with sso_app.app_context():
        assert db.session.scalar(select(User).where(User.email == "stranger@elsewhere.example")) is None


def test_an_allowed_domain_creates_a_support_person(sso_app, sso_client, provider):
    provider_user(provider, "newbie", email="newbie@auto.example", email_verified=True, name="New Bie")
    r = sign_in(sso_client, provider, "newbie")
    assert r.status_code == 303
    who = me(sso_client).get_json()
    assert who["email"] == "newbie@auto.example" and who["role"] == "support" and who["via"] == "sso"
    with sso_app.app_context():
        person = db.session.scalar(select(User).where(User.email == "newbie@auto.example"))
        assert person is not None and person.role == "support" and person.active
        entry = db.session.scalar(select(AuditLog).where(AuditLog.action == "user.create"))
        assert entry is not None and entry.actor == "newbie@auto.example" and entry.target_id == str(person.id)


def test_a_subdomain_of_an_allowed_domain_is_not_allowed(sso_app, sso_client, provider):
    provider_user(provider, "sub", email="x@evil.auto.example", email_verified=True)
    assert sign_in(sso_client, provider, "sub").status_code == 403


def test_an_unverified_email_is_refused(sso_app, sso_client, provider):
    add_person(sso_app, "unverified@vendor.example")
    provider_user(provider, "unverified", email="unverified@vendor.example", email_verified=False)
    assert sign_in(sso_client, provider, "unverified").status_code == 403
    assert me(sso_client).status_code == 401


def test_a_deactivated_person_is_refused(sso_app, sso_client, provider):
    add_person(sso_app, "gone@vendor.example", active=False)
    provider_user(provider, "gone", email="gone@vendor.example", email_verified=True)
    assert sign_in(sso_client, provider, "gone").status_code == 403
    assert me(sso_client).status_code == 401


def test_a_tampered_state_is_refused(sso_app, sso_client, provider):
    add_person(sso_app, "state@vendor.example")
    provider_user(provider, "state", email="state@vendor.example", email_verified=True)

    def other_state(client, callback):
        return callback.replace("state=", "state=x")

    assert sign_in(sso_client, provider, "state", tamper=other_state).status_code == 403
    assert me(sso_client).status_code == 401


def test_a_tampered_nonce_is_refused(sso_app, sso_client, provider):
    add_person(sso_app, "nonce@vendor.example")
    provider_user(provider, "nonce", email="nonce@vendor.example", email_verified=True)

    def other_nonce(client, callback):
        # the nonce the app expects lives in its signed session; change it there, so the ID
        # token's nonce (issued for the original) no longer matches
        with client.session_transaction() as s:
            for key, value in s.items():
                if key.startswith("_state_") and isinstance(value, dict):
                    value["data"]["nonce"] = "not-the-one-sent"
                    s[key] = value
        return callback

    assert sign_in(sso_client, provider, "nonce", tamper=other_nonce).status_code == 403
    assert me(sso_client).status_code == 401


def test_a_callback_without_a_started_sign_in_is_refused(sso_client):
    assert sso_client.get("/login/sso/callback?code=abc&state=def").status_code == 403


def test_the_login_page_offers_sso_when_configured(sso_client):
    assert 'href="/login/sso"' in sso_client.get("/login").get_data(as_text=True)


def test_without_settings_there_is_no_sso(client):
    assert "/login/sso" not in client.get("/login").get_data(as_text=True)
    assert client.get("/login/sso").status_code == 404


def test_an_unreachable_provider_is_a_503_not_a_500(make_app, env, monkeypatch):
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
    env.update({
        "CONTROL_PLANE_OIDC_ISSUER": f"http://127.0.0.1:{free_port()}",
        "CONTROL_PLANE_OIDC_CLIENT_ID": CLIENT_ID,
        "CONTROL_PLANE_OIDC_CLIENT_SECRET": "provider-secret-for-tests",
    })
    assert make_app().test_client().get("/login/sso").status_code == 503
