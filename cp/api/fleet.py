"""Fleet read API (support+) and alert / job-failure triage (ops+)."""
from flask import jsonify

from cp.fleet import alerts as alert_domain
from cp.fleet import queries as fleet
from cp.delivery import plugins as plugin_domain
from cp.api.audited import audited
from cp.auth import current_actor, role_required
from cp.web.parsing import load_args
from cp.delivery.releases import releases_behind
from cp.api import bp
from cp.api.schemas import (
    AlertArgsSchema,
    AlertSchema,
    InstallationArgsSchema,
    InstallationDetailSchema,
    InstallationSchema,
    JobFailureArgsSchema,
    JobFailureSchema,
)

installation_schema = InstallationSchema()
detail_schema = InstallationDetailSchema()
alert_schema = AlertSchema()
failure_schema = JobFailureSchema()


def installation_dict(inst, open_alerts: int, behind: int | None = None) -> dict:
    data = {c: getattr(inst, c) for c in installation_schema.fields if hasattr(inst, c)}
    data["stale"] = fleet.is_stale(inst.last_seen_at)
    data["open_alerts"] = open_alerts
    data["releases_behind"] = behind
    return data


@bp.get("/installations")
@role_required("support")
def list_installations():
    """List installations.
    ---
    get:
      tags: [fleet]
      summary: Installations, newest heartbeat first, with filters.
      parameters:
      - in: query
        schema: InstallationArgsSchema
      responses:
        200:
          content:
            application/json:
              schema: InstallationListSchema
    """
    args = load_args(InstallationArgsSchema())
    page = fleet.list_installations(**args)
    behind = releases_behind([i for i, _n in page.items])  # one query per page
    items = [installation_schema.dump(installation_dict(i, n, behind[i.id])) for i, n in page.items]
    return jsonify({"items": items, "total": page.total})


@bp.get("/installations/<instance_id>")
@role_required("support")
def get_installation(instance_id: str):
    """One installation with its alerts, job failures and installed plugins.
    ---
    get:
      tags: [fleet]
      parameters:
      - {in: path, name: instance_id, required: true, schema: {type: string}}
      responses:
        200:
          content:
            application/json:
              schema: InstallationDetailSchema
        404:
          description: Unknown installation.
    """
    inst = fleet.get_installation(instance_id)
    data = installation_dict(inst, fleet.open_alert_count(inst.id), releases_behind([inst])[inst.id])
    data["alerts"] = fleet.installation_alerts(inst.id)
    data["job_failures"] = fleet.installation_job_failures(inst.id)
    data["events"] = fleet.installation_events(inst.id)
    data["plugins"] = plugin_domain.installed_plugins(inst.id)
    return jsonify(detail_schema.dump(data))


@bp.get("/alerts")
@role_required("support")
def list_alerts():
    """List alerts.
    ---
    get:
      tags: [alerts]
      parameters:
      - in: query
        schema: AlertArgsSchema
      responses:
        200:
          content:
            application/json:
              schema: AlertListSchema
    """
    page = fleet.list_alerts(**load_args(AlertArgsSchema()))
    return jsonify({"items": alert_schema.dump(page.items, many=True), "total": page.total})


@bp.get("/job-failures")
@role_required("support")
def list_job_failures():
    """List job failures.
    ---
    get:
      tags: [alerts]
      parameters:
      - in: query
        schema: JobFailureArgsSchema
      responses:
        200:
          content:
            application/json:
              schema: JobFailureListSchema
    """
    page = fleet.list_job_failures(**load_args(JobFailureArgsSchema()))
    return jsonify({"items": failure_schema.dump(page.items, many=True), "total": page.total})


@bp.post("/alerts/<int:alert_id>/acknowledge")
@role_required("ops")
@audited("alert.acknowledge", "alert", "alert_id")
def acknowledge_alert(alert_id: int):
    """Acknowledge an alert (repeating it is a no-op).
    ---
    post:
      tags: [alerts]
      parameters:
      - {in: path, name: alert_id, required: true, schema: {type: integer}}
      responses:
        200:
          content:
            application/json:
              schema: AlertSchema
        404:
          description: Unknown alert.
    """
    alert = alert_domain.acknowledge_alert(alert_id, by=current_actor().label)
    return jsonify(alert_schema.dump(alert))


@bp.post("/alerts/<int:alert_id>/resolve")
@role_required("ops")
@audited("alert.resolve", "alert", "alert_id")
def resolve_alert(alert_id: int):
    """Resolve an alert (repeating it is a no-op).
    ---
    post:
      tags: [alerts]
      parameters:
      - {in: path, name: alert_id, required: true, schema: {type: integer}}
      responses:
        200:
          content:
            application/json:
              schema: AlertSchema
        404:
          description: Unknown alert.
    """
    alert = alert_domain.resolve_alert(alert_id, by=current_actor().label)
    return jsonify(alert_schema.dump(alert))


@bp.post("/job-failures/<int:failure_id>/resolve")
@role_required("ops")
@audited("job_failure.resolve", "job_failure", "failure_id")
def resolve_job_failure(failure_id: int):
    """Resolve a job failure (repeating it is a no-op).
    ---
    post:
      tags: [alerts]
      parameters:
      - {in: path, name: failure_id, required: true, schema: {type: integer}}
      responses:
        200:
          content:
            application/json:
              schema: JobFailureSchema
        404:
          description: Unknown job failure.
    """
    failure = alert_domain.resolve_job_failure(failure_id, by=current_actor().label)
    return jsonify(failure_schema.dump(failure))
