"""The People and My tokens screens of the admin panel."""
from __future__ import annotations

import re

import sqlalchemy as sa

from cp.extensions import db
from cp.models import ApiToken, AuditLog, User
from tests.conftest import bearer, csrf_token_from, login


def form_login(client, token: str):
    page = client.get("/login").get_data(as_text=True)
    return client.post("/login", data={"token": token, "csrf_token": csrf_token_from(page)})


def post_form(client, url: str, data: dict):
    token = csrf_token_from(client.get(url).get_data(as_text=True))
    return client.post(url, data={**data, "csrf_token": token})


def person(app, email: str) -> User | None:
    with app.app_context():
        row = db.session.scalar(sa.select(User).where(User.email == email))
        if row is not None:
            db.session.expunge(row)
        return row


def test_admins_create_edit_and_deactivate_people_in_the_panel(app, client):
    login(client, "admin")
    resp = post_form(client, "/admin/people/new/", {"email": "Ann@Example.com", "name": "Ann", "role": "ops",
                                                     "active": "y"})
    assert resp.status_code == 302, resp.get_data(as_text=True)
    ann = person(app, "ann@example.com")
    assert ann and ann.role == "ops" and ann.active and ann.created_by == "admin"
    # a duplicate in another case: refused with the domain's message, nothing created
    resp = post_form(client, "/admin/people/new/", {"email": "ANN@example.com", "name": "x", "role": "ops"})
    assert resp.status_code == 200 and "exists" in resp.get_data(as_text=True)
    assert client.get("/admin/people/").get_data(as_text=True).count("ann@example.com") >= 1

    resp = post_form(client, f"/admin/people/edit/?id={ann.id}", {"name": "Ann B", "role": "support", "active": "y"})
    assert resp.status_code == 302
    assert person(app, "ann@example.com").role == "support"
    resp = post_form(client, f"/admin/people/edit/?id={ann.id}", {"name": "Ann B", "role": "support"})  # unticked
    assert resp.status_code == 302
    after = person(app, "ann@example.com")
    assert after.active is False and after.session_epoch == ann.session_epoch + 1
    # no delete
    resp = client.post("/admin/people/delete/", data={"id": ann.id, "csrf_token": csrf_token_from(
        client.get("/admin/people/").get_data(as_text=True))})
    assert resp.status_code == 403
    with app.app_context():
        actions = [(e.action, e.actor, e.outcome) for e in db.session.scalars(sa.select(AuditLog).order_by(AuditLog.id))]
    assert ("admin.people.create", "admin", "ok") in actions and ("admin.people.edit", "admin", "ok") in actions
    assert ("admin.people.create", "admin", "duplicate_email") in actions


def test_the_people_screen_is_for_admins_only(app, client):
    login(client, "ops")
    assert client.get("/admin/people/").status_code == 403
    assert "/admin/people/" not in client.get("/admin/").get_data(as_text=True)


def test_the_last_admin_cannot_be_deactivated_from_the_panel(app, client):
    login(client, "admin")
    post_form(client, "/admin/people/new/", {"email": "boss@example.com", "name": "Boss", "role": "admin", "active": "y"})
    boss = person(app, "boss@example.com")
    resp = post_form(client, f"/admin/people/edit/?id={boss.id}", {"name": "Boss", "role": "admin"})
    assert "last active admin" in resp.get_data(as_text=True)
    assert person(app, "boss@example.com").active is True


def test_my_tokens_shows_the_secret_once_and_revokes(app, client):
    resp = client.post("/api/users", json={"email": "ann@example.com", "name": "Ann", "role": "support"},
                       headers=bearer("admin"))
    uid = resp.get_json()["id"]
    first = client.post(f"/api/users/{uid}/tokens", json={"name": "laptop"}, headers=bearer("admin")).get_json()
    browser = app.test_client()
    assert form_login(browser, first["token"]).status_code == 303
    page = browser.get("/admin/my_tokens/").get_data(as_text=True)
    assert "laptop" in page and first["token"] not in page

    resp = post_form(browser, "/admin/my_tokens/issue/", {"name": "ci script", "expires_in_days": "30"})
    assert resp.status_code == 200
    secret = re.search(r'data-testid="token-secret">([^<]+)<', resp.get_data(as_text=True)).group(1)
    assert browser.get("/api/me", headers={"Authorization": f"Bearer {secret}"}).get_json()["email"] == \
        "ann@example.com"
    listing = browser.get("/admin/my_tokens/").get_data(as_text=True)
    assert "ci script" in listing and secret not in listing
    assert "Set-Cookie" not in resp.headers or secret not in resp.headers["Set-Cookie"]

    with app.app_context():
        new_id = db.session.scalar(sa.select(ApiToken.id).where(ApiToken.name == "ci script"))
    token = csrf_token_from(listing)
    resp = browser.post("/admin/my_tokens/action/", data={"action": "revoke", "rowid": [str(new_id)],
                                                          "csrf_token": token})
    assert resp.status_code == 302
    assert browser.get("/api/me", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    # a role-token login has no tokens: not in its menu, and the form refuses
    login(client, "admin")
    assert "/admin/my_tokens/" not in client.get("/admin/").get_data(as_text=True)
    assert client.get("/admin/my_tokens/issue/").status_code == 302
