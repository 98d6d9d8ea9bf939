"""The Flask-Admin panel at ``/admin/``: one module per area registers its screens.

Each area module exposes ``register(admin)``; the secure base is ``cp.admin.base``.
"""
from __future__ import annotations

from flask_admin import Admin, expose

from .base import SecureIndexView

AREAS = ("fleet", "rollouts", "restores", "plugins", "outbox", "audit")


class IndexView(SecureIndexView):
    @expose("/")
    def index(self):
        return self.render("admin/index.html")


def init_app(app) -> None:
    admin = Admin(app, name="control-plane", url="/admin", index_view=IndexView(url="/admin", name="Dashboard"))
    for area in AREAS:
        try:
            module = __import__(f"{__name__}.{area}", fromlist=["register"])
        except ModuleNotFoundError as exc:  # an area not written yet
            if exc.name != f"{__name__}.{area}":
                raise
            continue
        module.register(admin)
