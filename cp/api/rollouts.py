"""``/api/rollouts``: create (admin), read (support+). The transitions (advance/cancel/retry
admin, pause/resume ops+), which work for core and plugin rollouts alike, are registered with
the plugin ones in ``cp.api.rollout_transitions``."""
from flask import jsonify

from cp.delivery import releases
from cp.delivery import rollouts
from cp.api.audited import audited
from cp.auth import current_actor, role_required
from cp.errors import Invalid
from cp.web.parsing import load_json
from cp.api import bp
from cp.api.actions import register_list
from cp.api.rollout_schemas import (
    RolloutArgsSchema,
    RolloutCreateSchema,
    RolloutDetailSchema,
    RolloutListSchema,
    rollout_data,
)
from cp.api.rollout_transitions import dump_rollout, dump_rollouts

detail_schema = RolloutDetailSchema()


@bp.post("/rollouts")
@role_required("admin")
@audited("rollout.create", "rollout")
def create_rollout():
    """Roll a core release out over a channel, batch by batch.
    ---
    post:
      tags: [rollouts]
      summary: Target every installation of the channel whose version differs; open batch 1.
      description: >
        Installations already on a newer version are skipped unless allow_downgrade.
        batch_size is 1..10000. Gates - max_failures / max_failure_ratio per batch pause the
        rollout and open a critical alert; auto_advance opens the next batch once success_ratio
        of the current batch succeeded (none failed) for soak_minutes.
      requestBody:
        required: true
        content:
          application/json:
            schema: RolloutCreateSchema
      responses:
        201:
          content:
            application/json:
              schema: RolloutSchema
        404:
          description: Unknown release.
        409:
          description: The channel already has an active or paused rollout.
        422:
          description: Validation failed (e.g. batch_size out of bounds).
    """
    body = load_json(RolloutCreateSchema())
    release = releases.get_release(body.pop("release"))
    channel = body.pop("channel", None) or release.channel
    if not channel:
        raise Invalid("Name the channel to roll out on.", details={"channel": ["Missing data for required field."]})
    rollout = rollouts.create_rollout(kind="core", release=release, channel=channel, by=current_actor().label, **body)
    data = dump_rollout(rollout)
    return jsonify(data), 201


register_list("/rollouts", endpoint="list_rollouts", role="support", tag="rollouts",
              summary="Rollouts newest first, each with its job counts by status (core ones unless kind=plugin).",
              args=RolloutArgsSchema, answer=RolloutListSchema, fetch=rollouts.list_rollouts, dump=dump_rollouts)


@bp.get("/rollouts/<int:rollout_id>")
@role_required("support")
def get_rollout(rollout_id: int):
    """One rollout with its job counts by status, overall and per batch.
    ---
    get:
      tags: [rollouts]
      responses:
        200:
          content:
            application/json:
              schema: RolloutDetailSchema
        404:
          description: Unknown rollout.
    """
    rollout = rollouts.get_rollout(rollout_id)
    counts = rollouts.job_counts([rollout.id])[rollout.id]
    return jsonify(detail_schema.dump(rollout_data(rollout, counts, rollouts.batch_counts(rollout))))
