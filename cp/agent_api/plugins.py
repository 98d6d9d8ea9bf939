"""The agent's plugin endpoints (signed): ask for a plugin, read its own requests and their
decisions, and the plugin job pair (``/api/plugins/next``, ``/api/plugins/report``), which is
the update pair of the rollout engine with job kind ``plugin``."""
from flask import jsonify

from cp.delivery import plugins
from cp.delivery import rollouts
from cp.extensions import db
from cp.web.parsing import load
from cp.agent_api import bp
from cp.agent_api.plugin_schemas import (
    AgentPluginRequestSchema,
    PluginJobSchema,
    PluginNextSchema,
    PluginReportSchema,
    PluginRequestCreateSchema,
    PluginRequestsMineSchema,
)
from cp.agent_api.signed import agent_endpoint
from cp.agent_api.update_schemas import report_response

request_schema = AgentPluginRequestSchema()
job_schema = PluginJobSchema()


@bp.post("/plugins/requests")
@agent_endpoint
def create_plugin_request(data: dict):
    """Ask for a plugin.
    ---
    post:
      summary: A pending request for the plugin (version null - the newest), for an admin to approve or reject.
      requestBody:
        required: true
        content:
          application/json:
            schema: PluginRequestCreateSchema
      responses:
        201:
          content:
            application/json:
              schema: AgentPluginRequestSchema
        404:
          description: Unknown installation (no heartbeat yet), plugin (unknown_plugin) or version (unknown_release).
        409:
          description: A request for this plugin is pending (request_pending), or it is installed at that version (plugin_already_installed).
    """
    body = load(PluginRequestCreateSchema(), data)
    request = plugins.create_request(**body)
    out = request_schema.dump(request)
    db.session.commit()
    return jsonify(out), 201


@bp.post("/plugins/requests/mine")
@agent_endpoint
def own_plugin_requests(data: dict):
    """This installation's plugin requests and their decisions.
    ---
    post:
      summary: The installation's own requests, newest first; a rejected one carries the admin's decision_reason.
      requestBody:
        required: true
        content:
          application/json:
            schema: PluginRequestsMineSchema
      responses:
        200:
          content:
            application/json:
              schema: AgentPluginRequestListSchema
    """
    body = load(PluginRequestsMineSchema(), data)
    instance_id = body.pop("instance_id")
    body = {k: v for k, v in body.items() if v is not None}
    page = plugins.list_own_requests(instance_id, **body)
    return jsonify({"items": request_schema.dump(page.items, many=True), "total": page.total})


@bp.post("/plugins/next")
@agent_endpoint
def next_plugin_job(data: dict):
    """The plugin job this installation should run now.
    ---
    post:
      summary: An approved install or a job of an opened plugin-rollout batch that has not finished, else null.
      description: >
        As /api/updates/next - the job is in_progress once fetched and asking again returns it;
        a paused or cancelled rollout hands out no new job. The job carries the plugin's name.
      requestBody:
        required: true
        content:
          application/json:
            schema: PluginNextSchema
      responses:
        200:
          content:
            application/json:
              schema: PluginNextResponseSchema
    """
    body = load(PluginNextSchema(), data)
    job = rollouts.next_job(plugins.JOB_KIND, body["instance_id"])
    out = {"job": job_schema.dump(job) if job is not None else None}
    db.session.commit()
    return jsonify(out)


@bp.post("/plugins/report")
@agent_endpoint
def report_plugin_job(data: dict):
    """Report progress or the outcome of a plugin job.
    ---
    post:
      summary: in_progress, succeeded (records the installed plugin version) or failed; returns the job.
      description: >-
        As /api/updates/report - the job's fields, and the same object under `job`. The same
        report twice is a no-op 200; a different status on a finished job is 409.
      requestBody:
        required: true
        content:
          application/json:
            schema: PluginReportSchema
      responses:
        200:
          content:
            application/json:
              schema: PluginReportResponseSchema
        403:
          description: The job belongs to another installation.
        404:
          description: Unknown plugin job.
        409:
          description: The job is finished with another status, or was not handed out.
    """
    body = load(PluginReportSchema(), data)
    job = rollouts.report_job(plugins.JOB_KIND, body["instance_id"], body["job_id"], body["status"],
                              body.get("message"))
    out = report_response(job_schema.dump(job))
    db.session.commit()
    return jsonify(out)
