"""``/api/rollouts``: create (admin), read (support+), advance/cancel/retry (admin),
pause/resume (ops+). Operations by id work for core and plugin rollouts alike."""
from flask import jsonify

from cp.delivery import releases
from cp.delivery import rollouts
from cp.api.audited import audited
from cp.auth import current_actor, role_required
from cp.errors import Invalid
from cp.web.parsing import load_args, load_json
from cp.api import bp
from cp.api.rollout_schemas import (
    RolloutAdvanceSchema,
    RolloutArgsSchema,
    RolloutCreateSchema,
    RolloutDetailSchema,
    RolloutPauseSchema,
    RolloutSchema,
    rollout_data,
)

rollout_schema = RolloutSchema()
detail_schema = RolloutDetailSchema()


def _dump(rollout, **extra):
    counts = rollouts.job_counts([rollout.id])[rollout.id]
    return rollout_schema.dump(rollout_data(rollout, counts, **extra))


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
    data = _dump(rollout)
    return jsonify(data), 201


@bp.get("/rollouts")
@role_required("support")
def list_rollouts():
    """List rollouts.
    ---
    get:
      tags: [rollouts]
      summary: Rollouts newest first, each with its job counts by status (core ones unless kind=plugin).
      parameters:
      - in: query
        schema: RolloutArgsSchema
      responses:
        200:
          content:
            application/json:
              schema: RolloutListSchema
    """
    items, total = rollouts.list_rollouts(**load_args(RolloutArgsSchema()))
    counts = rollouts.job_counts([r.id for r in items])
    return jsonify({"items": [rollout_schema.dump(rollout_data(r, counts[r.id])) for r in items], "total": total})


@bp.get("/rollouts/<int:rollout_id>")
@role_required("support")
def get_rollout(rollout_id: int):
    """One rollout with its job counts by status, overall and per batch.
    ---
    get:
      tags: [rollouts]
      parameters:
      - {in: path, name: rollout_id, required: true, schema: {type: integer}}
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


@bp.post("/rollouts/<int:rollout_id>/advance")
@role_required("admin")
@audited("rollout.advance", "rollout", "rollout_id")
def advance_rollout(rollout_id: int):
    """Open the next batch (past the last one: completed).
    ---
    post:
      tags: [rollouts]
      parameters:
      - {in: path, name: rollout_id, required: true, schema: {type: integer}}
      requestBody:
        required: false
        content:
          application/json:
            schema: RolloutAdvanceSchema
      responses:
        200:
          content:
            application/json:
              schema: RolloutSchema
        404:
          description: Unknown rollout.
        409:
          description: Not active, a job of the current batch failed (without force), or from_batch not open yet.
    """
    body = load_json(RolloutAdvanceSchema(), allow_empty=True)
    rollout = rollouts.advance(rollout_id, by=current_actor().label, **body)
    data = _dump(rollout)
    return jsonify(data)


@bp.post("/rollouts/<int:rollout_id>/pause")
@role_required("ops")
@audited("rollout.pause", "rollout", "rollout_id")
def pause_rollout(rollout_id: int):
    """Pause: no new jobs are handed out (pausing a paused rollout is a no-op).
    ---
    post:
      tags: [rollouts]
      parameters:
      - {in: path, name: rollout_id, required: true, schema: {type: integer}}
      requestBody:
        required: false
        content:
          application/json:
            schema: RolloutPauseSchema
      responses:
        200:
          content:
            application/json:
              schema: RolloutSchema
        404:
          description: Unknown rollout.
        409:
          description: Completed or cancelled.
    """
    body = load_json(RolloutPauseSchema(), allow_empty=True)
    rollout = rollouts.pause(rollout_id, reason=body.get("reason"), by=current_actor().label)
    data = _dump(rollout)
    return jsonify(data)


@bp.post("/rollouts/<int:rollout_id>/resume")
@role_required("ops")
@audited("rollout.resume", "rollout", "rollout_id")
def resume_rollout(rollout_id: int):
    """Resume a paused rollout and resolve its gate alert (resuming an active one is a no-op).
    ---
    post:
      tags: [rollouts]
      parameters:
      - {in: path, name: rollout_id, required: true, schema: {type: integer}}
      responses:
        200:
          content:
            application/json:
              schema: RolloutSchema
        404:
          description: Unknown rollout.
        409:
          description: Completed or cancelled.
    """
    load_json(RolloutPauseSchema(), allow_empty=True)
    rollout = rollouts.resume(rollout_id, by=current_actor().label)
    data = _dump(rollout)
    return jsonify(data)


@bp.post("/rollouts/<int:rollout_id>/cancel")
@role_required("admin")
@audited("rollout.cancel", "rollout", "rollout_id")
def cancel_rollout(rollout_id: int):
    """Cancel: pending jobs are cancelled; finished and in-progress jobs stay.
    ---
    post:
      tags: [rollouts]
      parameters:
      - {in: path, name: rollout_id, required: true, schema: {type: integer}}
      responses:
        200:
          content:
            application/json:
              schema: RolloutSchema
        404:
          description: Unknown rollout.
        409:
          description: Already completed.
    """
    load_json(RolloutPauseSchema(), allow_empty=True)
    rollout = rollouts.cancel(rollout_id, by=current_actor().label)
    data = _dump(rollout)
    return jsonify(data)


@bp.post("/rollouts/<int:rollout_id>/retry")
@role_required("admin")
@audited("rollout.retry", "rollout", "rollout_id")
def retry_rollout(rollout_id: int):
    """Queue the failed jobs again; ``requeued`` says how many.
    ---
    post:
      tags: [rollouts]
      parameters:
      - {in: path, name: rollout_id, required: true, schema: {type: integer}}
      responses:
        200:
          content:
            application/json:
              schema: RolloutSchema
        404:
          description: Unknown rollout.
        409:
          description: Cancelled.
    """
    load_json(RolloutPauseSchema(), allow_empty=True)
    rollout, requeued = rollouts.retry(rollout_id, by=current_actor().label)
    data = _dump(rollout, requeued=requeued)
    return jsonify(data)
