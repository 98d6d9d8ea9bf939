"""The JSON API for people and their scripts (support, ops, admin): bearer token or session.

Each resource has its own module; handlers parse (``cp.http``), call the domain, and dump
with the resource's schema (``cp.api.schemas``)."""
from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api")


def init_app(app) -> None:
    from ..extensions import csrf
    from . import fleet  # noqa: F401  (registers routes)

    for module in ("releases", "rollouts", "restores", "plugins", "spec", "audit"):
        try:
            __import__(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:  # a feature module not written yet
            if exc.name != f"{__name__}.{module}":
                raise
    # JSON endpoints: bearer requests carry no ambient credential, and cookie requests are
    # checked for a same-site Origin in ``auth.require_role`` (with SameSite=Lax cookies).
    csrf.exempt(bp)
    app.register_blueprint(bp)
