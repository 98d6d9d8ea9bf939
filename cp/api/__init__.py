"""The JSON API for people and their scripts (support, ops, admin): bearer token or session.

Each resource has its own module; handlers parse (``cp.web.parsing``), call the domain, and dump
with the resource's schema (``cp.api.schemas``)."""
from flask import Blueprint, request

from cp.web.parsing import require_json_content_type

from cp.extensions import csrf

bp = Blueprint("api", __name__, url_prefix="/api")

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@bp.before_request
def _only_json_bodies():
    """The one content-type rule of the JSON API: any body sent with an unsafe request is
    ``application/json`` or a 415, also on the actions that take no body (acknowledge, pause...),
    so a form post never passes for an empty JSON request."""
    if request.method in UNSAFE_METHODS:
        require_json_content_type()


def init_app(app) -> None:
    # the route modules import ``bp`` from here: imported once it exists (a cycle otherwise)
    from cp.api import audit, fleet, people, plugins, releases, restores, rollout_transitions, rollouts, spec  # noqa: F401

    # JSON endpoints: bearer requests carry no ambient credential, and cookie requests are
    # checked for a same-site Origin in ``auth.require_role`` (with SameSite=Lax cookies).
    csrf.exempt(bp)
    app.register_blueprint(bp)
