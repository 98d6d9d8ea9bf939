"""The signed agent endpoints (``/api/heartbeats``, ``/api/updates/*``, ``/api/restores/report``,
``/api/plugins/{requests,next,report}``). Every view is wrapped by ``agent_endpoint``, which
checks the signature over the raw body before the body is validated or stored
(``cp.agent_api.signed.check_signature``)."""
from flask import Blueprint

bp = Blueprint("agent_api", __name__, url_prefix="/api")


def init_app(app) -> None:
    from cp.extensions import csrf
    from cp.agent_api import heartbeats, plugins, restores, updates  # noqa: F401  (register routes)

    csrf.exempt(bp)
    app.register_blueprint(bp)
