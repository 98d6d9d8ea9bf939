"""Web hardening in one place: security headers, the CSP nonce, server-side login sessions.

- Every response carries ``Content-Security-Policy`` (scripts only from this origin or with the
  request's nonce; Flask-Admin gets the nonce through ``Admin(csp_nonce_generator=...)``),
  ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` (and ``frame-ancestors
  'none'``), ``Referrer-Policy: same-origin`` (Flask-WTF's CSRF check needs a same-origin
  ``Referer`` over HTTPS, so ``no-referrer`` would break every form) and, for pages that are
  not static files, ``Cache-Control: no-store``. With ``CONTROL_PLANE_COOKIE_SECURE=1`` (HTTPS)
  also ``Strict-Transport-Security``.
- A body sent in chunks (no ``Content-Length``) is held to ``CONTROL_PLANE_MAX_BODY_BYTES`` like
  any other: 413, where Werkzeug alone would cut it silently (``ChunkedBodyLimit``).
- ``<int:...>`` in a route only matches what an INTEGER column holds (a 404 beyond, never a
  database error).
- A login creates a ``login_sessions`` row keyed by the SHA-256 of a random id that only the
  (signed) session cookie holds; the user loader accepts a session only while its row exists
  and has not expired; logout deletes it. A copied cookie is therefore dead after logout, and a
  cookie from before the login never carries the new id.
"""
from __future__ import annotations

import hashlib
import io
import secrets
from datetime import timedelta

from flask import current_app, g, request
from flask.sessions import SecureCookieSessionInterface
from sqlalchemy import delete, select
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from cp.extensions import db
from cp.models import LoginSession
from cp.timeutil import utcnow

SESSION_KEY = "sid"
DB_INT_MAX = 2**31 - 1  # ids are INTEGER columns
sessions_t = LoginSession.__table__


# --- CSP -------------------------------------------------------------------------------------
def csp_nonce() -> str:
    """The nonce of this request's inline scripts (one per request, made on first use)."""
    nonce = g.get("cp_csp_nonce")
    if nonce is None:
        nonce = g.cp_csp_nonce = secrets.token_urlsafe(18)
    return nonce


def content_security_policy(nonce: str | None) -> str:
    script = "script-src 'self'" + (f" 'nonce-{nonce}'" if nonce else "")
    return "; ".join([
        "default-src 'self'",
        script,
        # style attributes are set by Flask-Admin's widgets (select2, datepickers); styles cannot run code
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


# the headers every response carries unless the view set its own (name, lowercased name, value)
_FIXED_HEADERS = tuple((name, name.lower(), value) for name, value in (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
))
_CSP_WITHOUT_NONCE = content_security_policy(None)


def default_headers(present: set[str], *, nonce: str | None, static: bool, config) -> list[tuple[str, str]]:
    """The security headers a response gets, each unless it already has one (``present``: its
    header names, lowercased; ``config``: the app's, for HSTS behind HTTPS)."""
    out = []
    if "content-security-policy" not in present:
        out.append(("Content-Security-Policy", content_security_policy(nonce) if nonce else _CSP_WITHOUT_NONCE))
    for name, lowered, value in _FIXED_HEADERS:
        if lowered not in present:
            out.append((name, value))
    if "cache-control" not in present and not static:
        out.append(("Cache-Control", "no-store"))
    if "strict-transport-security" not in present and config.get("SESSION_COOKIE_SECURE"):
        out.append(("Strict-Transport-Security", "max-age=31536000"))
    return out


def _set_headers(response):
    """``default_headers`` on a Flask response: one pass over its headers (``Headers.setdefault``
    would scan them once per header)."""
    headers = response.headers
    endpoint = request.endpoint or ""
    for name, value in default_headers({key.lower() for key, _ in headers.items()}, nonce=g.get("cp_csp_nonce"),
                                       static=endpoint == "static" or endpoint.endswith(".static"),
                                       config=current_app.config):
        headers.add(name, value)
    return response


# --- server-side login sessions ------------------------------------------------------------------
def _hash(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8", "surrogateescape")).hexdigest()


def start_login_session(role: str) -> str:
    """Create the server-side half of a login (in the request's transaction); return the id
    the session cookie must carry. Expired rows are pruned in passing (logins are rare)."""
    now = utcnow()
    hours = current_app.config["CP_SETTINGS"].session_hours
    sid = secrets.token_urlsafe(32)
    db.session.execute(delete(sessions_t).where(sessions_t.c.expires_at < now))
    db.session.execute(sessions_t.insert().values(
        id_hash=_hash(sid), role=role, created_at=now, expires_at=now + timedelta(hours=hours)))
    return sid


def login_session_role(sid: object) -> str | None:
    """The role of a live login session, else None."""
    if not isinstance(sid, str) or not sid:
        return None
    return db.session.execute(
        select(sessions_t.c.role).where(sessions_t.c.id_hash == _hash(sid), sessions_t.c.expires_at > utcnow())
    ).scalar()


def end_login_session(sid: object) -> None:
    if isinstance(sid, str) and sid:
        db.session.execute(delete(sessions_t).where(sessions_t.c.id_hash == _hash(sid)))


def prune(now=None) -> int:
    """Delete expired login sessions (also done at every login)."""
    with db.engine.begin() as conn:
        return conn.execute(delete(sessions_t).where(sessions_t.c.expires_at < (now or utcnow()))).rowcount or 0


class ChunkedBodyLimit:
    """WSGI middleware: a body sent without ``Content-Length`` (``Transfer-Encoding: chunked``)
    is read here up to the limit; Werkzeug would otherwise cut it silently at
    ``MAX_CONTENT_LENGTH`` instead of answering 413. Over the limit, the request is marked and
    ``_refuse_marked_bodies`` answers 413 in the contract's shape."""

    def __init__(self, wsgi_app, limit: int):
        self.wsgi_app = wsgi_app
        self.limit = limit

    def __call__(self, environ, start_response):
        if not environ.get("CONTENT_LENGTH") and "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            data = environ["wsgi.input"].read(self.limit + 1)
            if len(data) > self.limit:
                environ["cp.body_too_large"] = True
                data = b""
            environ["wsgi.input"] = io.BytesIO(data)
            environ["CONTENT_LENGTH"] = str(len(data))
        return self.wsgi_app(environ, start_response)


def _refuse_marked_bodies():
    if request.environ.get("cp.body_too_large"):
        raise RequestEntityTooLarge()


class DbIntConverter(IntegerConverter):
    """``<int:id>`` that only matches what an INTEGER column can hold (else 404, not a DB error)."""

    def __init__(self, map, *args, **kwargs):
        kwargs.setdefault("max", DB_INT_MAX)
        super().__init__(map, *args, **kwargs)


class CookieSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, without building a signing serializer for the requests
    that carry no session cookie (every agent request and API call with a bearer token)."""

    def open_session(self, app, request):
        if self.get_cookie_name(app) not in request.cookies:
            return self.session_class()
        return super().open_session(app, request)


def init_app(app) -> None:
    app.session_interface = CookieSessionInterface()
    # before any blueprint adds its rules: converters are bound when a rule is added
    app.url_map.converters["int"] = DbIntConverter
    app.after_request(_set_headers)
    app.jinja_env.globals["csp_nonce"] = csp_nonce
    # first of all before_request functions (CSRFProtect's reads the form)
    app.before_request_funcs.setdefault(None, []).insert(0, _refuse_marked_bodies)


def init_wsgi(app) -> None:
    """The outermost WSGI middleware, wrapped last (``create_app``), so that Flask sees the client's
    address behind trusted proxies and chunked bodies held to the limit."""
    app.wsgi_app = ChunkedBodyLimit(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"])
    proxies = app.config["CP_SETTINGS"].trusted_proxies
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)
