"""Admin screens of the fleet: installations, alerts, job failures.

Built for fleet scale (100,000 installations, a million alerts): every list is paginated in
SQL, sorted only on indexed columns, filtered with the indexed conditions of
``cp.admin.filters``, searched through a sub-select on ``installation_search`` (instance id, client,
domain; never a join on the big table), the installation of each row is eager-loaded with the
page (no N+1), and the alert/failure totals stop counting at ``count_cap``.

Support reads; ops acknowledges and resolves (bulk actions, audited); admin may also edit an
installation's client, domain and channel (audited with the before/after values). Alerts and
job failures are never edited by hand.
"""
from __future__ import annotations

from flask import g
from flask_admin.actions import action
from markupsafe import Markup
from sqlalchemy import func, select
from wtforms import validators

from cp.fleet import alerts as alert_domain
from cp.fleet import queries as fleet
from cp.delivery import restores
from cp.delivery.rollouts import on_channel_change
from cp.extensions import db
from cp.timeutil import utcnow
from cp.models import (
    ALERT_LEVELS,
    ALERT_SOURCES,
    BACKUP_STATUS_VALUES,
    HEALTH_VALUES,
    Alert,
    Installation,
    InstallationEvent,
    JobFailure,
)
from cp.admin import formatters as fmt
from cp.auth import actor_label
from cp.admin.base import SecureModelView
from cp.admin.filters import (
    ChoiceFilter,
    InstallationFilter,
    NullStatusFilter,
    StaleFilter,
    TextEqualFilter,
    YesNoSetFilter,
    date_filters,
)

LIST_COUNT_CAP = 10_000
SEARCH_HINT = "instance id, client or domain"  # what ``fleet.installation_ids_matching`` matches


class InstallationView(SecureModelView):
    column_list = ("instance_id", "client", "domain", "health", "version", "release_channel", "backup_status",
                   "last_seen_at", "open_alerts")
    column_details_list = ("instance_id", "client", "domain", "health", "version", "release_channel",
                           "backup_status", "last_backup_at", "slo_p95_ms", "slo_error_rate", "slo_webhook_retry_rate",
                           "first_seen_at", "last_seen_at", "heartbeats_total")
    column_labels = {"release_channel": "Channel", "backup_status": "Backup", "last_seen_at": "Last seen",
                     "instance_id": "Instance", "open_alerts": "Open alerts"}
    column_sortable_list = ("instance_id", "client", "health", "version", "release_channel", "last_seen_at",
                            "first_seen_at")
    column_default_sort = [("last_seen_at", True), ("id", True)]
    search_hint = SEARCH_HINT
    column_filters = [
        ChoiceFilter(Installation.health, "Health", HEALTH_VALUES),
        TextEqualFilter(Installation.release_channel, "Channel", 64),
        TextEqualFilter(Installation.version, "Version", 64),
        ChoiceFilter(Installation.backup_status, "Backup", BACKUP_STATUS_VALUES),
        StaleFilter(),
        *date_filters(Installation.last_seen_at, "Last seen"),
        *date_filters(Installation.first_seen_at, "First seen"),
    ]
    column_formatters = {
        "instance_id": fmt.instance_link,
        "health": fmt.badge("health"),
        "backup_status": fmt.badge("backup"),
        "last_seen_at": lambda v, c, m, n: InstallationView.last_seen(m),
        "first_seen_at": fmt.timestamp,
        "last_backup_at": fmt.timestamp,
        "open_alerts": lambda v, c, m, n: g.get("cp_open_alerts", {}).get(m.id, 0),
    }
    # admin edits what the agent does not own: who the client is, its domain, its channel
    allow_edit = True
    form_columns = ("client", "domain", "release_channel")
    form_args = {
        "client": {"validators": [validators.Optional(), validators.Length(max=255)]},
        "domain": {"validators": [validators.Optional(), validators.Length(max=255)]},
        "release_channel": {"label": "Channel", "validators": [validators.Optional(), validators.Length(min=1, max=64)]},
    }
    audit_target_type = "installation"

    @staticmethod
    def last_seen(inst: Installation):
        if fleet.is_stale(inst.last_seen_at):
            return Markup('{} <span class="badge badge-warning">stale</span>').format(fmt.ts(inst.last_seen_at))
        return fmt.ts(inst.last_seen_at)

    def search_condition(self, term: str):
        # instance id, client or domain contains ``term``: the same rule as ``/`` and the API
        return Installation.id.in_(fleet.installation_ids_matching(term))

    def get_list(self, *args, **kwargs):
        count, data = super().get_list(*args, **kwargs)
        ids = [inst.id for inst in data] if isinstance(data, list) else []
        counts: dict[int, int] = {}
        if ids:  # one grouped query for the page, on the partial index of open alerts
            counts = dict(db.session.execute(
                select(Alert.installation_id, func.count(Alert.id))
                .where(Alert.installation_id.in_(ids), Alert.resolved_at.is_(None))
                .group_by(Alert.installation_id)).all())
        g.cp_open_alerts = counts
        return count, data

    def on_model_change(self, form, model, is_created):
        for attr in ("client", "domain", "release_channel"):  # blank means "unknown", stored as NULL
            value = getattr(model, attr)
            if isinstance(value, str):
                value = value.strip()
                setattr(model, attr, value or None)
        old_channel = g.get("cp_admin_before", {}).get("release_channel")
        if not is_created and old_channel != model.release_channel:
            channel_changed(model, old_channel)
        super().on_model_change(form, model, is_created)  # last: the audit entry shows what is stored

    # restore verifications (cp.delivery.restores): admin only, one per selected installation, due now
    action_roles = {"schedule_restore": "admin"}

    @action("schedule_restore", "Schedule restore verification",
            "Schedule a restore verification, due now, on every selected installation?")
    def action_schedule_restore(self, ids):
        self.run_action("restore.schedule", ids,
                        lambda i: f"{len(restores.schedule_for_installations(i, by=actor_label()))} "
                                  "restore verification(s) scheduled.", "installation")


def channel_changed(inst: Installation, old_channel: str | None) -> None:
    """A channel edited by hand is a change like one reported by a heartbeat: it goes to the
    installation's history and joins/leaves open rollouts (``cp.delivery.rollouts.on_channel_change``)."""
    db.session.execute(select(Installation.id).where(Installation.id == inst.id).with_for_update())
    now = utcnow()
    db.session.add(InstallationEvent(installation_id=inst.id, field="release_channel", old_value=old_channel,
                                     new_value=inst.release_channel, at=now))
    on_channel_change(inst.id, old_channel, inst.release_channel, inst.version, now)


class InstallationRowsView(SecureModelView):
    """A screen of rows that each belong to an installation (alerts, job failures): searched by
    their installation, with the rule of the installations screen, and counted up to
    ``LIST_COUNT_CAP``."""

    search_hint = SEARCH_HINT
    count_cap = LIST_COUNT_CAP

    def search_condition(self, term: str):
        return self.model.installation_id.in_(fleet.installation_ids_matching(term))


class AlertView(InstallationRowsView):
    column_select_related_list = (Alert.installation,)  # eager-loaded with the page: no N+1
    column_list = ("installation", "level", "source", "message", "opened_at", "last_seen_at", "occurrences",
                   "status")
    column_details_list = ("id", "installation", "level", "source", "message", "opened_at", "last_seen_at",
                           "occurrences", "acknowledged_at", "acknowledged_by", "resolved_at", "resolved_by")
    column_labels = {"installation": "Instance", "opened_at": "Opened", "last_seen_at": "Last seen",
                     "occurrences": "×"}
    column_sortable_list = ("opened_at",)
    column_default_sort = [("opened_at", True), ("id", True)]
    column_filters = [
        NullStatusFilter(Alert.resolved_at, "Status"),
        ChoiceFilter(Alert.level, "Level", ALERT_LEVELS),
        ChoiceFilter(Alert.source, "Source", ALERT_SOURCES),
        YesNoSetFilter(Alert.acknowledged_at, "Acknowledged"),
        InstallationFilter(Alert.installation_id),
        *date_filters(Alert.opened_at, "Opened"),
    ]
    column_formatters = {
        "installation": fmt.installation_link,
        "level": fmt.badge("level"),
        "message": fmt.preview,
        "opened_at": fmt.timestamp,
        "last_seen_at": fmt.timestamp,
        "acknowledged_at": fmt.timestamp,
        "resolved_at": fmt.timestamp,
        "status": fmt.alert_status,
    }
    action_roles = {"acknowledge": "ops", "resolve": "ops"}

    @action("acknowledge", "Acknowledge")
    def action_acknowledge(self, ids):
        self.run_action("alert.acknowledge", ids,
                        lambda i: f"{alert_domain.bulk_acknowledge(i, by=actor_label())} alert(s) acknowledged.",
                        "alert")

    @action("resolve", "Resolve", "Resolve the selected alerts? An agent alert still reported opens again.")
    def action_resolve(self, ids):
        self.run_action("alert.resolve", ids,
                        lambda i: f"{alert_domain.bulk_resolve(i, by=actor_label())} alert(s) resolved.", "alert")


class JobFailureView(InstallationRowsView):
    column_select_related_list = (JobFailure.installation,)
    column_list = ("installation", "queue", "message", "first_seen_at", "last_seen_at", "occurrences", "status")
    column_details_list = ("id", "installation", "queue", "message", "first_seen_at", "last_seen_at",
                           "occurrences", "resolved_at", "resolved_by")
    column_labels = {"installation": "Instance", "first_seen_at": "First seen", "last_seen_at": "Last seen",
                     "occurrences": "×"}
    column_sortable_list = ("last_seen_at",)
    column_default_sort = [("last_seen_at", True), ("id", True)]
    column_filters = [
        NullStatusFilter(JobFailure.resolved_at, "Status"),
        TextEqualFilter(JobFailure.queue, "Queue"),
        InstallationFilter(JobFailure.installation_id),
        *date_filters(JobFailure.last_seen_at, "Last seen"),
    ]
    column_formatters = {
        "installation": fmt.installation_link,
        "message": fmt.preview,
        "first_seen_at": fmt.timestamp,
        "last_seen_at": fmt.timestamp,
        "resolved_at": fmt.timestamp,
        "status": fmt.failure_status,
    }
    action_roles = {"resolve": "ops"}

    @action("resolve", "Resolve", "Resolve the selected job failures?")
    def action_resolve(self, ids):
        self.run_action("job_failure.resolve", ids,
                        lambda i: f"{alert_domain.bulk_resolve_job_failures(i, by=actor_label())} failure(s) resolved.",
                        "job_failure")


def register(admin) -> None:
    admin.add_view(InstallationView(Installation, db, name="Installations", endpoint="installations"))
    admin.add_view(AlertView(Alert, db, name="Alerts", endpoint="alerts"))
    admin.add_view(JobFailureView(JobFailure, db, name="Job failures", endpoint="job_failures"))
