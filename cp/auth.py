"""Roles, login and logout, bearer tokens, and the one role check everything uses.

Roles nest: ``support`` (read) < ``ops`` (triage, pause/resume) < ``admin`` (everything).
A person proves a role with its token (``CONTROL_PLANE_<ROLE>_TOKEN``): once at ``/login``
(a session cookie follows) or on every JSON request as ``Authorization: Bearer <token>``.
Tokens are compared in constant time, against every role, and never logged.
"""
from __future__ import annotations

import hashlib
import hmac
from functools import wraps
from typing import Callable
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import UserMixin, current_user, login_user, logout_user
from flask_wtf import FlaskForm
from wtforms import PasswordField
from wtforms.validators import DataRequired

from cp.web import limits as ratelimit
from cp.web import security
from cp.errors import Forbidden, Unauthorized
from cp.extensions import csrf, db, login_manager

ROLES = ("support", "ops", "admin")
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}

bp = Blueprint("auth", __name__)


def settings():
    return current_app.config["CP_SETTINGS"]


def role_allows(role: str | None, needed: str) -> bool:
    """The single rule of the hierarchy: ``role`` includes ``needed``."""
    return role in ROLE_RANK and ROLE_RANK[role] >= ROLE_RANK[needed]


def _token_fingerprint(token: str) -> str:
    key = current_app.secret_key
    key_bytes = key.encode() if isinstance(key, str) else key
    return hmac.new(key_bytes, token.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def role_for_token(token: str | None) -> str | None:
    """The role whose token equals ``token`` (constant time, every role compared), else None."""
    if not token:
        return None
    candidate = token.encode("utf-8", "surrogateescape")
    found = None
    for role, expected in settings().role_tokens().items():
        if hmac.compare_digest(candidate, expected.encode("utf-8")):
            found = role
    return found


class RoleUser(UserMixin):
    """One user per role. Its id binds the session to the token it logged in with, so
    changing a role's token ends that role's sessions."""

    def __init__(self, role: str, fingerprint: str):
        self.role = role
        self.id = f"{role}:{fingerprint}"

    def can(self, needed: str) -> bool:
        return role_allows(self.role, needed)


@login_manager.user_loader
def _load_user(user_id: str) -> RoleUser | None:
    role, _, fingerprint = user_id.partition(":")
    token = settings().role_tokens().get(role)
    if not token or not hmac.compare_digest(fingerprint.encode(), _token_fingerprint(token).encode()):
        return None
    # the server-side half of the login: gone after logout or expiry (cp.web.security)
    if security.login_session_role(session.get(security.SESSION_KEY)) != role:
        return None
    return RoleUser(role, fingerprint)


def current_role() -> str | None:
    """The caller's role: from a bearer token when one is sent, else from the session.

    A sent but wrong bearer token is a 401 even when a session cookie is present.
    """
    if "cp_role" in g:
        return g.cp_role
    role = None
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Send Authorization: Bearer <role token>.", code="invalid_token")
        ratelimit.check_bearer_allowed()  # a wrong bearer token is a login attempt (cp.web.limits)
        role = role_for_token(token.strip())
        if role is None:
            ratelimit.count_failed_bearer()
            raise Unauthorized("The bearer token is not valid.", code="invalid_token")
        g.cp_auth = "bearer"
    elif current_user.is_authenticated:
        role = current_user.role
        g.cp_auth = "session"
    g.cp_role = role
    return role


def require_role(needed: str) -> str:
    """Raise 401 without credentials, 403 when the role is too low; return the role."""
    role = current_role()
    if role is None:
        raise Unauthorized("Log in or send Authorization: Bearer <role token>.")
    if not role_allows(role, needed):
        raise Forbidden(f"This needs the {needed} role; you are {role}.",
                        details={"required_role": needed, "role": role})
    _check_same_origin()
    return role


def _check_same_origin() -> None:
    """Cookie-authenticated unsafe requests must not come from another site (CSRF defence for
    the JSON API, next to SameSite=Lax). Bearer requests carry no ambient credential."""
    if request.method in ("GET", "HEAD", "OPTIONS") or g.get("cp_auth") != "session":
        return
    origin = request.headers.get("Origin")
    # ``Origin: null`` (sandboxed frames, file: pages, some redirects) is no origin of ours either
    if origin is not None and urlsplit(origin).netloc != request.host:
        raise Forbidden("Cross-site request refused.", code="cross_site_request")


def role_required(needed: str) -> Callable:
    """Decorator for JSON endpoints: 401 without credentials, 403 below ``needed``."""
    if needed not in ROLE_RANK:
        raise ValueError(f"unknown role {needed!r}")

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(*args, **kwargs):
            require_role(needed)
            return view(*args, **kwargs)

        wrapped.cp_required_role = needed  # read by the OpenAPI spec and the role-matrix tests
        return wrapped

    return decorator


def login_required_html(needed: str = "support") -> Callable:
    """Decorator for HTML pages: anonymous -> /login?next=..., too low -> 403 page."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(*args, **kwargs):
            if not current_user.is_authenticated:
                return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
            if not current_user.can(needed):
                raise Forbidden(f"This page needs the {needed} role.")
            return view(*args, **kwargs)

        wrapped.cp_required_role = needed
        return wrapped

    return decorator


def is_safe_next(target: str | None) -> bool:
    """Only local paths: ``/x`` yes; ``//evil``, ``/\\evil``, ``http://evil`` no."""
    if not target or not target.startswith("/") or target.startswith("//") or target.startswith("/\\"):
        return False
    if any(ord(c) < 32 or c == "\\" for c in target):
        return False
    parts = urlsplit(target)
    return not parts.scheme and not parts.netloc


class LoginForm(FlaskForm):
    token = PasswordField("Token", validators=[DataRequired()])


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    next_url = request.args.get("next") or request.form.get("next")
    if request.method == "POST":
        if not form.validate_on_submit():
            error = "Your form expired; please try again." if form.csrf_token.errors else "Enter a token."
            return render_template("login.html", form=form, error=error, next=next_url), 400
        ratelimit.check_login_rate()  # before the compare: refused attempts learn nothing
        role = role_for_token(form.token.data)
        if role is None:
            current_app.logger.info("login refused", extra={"event": "login_failed", "remote": request.remote_addr})
            return render_template("login.html", form=form, error="That token is not valid.", next=next_url), 401
        session.clear()  # a fresh session on every login (no fixation)
        session[security.SESSION_KEY] = security.start_login_session(role)
        login_user(RoleUser(role, _token_fingerprint(settings().role_tokens()[role])))
        session.permanent = True
        db.session.commit()
        current_app.logger.info("login", extra={"event": "login", "role": role})
        return redirect(next_url if is_safe_next(next_url) else "/", code=303)
    return render_template("login.html", form=form, error=None, next=next_url)


@bp.route("/logout", methods=["POST"])
@csrf.exempt  # SameSite=Lax keeps other sites' POSTs from carrying the cookie; logout is harmless
def logout():
    security.end_login_session(session.get(security.SESSION_KEY))
    db.session.commit()
    logout_user()
    session.clear()
    if request.accept_mimetypes.best == "application/json" or request.is_json:
        from flask import jsonify

        return jsonify({"logged_out": True})
    return redirect(url_for("auth.login"), code=303)


def init_app(app) -> None:
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.session_protection = None  # sessions are bound to the token fingerprint instead
    app.register_blueprint(bp)

    @app.context_processor
    def _inject_role():
        role = current_user.role if current_user.is_authenticated else None
        return {"cp_role": role, "role_allows": role_allows}
