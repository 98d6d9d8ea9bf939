"""The audit log screen (admin only): every mutating action from the panel and the API, with
when, who (a person's email or a role name), role, action, target, outcome and source address;
filterable (by who too), newest first, read-only."""
from __future__ import annotations

import json

from markupsafe import Markup

from cp.auth import ROLES
from cp.extensions import db
from cp.models import AuditLog
from cp.admin import formatters as fmt
from cp.admin.base import SecureModelView
from cp.admin.filters import ChoiceFilter, TextEqualFilter, date_filters


def _details(view, context, model, name):
    if not model.details:
        return ""
    text = json.dumps(model.details, sort_keys=True, ensure_ascii=False)
    if len(text) > 200:
        text = text[:200] + "…"
    return Markup("<code>{}</code>").format(text)


def _outcome(view, context, model, name):
    css = "badge-success" if model.outcome == "ok" else "badge-danger"
    return Markup('<span class="badge {}">{}</span>').format(css, model.outcome)


class ActorFilter(TextEqualFilter):
    """Who: an email matches in any case (emails are stored lower-cased); a role name as is."""

    def clean(self, value: str) -> str:
        value = super().clean(value)
        return value.lower() if "@" in value else value


class AuditLogView(SecureModelView):
    required_role = "admin"
    column_list = ("at", "actor", "role", "action", "target_type", "target_id", "outcome", "source_ip", "details")
    column_details_list = column_list
    column_labels = {"at": "When", "actor": "Who", "target_type": "Target type", "target_id": "Target", "source_ip": "Source IP"}
    column_sortable_list = ("at",)
    column_default_sort = [("at", True), ("id", True)]
    column_filters = [
        ActorFilter(AuditLog.actor, "Actor", 255),
        TextEqualFilter(AuditLog.action, "Action", 64),
        ChoiceFilter(AuditLog.role, "Role", (*ROLES, "cli")),
        TextEqualFilter(AuditLog.outcome, "Outcome", 32),
        TextEqualFilter(AuditLog.target_type, "Target type", 64),
        TextEqualFilter(AuditLog.target_id, "Target", 255),
        TextEqualFilter(AuditLog.source_ip, "Source IP", 64),
        *date_filters(AuditLog.at, "When"),
    ]
    column_formatters = {"at": fmt.timestamp, "details": _details, "outcome": _outcome}
    count_cap = 10_000


def register(admin) -> None:
    admin.add_view(AuditLogView(AuditLog, db, name="Audit log", endpoint="audit_log"))
