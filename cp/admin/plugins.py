"""Admin screens of the plugin marketplace: Plugin releases (read-only, manifests pretty-printed),
Plugin requests (bulk approve / reject with a reason) and Plugin rollouts (progress and actions).

- The release and rollout screens are the core ones (``cp.admin.rollouts``) limited to plugin
  rows: the same columns, formatters, row buttons and bulk actions, which call the same rollout
  engine; nothing is copied.
- Who may do what follows the JSON API: plugin releases and requests are admin only (as
  ``/api/plugins/releases`` and ``/api/plugins/requests/*``); plugin rollouts are visible to
  support, paused/resumed by ops, advanced/cancelled/retried by admin, as core rollouts.
- Approve asks for confirmation and applies to every selected pending request (requests that
  are no longer pending are skipped and named). Reject leads to a form asking for the reason
  the agents will read; nothing is rejected without one. Both go through ``cp.delivery.plugins`` and are
  audited by ``run_action``.
"""
from __future__ import annotations

from flask import abort, redirect, request
from flask_admin import expose
from flask_admin.actions import action
from markupsafe import Markup
from sqlalchemy import select

from cp.delivery import plugins
from cp.auth import actor_label, current_role, role_allows
from cp.errors import DomainError, Forbidden
from cp.extensions import db
from cp.models import PLUGIN_REQUEST_STATUSES, PluginRequest, Release, Rollout
from cp.admin import formatters as fmt
from cp.admin.base import MAX_ACTION_ROWS, SUBMISSION_FIELD, ScopedRows, SecureModelView, new_submission
from cp.admin.filters import ChoiceFilter, InstallationFilter, TextEqualFilter
from cp.admin.rollouts import ReleaseView, RolloutView


class PluginReleaseView(ReleaseView):
    required_role = "admin"
    column_list = ("id", "plugin", "version", "key_id", "created_at", "created_by")
    column_details_list = ("id", "plugin", "version", "key_id", "signature", "manifest", "created_at", "created_by")
    column_filters = [
        TextEqualFilter(Release.plugin, "Plugin", 128),
        TextEqualFilter(Release.version, "Version", 64),
    ]
    audit_target_type = "release"

    def row_condition(self):
        return Release.plugin.is_not(None)

    def in_scope(self, model) -> bool:
        return model.plugin is not None


class PluginRolloutView(ScopedRows, RolloutView):
    column_list = ("id", "plugin", "release", "status", "progress", "targets", "paused_reason", "created_at",
                   "buttons")
    column_details_list = ("id", "plugin", "release", "status", "current_batch", "batches", "batch_size", "targets",
                           "skipped", "max_failures", "max_failure_ratio", "auto_advance_success_ratio",
                           "auto_advance_soak_minutes", "allow_downgrade", "paused_reason", "batch_opened_at",
                           "created_at", "created_by", "completed_at")
    column_labels = {**RolloutView.column_labels, "release": "Version"}
    column_filters = [
        ChoiceFilter(Rollout.status, "Status", ("active", "paused", "completed", "cancelled")),
        TextEqualFilter(Rollout.plugin, "Plugin", 128),
    ]

    def row_condition(self):
        return Rollout.kind == plugins.ROLLOUT_KIND

    def in_scope(self, model) -> bool:
        return model.kind == plugins.ROLLOUT_KIND


# --- requests ---------------------------------------------------------------------------------
def _job(view, context, model, name):
    job = model.job
    if job is None:
        return "—"
    return Markup('#{} {} <span class="badge cp-badge job-{}">{}</span>').format(
        job.id, job.release.version, job.status, job.status.replace("_", " "))


def _decide_each(verb: str, decide, ids: list[int]) -> str:
    """``decide(request_id)`` for each id, each in a savepoint: the pending requests are
    decided, the others (already decided, gone) are skipped and named in the message."""
    done, skipped = [], []
    for request_id in ids:
        try:
            with db.session.begin_nested():
                req = decide(request_id)
            what = f"#{req.id} {req.plugin}"
            if req.job is not None:
                what += f" {req.job.release.version}"
            done.append(what)
        except DomainError as exc:
            skipped.append(exc.message)
    message = f"{len(done)} request(s) {verb}" + (f": {', '.join(done)}" if done else "") + "."
    if skipped:
        message += f" {len(skipped)} skipped: " + " ".join(skipped)
    return message


class PluginRequestView(SecureModelView):
    required_role = "admin"
    column_list = ("id", "installation", "plugin", "version", "reason", "status", "decision_reason", "job",
                   "decided_at", "decided_by", "created_at")
    column_details_list = ("id", "installation", "plugin", "version", "reason", "status", "decision_reason", "job",
                           "decided_at", "decided_by", "created_at")
    column_labels = {"installation": "Instance", "version": "Version asked", "reason": "Agent's reason",
                     "decision_reason": "Decision note", "job": "Install job", "decided_at": "Decided",
                     "decided_by": "By", "created_at": "Asked"}
    column_sortable_list = ("created_at",)
    column_default_sort = [("created_at", True), ("id", True)]
    column_select_related_list = (PluginRequest.installation, PluginRequest.job)
    column_filters = [
        ChoiceFilter(PluginRequest.status, "Status", PLUGIN_REQUEST_STATUSES),
        TextEqualFilter(PluginRequest.plugin, "Plugin", 128),
        InstallationFilter(PluginRequest.installation_id),
    ]
    column_formatters = {
        "installation": fmt.installation_link, "status": fmt.badge("request"), "reason": fmt.preview,
        "decision_reason": fmt.preview, "job": _job, "decided_at": fmt.timestamp, "created_at": fmt.timestamp,
    }
    column_formatters_detail = {"installation": fmt.installation_link, "job": _job}
    action_roles = {"approve": "admin", "reject": "admin"}
    # reject leads to its own form (the reason), which is the confirmation step
    unconfirmed_actions = frozenset({"reject"})
    audit_target_type = "plugin_request"

    @action("approve", "Approve",
            "Approve the selected pending requests? Each gets an install job of the requested (else newest) version.")
    def action_approve(self, ids):
        by = actor_label()
        self.run_action("plugin_request.approve", ids,
                        lambda i: _decide_each("approved", lambda rid: plugins.approve(rid, by=by), i),
                        "plugin_request")

    @action("reject", "Reject…")
    def action_reject(self, ids):
        try:
            clean = sorted({int(i) for i in ids})
        except (TypeError, ValueError):
            abort(400)
        if not clean or len(clean) > MAX_ACTION_ROWS:
            abort(400)
        return redirect(self.get_url(".reject_view", ids=",".join(map(str, clean))))

    @expose("/reject/", methods=("GET", "POST"))
    def reject_view(self):
        """Ask for the reason, then reject the pending requests among ``ids`` (CSRF-checked by
        the app-wide CSRFProtect)."""
        if not role_allows(current_role(), self.action_roles["reject"]):
            raise Forbidden("Rejecting plugin requests needs the admin role.")
        raw = request.values.get("ids", "")
        try:
            ids = sorted({int(i) for i in raw.split(",") if i.strip()})
        except ValueError:
            abort(400)
        if not ids or len(ids) > MAX_ACTION_ROWS:
            abort(400)
        reason = (request.form.get("reason") or "").strip()
        error = None
        if request.method == "POST":
            if not reason:
                error = "Say why: the installations' agents read this reason."
            elif len(reason) > plugins.MAX_REASON:
                error = f"At most {plugins.MAX_REASON} characters."
            else:
                by = actor_label()
                self.run_action(
                    "plugin_request.reject", [str(i) for i in ids],
                    lambda i: _decide_each("rejected", lambda rid: plugins.reject(rid, reason=reason, by=by), i),
                    "plugin_request")
                return redirect(self.get_url(".index_view"))
        rows = db.session.scalars(select(PluginRequest).where(PluginRequest.id.in_(ids))
                                  .order_by(PluginRequest.id)).all()
        return self.render("admin/plugin_reject.html", rows=rows, ids=",".join(map(str, ids)), reason=reason,
                           error=error, max_reason=plugins.MAX_REASON,
                           submission=request.form.get(SUBMISSION_FIELD) or new_submission()), (422 if error else 200)


def register(admin) -> None:
    admin.add_view(PluginReleaseView(Release, db, name="Plugin releases", endpoint="plugin_releases",
                                     category="Plugins"))
    admin.add_view(PluginRequestView(PluginRequest, db, name="Plugin requests", endpoint="plugin_requests",
                                     category="Plugins"))
    admin.add_view(PluginRolloutView(Rollout, db, name="Plugin rollouts", endpoint="plugin_rollouts",
                                     category="Plugins"))
