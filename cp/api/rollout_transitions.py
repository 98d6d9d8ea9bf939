"""The transitions of a rollout (advance, pause, resume, cancel, retry), for both kinds.

``POST /api/rollouts/<id>/<transition>`` works on any rollout (core or plugin);
``POST /api/plugins/rollouts/<id>/<transition>`` on plugin rollouts only (a core rollout's id is a
404 there). Every route is registered from the two tables below, ``TRANSITIONS`` (what each
transition needs: role, body, the engine's call, what a 409 means) and ``KINDS`` (how each kind's
routes are named, checked, audited and answered), with its OpenAPI operation
(``cp.api.actions``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from marshmallow import Schema

from cp.api.actions import register_action
from cp.api.plugin_schemas import PluginRolloutSchema
from cp.api.rollout_schemas import RolloutAdvanceSchema, RolloutPauseSchema, RolloutSchema, rollout_data
from cp.delivery import plugins, rollouts
from cp.models import Rollout


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
    Transition("retry", "admin", "Queue the failed jobs again; requeued says how many.", "Cancelled.",
               None, _retry),
)


def dump_rollout(rollout: Rollout, **extra) -> dict:
    """A rollout of either kind with its job counts, as ``RolloutSchema``."""
    counts = rollouts.job_counts([rollout.id])[rollout.id]
    return RolloutSchema().dump(rollout_data(rollout, counts, **extra))


def dump_plugin_rollout(rollout: Rollout, **extra) -> dict:
    """A plugin rollout with its job counts, as ``PluginRolloutSchema`` (also its ``version``)."""
    counts = rollouts.job_counts([rollout.id])[rollout.id]
    return PluginRolloutSchema().dump(rollout_data(rollout, counts, version=rollout.release.version, **extra))


def dump_rollouts(items: list[Rollout]) -> list[dict]:
    counts = rollouts.job_counts([r.id for r in items])
    return [RolloutSchema().dump(rollout_data(r, counts[r.id])) for r in items]


def dump_plugin_rollouts(items: list[Rollout]) -> list[dict]:
    counts = rollouts.job_counts([r.id for r in items])
    return [PluginRolloutSchema().dump(rollout_data(r, counts[r.id], version=r.release.version)) for r in items]


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


KINDS = (
    Kind("/rollouts", "rollout", "rollout", "rollouts", RolloutSchema, "Unknown rollout.", None, dump_rollout),
    Kind("/plugins/rollouts", "plugin_rollout", "plugin_rollout", "plugins", PluginRolloutSchema,
         "Unknown plugin rollout.", plugins.get_plugin_rollout, dump_plugin_rollout),
)


def _run(kind: Kind, transition: Transition) -> Callable[[int, dict, str | None], dict]:
    def run(rollout_id: int, body: dict, by: str | None) -> dict:
        if kind.check is not None:
            kind.check(rollout_id)
        rollout, extra = transition.apply(rollout_id, body, by)
        return kind.dump(rollout, **extra)

    return run


for _kind in KINDS:
    for _transition in TRANSITIONS:
        register_action(
            f"{_kind.prefix}/<int:rollout_id>/{_transition.name}", endpoint=f"{_transition.name}_{_kind.endpoint}",
            id_arg="rollout_id", role=_transition.role, audit=f"{_kind.audit}.{_transition.name}",
            target_type="rollout", summary=_transition.summary, tag=_kind.tag, answer=_kind.schema,
            errors={404: _kind.unknown, 409: _transition.conflict}, body=_transition.body,
            run=_run(_kind, _transition))
