"""The People screen (admin) and the My tokens screen (every person).

- People: list, create, change name/role, deactivate or reactivate; no delete. Every change
  goes through ``cp.people`` (its rules: emails unique in any case, nobody raises their own
  role, the last active admin stays) and is audited in the same transaction.
- My tokens: the caller's own personal tokens (not revoked); "New token" shows the secret once,
  in the answer to the form, never in a redirect or flash message; "Revoke" is a bulk action.
  A role-token login has no tokens and does not see the screen in the menu.
"""
from __future__ import annotations

from flask import flash, redirect, request
from flask_admin import expose
from flask_admin.actions import action
from flask_wtf import FlaskForm
from sqlalchemy import false
from wtforms import IntegerField, SelectField, StringField
from wtforms.validators import DataRequired, Length, NumberRange, Optional

from cp import audit, people
from cp.admin import formatters as fmt
from cp.admin.base import ScopedRows, SecureModelView
from cp.admin.filters import ChoiceFilter, TextEqualFilter
from cp.auth import actor_label, current_actor
from cp.errors import DomainError
from cp.extensions import db
from cp.models import ROLES, ApiToken, User


class PeopleView(SecureModelView):
    required_role = "admin"
    allow_create = True
    allow_edit = True
    allow_delete = False
    column_list = ("email", "name", "role", "active", "created_at", "created_by", "last_seen_at")
    column_details_list = ("id", "email", "name", "role", "active", "created_at", "created_by", "last_seen_at")
    column_labels = {"created_at": "Added", "created_by": "Added by", "last_seen_at": "Last seen"}
    column_sortable_list = ("email", "created_at", "last_seen_at")
    column_default_sort = [("created_at", True), ("id", True)]
    column_filters = [
        ChoiceFilter(User.role, "Role", ROLES),
        TextEqualFilter(User.email, "Email", 254),
    ]
    column_formatters = {"created_at": fmt.timestamp, "last_seen_at": fmt.timestamp}
    form_columns = ("email", "name", "role", "active")
    form_overrides = {"role": SelectField}
    form_args = {"role": {"choices": list(ROLES)},
                 "email": {"validators": [DataRequired(), Length(max=254)]},
                 "name": {"validators": [Optional(), Length(max=200)]}}
    audit_target_type = "user"

    def edit_form(self, obj=None):
        form = super().edit_form(obj)
        del form.email  # an email is who a person is: not edited
        return form

    def _refused(self, verb: str, target, exc: DomainError) -> None:
        db.session.rollback()
        audit.close_action()
        audit.record_apart(f"admin.{self.endpoint}.{verb}", actor=current_actor(), source_ip=request.remote_addr,
                           target_type="user", target_id=target, outcome=exc.code, details={"message": exc.message})
        flash(exc.message, "error")

    def create_model(self, form):
        try:
            person = people.create_person(form.email.data, form.name.data, form.role.data, by=actor_label())
            if form.active.data is False:
                person.active = False
            self.on_model_change(form, person, True)  # its audit entry, in this transaction
            db.session.commit()
        except DomainError as exc:
            self._refused("create", None, exc)
            return False
        self.after_model_change(form, person, True)
        return person

    def update_model(self, form, model):
        try:
            people.update_person(model.id, by=current_actor(), name=form.name.data or model.name,
                                 role=form.role.data, active=bool(form.active.data))
            self.on_model_change(form, model, False)
            db.session.commit()
        except DomainError as exc:
            self._refused("edit", model.id, exc)
            return False
        self.after_model_change(form, model, False)
        return True


class TokenForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(), Length(max=100)],
                       description="What the token is for: a laptop, a script.")
    expires_in_days = IntegerField("Expires in (days)", validators=[Optional(),
                                                                    NumberRange(1, people.MAX_EXPIRY_DAYS)],
                                   description="Empty: never.")


class MyTokensView(ScopedRows, SecureModelView):
    required_role = "support"
    column_list = ("name", "created_at", "expires_at", "last_used_at")
    column_labels = {"created_at": "Created", "expires_at": "Expires", "last_used_at": "Last used"}
    column_default_sort = [("created_at", True), ("id", True)]
    column_formatters = {"created_at": fmt.timestamp, "expires_at": fmt.timestamp, "last_used_at": fmt.timestamp}
    can_view_details = False
    action_roles = {"revoke": "support"}
    list_template = "admin/my_tokens.html"
    audit_target_type = "api_token"
    people_only_menu = True  # in the menu of a person only (a role token has no personal tokens)

    def is_visible(self) -> bool:
        actor = current_actor()
        return actor is not None and actor.person_id is not None and super().is_visible()

    def row_condition(self):
        actor = current_actor()
        if actor is None or actor.person_id is None:  # a role token has no personal tokens
            return false()
        return (ApiToken.user_id == actor.person_id) & ApiToken.revoked_at.is_(None)

    def in_scope(self, model) -> bool:
        return model.user_id == current_actor().person_id and model.revoked_at is None

    @action("revoke", "Revoke", "Revoke the selected tokens? Scripts using them stop at once.")
    def action_revoke(self, ids):
        person_id = current_actor().person_id
        self.run_action("token.revoke", ids,
                        lambda i: f"{len([people.revoke_token(person_id, t) for t in i])} token(s) revoked.",
                        "api_token")

    @expose("/issue/", methods=("GET", "POST"))
    def new_token_view(self):
        """The form, then the secret once in the answer to it (no redirect)."""
        actor = current_actor()
        if actor.person_id is None:
            flash("A role token has no personal tokens: log in as a person.", "error")
            return redirect(self.get_url(".index_view"))
        form = TokenForm()
        if request.method == "POST" and form.validate_on_submit():
            audit.open_action()
            try:
                token, secret = people.issue_token(people.get_person(actor.person_id), form.name.data,
                                                   form.expires_in_days.data)
                audit.commit_with("admin.my_tokens.create", actor=actor, source_ip=request.remote_addr,
                                  target_type="api_token", target_id=token.id, details={"name": token.name})
            except DomainError as exc:
                db.session.rollback()
                audit.close_action()
                flash(exc.message, "error")
                return self.render("admin/token_new.html", form=form, secret=None, token=None), 422
            return self.render("admin/token_new.html", form=None, secret=secret, token=token)
        status = 422 if request.method == "POST" else 200
        return self.render("admin/token_new.html", form=form, secret=None, token=None), status


def register(admin) -> None:
    admin.add_view(PeopleView(User, db, name="People", endpoint="people", category="People"))
    admin.add_view(MyTokensView(ApiToken, db, name="My tokens", endpoint="my_tokens", category="People"))
