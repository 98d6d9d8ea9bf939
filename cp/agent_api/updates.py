"""``POST /api/updates/next`` and ``POST /api/updates/report`` (agent, signed)."""
from flask import jsonify

from cp.delivery import rollouts
from cp.extensions import db
from cp.web.parsing import load
from cp.agent_api import bp
from cp.agent_api.signed import agent_endpoint
from cp.agent_api.update_schemas import UpdateJobSchema, UpdateNextSchema, UpdateReportSchema, report_response

job_schema = UpdateJobSchema()


@bp.post("/updates/next")
@agent_endpoint
def next_update(data: dict):
    """The update job this installation should run now.
    ---
    post:
      summary: A job of an opened batch that has not finished, else null; asking again returns the same job.
      description: The job is in_progress once fetched. A paused or cancelled rollout hands out no new job.
      requestBody:
        required: true
        content:
          application/json:
            schema: UpdateNextSchema
      responses:
        200:
          content:
            application/json:
              schema: UpdateNextResponseSchema
    """
    body = load(UpdateNextSchema(), data)
    job = rollouts.next_job("update", body["instance_id"])
    out = {"job": job_schema.dump(job) if job is not None else None}
    db.session.commit()
    return jsonify(out)


@bp.post("/updates/report")
@agent_endpoint
def report_update(data: dict):
    """Report progress or the outcome of an update job.
    ---
    post:
      summary: in_progress, succeeded (sets the installation's version) or failed; returns the job.
      description: >-
        The job's fields, and the same object under `job` (the shape of `/api/updates/next`), so
        clients read both answers alike. The same report twice is a no-op 200; a different status
        on a finished job is 409.
      requestBody:
        required: true
        content:
          application/json:
            schema: UpdateReportSchema
      responses:
        200:
          content:
            application/json:
              schema: UpdateReportResponseSchema
        403:
          description: The job belongs to another installation.
        404:
          description: Unknown job.
        409:
          description: The job is finished with another status, or was not handed out.
    """
    body = load(UpdateReportSchema(), data)
    job = rollouts.report_job("update", body["instance_id"], body["job_id"], body["status"], body.get("message"))
    out = report_response(job_schema.dump(job))
    db.session.commit()
    return jsonify(out)
