"""``POST /api/updates/next`` and ``POST /api/updates/report`` (agent, signed): the job pair of the
rollout engine. ``hand_out_job`` and ``take_report`` serve the plugin pair too (job kind ``plugin``)."""
from flask import jsonify
from marshmallow import Schema

from cp.delivery import rollouts
from cp.extensions import db
from cp.agent_api import bp
from cp.agent_api.signed import agent_endpoint
from cp.agent_api.update_schemas import (
    UpdateJobSchema,
    UpdateNextResponseSchema,
    UpdateNextSchema,
    UpdateReportResponseSchema,
    UpdateReportSchema,
)

job_schema = UpdateJobSchema()


def hand_out_job(job_kind: str, schema: Schema, body: dict):
    """The job of ``job_kind`` the installation should run now (``{"job": null}`` for none),
    dumped with ``schema``."""
    job = rollouts.next_job(job_kind, body["instance_id"])
    out = {"job": schema.dump(job) if job is not None else None}
    db.session.commit()
    return jsonify(out)


def take_report(job_kind: str, schema: Schema, body: dict):
    """Record the agent's report on its job; the answer is the job's fields (dumped with
    ``schema``), and the same object under ``job`` (the shape ``next`` answers with), so clients
    read both answers alike."""
    job = rollouts.report_job(job_kind, body["instance_id"], body["job_id"], body["status"], body.get("message"))
    out = schema.dump(job)
    db.session.commit()
    return jsonify({**out, "job": out})


@bp.post("/updates/next")
@agent_endpoint(UpdateNextSchema, UpdateNextResponseSchema)
def next_update(body: dict):
    """The update job this installation should run now.
    ---
    post:
      summary: A job of an opened batch that has not finished, else null; asking again returns the same job.
      description: The job is in_progress once fetched. A paused or cancelled rollout hands out no new job.
    """
    return hand_out_job("update", job_schema, body)


@bp.post("/updates/report")
@agent_endpoint(UpdateReportSchema, UpdateReportResponseSchema)
def report_update(body: dict):
    """Report progress or the outcome of an update job.
    ---
    post:
      summary: in_progress, succeeded (sets the installation's version) or failed; returns the job.
      description: >-
        The job's fields, and the same object under `job` (the shape of `/api/updates/next`), so
        clients read both answers alike. The same report twice is a no-op 200; a different status
        on a finished job is 409.
      responses:
        403:
          description: The job belongs to another installation.
        404:
          description: Unknown job.
        409:
          description: The job is finished with another status, or was not handed out.
    """
    return take_report("update", job_schema, body)
