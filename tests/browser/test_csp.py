"""The Content-Security-Policy in a real browser: every page of the panel and the fleet views
loads and works with no script or style refused (cp/web/security.py, docs/security.md)."""
from __future__ import annotations

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.live]


def refused(s) -> list[str]:
    return [e for e in s.console_errors if "Content Security Policy" in e or "Refused to" in e]


def admin_list_paths(session) -> list[str]:
    """Every screen in the admin menu (the menu is built from the registered views)."""
    hrefs = session.page.eval_on_selector_all(
        "#admin-navbar-collapse a[href^='/admin/']", "els => els.map(e => e.getAttribute('href'))")
    return sorted({h for h in hrefs if h and h != "/admin/"})


def test_every_page_loads_under_the_csp(session_as):
    s = session_as("admin")
    s.goto("/admin/")
    paths = ["/", "/installations/acme-001", "/admin/", "/api/docs", *admin_list_paths(s)]
    assert len(paths) >= 7, paths
    for path in paths:
        resp = s.goto(path)
        assert resp.status == 200, path
        csp = resp.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";")[0]
        # the scripts really ran: jQuery is there on the panel's pages
        if path.startswith("/admin/"):
            assert s.page.evaluate("typeof window.jQuery") == "function", path
    assert not refused(s), refused(s)


def test_filters_dropdowns_and_bulk_actions_work_under_the_csp(session_as):
    s = session_as("ops")
    s.goto("/admin/alerts/")
    # "Add Filter" is a Flask-Admin dropdown driven by its scripts (its inline handler is gone)
    s.page.click("a.dropdown-toggle:has-text('Add Filter')")
    s.page.locator(".field-filters a.filter").first.click()
    assert s.page.locator("#filter_form .filter-op, #filter_form select").count() >= 1
    assert s.page.url.endswith("/admin/alerts/")  # the placeholder link did not navigate
    # a bulk action through the data-cp-action handler (cp/static/cp-admin-csp.js)
    s.page.locator("input.action-checkbox").first.check()
    s.page.click("a.dropdown-toggle:has-text('With selected')")
    with s.page.expect_navigation():
        s.page.locator(".dropdown-menu.show a[data-cp-action='acknowledge']").click()
    assert "acknowledged" in " ".join(s.page.locator(".alert").all_inner_texts())
    assert not refused(s), refused(s)
