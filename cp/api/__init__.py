"""The JSON API for people and their scripts (support, ops, admin): bearer token or session.

Each resource has its own module; handlers parse (``cp.web.parsing``), call the domain, and dump
with the resource's schema (``cp.api.schemas``)."""
from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api")


def init_app(app) -> None:
    from cp.extensions import csrf
    from cp.api import audit, fleet, people, plugins, releases, restores, rollouts, spec  # noqa: F401  (register routes)

    # JSON endpoints: bearer requests carry no ambient credential, and cookie requests are
    # checked for a same-site Origin in ``auth.require_role`` (with SameSite=Lax cookies).
    csrf.exempt(bp)
    app.register_blueprint(bp)
