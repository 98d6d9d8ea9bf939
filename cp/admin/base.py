"""The one secure base of every admin screen.

``required_role`` decides who sees a screen (menu and URL); ``action_roles`` decides who may
run each bulk action (hidden from the others and refused server-side with 403). Mutating
actions record themselves in the audit log through ``run_action``.
"""
from __future__ import annotations

from typing import Callable

from flask import flash, redirect, request, url_for
from flask_admin import AdminIndexView
from flask_admin.contrib.sqla import ModelView
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.exceptions import Forbidden

from .. import audit
from ..auth import role_allows
from ..errors import DomainError
from ..extensions import db


def current_role() -> str | None:
    return current_user.role if current_user.is_authenticated else None


class RoleGate:
    """Mixin: ``required_role`` to see the screen; anonymous -> login, too low -> 403."""

    required_role = "support"

    def is_accessible(self) -> bool:
        return current_user.is_authenticated and role_allows(current_user.role, self.required_role)

    def is_visible(self) -> bool:
        return self.is_accessible()

    def inaccessible_callback(self, name, **kwargs):
        if not current_user.is_authenticated:
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        raise Forbidden("Your role does not allow this screen.")


class SecureIndexView(RoleGate, AdminIndexView):
    pass


class SecureModelView(RoleGate, ModelView):
    """Read-only by default; subclasses open ``allow_*`` flags, limited to ``edit_role``."""

    form_base_class = FlaskForm  # CSRF token on every form (Flask-WTF, like the rest of the app)
    can_export = False
    can_view_details = True
    can_set_page_size = True
    page_size = 50
    # Editing is opened per screen with allow_* and limited to edit_role (default admin).
    allow_create = False
    allow_edit = False
    allow_delete = False
    edit_role = "admin"
    action_roles: dict[str, str] = {}  # action name -> least role allowed to run it (default admin)

    def _edit_allowed(self) -> bool:
        return role_allows(current_role(), self.edit_role)

    @property
    def can_create(self) -> bool:
        return self.allow_create and self._edit_allowed()

    @property
    def can_edit(self) -> bool:
        return self.allow_edit and self._edit_allowed()

    @property
    def can_delete(self) -> bool:
        return self.allow_delete and self._edit_allowed()

    def is_action_allowed(self, name: str) -> bool:
        needed = self.action_roles.get(name, "admin")
        if name == "delete" and not self.can_delete:
            return False
        return role_allows(current_role(), needed) and super().is_action_allowed(name)

    def handle_action(self, return_view=None):
        name = request.form.get("action")
        if name and (name not in self._actions_data or not self.is_action_allowed(name)):
            raise Forbidden("Your role may not run this action.")
        return super().handle_action(return_view)

    def run_action(self, name: str, ids: list[str], fn: Callable[[list[int]], str], target_type: str) -> None:
        """Run a bulk action in one transaction, flash the outcome, and audit it."""
        try:
            int_ids = [int(i) for i in ids]
        except ValueError:
            raise Forbidden("Bad row ids.") from None
        try:
            message = fn(int_ids)
            db.session.commit()
        except DomainError as exc:
            db.session.rollback()
            audit.record(f"admin.{name}", target_type=target_type, target_id=",".join(ids)[:255],
                         outcome=exc.code, role=current_role())
            flash(exc.message, "error")
            return
        audit.record(f"admin.{name}", target_type=target_type, target_id=",".join(ids)[:255], outcome="ok",
                     role=current_role())
        flash(message, "success")
