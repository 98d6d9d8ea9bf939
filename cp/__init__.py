"""control-plane: the vendor-side service that watches a fleet of ERP installations.

``create_app()`` only wires things together; each subsystem binds itself with ``init_app``.
"""
from __future__ import annotations

import os
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Mapping

from flask import Flask

from config import ConfigError, Settings, load_settings

MIGRATIONS_DIR = str(Path(__file__).resolve().parent.parent / "migrations")


def create_app(test_config: Mapping[str, str] | None = None) -> Flask:
    """Build the app. ``test_config`` overlays environment variables (tests only)."""
    env = dict(os.environ)
    env.update(test_config or {})
    settings = load_settings(env)

    app = Flask(__name__, instance_path=env.get("CONTROL_PLANE_INSTANCE_PATH") or None)
    _configure(app, settings)

    from cp import admin, agent_api, api, audit, auth, cli, dbutil, sso
    from cp.extensions import csrf, db, migrate
    from cp.web import errors, health, logs, metrics, pages, security

    logs.init_app(app)
    db.init_app(app)
    audit.init_app(app)
    dbutil.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR)
    csrf.init_app(app)
    errors.init_app(app)
    security.init_app(app)
    auth.init_app(app)
    sso.init_app(app)
    health.init_app(app)
    metrics.init_app(app)
    agent_api.init_app(app)
    api.init_app(app)
    pages.init_app(app)
    admin.init_app(app)
    cli.init_app(app)
    security.init_wsgi(app)  # last: the outermost WSGI middleware
    return app


def _configure(app: Flask, settings: Settings) -> None:
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    url = settings.database_url or f"sqlite:///{Path(app.instance_path) / 'control-plane.db'}"
    if url.startswith("sqlite"):
        engine_options: dict = {"connect_args": {"timeout": 30}}
    else:  # liveness: ``cp.dbutil.ping_idle_connections`` (not ``pool_pre_ping``)
        engine_options = dict(pool_size=settings.db_pool_size, max_overflow=settings.db_pool_size * 2,
                              pool_recycle=1800)
    app.config.update(
        CP_SETTINGS=settings,
        SECRET_KEY=settings.secret_key or _instance_secret_key(app),
        SQLALCHEMY_DATABASE_URI=url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.cookie_secure,
        SESSION_COOKIE_NAME="cp_session",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_hours),
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        JSON_SORT_KEYS=False,
        FLASK_ADMIN_SWATCH="cerulean",
    )


def _instance_secret_key(app: Flask) -> str:
    """A random key generated once per host and kept in the instance folder (mode 0600)."""
    path = Path(app.instance_path) / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        if len(key) < 32:
            raise ConfigError(f"{path} is too short to be a secret key; delete it to regenerate") from None
        return key
    with os.fdopen(fd, "w") as fh:
        key = secrets.token_hex(32)
        fh.write(key)
    return key
