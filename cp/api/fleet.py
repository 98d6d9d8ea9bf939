"""Fleet read API (support+) and alert / job-failure triage (ops+)."""
from typing import Callable

from flask import jsonify

from cp.fleet import alerts as alert_domain
from cp.fleet import queries as fleet
from cp.delivery import plugins as plugin_domain
from cp.auth import role_required
from cp.web.parsing import load_args
from cp.delivery.releases import releases_behind
from cp.api import bp
from cp.api.actions import register_action, register_list
from cp.api.schemas import (
    AlertArgsSchema,
    AlertListSchema,
    AlertSchema,
    InstallationArgsSchema,
    InstallationDetailSchema,
    InstallationSchema,
    JobFailureArgsSchema,
    JobFailureListSchema,
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


register_list("/alerts", endpoint="list_alerts", role="support", tag="alerts", summary="List alerts.",
              args=AlertArgsSchema, answer=AlertListSchema,
              fetch=fleet.list_alerts, dump=AlertSchema(many=True).dump)


register_list("/job-failures", endpoint="list_job_failures", role="support", tag="alerts",
              summary="List job failures.", args=JobFailureArgsSchema, answer=JobFailureListSchema,
              fetch=fleet.list_job_failures,
              dump=JobFailureSchema(many=True).dump)


# --- triage: acknowledge/resolve (ops+, no body; repeating one is a no-op) --------------------
def _alert_action(action: Callable) -> Callable[[int, dict, str | None], dict]:
    return lambda alert_id, _body, by: alert_schema.dump(action(alert_id, by=by))


register_action("/alerts/<int:alert_id>/acknowledge", endpoint="acknowledge_alert", id_arg="alert_id", role="ops",
                audit="alert.acknowledge", target_type="alert", tag="alerts", answer=AlertSchema,
                summary="Acknowledge an alert (repeating it is a no-op).", errors={404: "Unknown alert."},
                run=_alert_action(alert_domain.acknowledge_alert))
register_action("/alerts/<int:alert_id>/resolve", endpoint="resolve_alert", id_arg="alert_id", role="ops",
                audit="alert.resolve", target_type="alert", tag="alerts", answer=AlertSchema,
                summary="Resolve an alert (repeating it is a no-op).", errors={404: "Unknown alert."},
                run=_alert_action(alert_domain.resolve_alert))
register_action("/job-failures/<int:failure_id>/resolve", endpoint="resolve_job_failure", id_arg="failure_id",
                role="ops", audit="job_failure.resolve", target_type="job_failure", tag="alerts",
                answer=JobFailureSchema, summary="Resolve a job failure (repeating it is a no-op).",
                errors={404: "Unknown job failure."},
                run=lambda failure_id, _body, by: failure_schema.dump(
                    alert_domain.resolve_job_failure(failure_id, by=by)))
