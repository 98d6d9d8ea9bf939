"""The signed agent endpoints (``/api/heartbeats``, ``/api/updates/*``, ``/api/restores/report``,
``/api/plugins/{requests,next,report}``). Every view is wrapped by ``agent_endpoint``, which
checks the signature over the raw body before anything is parsed or stored."""
from flask import Blueprint

bp = Blueprint("agent_api", __name__, url_prefix="/api")


def init_app(app) -> None:
    from ..extensions import csrf
    from . import heartbeats  # noqa: F401  (registers routes)

    for module in ("updates", "restores", "plugins"):
        try:
            __import__(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:  # a feature module not written yet
            if exc.name != f"{__name__}.{module}":
                raise
    csrf.exempt(bp)
    app.register_blueprint(bp)
    heartbeats.init_app(app)
