"""``/api/plugins/*`` for people: plugin releases, requests (list, approve, reject) and plugin
rollouts. Releases and requests are admin only (as the contract says); reading a plugin rollout
is support+, pausing/resuming it ops+, everything else admin, as for core rollouts. The
rollout operations are the engine's (``cp.delivery.rollouts``), applied to plugin rollouts only (a core
rollout's id is a 404 here)."""
from flask import jsonify

from cp.delivery import plugins
from cp.delivery import rollouts
from cp.api.audited import audited
from cp.auth import current_actor, role_required
from cp.web.parsing import load_args, load_json
from cp.api import bp
from cp.api.plugin_schemas import (
    PluginReleaseArgsSchema,
    PluginReleaseCreateSchema,
    PluginReleaseItemSchema,
    PluginReleaseSchema,
    PluginRequestApproveSchema,
    PluginRequestArgsSchema,
    PluginRequestRejectSchema,
    PluginRequestSchema,
    PluginRolloutArgsSchema,
    PluginRolloutCreateSchema,
    PluginRolloutDetailSchema,
    PluginRolloutSchema,
)
from cp.api.rollout_schemas import RolloutAdvanceSchema, RolloutPauseSchema, rollout_data

release_schema = PluginReleaseSchema()
release_item_schema = PluginReleaseItemSchema()
request_schema = PluginRequestSchema()
rollout_schema = PluginRolloutSchema()
rollout_detail_schema = PluginRolloutDetailSchema()


def _rollout(rollout, *, detail: bool = False, **extra) -> dict:
    counts = rollouts.job_counts([rollout.id])[rollout.id]
    if detail:
        data = rollout_data(rollout, counts, rollouts.batch_counts(rollout), version=rollout.release.version)
        return rollout_detail_schema.dump(data)
    return rollout_schema.dump(rollout_data(rollout, counts, version=rollout.release.version, **extra))


# --- releases ---------------------------------------------------------------------------------
@bp.post("/plugins/releases")
@role_required("admin")
@audited("plugin_release.publish", "release")
def publish_plugin_release():
    """Publish a signed plugin release.
    ---
    post:
      tags: [plugins]
      summary: Verify the Ed25519 signature of the manifest and store the plugin release as received.
      description: >
        Signed and checked like core releases (the same canonical bytes and trusted keys).
        plugin is 1-128 characters of [a-z0-9._-] starting with a letter or digit;
        manifest.version must equal version, and manifest.plugin, when present, must equal plugin.
      requestBody:
        required: true
        content:
          application/json:
            schema: PluginReleaseCreateSchema
      responses:
        201:
          content:
            application/json:
              schema: PluginReleaseSchema
        409:
          description: This version of the plugin is already published.
        422:
          description: Validation failed, manifest mismatch, or invalid_signature (unknown key or bad signature).
    """
    body = load_json(PluginReleaseCreateSchema())
    release = plugins.publish_plugin_release(by=current_actor().label, **body)
    return jsonify(release_schema.dump(release)), 201


@bp.get("/plugins/releases")
@role_required("admin")
def list_plugin_releases():
    """List plugin releases.
    ---
    get:
      tags: [plugins]
      summary: Plugin releases newest first (of one plugin with ?plugin=), with manifests and signatures as stored.
      parameters:
      - in: query
        schema: PluginReleaseArgsSchema
      responses:
        200:
          content:
            application/json:
              schema: PluginReleaseListSchema
    """
    items, total = plugins.list_plugin_releases(**load_args(PluginReleaseArgsSchema()))
    return jsonify({"items": release_item_schema.dump(items, many=True), "total": total})


# --- requests ---------------------------------------------------------------------------------
@bp.get("/plugins/requests/list")
@role_required("admin")
def list_plugin_requests():
    """List plugin requests.
    ---
    get:
      tags: [plugins]
      summary: Requests newest first, filtered by status, plugin or instance_id.
      parameters:
      - in: query
        schema: PluginRequestArgsSchema
      responses:
        200:
          content:
            application/json:
              schema: PluginRequestListSchema
    """
    page = plugins.list_requests(**load_args(PluginRequestArgsSchema()))
    return jsonify({"items": request_schema.dump(page.items, many=True), "total": page.total})


@bp.post("/plugins/requests/<int:request_id>/approve")
@role_required("admin")
@audited("plugin_request.approve", "plugin_request", "request_id")
def approve_plugin_request(request_id: int):
    """Approve a pending request: an install job of the requested version, else the newest.
    ---
    post:
      tags: [plugins]
      summary: status approved, an install job for the installation, the plugin recorded as approved.
      description: >
        Without a requested version the newest release is installed (the newest final release
        when there is one). The body is optional; its reason is kept with the decision.
      parameters:
      - {in: path, name: request_id, required: true, schema: {type: integer}}
      requestBody:
        required: false
        content:
          application/json:
            schema: PluginRequestApproveSchema
      responses:
        200:
          content:
            application/json:
              schema: PluginRequestSchema
        404:
          description: Unknown request.
        409:
          description: The request is not pending (request_not_pending).
    """
    body = load_json(PluginRequestApproveSchema(), allow_empty=True)
    request = plugins.approve(request_id, reason=body.get("reason"), by=current_actor().label)
    data = request_schema.dump(request)
    return jsonify(data)


@bp.post("/plugins/requests/<int:request_id>/reject")
@role_required("admin")
@audited("plugin_request.reject", "plugin_request", "request_id")
def reject_plugin_request(request_id: int):
    """Reject a pending request, saying why.
    ---
    post:
      tags: [plugins]
      summary: status rejected; the agent sees the reason (decision_reason) in its request list.
      parameters:
      - {in: path, name: request_id, required: true, schema: {type: integer}}
      requestBody:
        required: true
        content:
          application/json:
            schema: PluginRequestRejectSchema
      responses:
        200:
          content:
            application/json:
              schema: PluginRequestSchema
        404:
          description: Unknown request.
        409:
          description: The request is not pending (request_not_pending).
    """
    body = load_json(PluginRequestRejectSchema())
    request = plugins.reject(request_id, reason=body["reason"], by=current_actor().label)
    data = request_schema.dump(request)
    return jsonify(data)


# --- rollouts ---------------------------------------------------------------------------------
@bp.post("/plugins/rollouts")
@role_required("admin")
@audited("plugin_rollout.create", "rollout")
def create_plugin_rollout():
    """Roll a plugin release out, batch by batch, over the installations that have the plugin.
    ---
    post:
      tags: [plugins]
      summary: Target every installation with the plugin approved that runs another version; open batch 1.
      description: >
        The same rules as core rollouts - installations on a newer version are skipped unless
        allow_downgrade; batch_size 1..10000; max_failures / max_failure_ratio / auto_advance
        gates; one open (active or paused) rollout per plugin.
      requestBody:
        required: true
        content:
          application/json:
            schema: PluginRolloutCreateSchema
      responses:
        201:
          content:
            application/json:
              schema: PluginRolloutSchema
        404:
          description: Unknown plugin (unknown_plugin) or version (unknown_release).
        409:
          description: The plugin already has an active or paused rollout.
    """
    body = load_json(PluginRolloutCreateSchema())
    rollout = plugins.create_plugin_rollout(by=current_actor().label, **body)
    data = _rollout(rollout)
    return jsonify(data), 201


@bp.get("/plugins/rollouts")
@role_required("support")
def list_plugin_rollouts():
    """List plugin rollouts.
    ---
    get:
      tags: [plugins]
      summary: Plugin rollouts newest first, each with its job counts by status.
      parameters:
      - in: query
        schema: PluginRolloutArgsSchema
      responses:
        200:
          content:
            application/json:
              schema: PluginRolloutListSchema
    """
    items, total = rollouts.list_rollouts(kind="plugin", **load_args(PluginRolloutArgsSchema()))
    counts = rollouts.job_counts([r.id for r in items])
    return jsonify({"items": [rollout_schema.dump(rollout_data(r, counts[r.id], version=r.release.version))
                              for r in items], "total": total})


@bp.get("/plugins/rollouts/<int:rollout_id>")
@role_required("support")
def get_plugin_rollout(rollout_id: int):
    """One plugin rollout with its job counts by status, overall and per batch.
    ---
    get:
      tags: [plugins]
      parameters:
      - {in: path, name: rollout_id, required: true, schema: {type: integer}}
      responses:
        200:
          content:
            application/json:
              schema: PluginRolloutDetailSchema
        404:
          description: Unknown plugin rollout.
    """
    return jsonify(_rollout(plugins.get_plugin_rollout(rollout_id), detail=True))


@bp.post("/plugins/rollouts/<int:rollout_id>/advance")
@role_required("admin")
@audited("plugin_rollout.advance", "rollout", "rollout_id")
def advance_plugin_rollout(rollout_id: int):
    """Open the next batch (past the last one: completed), as for core rollouts.
    ---
    post:
      tags: [plugins]
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
              schema: PluginRolloutSchema
        404:
          description: Unknown plugin rollout.
        409:
          description: Not active, a job of the current batch failed (without force), or from_batch not open yet.
    """
    body = load_json(RolloutAdvanceSchema(), allow_empty=True)
    plugins.get_plugin_rollout(rollout_id)
    rollout = rollouts.advance(rollout_id, by=current_actor().label, **body)
    data = _rollout(rollout)
    return jsonify(data)


@bp.post("/plugins/rollouts/<int:rollout_id>/pause")
@role_required("ops")
@audited("plugin_rollout.pause", "rollout", "rollout_id")
def pause_plugin_rollout(rollout_id: int):
    """Pause: no new plugin jobs are handed out (pausing a paused rollout is a no-op).
    ---
    post:
      tags: [plugins]
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
              schema: PluginRolloutSchema
        404:
          description: Unknown plugin rollout.
        409:
          description: Completed or cancelled.
    """
    body = load_json(RolloutPauseSchema(), allow_empty=True)
    plugins.get_plugin_rollout(rollout_id)
    rollout = rollouts.pause(rollout_id, reason=body.get("reason"), by=current_actor().label)
    data = _rollout(rollout)
    return jsonify(data)


@bp.post("/plugins/rollouts/<int:rollout_id>/resume")
@role_required("ops")
@audited("plugin_rollout.resume", "rollout", "rollout_id")
def resume_plugin_rollout(rollout_id: int):
    """Resume a paused plugin rollout (resuming an active one is a no-op).
    ---
    post:
      tags: [plugins]
      parameters:
      - {in: path, name: rollout_id, required: true, schema: {type: integer}}
      responses:
        200:
          content:
            application/json:
              schema: PluginRolloutSchema
        404:
          description: Unknown plugin rollout.
        409:
          description: Completed or cancelled.
    """
    load_json(RolloutPauseSchema(), allow_empty=True)
    plugins.get_plugin_rollout(rollout_id)
    rollout = rollouts.resume(rollout_id, by=current_actor().label)
    data = _rollout(rollout)
    return jsonify(data)


@bp.post("/plugins/rollouts/<int:rollout_id>/cancel")
@role_required("admin")
@audited("plugin_rollout.cancel", "rollout", "rollout_id")
def cancel_plugin_rollout(rollout_id: int):
    """Cancel: pending plugin jobs are cancelled; finished and in-progress jobs stay.
    ---
    post:
      tags: [plugins]
      parameters:
      - {in: path, name: rollout_id, required: true, schema: {type: integer}}
      responses:
        200:
          content:
            application/json:
              schema: PluginRolloutSchema
        404:
          description: Unknown plugin rollout.
        409:
          description: Already completed.
    """
    load_json(RolloutPauseSchema(), allow_empty=True)
    plugins.get_plugin_rollout(rollout_id)
    rollout = rollouts.cancel(rollout_id, by=current_actor().label)
    data = _rollout(rollout)
    return jsonify(data)


@bp.post("/plugins/rollouts/<int:rollout_id>/retry")
@role_required("admin")
@audited("plugin_rollout.retry", "rollout", "rollout_id")
def retry_plugin_rollout(rollout_id: int):
    """Queue the failed plugin jobs again; ``requeued`` says how many.
    ---
    post:
      tags: [plugins]
      parameters:
      - {in: path, name: rollout_id, required: true, schema: {type: integer}}
      responses:
        200:
          content:
            application/json:
              schema: PluginRolloutSchema
        404:
          description: Unknown plugin rollout.
        409:
          description: Cancelled.
    """
    load_json(RolloutPauseSchema(), allow_empty=True)
    plugins.get_plugin_rollout(rollout_id)
    rollout, requeued = rollouts.retry(rollout_id, by=current_actor().label)
    data = _rollout(rollout, requeued=requeued)
    return jsonify(data)
