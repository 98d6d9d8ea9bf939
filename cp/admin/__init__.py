"""The Flask-Admin panel at ``/admin/``: one module per area registers its screens.

Each area module exposes ``register(admin)``; the secure base is ``cp.admin.base``. The index
is the fleet dashboard (``cp.fleet.dashboard``); the panel's pages extend ``admin/cp_base.html``
(role, link back to the fleet, log out) and use only assets shipped with the package.
"""
from __future__ import annotations

from flask import url_for
from flask_admin import Admin, expose
from flask_admin.theme import Bootstrap4Theme

from cp.web import charts
from cp.fleet import dashboard
from cp.admin import audit, fleet, outbox, people, plugins, restores, rollouts
from cp.admin.base import SecureIndexView

AREAS = (fleet, rollouts, restores, plugins, outbox, audit, people)  # each registers its screens, in menu order


class IndexView(SecureIndexView):
    @expose("/")
    def index(self):
        board = dashboard.build()
        return self.render("admin/index.html", board=board, charts=charts, list_url=self.list_url)

    def list_url(self, endpoint: str, **filters: str) -> str | None:
        """URL of an admin list with filters given by their names (``Status="open"``), or
        None when that screen does not exist or the current role may not see it."""
        view = next((v for v in self.admin._views if getattr(v, "endpoint", None) == endpoint), None)
        if view is None or not view.is_accessible():
            return None
        args = {}
        for pos, (name, value) in enumerate(filters.items()):
            label = name.replace("_", " ")
            for idx, flt in enumerate(getattr(view, "_filters", None) or []):
                if flt.name == label and str(flt.operation()) in ("equals", "is"):
                    args[f"flt{pos}_{view.get_filter_arg(idx, flt)}"] = value
                    break
        return url_for(f"{endpoint}.index_view", **args)


def init_app(app) -> None:
    theme = Bootstrap4Theme(base_template="admin/cp_base.html", swatch="cerulean", fluid=True)
    from cp.web.security import csp_nonce

    admin = Admin(app, name="control-plane", url="/admin", theme=theme,
                  index_view=IndexView(url="/admin", name="Dashboard"),
                  csp_nonce_generator=csp_nonce)  # its inline scripts carry the CSP nonce (cp.web.security)
    for area in AREAS:
        area.register(admin)
