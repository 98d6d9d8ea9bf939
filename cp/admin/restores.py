"""Admin screen of restore verifications: status, duration, backup id, message; filters.

Read-only, for ``cp.delivery.restores.READ_ROLE`` (admin), the same role as
``GET /api/restores`` and the installation page's restore history; verifications are scheduled from the Installations screen (bulk action
"schedule restore verification", admin) or ``POST /api/restores/schedule``, and reported by
agents.
"""
from __future__ import annotations

from cp.delivery.restores import READ_ROLE
from cp.extensions import db
from cp.models import RESTORE_STATUSES, RestoreVerification
from cp.admin import formatters as fmt
from cp.admin.base import SecureModelView
from cp.admin.filters import ChoiceFilter, InstallationFilter, TextEqualFilter, date_filters


def _duration(view, context, model, name):
    value = model.duration_s
    return "—" if value is None else f"{value:g} s"


class RestoreVerificationView(SecureModelView):
    required_role = READ_ROLE
    column_list = ("installation", "status", "scheduled_for", "backup_id", "duration_s", "message", "reported_at",
                   "created_by")
    column_details_list = ("id", "installation", "status", "backup_id", "scheduled_for", "duration_s", "message",
                           "created_at", "created_by", "reported_at")
    column_labels = {"installation": "Instance", "backup_id": "Backup id", "duration_s": "Duration",
                     "scheduled_for": "Scheduled for", "reported_at": "Reported", "created_at": "Created",
                     "created_by": "By"}
    column_sortable_list = ("scheduled_for", "created_at", "reported_at")
    column_default_sort = [("created_at", True), ("id", True)]
    column_select_related_list = (RestoreVerification.installation,)
    column_filters = [
        ChoiceFilter(RestoreVerification.status, "Status", RESTORE_STATUSES),
        InstallationFilter(RestoreVerification.installation_id),
        TextEqualFilter(RestoreVerification.backup_id, "Backup id"),
        *date_filters(RestoreVerification.scheduled_for, "Scheduled for"),
        *date_filters(RestoreVerification.reported_at, "Reported"),
    ]
    column_formatters = {
        "installation": fmt.installation_link,
        "status": fmt.badge("restore"),
        "message": fmt.preview,
        "duration_s": _duration,
        "scheduled_for": fmt.timestamp,
        "reported_at": fmt.timestamp,
        "created_at": fmt.timestamp,
    }
    column_formatters_detail = {"installation": fmt.installation_link, "duration_s": _duration}


def register(admin) -> None:
    admin.add_view(RestoreVerificationView(RestoreVerification, db, name="Restore verifications",
                                           endpoint="restore_verifications"))
