"""Every environment setting of the control plane, in one place.

Each setting is declared once in ``SETTINGS`` with its default, its parser and a sentence
of help; ``load_settings()`` reads them from an environment mapping (``os.environ`` by
default) and fails with a clear ``ConfigError`` naming the variable when a value is
malformed.  Nothing here runs at import time: ``cp.create_app()`` calls ``load_settings``.
docs/configuration.md's table is generated from the same list (``flask --app cp env-table``).
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

# Matched with ``fullmatch`` (``$`` alone would let a final newline through); the anchors make
# the pattern mean the same in the OpenAPI document.
INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
INSTANCE_ID_HELP = "Must be 1-128 characters of [A-Za-z0-9._-]."


class ConfigError(ValueError):
    """A setting is malformed; the message names the variable and what is wrong."""


# --- parsers -----------------------------------------------------------------------------
def _str(value: str) -> str:
    return value


def _opt_str(value: str) -> str | None:
    return value or None


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _int_min(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        n = int(value)
        if n < minimum:
            raise ValueError(f"must be >= {minimum}")
        return n

    return parse


def _opt_float_nonneg(value: str) -> float | None:
    if value.strip() == "":
        return None
    f = float(value)
    if not f >= 0 or f == float("inf"):
        raise ValueError("must be a finite number >= 0")
    return f


def _float_pos(value: str) -> float:
    f = float(value)
    if not f > 0 or f == float("inf"):
        raise ValueError("must be a finite number > 0")
    return f


def _float_min(minimum: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        f = float(value)
        if not f >= minimum or f == float("inf"):
            raise ValueError(f"must be a finite number >= {minimum:g}")
        return f

    return parse


def _opt_url(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError("must be an http(s) URL such as https://login.example.com")
    return value


def _domains(value: str) -> frozenset[str]:
    domains = frozenset(d.strip().lower() for d in value.split(",") if d.strip())
    for d in domains:
        if not re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)+", d):
            raise ValueError(f"{d!r} is not a domain name such as example.com")
    return domains


def _agent_secrets(value: str) -> dict[str, str]:
    if value.strip() == "":
        return {}
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(data, dict):
        raise ValueError('must be a JSON object {"instance_id": "secret", ...}')
    for key, secret in data.items():
        if not INSTANCE_ID_RE.fullmatch(key):
            raise ValueError(f"key {key!r} is not a valid instance_id (1-128 chars of [A-Za-z0-9._-])")
        if not isinstance(secret, str) or secret == "":
            raise ValueError(f"the secret of {key!r} must be a non-empty string")
    return dict(data)


def _release_keys(value: str) -> dict[str, bytes]:
    if value.strip() == "":
        return {}
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(data, dict):
        raise ValueError('must be a JSON object {"key_id": "<base64 raw 32-byte Ed25519 public key>"}')
    keys: dict[str, bytes] = {}
    for key_id, b64 in data.items():
        if not isinstance(b64, str):
            raise ValueError(f"the key {key_id!r} must be a base64 string")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"the key {key_id!r} is not valid base64") from None
        if len(raw) != 32:
            raise ValueError(f"the key {key_id!r} must decode to 32 bytes, got {len(raw)}")
        keys[key_id] = raw
    return keys


def _db_pooler(value: str) -> str:
    v = value.strip().lower()
    if v not in ("none", "transaction"):
        raise ValueError("must be 'none' or 'transaction'")
    return v


MIN_ROLE_TOKEN_LENGTH = 32


def _role_token(value: str) -> str | None:
    """Unset or empty: the role has no token. Set: at least 32 characters (a guessable token
    would be found by anyone allowed a few wrong attempts a minute)."""
    if value == "":
        return None
    if len(value) < MIN_ROLE_TOKEN_LENGTH:
        raise ValueError(f"is {len(value)} characters; a role token needs at least {MIN_ROLE_TOKEN_LENGTH} "
                         "(generate one with `flask --app cp gen-token`)")
    return value


def _log_format(value: str) -> str:
    v = value.strip().lower()
    if v not in ("json", "text"):
        raise ValueError("must be 'json' or 'text'")
    return v


def _log_level(value: str) -> str:
    v = value.strip().upper()
    if v not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return v


def _database_url(value: str) -> str:
    if value.strip() == "":
        return ""
    if "://" not in value:
        raise ValueError("must be an SQLAlchemy URL such as postgresql+psycopg://user@host/db")
    if value.startswith("postgres://") or value.startswith("postgresql://"):
        # psycopg 3 is the driver this project ships with.
        value = "postgresql+psycopg://" + value.split("://", 1)[1]
    return value


@dataclass(frozen=True)
class Setting:
    env: str
    attr: str
    default: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("CONTROL_PLANE_DATABASE_URL", "database_url", "", _database_url,
            "SQLAlchemy URL. Unset: an embedded SQLite file `instance/control-plane.db`. "
            "Production: `postgresql+psycopg://user:pass@host/db`."),
    Setting("CONTROL_PLANE_DB_POOL_SIZE", "db_pool_size", "5", _int_min(1),
            "Connections kept per process (PostgreSQL)."),
    Setting("CONTROL_PLANE_DB_POOLER", "db_pooler", "none", _db_pooler,
            "What sits between the processes and PostgreSQL. `none`: a direct connection. `transaction`: "
            "a pooler in transaction mode (PgBouncer `pool_mode = transaction`), where consecutive "
            "transactions of one connection may run on different server sessions: psycopg's automatic "
            "server-side prepared statements are turned off (PgBouncer before 1.21 cannot carry them). "
            "Nothing else in the service depends on the session: settings are `SET LOCAL`, advisory locks "
            "are transaction-level, no `LISTEN` or temporary tables (docs/scale-out.md)."),
    Setting("CONTROL_PLANE_DB_PING_IDLE_SECONDS", "db_ping_idle_seconds", "1", _float_min(0),
            "A pooled connection that has sat idle longer than this is tested with a round trip "
            "before a request uses it, so a database restart or an idle timeout in between costs no "
            "failed request. A busy process reuses its connections within milliseconds and skips the "
            "test; if the database restarts under load, each process answers one request with 503 "
            "and reconnects. `0`: test before every request (one more round trip each)."),
    Setting("CONTROL_PLANE_SECRET_KEY", "secret_key", "", _str,
            "Signs session cookies and CSRF tokens. Unset: a random key is generated once and "
            "kept in `instance/secret_key` (mode 0600), shared by the processes of one host; "
            "set it explicitly when several hosts serve the web side.", secret=True),
    Setting("CONTROL_PLANE_SUPPORT_TOKEN", "support_token", "", _role_token,
            "Login / bearer token of the `support` role (read). Unset or empty grants nothing; set, it "
            "must be at least 32 characters (start-up fails otherwise).", secret=True),
    Setting("CONTROL_PLANE_OPS_TOKEN", "ops_token", "", _role_token,
            "Token of the `ops` role (triage alerts and job failures, pause/resume rollouts); at least "
            "32 characters.", secret=True),
    Setting("CONTROL_PLANE_ADMIN_TOKEN", "admin_token", "", _role_token,
            "Token of the `admin` role (everything); at least 32 characters.", secret=True),
    Setting("CONTROL_PLANE_COOKIE_SECURE", "cookie_secure", "0", _bool,
            "`1`: the session cookie carries the Secure flag (serve over HTTPS)."),
    Setting("CONTROL_PLANE_SESSION_HOURS", "session_hours", "12", _int_min(1),
            "Lifetime of a login session, in hours."),
    Setting("CONTROL_PLANE_OIDC_ISSUER", "oidc_issuer", "", _opt_url,
            "Single sign-on: the OpenID Connect issuer URL (its discovery document is "
            "`<issuer>/.well-known/openid-configuration`). SSO is on when the issuer, the client id "
            "and the client secret are all set; setting only some of them is an error."),
    Setting("CONTROL_PLANE_OIDC_CLIENT_ID", "oidc_client_id", "", _opt_str,
            "Single sign-on: this service's client id at the issuer."),
    Setting("CONTROL_PLANE_OIDC_CLIENT_SECRET", "oidc_client_secret", "", _opt_str,
            "Single sign-on: this service's client secret at the issuer.", secret=True),
    Setting("CONTROL_PLANE_OIDC_AUTO_DOMAINS", "oidc_auto_domains", "", _domains,
            "Comma-separated email domains (exact match, e.g. `example.com`) whose people may sign in "
            "with SSO without an account: their first sign-in creates them with the `support` role. "
            "Empty: only people an admin created may sign in."),
    Setting("CONTROL_PLANE_AGENT_SECRETS", "agent_secrets", "", _agent_secrets,
            'JSON object `{"instance_id": "secret"}`: per-installation HMAC secrets. A listed '
            "installation signs with its own secret only. Malformed JSON fails start-up.", secret=True),
    Setting("CONTROL_PLANE_AGENT_TOKEN", "agent_token", "", _opt_str,
            "Shared HMAC secret for installations not listed in CONTROL_PLANE_AGENT_SECRETS. "
            "Unset: only listed installations can sign.", secret=True),
    Setting("CONTROL_PLANE_REQUIRE_AGENT_TIMESTAMP", "require_agent_timestamp", "0", _bool,
            "`1`: agent requests must carry `x-agent-timestamp` (replay protection)."),
    Setting("CONTROL_PLANE_MAX_BODY_BYTES", "max_body_bytes", "262144", _int_min(1024),
            "Largest accepted request body; larger gets 413."),
    Setting("CONTROL_PLANE_STALE_AFTER_SECONDS", "stale_after_seconds", "900", _int_min(1),
            "An installation whose last heartbeat is older than this is stale."),
    Setting("SLO_P95_MS_MAX", "slo_p95_ms_max", "", _opt_float_nonneg,
            "Limit of `slo_p95_ms`; above it a critical `slo` alert opens. Unset: not checked."),
    Setting("SLO_ERROR_RATE_MAX", "slo_error_rate_max", "", _opt_float_nonneg,
            "Limit of `slo_error_rate`. Unset: not checked."),
    Setting("SLO_WEBHOOK_RETRY_RATE_MAX", "slo_webhook_retry_rate_max", "", _opt_float_nonneg,
            "Limit of `slo_webhook_retry_rate`. Unset: not checked."),
    Setting("CONTROL_PLANE_BACKUP_MAX_AGE_HOURS", "backup_max_age_hours", "26", _float_pos,
            "A `last_backup_at` older than this opens a warning `backup` alert."),
    Setting("CONTROL_PLANE_SLO_HISTORY_RETENTION_DAYS", "slo_history_retention_days", "30", _int_min(1),
            "How long the 5-minute SLO history is kept (`flask --app cp prune-history`); on PostgreSQL "
            "whole days are dropped once past it."),
    Setting("CONTROL_PLANE_EVENT_RETENTION_DAYS", "event_retention_days", "400", _int_min(1),
            "How long installation events (version, channel, health, backup changes) are kept; on "
            "PostgreSQL whole months are dropped once past it."),
    Setting("CONTROL_PLANE_ALERT_WEBHOOK_URL", "alert_webhook_url", "", _opt_str,
            "Where opened/resolved alerts are POSTed. Unset: no forwarding."),
    Setting("CONTROL_PLANE_ALERT_WEBHOOK_TOKEN", "alert_webhook_token", "", _opt_str,
            "Bearer token sent to the webhook and key of its `x-control-plane-signature`.", secret=True),
    Setting("CONTROL_PLANE_WEBHOOK_TIMEOUT_SECONDS", "webhook_timeout_seconds", "5", _float_pos,
            "Timeout of one webhook delivery attempt."),
    Setting("CONTROL_PLANE_WEBHOOK_MAX_ATTEMPTS", "webhook_max_attempts", "20", _int_min(1),
            "Attempts before an outbox event is marked dead (retry it from the admin panel)."),
    Setting("CONTROL_PLANE_WEBHOOK_BACKOFF_SECONDS", "webhook_backoff_seconds", "2", _float_pos,
            "Delay before the first retry of a failed webhook delivery; it doubles on every further "
            "attempt (with random jitter) up to CONTROL_PLANE_WEBHOOK_BACKOFF_MAX_SECONDS."),
    Setting("CONTROL_PLANE_WEBHOOK_BACKOFF_MAX_SECONDS", "webhook_backoff_max_seconds", "300", _float_pos,
            "Longest delay between two delivery attempts of one webhook event."),
    Setting("CONTROL_PLANE_OUTBOX_RETENTION_DAYS", "outbox_retention_days", "30", _int_min(1),
            "Delivered webhook events older than this are pruned from the delivery log."),
    Setting("CONTROL_PLANE_WORKER_POLL_SECONDS", "worker_poll_seconds", "1", _float_pos,
            "How often the worker looks for due work."),
    Setting("CONTROL_PLANE_SWEEP_INTERVAL_SECONDS", "sweep_interval_seconds", "30", _float_pos,
            "How often the worker runs its sweeps (stale installations, backup age, rollout tick); "
            "pruning runs hourly."),
    Setting("CONTROL_PLANE_RELEASE_KEYS", "release_keys", "", _release_keys,
            'JSON object `{"key_id": "<base64 raw 32-byte Ed25519 public key>"}` of trusted '
            "release signing keys. Malformed: start-up fails."),
    Setting("CONTROL_PLANE_LOGIN_RATE_LIMIT", "login_rate_limit", "10", _int_min(1),
            "Failed login attempts (the login form, bearer tokens) per client address per minute; past "
            "it, wrong attempts get 429. Right credentials are never refused or counted."),
    Setting("CONTROL_PLANE_HEARTBEAT_SYNCHRONOUS_COMMIT", "heartbeat_synchronous_commit", "1", _bool,
            "`1` (default): a heartbeat is answered 200 only once PostgreSQL has flushed its transaction to "
            "disk, so a crash of the database server loses nothing acknowledged. `0` (opt-in, at your own "
            "risk): the heartbeat's transaction commits with `synchronous_commit = off` (`SET LOCAL`, that "
            "transaction only): the commit no longer waits for the disk, and a crash can forget the heartbeats "
            "acknowledged in its last moments (up to three times `wal_writer_delay`, 0.6 s by default), "
            "their alerts and job failures included. docs/operations.md, Durability."),
    Setting("CONTROL_PLANE_DB_LOCK_TIMEOUT_MS", "db_lock_timeout_ms", "1000", _int_min(1),
            "PostgreSQL: longest wait for a row lock in an agent request's transaction (heartbeats, job and "
            "restore reports; `SET LOCAL lock_timeout`). Past it that request alone answers 503 and the agent "
            "retries later; its neighbours are not held."),
    Setting("CONTROL_PLANE_DB_STATEMENT_TIMEOUT_MS", "db_statement_timeout_ms", "5000", _int_min(1),
            "PostgreSQL: longest run of one statement in an agent request's transaction "
            "(`SET LOCAL statement_timeout`); past it that request answers 503."),
    Setting("CONTROL_PLANE_AGENT_RATE_LIMIT", "agent_rate_limit", "600", _int_min(1),
            "Agent requests per installation per minute."),
    Setting("CONTROL_PLANE_TRUSTED_PROXIES", "trusted_proxies", "0", _int_min(0),
            "How many reverse proxies sit in front of the web side: their `X-Forwarded-For/-Proto/-Host` "
            "are trusted for that many hops (client address of the rate limits and audit log, HTTPS): "
            "the client is the address that many hops from the right of `X-Forwarded-For`. "
            "`0`: the peer address is the client (docs/security.md)."),
    Setting("CONTROL_PLANE_LOG_LEVEL", "log_level", "INFO", _log_level, "Log level."),
    Setting("CONTROL_PLANE_LOG_FORMAT", "log_format", "json", _log_format,
            "`json` (one object per line) or `text`."),
)


# single sign-on needs all three of these, or none (variable -> setting attribute)
OIDC_REQUIRED = {"CONTROL_PLANE_OIDC_ISSUER": "oidc_issuer", "CONTROL_PLANE_OIDC_CLIENT_ID": "oidc_client_id",
                 "CONTROL_PLANE_OIDC_CLIENT_SECRET": "oidc_client_secret"}


@dataclass(frozen=True)
class Settings:
    """The parsed settings; ``raw`` keeps nothing secret."""

    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def role_tokens(self) -> dict[str, str]:
        """Role -> token, only for the roles whose token is set and non-empty."""
        tokens = {"support": self.support_token, "ops": self.ops_token, "admin": self.admin_token}
        return {role: tok for role, tok in tokens.items() if tok}

    def oidc_enabled(self) -> bool:
        """Single sign-on is on when issuer, client id and client secret are all set."""
        return all(self.values[attr] for attr in OIDC_REQUIRED.values())

    def slo_limits(self) -> dict[str, float]:
        """SLO figure name -> limit, only for the SLOs that are checked."""
        limits = {
            "slo_p95_ms": self.slo_p95_ms_max,
            "slo_error_rate": self.slo_error_rate_max,
            "slo_webhook_retry_rate": self.slo_webhook_retry_rate_max,
        }
        return {k: v for k, v in limits.items() if v is not None}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse every setting from ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = env.get(s.env, s.default)
        try:
            values[s.attr] = s.parse(raw)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{s.env} is malformed: {exc}") from None
    missing = [name for name, attr in OIDC_REQUIRED.items() if not values[attr]]
    if 0 < len(missing) < len(OIDC_REQUIRED):
        raise ConfigError(f"single sign-on needs all of {', '.join(OIDC_REQUIRED)}; missing: {', '.join(missing)}")
    return Settings(values)
