"""Who is calling, and the one role check everything uses.

Roles nest: ``support`` (read) < ``ops`` (triage, pause/resume) < ``admin`` (everything).
A caller is an ``Actor`` (``cp.people``): a role token's role, or a person with their current
role. Credentials:

- a role token (``CONTROL_PLANE_<ROLE>_TOKEN``), compared in constant time against every role;
- a person's personal token (``cp.people.authenticate_token``: looked up by its hash);
- a login session (the ``/login`` form with either token, or single sign-on through
  ``login_person``), carried by the session cookie.

``current_actor()`` / ``current_role()`` are the only readers of credentials: the JSON API, the
HTML pages and the admin panel all use them. A session of a person names the person (id and
``session_epoch``), never a role: their role is read again on every request, and deactivating
them ends the session at the next one. A session of a role token is bound to that token, so
rotating a token ends its sessions. Tokens are never logged.

Wrong credentials are counted per client address (``cp.web.limits``); past the limit they get
429. A valid credential is never refused for what others did from the same address.
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
    jsonify,
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

from cp import people
from cp.errors import Forbidden, Unauthorized
from cp.extensions import csrf, db, login_manager
from cp.models import ROLES, User
from cp.people import ROLE_RANK, Actor, role_allows
from cp.web import limits as ratelimit
from cp.web import security

__all__ = ["ROLES", "ROLE_RANK", "Actor", "role_allows", "current_actor", "current_role", "actor_label", "require_role",
           "role_required", "login_required_html", "login_person", "login_role"]

bp = Blueprint("auth", __name__)
PERSON_PREFIX = "user"  # Flask-Login ids of people: ``user:<id>:<session_epoch>:<via>``


def settings():
    return current_app.config["CP_SETTINGS"]


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


def actor_for_token(token: str | None) -> Actor | None:
    """The actor a bearer or form token proves: a role token, else a person's live token."""
    role = role_for_token(token)
    if role is not None:
        return Actor.for_role(role)
    person = people.authenticate_token(token)
    return Actor.for_person(person, "token") if person is not None else None


class SessionUser(UserMixin):
    """The Flask-Login user of a session: an actor and the id that binds the session to it."""

    def __init__(self, actor: Actor, user_id: str):
        self.actor = actor
        self.id = user_id

    @property
    def role(self) -> str:
        return self.actor.role


def _session_principal(user_id: str) -> str:
    """What the server-side login session records: ``user:<id>`` or the role name."""
    kind, _, rest = user_id.partition(":")
    return f"{PERSON_PREFIX}:{rest.split(':', 1)[0]}" if kind == PERSON_PREFIX else kind


@login_manager.user_loader
def _load_user(user_id: str) -> SessionUser | None:
    # the server-side half of the login: gone after logout or expiry (cp.web.security)
    if security.login_session_role(session.get(security.SESSION_KEY)) != _session_principal(user_id):
        return None
    kind, _, rest = user_id.partition(":")
    if kind == PERSON_PREFIX:
        person_id, epoch, via = (rest.split(":") + ["", "", ""])[:3]
        if not person_id.isdigit() or not epoch.isdigit() or via not in people.VIAS:
            return None
        person = db.session.get(User, int(person_id))
        if person is None or not person.active or person.session_epoch != int(epoch):
            return None  # deactivated (or deactivated and back): the session is over
        people.touch(None, person)
        return SessionUser(Actor.for_person(person, via), user_id)
    token = settings().role_tokens().get(kind)
    if not token or not hmac.compare_digest(rest.encode(), _token_fingerprint(token).encode()):
        return None
    return SessionUser(Actor.for_role(kind), user_id)


def _start_session(user: SessionUser) -> None:
    session.clear()  # a fresh session on every login (no fixation)
    session[security.SESSION_KEY] = security.start_login_session(_session_principal(user.id))
    login_user(user)
    session.permanent = True
    db.session.commit()
    current_app.logger.info("login", extra={"event": "login", "role": user.actor.role, "via": user.actor.via})


def login_person(person: User, via: str = "sso") -> None:
    """Log ``person`` in for this browser (an active person; ``via`` is ``"sso"`` or ``"token"``):
    a fresh session bound to the person and their ``session_epoch``. Commits."""
    if not person.active:
        raise Forbidden("This account is deactivated.", code="inactive_person")
    if via not in people.VIAS:
        raise ValueError(f"unknown login method {via!r}")
    user_id = f"{PERSON_PREFIX}:{person.id}:{person.session_epoch}:{via}"
    _start_session(SessionUser(Actor.for_person(person, via), user_id))


def login_role(role: str) -> None:
    """Log a role token in for this browser: a session bound to the role's current token."""
    _start_session(SessionUser(Actor.for_role(role), f"{role}:{_token_fingerprint(settings().role_tokens()[role])}"))


def _client():
    return ratelimit.client_address(request.environ, settings().trusted_proxies)


def _failed_attempt() -> None:
    """Count a wrong credential of this client: 429 (with ``Retry-After``) past the limit."""
    ratelimit.count_failed_login(_client(), settings().login_rate_limit)


def current_actor() -> Actor | None:
    """The caller: from a bearer token when one is sent, else from the session.

    A sent but wrong bearer token is a 401 (429 past the limit of wrong attempts) even when a
    session cookie is present."""
    if "cp_actor" in g:
        return g.cp_actor
    actor = None
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Send Authorization: Bearer <token>.", code="invalid_token")
        actor = actor_for_token(token.strip())
        if actor is None:
            _failed_attempt()
            raise Unauthorized("The bearer token is not valid.", code="invalid_token")
        g.cp_auth = "bearer"
    elif current_user.is_authenticated:
        actor = current_user.actor
        g.cp_auth = "session"
    g.cp_actor = actor
    g.cp_role = actor.role if actor else None  # the request log line names it (cp.web.logs)
    return actor


def actor_label() -> str | None:
    """What the caller's actions are recorded as: a person's email, or the role name."""
    actor = current_actor()
    return actor.label if actor else None


def current_role() -> str | None:
    """The caller's role (``None`` without credentials)."""
    actor = current_actor()
    return actor.role if actor else None


def require_role(needed: str) -> Actor:
    """Raise 401 without credentials, 403 when the role is too low; return the actor."""
    actor = current_actor()
    if actor is None:
        raise Unauthorized("Log in or send Authorization: Bearer <token>.")
    if not role_allows(actor.role, needed):
        raise Forbidden(f"This needs the {needed} role; you are {actor.role}.",
                        details={"required_role": needed, "role": actor.role})
    _check_same_origin()
    return actor


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


def login_redirect():
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def login_required_html(needed: str = "support") -> Callable:
    """Decorator for HTML pages: anonymous -> /login?next=..., too low -> 403 page."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(*args, **kwargs):
            role = current_role()
            if role is None:
                return login_redirect()
            if not role_allows(role, needed):
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
        actor = actor_for_token(form.token.data)
        if actor is None:
            current_app.logger.info("login refused", extra={"event": "login_failed", "remote": request.remote_addr})
            _failed_attempt()  # 429 past the limit of wrong attempts
            return render_template("login.html", form=form, error="That token is not valid.", next=next_url), 401
        if actor.person_id is None:
            login_role(actor.role)
        else:
            login_person(db.session.get(User, actor.person_id), via="token")
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
        return jsonify({"logged_out": True})
    return redirect(url_for("auth.login"), code=303)


def init_app(app) -> None:
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.session_protection = None  # sessions are bound to the token or the person instead
    app.register_blueprint(bp)

    @app.context_processor
    def _inject_actor():
        actor = current_user.actor if current_user.is_authenticated else None
        return {"cp_role": actor.role if actor else None, "cp_actor": actor, "role_allows": role_allows}
