"""The Flask-Admin panel at ``/admin/``: one module per area registers its screens.

Each area module exposes ``register(admin)``; the secure base is ``cp.admin.base``. The index
is the fleet dashboard (``cp.fleet.dashboard``); the panel's pages extend ``admin/cp_base.html``
(role, link back to the fleet, log out) and use only assets shipped with the package.
"""
from __future__ import annotations

from flask import current_app, redirect, url_for
from flask_admin import Admin, BaseView, expose
from flask_admin.menu import MenuLink
from flask_admin.theme import Bootstrap4Theme

from cp.web import charts
from cp.web.security import csp_nonce
from cp.fleet import dashboard
from cp.admin import audit, fleet, outbox, people, plugins, restores, rollouts
from cp.admin.base import SecureIndexView

AREAS = (fleet, rollouts, restores, plugins, outbox, audit, people)  # each registers its screens, in menu order


class FleetPages(BaseView):
    """The fleet pages (``/``, ``/installations/<id>``, ``cp.web.pages``, behind their own login
    check) render through this view (``render_page``), so they carry the panel's theme and
    navigation bar. It is no screen of the panel (no routes, not in the menu, where
    ``FleetLink`` stands for it); the panel is its ``admin``, as for a registered view."""

    def __init__(self, panel: "Panel"):
        super().__init__(name="Fleet", endpoint="fleet_pages")
        self.admin = panel

    @expose("/")
    def index(self):  # Flask-Admin wants a default view; never routed (the view is not registered)
        return redirect(url_for("views.index"))


class FleetLink(MenuLink):
    """The menu's entry of the fleet list, active on the fleet pages."""

    def is_active(self, view) -> bool:
        return isinstance(view, FleetPages)


def render_page(template: str, **context) -> str:
    """A page outside ``/admin`` in the panel's look: its theme and its navigation bar."""
    return current_app.extensions["cp_panel"].fleet_pages.render(template, **context)


class Panel(Admin):
    """The panel, with its own index of the screens by endpoint (``view_for``)."""

    def __init__(self, *args, **kwargs):
        self.screens: dict[str, object] = {}
        super().__init__(*args, **kwargs)
        self.fleet_pages = FleetPages(self)

    def add_view(self, view) -> None:
        super().add_view(view)
        self.screens[view.endpoint] = view

    def view_for(self, endpoint: str):
        return self.screens.get(endpoint)


class IndexView(SecureIndexView):
    @expose("/")
    def index(self):
        board = dashboard.build()
        return self.render("admin/index.html", board=board, charts=charts, list_url=self.list_url)

    def list_url(self, endpoint: str, **filters: str) -> str | None:
        """URL of an admin list with filters given by their names (``Status="open"``), or
        None when that screen does not exist or the current role may not see it."""
        view = self.admin.view_for(endpoint)
        if view is None or not view.is_accessible():
            return None
        args = {}
        for pos, (name, value) in enumerate(filters.items()):
            label = name.replace("_", " ")
            for idx, flt in enumerate(view.get_filters() or []):
                if flt.name == label and str(flt.operation()) in ("equals", "is"):
                    args[f"flt{pos}_{view.get_filter_arg(idx, flt)}"] = value
                    break
        return url_for(f"{endpoint}.index_view", **args)


def init_app(app) -> None:
    theme = Bootstrap4Theme(base_template="admin/cp_base.html", swatch="cerulean", fluid=True)
    admin = Panel(app, name="control-plane", url="/admin", theme=theme,
                  index_view=IndexView(url="/admin", name="Dashboard"),
                  csp_nonce_generator=csp_nonce)  # its inline scripts carry the CSP nonce (cp.web.security)
    admin.add_menu_item(FleetLink("Fleet", endpoint="views.index"))
    app.extensions["cp_panel"] = admin
    for area in AREAS:
        area.register(admin)
