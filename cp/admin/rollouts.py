"""Admin screens of releases and rollouts: Releases (read-only, manifests pretty-printed),
Rollouts (progress, per-row buttons and bulk actions), Jobs (read-only, filtered).

Who may act: pause/resume are ``ops``; advance, advance with force, cancel and retry are
``admin`` (the same split as the JSON API). Buttons a role may not use are not shown, and
refused server-side (403) all the same. Every action goes through ``cp.delivery.rollouts`` and is
audited by ``run_action``. A row's "Advance" button carries the batch it was drawn for
(``from_batch``), so a double click advances once.
"""
from __future__ import annotations

import json

from flask import abort, g, redirect, request
from flask_admin import expose
from flask_admin.actions import action
from flask_wtf.csrf import generate_csrf
from markupsafe import Markup

from cp.delivery import rollouts
from cp.auth import actor_label, current_role, role_allows
from cp.errors import Forbidden
from cp.extensions import db
from cp.models import JOB_STATUSES, ROLLOUT_STATUSES, Job, Release, Rollout
from cp.admin import formatters as fmt
from cp.admin.base import ScopedRows, SecureModelView
from cp.admin.filters import ChoiceFilter, InstallationFilter, TextEqualFilter, _Filter

LIST_COUNT_CAP = 10_000


class IntEqualFilter(_Filter):
    """``column = <integer>``."""

    def clean(self, value: str) -> int:
        n = int(str(value).strip())
        if not 0 <= n < 2**31:
            raise ValueError(value)
        return n

    def apply(self, query, value, alias=None):
        return query.filter(self.get_column(alias) == self.clean(value))


def pretty_manifest(view, context, model, name):
    """The manifest as indented JSON in a <pre>, escaped (``Markup.format`` escapes)."""
    return Markup("<pre class=\"cp-manifest\">{}</pre>").format(
        json.dumps(model.manifest, indent=2, sort_keys=True, ensure_ascii=False))


class ReleaseView(ScopedRows, SecureModelView):
    """Core releases (support+); plugin releases have their own admin-only screen."""

    column_list = ("id", "version", "channel", "key_id", "created_at", "created_by")
    column_details_list = ("id", "version", "channel", "key_id", "signature", "manifest", "created_at",
                           "created_by")
    column_labels = {"key_id": "Key", "created_at": "Published", "created_by": "By"}
    column_sortable_list = ("created_at",)
    column_default_sort = [("created_at", True), ("id", True)]
    column_filters = [
        TextEqualFilter(Release.version, "Version", 64),
        TextEqualFilter(Release.channel, "Channel", 64),
    ]
    column_formatters = {"created_at": fmt.timestamp, "manifest": pretty_manifest}
    audit_target_type = "release"

    def row_condition(self):
        return Release.plugin.is_(None)

    def in_scope(self, model) -> bool:
        return model.plugin is None


# --- rollouts ------------------------------------------------------------------------------
ROW_BUTTONS = (  # (operation, label, least role, confirmation or None)
    ("advance", "Advance", "admin", None),
    ("advance_force", "Advance (force)", "admin", "Open the next batch although jobs of this batch failed?"),
    ("pause", "Pause", "ops", None),
    ("resume", "Resume", "ops", None),
    ("retry", "Retry failed", "admin", "Queue the failed jobs of this rollout again?"),
    ("cancel", "Cancel", "admin", "Cancel this rollout? Its pending jobs are cancelled."),
)
BUTTON_STATES = {  # which buttons make sense in which state
    "advance": ("active",), "advance_force": ("active",), "pause": ("active",), "resume": ("paused",),
    "retry": ("active", "paused", "completed"), "cancel": ("active", "paused"),
}
ROLES = {op: role for op, _label, role, _c in ROW_BUTTONS}


def _apply(op: str, rollout_id: int, from_batch: int | None = None) -> str:
    by = actor_label()
    if op == "advance":
        r = rollouts.advance(rollout_id, from_batch=from_batch, by=by)
    elif op == "advance_force":
        r = rollouts.advance(rollout_id, force=True, from_batch=from_batch, by=by)
    elif op == "pause":
        r = rollouts.pause(rollout_id, by=by)
    elif op == "resume":
        r = rollouts.resume(rollout_id, by=by)
    elif op == "cancel":
        r = rollouts.cancel(rollout_id, by=by)
    elif op == "retry":
        r, n = rollouts.retry(rollout_id, by=by)
        return f"rollout {r.id}: {n} job(s) queued again"
    else:  # pragma: no cover - guarded by the caller
        raise Forbidden("Unknown operation.")
    return f"rollout {r.id}: {r.status}, batch {r.current_batch}/{r.batches}"


def _bulk(op: str):
    def run(ids: list[int]) -> str:
        return "; ".join(_apply(op, i) for i in ids) + "."

    return run


def progress(view, context, model, name):
    counts = g.get("cp_rollout_counts", {}).get(model.id) or rollouts.empty_counts()
    jobs = " · ".join(f"{n} {status.replace('_', ' ')}" for status, n in counts.items() if n) or "no jobs"
    return Markup("batch {} / {}<br><small>{}</small>").format(model.current_batch, model.batches, jobs)


def scope(view, context, model, name):
    return f"plugin {model.plugin}" if model.kind == "plugin" else (model.channel or "—")


def buttons(view, context, model, name):
    role = current_role()
    token = generate_csrf()
    out = Markup("")
    for op, label, needed, confirm in ROW_BUTTONS:
        if model.status not in BUTTON_STATES[op] or not role_allows(role, needed):
            continue
        # the confirmation is asked by cp/static/cp-admin-csp.js (the CSP runs no inline onsubmit)
        ask = Markup(' data-cp-confirm="{}"').format(confirm) if confirm else ""
        out += Markup(
            '<form method="post" action="{}" style="display:inline">'
            '<input type="hidden" name="csrf_token" value="{}">'
            '<input type="hidden" name="from_batch" value="{}">'
            '<button type="submit" class="btn btn-sm btn-outline-secondary"{}>{}</button></form> '
        ).format(view.get_url(".row_action", rollout_id=model.id, op=op), token, model.current_batch, ask, label)
    return out or "—"


class RolloutView(SecureModelView):
    column_list = ("id", "kind", "release", "scope", "status", "progress", "targets", "paused_reason", "created_at",
                   "buttons")
    column_details_list = ("id", "kind", "release", "channel", "plugin", "status", "current_batch", "batches",
                           "batch_size", "targets", "skipped", "max_failures", "max_failure_ratio",
                           "auto_advance_success_ratio", "auto_advance_soak_minutes", "allow_downgrade",
                           "paused_reason", "batch_opened_at", "created_at", "created_by", "completed_at")
    column_labels = {"scope": "Channel / plugin", "paused_reason": "Paused because", "created_at": "Created",
                     "buttons": "Actions"}
    column_sortable_list = ("created_at",)
    column_default_sort = [("created_at", True), ("id", True)]
    column_select_related_list = (Rollout.release,)
    column_filters = [
        ChoiceFilter(Rollout.status, "Status", ROLLOUT_STATUSES),
        ChoiceFilter(Rollout.kind, "Kind", ("core", "plugin")),
        TextEqualFilter(Rollout.channel, "Channel", 64),
        TextEqualFilter(Rollout.plugin, "Plugin", 128),
    ]
    column_formatters = {
        "progress": progress, "scope": scope, "buttons": buttons, "created_at": fmt.timestamp,
        "batch_opened_at": fmt.timestamp, "completed_at": fmt.timestamp,
    }
    audit_target_type = "rollout"
    action_roles = {op: role for op, role in ROLES.items()}
    unconfirmed_actions = frozenset({"pause", "resume", "advance"})

    def get_list(self, *args, **kwargs):
        count, data = super().get_list(*args, **kwargs)
        ids = [r.id for r in data] if isinstance(data, list) else []
        g.cp_rollout_counts = rollouts.job_counts(ids)  # one grouped query per page
        return count, data

    @expose("/row/<int:rollout_id>/<op>", methods=("POST",))
    def row_action(self, rollout_id: int, op: str):
        """A row's button (CSRF-checked by the app-wide CSRFProtect)."""
        if op not in ROLES:
            abort(404)
        if not role_allows(current_role(), ROLES[op]):
            raise Forbidden(f"This needs the {ROLES[op]} role.")
        raw = request.form.get("from_batch", "")
        from_batch = int(raw) if raw.isdigit() and len(raw) < 10 else None
        self.run_action(f"rollout.{op}", [str(rollout_id)], lambda ids: _apply(op, ids[0], from_batch) + ".",
                        "rollout")
        return redirect(self.get_url(".index_view"))

    @action("advance", "Advance")
    def action_advance(self, ids):
        self.run_action("rollout.advance", ids, _bulk("advance"), "rollout")

    @action("advance_force", "Advance (force)",
            "Open the next batch of every selected rollout, even where jobs of the current batch failed?")
    def action_advance_force(self, ids):
        self.run_action("rollout.advance_force", ids, _bulk("advance_force"), "rollout")

    @action("pause", "Pause")
    def action_pause(self, ids):
        self.run_action("rollout.pause", ids, _bulk("pause"), "rollout")

    @action("resume", "Resume")
    def action_resume(self, ids):
        self.run_action("rollout.resume", ids, _bulk("resume"), "rollout")

    @action("retry", "Retry failed jobs", "Queue the failed jobs of the selected rollouts again?")
    def action_retry(self, ids):
        self.run_action("rollout.retry", ids, _bulk("retry"), "rollout")

    @action("cancel", "Cancel", "Cancel the selected rollouts? Their pending jobs are cancelled.")
    def action_cancel(self, ids):
        self.run_action("rollout.cancel", ids, _bulk("cancel"), "rollout")


# --- jobs ----------------------------------------------------------------------------------
class JobView(SecureModelView):
    column_list = ("id", "kind", "installation", "release", "rollout_id", "batch", "status", "attempts", "message",
                   "fetched_at", "finished_at")
    column_details_list = ("id", "kind", "installation", "release", "rollout_id", "batch", "position", "status",
                           "attempts", "message", "created_at", "fetched_at", "finished_at", "updated_at")
    column_labels = {"installation": "Instance", "rollout_id": "Rollout", "fetched_at": "Fetched",
                     "finished_at": "Finished"}
    column_sortable_list = ("created_at",)
    column_default_sort = [("created_at", True), ("id", True)]
    column_select_related_list = (Job.installation, Job.release)
    column_filters = [
        ChoiceFilter(Job.status, "Status", JOB_STATUSES),
        ChoiceFilter(Job.kind, "Kind", ("update", "plugin")),
        IntEqualFilter(Job.rollout_id, "Rollout"),
        IntEqualFilter(Job.batch, "Batch"),
        InstallationFilter(Job.installation_id),
    ]
    column_formatters = {
        "installation": fmt.installation_link, "message": fmt.preview, "fetched_at": fmt.timestamp,
        "finished_at": fmt.timestamp, "created_at": fmt.timestamp, "updated_at": fmt.timestamp,
        "status": fmt.badge("job"),
    }
    count_cap = LIST_COUNT_CAP
    audit_target_type = "job"


def register(admin) -> None:
    admin.add_view(ReleaseView(Release, db, name="Releases", endpoint="releases", category="Releases"))
    admin.add_view(RolloutView(Rollout, db, name="Rollouts", endpoint="rollouts", category="Releases"))
    admin.add_view(JobView(Job, db, name="Jobs", endpoint="jobs", category="Releases"))
