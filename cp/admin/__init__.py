"""The Flask-Admin panel at ``/admin/`` (role-restricted screens and bulk actions)."""
from __future__ import annotations

from flask import redirect, request, url_for
from flask_admin import Admin, AdminIndexView, expose
from flask_admin.contrib.sqla import ModelView
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.exceptions import Forbidden

from ..auth import role_allows
from ..extensions import db
from ..models import Alert, Installation, JobFailure


class RoleGate:
    """Mixin: ``required_role`` to see the screen; anonymous -> login, too low -> 403."""

    required_role = "support"

    def is_accessible(self) -> bool:
        return current_user.is_authenticated and role_allows(current_user.role, self.required_role)

    def inaccessible_callback(self, name, **kwargs):
        if not current_user.is_authenticated:
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        raise Forbidden("Your role does not allow this screen.")


class IndexView(RoleGate, AdminIndexView):
    @expose("/")
    def index(self):
        return self.render("admin/index.html")


class SecureModelView(RoleGate, ModelView):
    form_base_class = FlaskForm
    can_create = False
    can_edit = False
    can_delete = False
    can_view_details = True
    page_size = 50
    can_set_page_size = True


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


class JobFailureView(SecureModelView):
    column_list = ("installation", "queue", "message", "first_seen_at", "last_seen_at", "occurrences", "resolved_at")
    column_filters = ("queue",)
    column_default_sort = ("last_seen_at", True)


def init_app(app) -> None:
    admin = Admin(app, name="control-plane", url="/admin", index_view=IndexView(url="/admin"))
    admin.add_view(InstallationView(Installation, db, name="Installations", endpoint="installations_admin"))
    admin.add_view(AlertView(Alert, db, name="Alerts", endpoint="alerts_admin"))
    admin.add_view(JobFailureView(JobFailure, db, name="Job failures", endpoint="job_failures_admin"))
