"""Admin screens of the fleet: installations, alerts, job failures."""
from __future__ import annotations

from flask_admin.actions import action

from .. import alerts as alert_domain
from ..extensions import db
from ..models import Alert, Installation, JobFailure
from .base import SecureModelView, current_role


class InstallationView(SecureModelView):
    column_list = ("instance_id", "client", "domain", "health", "version", "release_channel", "backup_status",
                   "last_seen_at")
    column_searchable_list = ("instance_id", "client", "domain")
    column_filters = ("health", "release_channel", "version", "backup_status")
    column_default_sort = ("last_seen_at", True)


class AlertView(SecureModelView):
    column_list = ("installation", "level", "source", "message", "opened_at", "occurrences", "acknowledged_at",
                   "resolved_at")
    column_filters = ("level", "source")
    column_default_sort = ("opened_at", True)
    action_roles = {"acknowledge": "ops", "resolve": "ops"}

    @action("acknowledge", "Acknowledge")
    def action_acknowledge(self, ids):
        self.run_action("alert.acknowledge", ids,
                        lambda i: f"{alert_domain.bulk_acknowledge(i, by=current_role())} alert(s) acknowledged.",
                        "alert")

    @action("resolve", "Resolve", "Resolve the selected alerts?")
    def action_resolve(self, ids):
        self.run_action("alert.resolve", ids,
                        lambda i: f"{alert_domain.bulk_resolve(i, by=current_role())} alert(s) resolved.", "alert")


class JobFailureView(SecureModelView):
    column_list = ("installation", "queue", "message", "first_seen_at", "last_seen_at", "occurrences", "resolved_at")
    column_filters = ("queue",)
    column_default_sort = ("last_seen_at", True)
    action_roles = {"resolve": "ops"}

    @action("resolve", "Resolve", "Resolve the selected job failures?")
    def action_resolve(self, ids):
        self.run_action("job_failure.resolve", ids,
                        lambda i: f"{alert_domain.bulk_resolve_job_failures(i, by=current_role())} failure(s) resolved.",
                        "job_failure")


def register(admin) -> None:
    admin.add_view(InstallationView(Installation, db, name="Installations", endpoint="installations"))
    admin.add_view(AlertView(Alert, db, name="Alerts", endpoint="alerts"))
    admin.add_view(JobFailureView(JobFailure, db, name="Job failures", endpoint="job_failures"))
