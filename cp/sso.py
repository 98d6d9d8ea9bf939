"""Single sign-on with OpenID Connect (authorization code flow, PKCE, state and nonce).

Authlib does the protocol: the issuer's endpoints and signing keys come from its discovery
document (``<issuer>/.well-known/openid-configuration``); ``state``, ``nonce`` and the PKCE
verifier live in the signed session between ``/login/sso`` and the callback; the ID token's
signature, issuer, audience, expiry and nonce are checked by Authlib before we read a claim.

What this module decides is who may log in (``sso_person``): the active person whose email
matches the verified ``email`` claim; an unknown email only when its domain is listed in
``CONTROL_PLANE_OIDC_AUTO_DOMAINS`` (exact match), which creates the person as ``support``.
Enabled when issuer, client id and client secret are all set.
"""
from __future__ import annotations

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.flask_client import OAuth
from flask import Blueprint, current_app, redirect, request, session, url_for
from joserfc.errors import JoseError

from cp import audit, auth, people
from cp.errors import Forbidden, Invalid, NotFound, Unavailable
from cp.people import Actor

bp = Blueprint("sso", __name__)
EXTENSION = "cp_oidc"  # this app's Authlib registry, in app.extensions
CLIENT = "oidc"
NEXT_KEY = "sso_next"


def sso_person(claims: dict) -> tuple[people.User, bool]:
    """The person the verified ID token's claims log in and whether they were just created
    (flushed, not committed), or ``Forbidden``.

    ``email_verified`` must be true: an unverified address proves nothing about who it is.
    """
    email = claims.get("email")
    if not isinstance(email, str) or not email or claims.get("email_verified") is not True:
        raise Forbidden("The identity provider did not vouch for an email address.",
                        code="sso_email_unverified")
    try:
        address = people.normalize_email(email)
    except Invalid:
        raise Forbidden("The identity provider sent an email address this service cannot use.",
                        code="sso_email_invalid") from None
    person = people.find_person_by_email(address)
    if person is not None:
        if not person.active:
            raise Forbidden("This account is deactivated.", code="account_deactivated")
        return person, False
    domain = address.rpartition("@")[2]
    if domain not in current_app.config["CP_SETTINGS"].oidc_auto_domains:
        raise Forbidden("No account here for this email; ask an admin to create one.",
                        code="sso_unknown_person")
    name = claims.get("name") if isinstance(claims.get("name"), str) else None
    return people.create_person(address, name, "support", by="sso"), True


def _client():
    oauth = current_app.extensions.get(EXTENSION)
    if oauth is None:
        raise NotFound("Single sign-on is not configured here.", code="sso_disabled")
    return oauth.create_client(CLIENT)


@bp.get("/login/sso")
def start():
    client = _client()
    next_url = request.args.get("next")
    session[NEXT_KEY] = next_url if auth.is_safe_next(next_url) else "/"
    try:
        return client.authorize_redirect(url_for("sso.callback", _external=True))
    except requests.RequestException as exc:  # the discovery document could not be read
        current_app.logger.warning("sso provider unreachable", extra={"event": "sso_failed",
                                                                        "reason": type(exc).__name__})
        raise Unavailable("The identity provider did not answer; please try again.",
                          code="sso_provider_unavailable") from None


@bp.get("/login/sso/callback")
def callback():
    client = _client()
    try:
        token = client.authorize_access_token()
    except (AuthlibBaseError, JoseError, ValueError) as exc:  # state, nonce, signature, a refused code
        current_app.logger.info("sso refused", extra={"event": "sso_failed", "reason": type(exc).__name__})
        raise Forbidden("The sign-in could not be verified; please start again.",
                        code="sso_failed") from None
    except requests.RequestException as exc:
        current_app.logger.warning("sso provider unreachable", extra={"event": "sso_failed",
                                                                        "reason": type(exc).__name__})
        raise Unavailable("The identity provider did not answer; please try again.",
                          code="sso_provider_unavailable") from None
    person, created = sso_person(token.get("userinfo") or {})
    if created:  # its audit entry commits with the person and the login
        audit.add("user.create", actor=Actor.for_person(person, "sso"), source_ip=request.remote_addr,
                  target_type="user", target_id=person.id, details={"via": "sso", "role": person.role})
    next_url = session.pop(NEXT_KEY, "/")
    auth.login_person(person, via="sso")
    return redirect(next_url if auth.is_safe_next(next_url) else "/", code=303)


def init_app(app) -> None:
    app.register_blueprint(bp)

    @app.context_processor
    def _sso_offered():
        return {"sso_enabled": EXTENSION in current_app.extensions}

    s = app.config["CP_SETTINGS"]
    if not s.oidc_enabled():
        return
    oauth = OAuth(app)
    app.extensions[EXTENSION] = oauth
    oauth.register(
        CLIENT,
        client_id=s.oidc_client_id,
        client_secret=s.oidc_client_secret,
        server_metadata_url=s.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={"scope": "openid email profile", "code_challenge_method": "S256"},
    )
