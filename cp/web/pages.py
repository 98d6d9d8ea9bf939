"""HTML pages for people: the fleet list (``/``) and an installation (``/installations/<id>``)."""
from __future__ import annotations

from flask import Blueprint, request
from marshmallow import ValidationError

from cp.web import charts
from cp.fleet import queries as fleet
from cp.fleet import history
from cp.delivery import plugins, restores, rollouts
from cp.delivery.releases import releases_behind
from cp.admin import render_page
from cp.api.schemas import InstallationArgsSchema
from cp.auth import current_role, login_required_html, role_allows
from cp.models import BACKUP_STATUS_VALUES, HEALTH_VALUES
from cp.timeutil import isoformat

bp = Blueprint("views", __name__)
PAGE_SIZE = 50


@bp.get("/")
@login_required_html("support")
def index():
    try:
        args = InstallationArgsSchema().load(request.args.to_dict())
        error = None
    except ValidationError as err:
        args, error = {"limit": PAGE_SIZE, "offset": 0}, err.messages
    sort = request.args.get("sort", "last_seen")
    if sort not in fleet.SORTS:
        sort = "last_seen"
    args.setdefault("limit", PAGE_SIZE)
    page = fleet.list_installations(sort=sort, **args)
    return render_page(
        "fleet.html", page=page, args=args, sort=sort, sorts=list(fleet.SORTS), error=error,
        health_values=HEALTH_VALUES, backup_values=BACKUP_STATUS_VALUES, is_stale=fleet.is_stale,
        behind=releases_behind([inst for inst, _n in page.items]),  # one query per page
    )


@bp.get("/installations/<instance_id>")
@login_required_html("support")
def installation(instance_id: str):
    inst = fleet.get_installation(instance_id)
    return render_page(
        "installation.html", inst=inst, stale=fleet.is_stale(inst.last_seen_at),
        alerts=fleet.installation_alerts(inst.id), job_failures=fleet.installation_job_failures(inst.id),
        events=fleet.installation_events(inst.id), extras=installation_extras(inst),
        pictures=history.installation_pictures(inst.id, request.args.get("window")), charts=charts,
    )


def installation_extras(inst) -> dict:
    """The delivery sections of the installation page: updates, restores, plugins."""
    extras = {"updates": rollouts.installation_history(inst.id), "plugins": plugins.installation_history(inst.id)}
    if role_allows(current_role(), restores.READ_ROLE):
        extras["restores"] = restores.installation_history(inst.id)
    return extras


def init_app(app) -> None:
    app.register_blueprint(bp)

    @app.template_filter("ts")
    def _ts(value):
        text = isoformat(value)
        return text.replace("T", " ")[:19] + " UTC" if text else "—"
