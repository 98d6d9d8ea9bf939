"""The one secure base of every admin screen.

- ``required_role`` decides who sees a screen: it is in the menu and its URLs answer only for
  that role and above; anonymous users are redirected to ``/login?next=...``, a lower role
  gets 403.
- ``allow_create`` / ``allow_edit`` / ``allow_delete`` open the generic Flask-Admin forms, for
  ``edit_role`` (admin by default) only. A create/edit/delete/export/ajax URL that the role may
  not use is refused with 403 (never a silent redirect).
- ``action_roles = {"action_name": "ops"}`` decides who may run each bulk action (default
  admin). A hidden action is also refused server-side with 403.
- Every bulk action asks for confirmation unless it is listed in ``unconfirmed_actions``
  (harmless ones such as "acknowledge"); dangerous ones should pass their own sentence to
  ``@action(name, text, confirmation)``.
- Every mutation goes to the audit log: bulk actions through ``run_action`` (one transaction,
  flash, audit), generic create/edit/delete through the ``on_model_change`` /
  ``on_model_delete`` hooks, which run before Flask-Admin commits, so each entry commits with its change (failed attempts are audited apart by the ``*_model`` wrappers).
- A failed create/edit/delete never shows the database's error (SQL, parameters):
  ``handle_view_exception`` logs it and flashes a generic sentence.
- Forms are Flask-WTF ``FlaskForm``: every list/action/delete/edit form carries the CSRF token,
  and the app-wide ``CSRFProtect`` refuses any POST without a valid one (400) before a view runs.
- Every bulk action is idempotent against a double submit: the list's action form carries a
  one-time ``submission`` token (``get_action_form``), and ``run_action`` records it in the
  action's own transaction (the nonce table), so the same form posted twice (a double click,
  a resent request) runs once; the second gets "already submitted" and changes nothing.
- ``count_cap``: list totals are counted up to this many rows only ("10000+"), so a list over a
  million rows never pays for a full ``count(*)``.

Only Flask-Admin's public hooks are used: ``is_accessible`` / ``inaccessible_callback``,
``create_blueprint`` (the per-operation refusals run as the blueprint's ``before_request``),
``get_actions_list`` / ``is_action_allowed`` / ``handle_action``, ``get_query`` /
``get_count_query`` / ``get_list`` (a screen's own search), ``search_placeholder``, and
``cp.admin.Panel.add_view`` keeps its own index of the screens. ``tests/test_admin.py``
(``test_the_flask_admin_hooks_we_rely_on``) fails loudly if an upgrade changes them.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Callable

from flask import current_app, flash, g, request
from flask_admin import AdminIndexView
from flask_admin.contrib.sqla import ModelView
from flask_wtf import FlaskForm
from sqlalchemy import func, inspect, literal_column, select
from sqlalchemy.orm import Query
from wtforms import HiddenField
from wtforms.validators import ValidationError

from cp import audit
from cp.auth import current_actor, current_role, login_redirect, role_allows
from cp.dbutil import insert
from cp.errors import BadRequest, Conflict, DomainError, Forbidden
from cp.extensions import db
from cp.models import AgentNonce
from cp.timeutil import utcnow

MAX_ACTION_ROWS = 500
ADMIN_CHANGE_FAILED = ("The change could not be saved: the database refused it (for example a value that must be "
                       "unique is already used). Nothing was changed; the details are in the server log.")
SUBMISSION_FIELD = "submission"


def new_submission() -> str:
    """A fresh one-time token for a form that runs a bulk action."""
    return secrets.token_urlsafe(24)


def claim_submission(token: str) -> None:
    """Record a form's one-time token in the current transaction (kept exactly when the
    action's effects are); a token already recorded is a 409 ``duplicate_submission``. Kept
    in the nonce table beside agents' signatures (``panel:`` keys), pruned with them."""
    nonces = AgentNonce.__table__
    key = "panel:" + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:58]
    stmt = (insert(nonces).values(signature=key, seen_at=utcnow())
            .on_conflict_do_nothing(index_elements=["signature"]).returning(nonces.c.signature))
    if db.session.execute(stmt).first() is None:
        raise Conflict("This form was already submitted; nothing was done again.", code="duplicate_submission")


class RoleGate:
    """Mixin: ``required_role`` to see the screen; anonymous -> login, too low -> 403."""

    required_role = "support"

    def is_accessible(self) -> bool:
        return role_allows(current_role(), self.required_role)

    def is_visible(self) -> bool:
        return self.is_accessible()

    def inaccessible_callback(self, name, **kwargs):
        if current_actor() is None:
            return login_redirect()
        raise Forbidden(f"This screen needs the {self.required_role} role; you are {current_role()}.")


class SecureIndexView(RoleGate, AdminIndexView):
    pass


# --- capped counts ----------------------------------------------------------------------------
class CappedCount(int):
    """A total that stopped counting at ``cap``: shows as ``10000+``."""

    def __new__(cls, value: int, capped: bool):
        obj = super().__new__(cls, value)
        obj.capped = capped
        return obj

    def __str__(self) -> str:
        return f"{int(self)}+" if self.capped else str(int(self))

    __html__ = __str__


class CappedCountQuery(Query):
    """The list's count query (filters applied by Flask-Admin as usual); ``scalar()`` counts
    ``SELECT 1 ... LIMIT cap + 1`` instead of every matching row."""

    count_cap: int | None = None

    def scalar(self):  # type: ignore[override]
        cap = self.count_cap
        if not cap:
            return super().scalar()
        inner = self.with_entities(literal_column("1").label("one")).order_by(None).limit(cap + 1).subquery()
        n = self.session.execute(select(func.count()).select_from(inner)).scalar_one()
        return CappedCount(min(n, cap), n > cap)


# --- audit helpers ----------------------------------------------------------------------------
def _who() -> dict:
    return {"actor": current_actor(), "source_ip": request.remote_addr}


def _record_apart(action: str, **entry) -> None:
    audit.record_apart(action, **entry, **_who())


def _rollback() -> None:
    db.session.rollback()
    audit.close_action()


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)[:500]


def _snapshot(model: Any) -> dict[str, Any]:
    mapper = inspect(model).mapper
    return {attr.key: _jsonable(getattr(model, attr.key, None)) for attr in mapper.column_attrs}


def _diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    return {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v}


class SecureModelView(RoleGate, ModelView):
    """Read-only by default; subclasses open ``allow_*`` flags, limited to ``edit_role``."""

    form_base_class = FlaskForm  # CSRF token on every form (Flask-WTF, like the rest of the app)
    can_export = False
    can_view_details = True
    can_set_page_size = True
    page_size = 50
    page_size_options = (20, 50, 100)
    # Editing is opened per screen with allow_* and limited to edit_role (default admin).
    allow_create = False
    allow_edit = False
    allow_delete = False
    edit_role = "admin"
    action_roles: dict[str, str] = {}  # action name -> least role allowed to run it (default admin)
    unconfirmed_actions: frozenset[str] = frozenset({"acknowledge"})
    count_cap: int | None = None  # count list totals up to this many rows only
    audit_target_type: str | None = None  # defaults to the model's table name

    # --- who may do what ------------------------------------------------------------------
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

    def create_blueprint(self, admin):
        blueprint = super().create_blueprint(admin)
        blueprint.before_request(self.refuse_operation)
        return blueprint

    def refuse_operation(self) -> None:
        """403 for an operation this role may not use on this screen (before its view runs).
        Someone who may not see the screen at all is left to ``inaccessible_callback``."""
        if not self.is_accessible():
            return None
        name = (request.endpoint or "").rpartition(".")[2]
        refused = {
            "create_view": not self.can_create,
            "edit_view": not self.can_edit,
            "ajax_update": not self.can_edit,
            "delete_view": not self.can_delete,
            "export": not self.can_export,
            "details_view": not self.can_view_details,
        }.get(name, False)
        if refused:
            if request.method == "POST":  # a refused attempt to change something is kept too
                _record_apart(f"admin.{self.endpoint}.{name.removesuffix('_view')}", target_type=self._audit_type(),
                              target_id=request.args.get("id") or request.form.get("id"), outcome="forbidden")
            raise Forbidden("Your role may not do this on this screen.")
        return None

    def is_action_allowed(self, name: str) -> bool:
        needed = self.action_roles.get(name, "admin")
        if name == "delete" and not self.can_delete:
            return False
        return role_allows(current_role(), needed) and super().is_action_allowed(name)

    def get_actions_list(self):
        """The actions this role may run; every one asks for confirmation unless listed in
        ``unconfirmed_actions``."""
        actions, confirmations = super().get_actions_list()
        for name, text in actions:
            if not confirmations.get(name) and name not in self.unconfirmed_actions:
                confirmations[name] = f"{text}: are you sure? This applies to every selected row."
        return actions, confirmations

    def get_action_form(self):
        """The list's action form, with its one-time ``submission`` token (see ``run_action``)."""

        class ActionForm(super().get_action_form()):
            submission = HiddenField(default=new_submission)

        return ActionForm

    def handle_action(self, return_view=None):
        name = request.form.get("action")
        if not name or name not in dict(self.get_actions_list()[0]):
            _record_apart(f"admin.{self.endpoint}.action", target_type=self._audit_type(),
                          target_id=",".join(request.form.getlist("rowid"))[:255] or None, outcome="forbidden",
                          details={"action": (name or "")[:64]})
            raise Forbidden("Your role may not run this action.")
        return super().handle_action(return_view)

    def run_action(self, name: str, ids: list[str], fn: Callable[[list[int]], str], target_type: str) -> None:
        """Run a bulk action and its audit entry in one transaction, flash the outcome (a refusal
        by the domain or a failure is rolled back and audited apart)."""
        try:
            int_ids = sorted({int(i) for i in ids})
        except (TypeError, ValueError):
            raise BadRequest("Bad row ids.") from None
        if not int_ids:
            flash("Select at least one row.", "error")
            return
        if len(int_ids) > MAX_ACTION_ROWS:
            raise BadRequest(f"At most {MAX_ACTION_ROWS} rows per action.")
        target = ",".join(str(i) for i in int_ids)[:255]
        details = {"ids": int_ids[:100], "count": len(int_ids)}
        entry = {"target_type": target_type, "target_id": target, **_who()}
        audit.open_action()
        submission = request.form.get(SUBMISSION_FIELD)
        try:
            if submission:
                claim_submission(submission)
            message = fn(int_ids)
            audit.commit_with(f"admin.{name}", outcome="ok", details=details, **entry)
        except DomainError as exc:
            _rollback()
            audit.record_apart(f"admin.{name}", outcome=exc.code, details={**details, "message": exc.message[:500]},
                               **entry)
            flash(exc.message, "error")
            return
        except Exception:
            _rollback()
            audit.record_apart(f"admin.{name}", outcome="error", details=details, **entry)
            raise
        flash(message, "success")

    # --- generic create / edit / delete: audited, database errors kept out of the page --------
    def handle_view_exception(self, exc: Exception) -> bool:
        """Flask-Admin's hook for an exception in create/edit/delete: form validation errors are
        shown as Flask-Admin shows them; a domain error by its own message; anything else (a
        database error with its SQL and parameters) only in the server log, the person sees a
        generic sentence. True: handled (Flask-Admin then rolls back and flashes nothing more)."""
        if isinstance(exc, ValidationError):
            return super().handle_view_exception(exc)
        if isinstance(exc, DomainError):
            flash(exc.message, "error")
            return True
        current_app.logger.error("admin change failed", exc_info=exc,
                                 extra={"event": "admin_change_failed", "screen": self.endpoint})
        flash(ADMIN_CHANGE_FAILED, "error")
        return True

    # --- generic create / edit / delete: audited ------------------------------------------
    def _audit_type(self) -> str:
        return self.audit_target_type or self.model.__tablename__

    def _audit_model(self, verb: str, model: Any, outcome: str, details: dict | None = None) -> None:
        """A failed create/edit/delete (Flask-Admin rolled it back): audited apart."""
        try:
            pk = self.get_pk_value(model)
        except Exception:  # noqa: BLE001 - a failed create has no key yet
            pk = None
        _record_apart(f"admin.{self.endpoint}.{verb}", target_type=self._audit_type(),
                      target_id=None if pk is None else str(pk), outcome=outcome, details=details)

    def create_model(self, form):
        model = super().create_model(form)
        if not model:
            _record_apart(f"admin.{self.endpoint}.create", target_type=self._audit_type(), outcome="error")
        return model

    def update_model(self, form, model):
        g.cp_admin_before = _snapshot(model)
        ok = super().update_model(form, model)
        if not ok:
            self._audit_model("edit", model, "error")
        return ok

    def delete_model(self, model):
        g.cp_admin_before = _snapshot(model)
        ok = super().delete_model(model)
        if not ok:
            self._audit_model("delete", model, "error")
        return ok

    # Flask-Admin calls these two before its commit: the entry commits with the change. A screen
    # that adjusts the row calls ``super()`` last, so the entry shows the values stored.
    def on_model_change(self, form, model, is_created):
        super().on_model_change(form, model, is_created)
        db.session.flush()  # a new row's key
        after = _snapshot(model)
        details = {"values": after} if is_created else {"changes": _diff(g.get("cp_admin_before", {}), after)}
        audit.add(f"admin.{self.endpoint}.{'create' if is_created else 'edit'}", target_type=self._audit_type(),
                  target_id=str(self.get_pk_value(model)), outcome="ok", details=details, **_who())

    def on_model_delete(self, model):
        super().on_model_delete(model)
        audit.add(f"admin.{self.endpoint}.delete", target_type=self._audit_type(),
                  target_id=str(self.get_pk_value(model)), outcome="ok",
                  details={"values": g.get("cp_admin_before", {})}, **_who())

    # --- lists that stay cheap ----------------------------------------------------------------
    def get_count_query(self):
        # Flask-Admin's count query, as a CappedCountQuery on the same session
        query = CappedCountQuery([func.count("*")], session=super().get_count_query().session).select_from(self.model)
        query.count_cap = self.count_cap
        return self.searched(query)

    def get_query(self):
        return self.searched(super().get_query())

    def search_condition(self, term: str):
        """The WHERE clause of one search term (``None``: use Flask-Admin's default search)."""
        return None

    def init_search(self) -> bool:
        supported = super().init_search()
        return supported or type(self).search_condition is not SecureModelView.search_condition

    def get_list(self, page, sort_column, sort_desc, search, filters, execute=True, page_size=None):
        """A screen with its own ``search_condition`` filters ``get_query``/``get_count_query``
        by the terms (kept in ``g`` for this request) instead of Flask-Admin's search."""
        if not search or type(self).search_condition is SecureModelView.search_condition:
            return super().get_list(page, sort_column, sort_desc, search, filters, execute, page_size)
        g.cp_admin_search = search.split()
        try:
            return super().get_list(page, sort_column, sort_desc, None, filters, execute, page_size)
        finally:
            g.pop("cp_admin_search", None)

    def searched(self, query):
        for term in g.get("cp_admin_search", ()):
            query = query.filter(self.search_condition(term[:200]))
        return query

    search_hint: str | None = None

    def search_placeholder(self) -> str | None:
        return self.search_hint or super().search_placeholder()


class ScopedRows:
    """Mixin for a screen that shows a subset of a table's rows (lists, counts and details):
    ``row_condition()`` in SQL, ``in_scope(model)`` in Python; a row outside is not found."""

    def row_condition(self):  # pragma: no cover - defined by each screen
        raise NotImplementedError

    def in_scope(self, model) -> bool:  # pragma: no cover - defined by each screen
        raise NotImplementedError

    def get_query(self):
        return super().get_query().filter(self.row_condition())

    def get_count_query(self):
        return super().get_count_query().filter(self.row_condition())

    def get_one(self, id):
        model = super().get_one(id)
        return model if model is not None and self.in_scope(model) else None
