"""Admin screen of the alert webhook's delivery log (admin only).

Every event written by an alert that opened or resolved, with its attempts, last error, last
and next attempt times. Dead events (given up after ``CONTROL_PLANE_WEBHOOK_MAX_ATTEMPTS``)
are sent again with the bulk action "retry delivery"; later events of the same alert wait for
them, so that a receiver never sees an alert resolve before it opened.
"""
from __future__ import annotations

from flask_admin.actions import action
from markupsafe import Markup

from cp.background import outbox
from cp.extensions import db
from cp.models import OUTBOX_STATUSES, OutboxEvent
from cp.admin import formatters as fmt
from cp.admin.base import SecureModelView
from cp.admin.filters import ChoiceFilter, date_filters

EVENTS = ("opened", "resolved")


def _status(view, context, model, name):
    css = {"delivered": "badge-success", "dead": "badge-danger"}.get(model.status, "badge-warning")
    return Markup('<span class="badge {}">{}</span>').format(css, model.status)


def _alert(view, context, model, name):
    payload = model.payload or {}
    alert = payload.get("alert") or {}
    return Markup("#{} {} · {} · {}").format(model.alert_id, alert.get("instance_id", "?"), alert.get("source", "?"),
                                            alert.get("level", "?"))


class OutboxView(SecureModelView):
    required_role = "admin"
    column_list = ("id", "alert_id", "event", "status", "attempts", "last_error", "last_attempt_at",
                   "next_attempt_at", "created_at", "delivered_at")
    column_details_list = ("id", "alert_id", "event", "status", "attempts", "last_error", "last_attempt_at",
                           "next_attempt_at", "created_at", "delivered_at", "payload")
    column_labels = {"alert_id": "Alert", "last_error": "Last error", "last_attempt_at": "Last attempt",
                     "next_attempt_at": "Next attempt", "created_at": "Created", "delivered_at": "Delivered"}
    column_sortable_list = ("id", "created_at")
    column_default_sort = [("id", True)]
    column_filters = [
        ChoiceFilter(OutboxEvent.status, "Status", OUTBOX_STATUSES),
        ChoiceFilter(OutboxEvent.event, "Event", EVENTS),
        *date_filters(OutboxEvent.created_at, "Created"),
    ]
    column_formatters = {
        "alert_id": _alert,
        "status": _status,
        "last_error": fmt.preview,
        "last_attempt_at": fmt.timestamp,
        "next_attempt_at": fmt.timestamp,
        "created_at": fmt.timestamp,
        "delivered_at": fmt.timestamp,
    }
    count_cap = 10_000
    action_roles = {"retry": "admin"}

    @action("retry", "Retry delivery",
            "Send the selected dead events again (with a fresh attempt budget)? Others are left alone.")
    def action_retry(self, ids):
        self.run_action("outbox.retry", ids, lambda i: f"{outbox.retry(i)} dead event(s) queued for delivery.",
                        "outbox_event")


def register(admin) -> None:
    admin.add_view(OutboxView(OutboxEvent, db, name="Webhook deliveries", endpoint="outbox"))
