"""End to end in Chromium: an admin adds a person, the person logs in with a personal token,
acknowledges an alert, the alert and the audit log name them; deactivating them logs them out."""
from __future__ import annotations

import pytest
import requests

from tests.browser.conftest import Session, save_screenshot
from tests.conftest import TOKENS

pytestmark = [pytest.mark.browser, pytest.mark.live]

EMAIL = "ann.ops@example.com"
MESSAGE = "Search index rebuild running long"


def flash(s) -> str:
    return " ".join(s.page.locator(".alert").all_inner_texts())


def test_a_person_is_added_logs_in_acts_and_is_named_then_deactivated(browser, session_as, panel):
    admin = session_as("admin")
    admin.goto("/admin/people/new/")
    admin.page.fill("input[name=email]", EMAIL)
    admin.page.fill("input[name=name]", "Ann Ops")
    admin.page.select_option("select[name=role]", "ops", force=True)  # select2 hides the <select>
    with admin.page.expect_navigation():
        admin.page.click("input[type=submit][value=Save], button[type=submit]:has-text('Save')")
    assert EMAIL in admin.page.locator("table.model-list").inner_text()
    save_screenshot(admin.page, "people.png")

    # the first personal token, issued by an admin for the person (the person makes more in "My tokens")
    users = requests.get(panel.url + "/api/users", headers={"Authorization": f"Bearer {TOKENS['admin']}"},
                         timeout=10).json()["items"]
    uid = next(u["id"] for u in users if u["email"] == EMAIL)
    secret = requests.post(panel.url + f"/api/users/{uid}/tokens", json={"name": "browser test"},
                           headers={"Authorization": f"Bearer {TOKENS['admin']}"}, timeout=10).json()["token"]

    ann = Session(browser, panel.url, None)
    try:
        ann.page.goto("/login")
        ann.page.fill("input[name=token]", secret)
        ann.page.click("button[type=submit]")
        ann.page.wait_for_load_state()
        assert "/login" not in ann.page.url
        ann.goto("/admin/alerts/?search=globex-001")
        assert EMAIL in ann.page.locator(".cp-role").inner_text()
        ann.page.locator("table.model-list tr", has_text=MESSAGE).locator("input.action-checkbox").check()
        ann.page.click("a.dropdown-toggle:has-text('With selected')")
        with ann.page.expect_navigation():
            ann.page.locator(".dropdown-menu.show a.dropdown-item").get_by_text("Acknowledge", exact=True).click()
        assert "1 alert(s) acknowledged." in flash(ann)
        assert f"acknowledged by {EMAIL}" in ann.page.locator("table.model-list tr", has_text=MESSAGE).inner_text()

        # the admin's audit screen names the person, and filters by them
        admin.goto("/admin/audit_log/")
        row = admin.page.locator("table.model-list tr", has_text="admin.alert.acknowledge").first
        assert EMAIL in row.inner_text()
        admin.page.click("a.dropdown-toggle:has-text('Add Filter')")
        admin.page.locator(".dropdown-menu.show a", has_text="Actor").first.click()
        admin.page.locator("input.filter-val").last.fill(EMAIL)
        with admin.page.expect_navigation():
            admin.page.click("button:has-text('Apply')")
        rows = admin.page.locator("table.model-list tbody tr")
        assert rows.count() >= 1 and all(EMAIL in t for t in rows.all_inner_texts())

        # deactivated: the person's open tab is logged out at its next request
        admin.goto("/admin/people/")
        admin.page.locator("table.model-list tr", has_text=EMAIL).locator("a[title='Edit Record']").click()
        admin.page.wait_for_load_state()
        admin.page.uncheck("input[name=active]")
        with admin.page.expect_navigation():
            admin.page.click("input[type=submit][value=Save], button[type=submit]:has-text('Save')")
        assert "inactive" in admin.page.locator("table.model-list tr", has_text=EMAIL).inner_text().lower() or \
            admin.page.locator("table.model-list tr", has_text=EMAIL).locator(".fa-minus-circle, .icon-minus-sign, "
                                                                              "[class*=minus]").count() == 1
        ann.page.reload()
        ann.page.wait_for_load_state()
        assert "/login" in ann.page.url
        assert requests.get(panel.url + "/api/me", headers={"Authorization": f"Bearer {secret}"},
                            timeout=10).status_code == 401
    finally:
        ann.close()
