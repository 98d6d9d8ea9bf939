"""``/api/plugins/*`` for people: plugin releases, requests (list, approve, reject) and plugin
rollouts. Releases and requests are admin only (as the contract says); reading a plugin rollout
is support+, creating it admin; its transitions (pause/resume ops+, the others admin) are
registered with the core ones in ``cp.api.rollout_transitions``."""
from flask import jsonify

from cp.delivery import plugins
from cp.delivery import rollouts
from cp.api.audited import audited
from cp.auth import current_actor, role_required
from cp.web.parsing import load_json
from cp.api import bp
from cp.api.actions import register_action, register_list
from cp.api.plugin_schemas import (
    PluginReleaseArgsSchema,
    PluginReleaseCreateSchema,
    PluginReleaseItemSchema,
    PluginReleaseListSchema,
    PluginReleaseSchema,
    PluginRequestApproveSchema,
    PluginRequestArgsSchema,
    PluginRequestListSchema,
    PluginRequestRejectSchema,
    PluginRequestSchema,
    PluginRolloutArgsSchema,
    PluginRolloutCreateSchema,
    PluginRolloutDetailSchema,
    PluginRolloutListSchema,
)
from cp.api.rollout_schemas import rollout_data
from cp.api.rollout_transitions import dump_plugin_rollout, dump_plugin_rollouts

release_schema = PluginReleaseSchema()
request_schema = PluginRequestSchema()


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


register_list("/plugins/releases", endpoint="list_plugin_releases", role="admin", tag="plugins",
              summary="Plugin releases newest first (of one plugin with ?plugin=), with manifests and signatures "
                      "as stored.",
              args=PluginReleaseArgsSchema, answer=PluginReleaseListSchema, fetch=plugins.list_plugin_releases,
              dump=PluginReleaseItemSchema(many=True).dump)


# --- requests ---------------------------------------------------------------------------------
register_list("/plugins/requests/list", endpoint="list_plugin_requests", role="admin", tag="plugins",
              summary="Requests newest first, filtered by status, plugin or instance_id.",
              args=PluginRequestArgsSchema, answer=PluginRequestListSchema,
              fetch=plugins.list_requests,
              dump=PluginRequestSchema(many=True).dump)


# A decision on a pending request: (name, its body, what it does, the domain call).
DECISIONS = (
    ("approve", PluginRequestApproveSchema,
     "Approve a pending request: status approved and an install job of the requested version, else the newest "
     "(the newest final release when there is one). The optional reason is kept with the decision.",
     lambda request_id, body, by: plugins.approve(request_id, reason=body.get("reason"), by=by)),
    ("reject", PluginRequestRejectSchema,
     "Reject a pending request, saying why: status rejected; the agent sees the reason (decision_reason) in its "
     "request list.",
     lambda request_id, body, by: plugins.reject(request_id, reason=body["reason"], by=by)),
)


def _decide(call):
    return lambda request_id, body, by: request_schema.dump(call(request_id, body, by))


for _name, _body, _summary, _call in DECISIONS:
    register_action(f"/plugins/requests/<int:request_id>/{_name}", endpoint=f"{_name}_plugin_request",
                    id_arg="request_id", role="admin", audit=f"plugin_request.{_name}", target_type="plugin_request",
                    tag="plugins", answer=PluginRequestSchema, body=_body, summary=_summary, run=_decide(_call),
                    errors={404: "Unknown request.", 409: "The request is not pending (request_not_pending)."})


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
    data = dump_plugin_rollout(rollout)
    return jsonify(data), 201


register_list("/plugins/rollouts", endpoint="list_plugin_rollouts", role="support", tag="plugins",
              summary="Plugin rollouts newest first, each with its job counts by status.",
              args=PluginRolloutArgsSchema, answer=PluginRolloutListSchema,
              fetch=lambda **args: rollouts.list_rollouts(kind="plugin", **args), dump=dump_plugin_rollouts)


@bp.get("/plugins/rollouts/<int:rollout_id>")
@role_required("support")
def get_plugin_rollout(rollout_id: int):
    """One plugin rollout with its job counts by status, overall and per batch.
    ---
    get:
      tags: [plugins]
      responses:
        200:
          content:
            application/json:
              schema: PluginRolloutDetailSchema
        404:
          description: Unknown plugin rollout.
    """
    rollout = plugins.get_plugin_rollout(rollout_id)
    counts = rollouts.job_counts([rollout.id])[rollout.id]
    data = rollout_data(rollout, counts, rollouts.batch_counts(rollout), version=rollout.release.version)
    return jsonify(PluginRolloutDetailSchema().dump(data))
