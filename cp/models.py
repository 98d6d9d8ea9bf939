"""SQLAlchemy models (SQLAlchemy 2.0 typed mappings).

Every timestamp is timezone-aware UTC (``UTCDateTime``). Enumerations are plain strings
checked by the schemas (``cp.agent_api.schemas``, ``cp.api.schemas``); their allowed values
are declared once here as tuples. The schema itself is created only by Alembic
(``flask --app cp db upgrade``).
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cp.extensions import db
from cp.timeutil import as_utc, utcnow

# --- enumerations (one place) ---------------------------------------------------------------
HEALTH_VALUES = ("ok", "degraded", "down")
BACKUP_STATUS_VALUES = ("ok", "running", "failed", "missing")
ALERT_LEVELS = ("info", "warning", "critical")
ALERT_SOURCES = ("agent", "slo", "backup", "heartbeat", "restore", "rollout")
# Sources whose alerts a heartbeat re-evaluates (opened/kept/resolved from what it reports).
HEARTBEAT_MANAGED_SOURCES = ("agent", "slo", "backup", "heartbeat")
ROLES = ("support", "ops", "admin")  # each includes the ones before it (``cp.auth.role_allows``)
ACTOR_LENGTH = 255  # a field naming who did something holds an email or a role name

ROLLOUT_STATUSES = ("active", "paused", "completed", "cancelled")
JOB_STATUSES = ("pending", "in_progress", "succeeded", "failed", "cancelled")
JOB_UNFINISHED = ("pending", "in_progress")
JOB_FINISHED = ("succeeded", "failed", "cancelled")
RESTORE_STATUSES = ("scheduled", "passed", "failed")
PLUGIN_REQUEST_STATUSES = ("pending", "approved", "rejected")
OUTBOX_STATUSES = ("pending", "delivered", "dead")


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        value = as_utc(value)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return as_utc(value)


# ids of tables that grow without bound (history, counter rows): never reused, more than an
# integer holds at a fleet's rate; SQLite keeps its INTEGER row id (the only auto-assigned key)
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


def _now() -> datetime:
    return utcnow()


def partial_index(name: str, *columns: str, where: str, **kw: Any) -> Index:
    """An index over the rows that match ``where`` only, the same on PostgreSQL and SQLite."""
    return Index(name, *columns, postgresql_where=text(where), sqlite_where=text(where), **kw)


class Installation(db.Model):
    __tablename__ = "installations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(128), unique=True)
    domain: Mapped[Optional[str]] = mapped_column(String(255))
    client: Mapped[Optional[str]] = mapped_column(String(255))
    version: Mapped[Optional[str]] = mapped_column(String(64))
    release_channel: Mapped[Optional[str]] = mapped_column(String(64))
    health: Mapped[Optional[str]] = mapped_column(String(16))
    backup_status: Mapped[Optional[str]] = mapped_column(String(16))
    last_backup_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    slo_p95_ms: Mapped[Optional[float]] = mapped_column(Float)
    slo_error_rate: Mapped[Optional[float]] = mapped_column(Float)
    slo_webhook_retry_rate: Mapped[Optional[float]] = mapped_column(Float)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    heartbeats_total: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    alerts: Mapped[list["Alert"]] = relationship(back_populates="installation", lazy="dynamic")
    job_failures: Mapped[list["JobFailure"]] = relationship(back_populates="installation", lazy="dynamic")

    __table_args__ = (
        Index("ix_installations_last_seen", "last_seen_at", "id"),
        Index("ix_installations_health", "health", "last_seen_at"),
        Index("ix_installations_channel", "release_channel", "last_seen_at"),
        Index("ix_installations_version", "version", "last_seen_at"),
        # No index for the fleet search (?q=) here: every heartbeat updates last_seen_at, an
        # indexed column, so each update is non-HOT and inserts into every index of this table.
        # The search's trigram indexes live on ``installation_search`` (migration 0008).
    )

    def __str__(self) -> str:
        return self.instance_id


SEARCH_COLUMNS = ("instance_id", "client", "domain")


class InstallationSearch(db.Model):
    """What the fleet search (``?q=``) reads: instance id, client and domain of each installation.

    Kept off ``installations`` so the heartbeat's row updates do not pay for the trigram
    indexes. Written only by database triggers on ``installations`` (migration 0008): a row when
    an installation is inserted, and again when its client or domain (or instance id) actually
    changes; deleted with the installation (``ON DELETE CASCADE``). Never write it from the
    application.
    """

    __tablename__ = "installation_search"

    installation_id: Mapped[int] = mapped_column(ForeignKey("installations.id", ondelete="CASCADE"),
                                                 primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(128))
    client: Mapped[Optional[str]] = mapped_column(String(255))
    domain: Mapped[Optional[str]] = mapped_column(String(255))

    __table_args__ = (
        # substring, case-insensitive (ILIKE '%...%'): pg_trgm GIN indexes on PostgreSQL, with
        # GIN's default pending list (the table is written rarely); plain indexes on SQLite
        *(Index(f"ix_installation_search_{col}_trgm", col, postgresql_using="gin",
                postgresql_ops={col: "gin_trgm_ops"})
          for col in SEARCH_COLUMNS),
    )


class Alert(db.Model):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    installation_id: Mapped[int] = mapped_column(ForeignKey("installations.id", ondelete="CASCADE"))
    level: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    # Identity of an open alert on its installation: hash of (level, message) for agent alerts,
    # a stable key such as "slo:slo_p95_ms" for the alerts the control plane derives itself.
    fingerprint: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    occurrences: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    acknowledged_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    acknowledged_by: Mapped[Optional[str]] = mapped_column(String(ACTOR_LENGTH))
    resolved_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    resolved_by: Mapped[Optional[str]] = mapped_column(String(ACTOR_LENGTH))

    installation: Mapped[Installation] = relationship(back_populates="alerts")

    __table_args__ = (
        partial_index("uq_alerts_open_fingerprint", "installation_id", "fingerprint", unique=True,
                      where="resolved_at IS NULL"),
        Index("ix_alerts_opened", "opened_at", "id"),
        Index("ix_alerts_installation_opened", "installation_id", "opened_at"),
        partial_index("ix_alerts_open_opened", "opened_at", where="resolved_at IS NULL"),
        partial_index("ix_alerts_open_installation", "installation_id", where="resolved_at IS NULL"),
    )

    @property
    def instance_id(self) -> str:
        return self.installation.instance_id

    @property
    def status(self) -> str:
        return "resolved" if self.resolved_at else "open"


class JobFailure(db.Model):
    __tablename__ = "job_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    installation_id: Mapped[int] = mapped_column(ForeignKey("installations.id", ondelete="CASCADE"))
    queue: Mapped[str] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    occurrences: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    resolved_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    resolved_by: Mapped[Optional[str]] = mapped_column(String(ACTOR_LENGTH))

    installation: Mapped[Installation] = relationship(back_populates="job_failures")

    __table_args__ = (
        partial_index("uq_job_failures_open_fingerprint", "installation_id", "fingerprint", unique=True,
                      where="resolved_at IS NULL"),
        Index("ix_job_failures_last_seen", "last_seen_at", "id"),
        Index("ix_job_failures_installation_last_seen", "installation_id", "last_seen_at"),
    )

    @property
    def instance_id(self) -> str:
        return self.installation.instance_id


class InstallationEvent(db.Model):
    """A change of an installation's version, channel, health or backup status.

    On PostgreSQL partitioned by ``at``, one partition per month (migration 0011,
    ``cp.background.partitions``): the primary key includes ``at``."""

    __tablename__ = "installation_events"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    installation_id: Mapped[int] = mapped_column(ForeignKey("installations.id", ondelete="CASCADE"))
    field: Mapped[str] = mapped_column(String(32))
    old_value: Mapped[Optional[str]] = mapped_column(String(255))
    new_value: Mapped[Optional[str]] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now, primary_key=True)

    installation: Mapped[Installation] = relationship()

    __table_args__ = (Index("ix_installation_events_installation_at", "installation_id", "at"),)


class SloSample(db.Model):
    """One point per installation per 5 minutes: the last figures reported in that bucket.

    On PostgreSQL partitioned by ``bucket``, one partition per day (migration 0011,
    ``cp.background.partitions``): the primary key includes ``bucket``."""

    __tablename__ = "slo_samples"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    installation_id: Mapped[int] = mapped_column(ForeignKey("installations.id", ondelete="CASCADE"))
    bucket: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    slo_p95_ms: Mapped[Optional[float]] = mapped_column(Float)
    slo_error_rate: Mapped[Optional[float]] = mapped_column(Float)
    slo_webhook_retry_rate: Mapped[Optional[float]] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("installation_id", "bucket", name="uq_slo_samples_installation_bucket"),
        Index("ix_slo_samples_bucket", "bucket"),
    )


class Release(db.Model):
    """A signed artifact: a core release (``plugin`` NULL) or a plugin release."""

    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plugin: Mapped[Optional[str]] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    channel: Mapped[Optional[str]] = mapped_column(String(64))
    manifest: Mapped[dict] = mapped_column(JSON)
    signature: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    created_by: Mapped[Optional[str]] = mapped_column(String(ACTOR_LENGTH))

    __table_args__ = (
        partial_index("uq_releases_core_version", "version", unique=True, where="plugin IS NULL"),
        partial_index("uq_releases_plugin_version", "plugin", "version", unique=True, where="plugin IS NOT NULL"),
        Index("ix_releases_created", "created_at", "id"),
    )

    @property
    def kind(self) -> str:
        return "plugin" if self.plugin else "core"

    def __str__(self) -> str:
        return f"{self.plugin} {self.version}" if self.plugin else self.version


class Rollout(db.Model):
    """A release rolled out in batches over a set of installations (core or plugin)."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "core" | "plugin"
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    channel: Mapped[Optional[str]] = mapped_column(String(64))
    plugin: Mapped[Optional[str]] = mapped_column(String(128))
    batch_size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="active")
    current_batch: Mapped[int] = mapped_column(Integer, default=1)
    batches: Mapped[int] = mapped_column(Integer, default=0)
    targets: Mapped[int] = mapped_column(Integer, default=0)
    # installations on the channel left out at creation because they already run a newer version
    skipped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_failures: Mapped[Optional[int]] = mapped_column(Integer)
    max_failure_ratio: Mapped[Optional[float]] = mapped_column(Float)
    auto_advance_success_ratio: Mapped[Optional[float]] = mapped_column(Float)
    auto_advance_soak_minutes: Mapped[Optional[float]] = mapped_column(Float)
    allow_downgrade: Mapped[bool] = mapped_column(Boolean, default=False)
    paused_reason: Mapped[Optional[str]] = mapped_column(Text)
    batch_opened_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    created_by: Mapped[Optional[str]] = mapped_column(String(ACTOR_LENGTH))
    completed_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())

    release: Mapped[Release] = relationship()

    __table_args__ = (
        Index("ix_rollouts_created", "created_at", "id"),
        Index("ix_rollouts_status", "status"),
        # at most one open (active or paused) rollout per channel, and per plugin
        partial_index("uq_rollouts_open_core_channel", "channel", unique=True,
                      where="kind = 'core' AND status IN ('active', 'paused')"),
        partial_index("uq_rollouts_open_plugin", "plugin", unique=True,
                      where="kind = 'plugin' AND status IN ('active', 'paused')"),
    )


class Job(db.Model):
    """One installation's update or plugin job, from a rollout batch or a plugin approval."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "update" | "plugin"
    rollout_id: Mapped[Optional[int]] = mapped_column(ForeignKey("rollouts.id"))
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"))
    installation_id: Mapped[int] = mapped_column(ForeignKey("installations.id", ondelete="CASCADE"))
    batch: Mapped[Optional[int]] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    message: Mapped[Optional[str]] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    fetched_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)

    rollout: Mapped[Optional[Rollout]] = relationship()
    release: Mapped[Release] = relationship()
    installation: Mapped[Installation] = relationship()

    __table_args__ = (
        Index("ix_jobs_installation_kind_status", "installation_id", "kind", "status"),
        Index("ix_jobs_rollout_batch_status", "rollout_id", "batch", "status"),
        # one job per installation per rollout (jobs without a rollout are not constrained)
        UniqueConstraint("rollout_id", "installation_id", name="uq_jobs_rollout_installation"),
    )


class RestoreVerification(db.Model):
    __tablename__ = "restore_verifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    installation_id: Mapped[int] = mapped_column(ForeignKey("installations.id", ondelete="CASCADE"))
    backup_id: Mapped[Optional[str]] = mapped_column(String(255))
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    status: Mapped[str] = mapped_column(String(16), default="scheduled")
    duration_s: Mapped[Optional[float]] = mapped_column(Float)
    message: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    created_by: Mapped[Optional[str]] = mapped_column(String(ACTOR_LENGTH))
    reported_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())

    installation: Mapped[Installation] = relationship()

    __table_args__ = (
        Index("ix_restore_verifications_installation_status", "installation_id", "status"),
        Index("ix_restore_verifications_created", "created_at", "id"),
    )


class PluginRequest(db.Model):
    __tablename__ = "plugin_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    installation_id: Mapped[int] = mapped_column(ForeignKey("installations.id", ondelete="CASCADE"))
    plugin: Mapped[str] = mapped_column(String(128))
    version: Mapped[Optional[str]] = mapped_column(String(64))
    reason: Mapped[Optional[str]] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    decision_reason: Mapped[Optional[str]] = mapped_column(Text)
    decided_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    decided_by: Mapped[Optional[str]] = mapped_column(String(ACTOR_LENGTH))
    job_id: Mapped[Optional[int]] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)

    installation: Mapped[Installation] = relationship()
    job: Mapped[Optional[Job]] = relationship()  # the install job of an approved request

    __table_args__ = (
        Index("ix_plugin_requests_created", "created_at", "id"),
        Index("ix_plugin_requests_installation_plugin", "installation_id", "plugin", "status"),
        # at most one open (pending) request per installation and plugin (migration 0004)
        partial_index("uq_plugin_requests_pending", "installation_id", "plugin", unique=True,
                      where="status = 'pending'"),
        Index("ix_plugin_requests_status_created", "status", "created_at"),
    )


class InstallationPlugin(db.Model):
    """A plugin an installation is approved for, and the version it runs (NULL until installed)."""

    __tablename__ = "installation_plugins"

    installation_id: Mapped[int] = mapped_column(
        ForeignKey("installations.id", ondelete="CASCADE"), primary_key=True)
    plugin: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[Optional[str]] = mapped_column(String(64))
    approved_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)

    installation: Mapped[Installation] = relationship()

    __table_args__ = (Index("ix_installation_plugins_plugin_version", "plugin", "version"),)


class OutboxEvent(db.Model):
    """An alert event waiting to be (or already) delivered to the alert webhook."""

    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(Integer)
    event: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    last_error: Mapped[Optional[str]] = mapped_column(Text)
    last_attempt_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    delivered_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())

    __table_args__ = (
        partial_index("ix_outbox_pending", "next_attempt_at", "id", where="status = 'pending'"),
        Index("ix_outbox_alert", "alert_id", "id"),
        # the delivery log's status filter, the metrics' counts and the pruning of old deliveries
        Index("ix_outbox_status_created", "status", "created_at"),
    )


class AuditLog(db.Model):
    """Every mutating action from the panel or the API: who (role), what, on what, outcome."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    role: Mapped[Optional[str]] = mapped_column(String(32))
    actor: Mapped[Optional[str]] = mapped_column(String(ACTOR_LENGTH))  # an email, or a role name
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[Optional[str]] = mapped_column(String(64))
    target_id: Mapped[Optional[str]] = mapped_column(String(255))
    outcome: Mapped[str] = mapped_column(String(32))
    source_ip: Mapped[Optional[str]] = mapped_column(String(64))
    details: Mapped[Optional[dict]] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_audit_log_at", "at", "id"),
        # the audit screen's and /api/audit's filters, newest first
        Index("ix_audit_log_action_at", "action", "at"),
        Index("ix_audit_log_target", "target_type", "target_id"),
        Index("ix_audit_log_actor_at", "actor", "at"),
    )


class CounterDelta(db.Model):
    """Insert-only parts of the exact counts the API and the panel show (alerts by status, level,
    source and acknowledgement; a rollout's jobs by batch and status; installations by health
    and channel): the count of a key is the sum of its rows' ``delta``.

    Written only by database triggers on ``alerts``, ``jobs`` and ``installations`` (migration
    0010), in the transaction that changes those rows; folded into one row per key by the worker's sweep
    (``cp.counters.compact``). Never write it from the application; read it through
    ``cp.counters``.
    """

    __tablename__ = "counter_deltas"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    counter: Mapped[str] = mapped_column(String(16))  # "alerts" | "jobs" | "installations"
    scope_id: Mapped[int] = mapped_column(BigInteger)  # jobs: the rollout id; alerts: 0
    batch: Mapped[int] = mapped_column(Integer)  # jobs: the batch (0 for none); alerts: 0
    # jobs: the job status; alerts: open | resolved; installations: health ("" when unknown)
    status: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(16))  # alerts: level; others: ""
    source: Mapped[str] = mapped_column(String(16))  # alerts: source; others: ""
    acknowledged: Mapped[bool] = mapped_column(Boolean)  # alerts: acknowledged_at is set; others: false
    channel: Mapped[str] = mapped_column(String(64))  # installations: release channel; others: ""
    delta: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_counter_deltas_key", "counter", "scope_id", "batch", "status", "level", "source",
              "acknowledged", "channel", "delta"),
    )


class RateLimitBucket(db.Model):
    """Fixed-window request counters shared by every process (login and agent limits): one row
    per key, restarted in place when a new window begins (``cp.web.limits``)."""

    __tablename__ = "rate_limit_buckets"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime())
    count: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_rate_limit_buckets_window", "window_start"),)


class AgentNonce(db.Model):
    """Signatures of timestamped agent requests seen in the replay window."""

    __tablename__ = "agent_nonces"

    signature: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)

    __table_args__ = (Index("ix_agent_nonces_seen", "seen_at"),)


class LoginSession(db.Model):
    """A person's login: the session cookie carries a random id whose SHA-256 is the key here.
    The user loader checks the row on every request; logout deletes it, so a copied cookie
    stops working (``cp.web.security``)."""

    __tablename__ = "login_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(64))  # a role name, or ``user:<id>`` for a person
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_login_sessions_expires", "expires_at"),)


class User(db.Model):
    """A named person with a role. ``email`` is stored lower-cased (``cp.people``), so it is
    unique case-insensitively. Never deleted: ``active = False`` ends their sessions (the
    ``session_epoch`` every session carries is bumped) and stops their tokens."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    created_by: Mapped[Optional[str]] = mapped_column(String(ACTOR_LENGTH))
    last_seen_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())

    tokens: Mapped[list["ApiToken"]] = relationship(back_populates="user", order_by="ApiToken.id")

    def __str__(self) -> str:
        return self.email


class ApiToken(db.Model):
    """A person's personal API token: only the SHA-256 of the secret is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    expires_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    last_used_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())
    revoked_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship(back_populates="tokens")

    __table_args__ = (Index("ix_api_tokens_user", "user_id", "created_at"),)

    def __str__(self) -> str:
        return self.name
