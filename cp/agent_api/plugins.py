"""The agent's plugin endpoints (signed): ask for a plugin, read its own requests and their
decisions, and the plugin job pair (``/api/plugins/next``, ``/api/plugins/report``), which is
the update pair of the rollout engine with job kind ``plugin``."""
from flask import jsonify

from cp.delivery import plugins
from cp.extensions import db
from cp.agent_api import bp
from cp.agent_api.plugin_schemas import (
    AgentPluginRequestListSchema,
    AgentPluginRequestSchema,
    PluginJobSchema,
    PluginNextResponseSchema,
    PluginNextSchema,
    PluginReportResponseSchema,
    PluginReportSchema,
    PluginRequestCreateSchema,
    PluginRequestsMineSchema,
)
from cp.agent_api.signed import agent_endpoint
from cp.agent_api.updates import hand_out_job, take_report

request_schema = AgentPluginRequestSchema()
job_schema = PluginJobSchema()


@bp.post("/plugins/requests")
@agent_endpoint(PluginRequestCreateSchema, AgentPluginRequestSchema, status=201)
def create_plugin_request(body: dict):
    """Ask for a plugin.
    ---
    post:
      summary: A pending request for the plugin (version null - the newest), for an admin to approve or reject.
      responses:
        404:
          description: Unknown installation (no heartbeat yet), plugin (unknown_plugin) or version (unknown_release).
        409:
          description: A request for this plugin is pending (request_pending), or it is installed at that version (plugin_already_installed).
    """
    request = plugins.create_request(**body)
    out = request_schema.dump(request)
    db.session.commit()
    return jsonify(out), 201


@bp.post("/plugins/requests/mine")
@agent_endpoint(PluginRequestsMineSchema, AgentPluginRequestListSchema)
def own_plugin_requests(body: dict):
    """The installation's own requests, newest first; a rejected one carries the admin's decision_reason."""
    instance_id = body.pop("instance_id")
    body = {k: v for k, v in body.items() if v is not None}
    page = plugins.list_own_requests(instance_id, **body)
    return jsonify({"items": request_schema.dump(page.items, many=True), "total": page.total})


@bp.post("/plugins/next")
@agent_endpoint(PluginNextSchema, PluginNextResponseSchema)
def next_plugin_job(body: dict):
    """The plugin job this installation should run now.
    ---
    post:
      summary: An approved install or a job of an opened plugin-rollout batch that has not finished, else null.
      description: >
        As /api/updates/next - the job is in_progress once fetched and asking again returns it;
        a paused or cancelled rollout hands out no new job. The job carries the plugin's name.
    """
    return hand_out_job(plugins.JOB_KIND, job_schema, body)


@bp.post("/plugins/report")
@agent_endpoint(PluginReportSchema, PluginReportResponseSchema)
def report_plugin_job(body: dict):
    """Report progress or the outcome of a plugin job.
    ---
    post:
      summary: in_progress, succeeded (records the installed plugin version) or failed; returns the job.
      description: >-
        As /api/updates/report - the job's fields, and the same object under `job`. The same
        report twice is a no-op 200; a different status on a finished job is 409.
      responses:
        403:
          description: The job belongs to another installation.
        404:
          description: Unknown plugin job.
        409:
          description: The job is finished with another status, or was not handed out.
    """
    return take_report(plugins.JOB_KIND, job_schema, body)
