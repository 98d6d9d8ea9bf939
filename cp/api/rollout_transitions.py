"""The transitions of a rollout (advance, pause, resume, cancel, retry), for both kinds.

``POST /api/rollouts/<id>/<transition>`` works on any rollout (core or plugin);
``POST /api/plugins/rollouts/<id>/<transition>`` on plugin rollouts only (a core rollout's id is a
404 there). Every route is registered from the two tables below, ``TRANSITIONS`` (what each
transition needs: role, body, the engine's call, what a 409 means) and ``KINDS`` (how each kind's
routes are named, checked, audited and answered), together with its OpenAPI operation, which
``cp.api.spec`` reads from the view's ``cp_openapi`` attribute."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from flask import jsonify
from marshmallow import Schema

from cp.api import bp
from cp.api.plugin_schemas import PluginRolloutSchema
from cp.api.rollout_schemas import RolloutAdvanceSchema, RolloutPauseSchema, RolloutSchema, rollout_data
from cp.audit import audited
from cp.auth import current_role, role_required
from cp.delivery import plugins, rollouts
from cp.extensions import db
from cp.models import Rollout
from cp.web.parsing import load_json, require_no_body


@dataclass(frozen=True)
class Transition:
    name: str
    role: str
    summary: str
    conflict: str  # what a 409 means
    body: type[Schema] | None  # None: the transition takes no body
    # (rollout id, the loaded body, the actor) -> (the rollout, extra fields of the answer)
    apply: Callable[[int, dict, str | None], tuple[Rollout, dict]]


def _retry(rollout_id: int, _body: dict, by: str | None) -> tuple[Rollout, dict]:
    rollout, requeued = rollouts.retry(rollout_id, by=by)
    return rollout, {"requeued": requeued}


TRANSITIONS = (
    Transition("advance", "admin", "Open the next batch (past the last one: completed).",
               "Not active, a job of the current batch failed (without force), or from_batch not open yet.",
               RolloutAdvanceSchema, lambda rid, body, by: (rollouts.advance(rid, by=by, **body), {})),
    Transition("pause", "ops", "Pause: no new jobs are handed out (pausing a paused rollout is a no-op).",
               "Completed or cancelled.", RolloutPauseSchema,
               lambda rid, body, by: (rollouts.pause(rid, reason=body.get("reason"), by=by), {})),
    Transition("resume", "ops",
               "Resume a paused rollout and resolve its gate alert (resuming an active one is a no-op).",
               "Completed or cancelled.", None, lambda rid, _body, by: (rollouts.resume(rid, by=by), {})),
    Transition("cancel", "admin", "Cancel: pending jobs are cancelled; finished and in-progress jobs stay.",
               "Already completed.", None, lambda rid, _body, by: (rollouts.cancel(rid, by=by), {})),
    Transition("retry", "admin", "Queue the failed jobs again; ``requeued`` says how many.", "Cancelled.",
               None, _retry),
)


@dataclass(frozen=True)
class Kind:
    prefix: str  # of the rule
    endpoint: str  # "{transition}_{endpoint}"
    audit: str  # "{audit}.{transition}"
    tag: str
    schema: type[Schema]  # of the answer
    unknown: str  # what a 404 means
    check: Callable[[int], object] | None  # refuses an id that is not of this kind (404)
    dump: Callable[..., dict]


def _dump_any(rollout: Rollout, **extra) -> dict:
    counts = rollouts.job_counts([rollout.id])[rollout.id]
    return RolloutSchema().dump(rollout_data(rollout, counts, **extra))


def _dump_plugin(rollout: Rollout, **extra) -> dict:
    counts = rollouts.job_counts([rollout.id])[rollout.id]
    return PluginRolloutSchema().dump(rollout_data(rollout, counts, version=rollout.release.version, **extra))


KINDS = (
    Kind("/rollouts", "rollout", "rollout", "rollouts", RolloutSchema, "Unknown rollout.", None, _dump_any),
    Kind("/plugins/rollouts", "plugin_rollout", "plugin_rollout", "plugins", PluginRolloutSchema,
         "Unknown plugin rollout.", plugins.get_plugin_rollout, _dump_plugin),
)


def operation(kind: Kind, transition: Transition) -> dict:
    """The OpenAPI operation of one route (``cp.api.spec`` completes auth and error answers)."""
    op = {
        "tags": [kind.tag],
        "summary": transition.summary,
        "parameters": [{"in": "path", "name": "rollout_id", "required": True, "schema": {"type": "integer"}}],
        "responses": {
            200: {"content": {"application/json": {"schema": kind.schema}}},
            404: {"description": kind.unknown},
            409: {"description": transition.conflict},
        },
    }
    if transition.body is not None:
        op["requestBody"] = {"required": False,
                             "content": {"application/json": {"schema": transition.body}}}
    return {"post": op}


def _view(kind: Kind, transition: Transition) -> Callable:
    def view(rollout_id: int):
        if transition.body is None:
            require_no_body()
            body = {}
        else:
            body = load_json(transition.body(), allow_empty=True)
        if kind.check is not None:
            kind.check(rollout_id)
        rollout, extra = transition.apply(rollout_id, body, current_role())
        data = kind.dump(rollout, **extra)
        db.session.commit()
        return jsonify(data)

    view.__name__ = f"{transition.name}_{kind.endpoint}"
    view.__doc__ = transition.summary
    view.cp_openapi = operation(kind, transition)
    return view


def register() -> None:
    for kind in KINDS:
        for transition in TRANSITIONS:
            view = _view(kind, transition)
            view = role_required(transition.role)(
                audited(f"{kind.audit}.{transition.name}", "rollout", "rollout_id")(view))
            bp.add_url_rule(f"{kind.prefix}/<int:rollout_id>/{transition.name}", view_func=view, methods=["POST"])


register()
