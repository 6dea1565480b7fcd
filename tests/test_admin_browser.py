"""The admin's Users view of the operator console in a real browser (Debian's Chromium via Playwright)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from bot.accounts import Accounts
from bot.store import Store
from engine.stub import StubEngine
from tests.browser import chromium, needs_chromium
from tests.browser import sign_in as console_sign_in
from tests.live_server import PASSWORD, live_server

pytestmark = needs_chromium
SHOTS = Path(os.environ.get("SNAPDESK_SCREENSHOTS", tempfile.gettempdir()))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("admin-console")
    with live_server(data, engine=StubEngine(), login_rate_per_ip=1000,
                     users={"admin": "admin", "olga": "operator"}) as (base, app):
        yield base, Accounts(Store(data))


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def sign_in(browser, base: str, name: str):
    page = console_sign_in(browser, base, name, PASSWORD, "/operator")
    page.wait_for_selector(f"[data-testid=user-name]:text-is('{name}')")
    page.wait_for_selector("[data-testid=template-item]")
    return page


def row(page, name: str):
    return page.locator(f"[data-testid=users] [data-testid=user-row][data-name='{name}']")


def test_admin_adds_and_disables_an_account_and_an_operator_has_no_users_tab(browser, server):
    base, accounts = server
    admin = sign_in(browser, base, "admin")
    admin.click("[data-testid=nav-users]")
    admin.wait_for_selector("[data-testid=users] [data-testid=user-row][data-name=olga]")
    own = row(admin, "admin")
    assert own.get_attribute("data-role") == "admin" and own.get_attribute("data-disabled") == "false"
    assert own.locator("[data-testid=disable-user]").count() == 0  # never your own account
    assert row(admin, "olga").locator("[data-testid=disable-user]").count() == 1
    assert admin.get_attribute("[data-testid=new-user-password]", "type") == "password"
    assert admin.get_attribute("[data-testid=new-user-password]", "autocomplete") == "new-password"

    admin.fill("[data-testid=new-user-name]", "li")
    admin.select_option("[data-testid=new-user-role]", "agent")
    admin.fill("[data-testid=new-user-password]", "a long enough secret")
    admin.click("[data-testid=add-user]")
    admin.wait_for_selector("[data-testid=user-row][data-name=li][data-role=agent][data-disabled=false]")
    assert "Active" in row(admin, "li").inner_text()
    assert admin.input_value("[data-testid=new-user-password]") == ""

    # A short password, submitted from the keyboard: the server's message is shown.
    admin.fill("[data-testid=new-user-name]", "wen")
    admin.fill("[data-testid=new-user-password]", "short")
    admin.press("[data-testid=new-user-password]", "Enter")
    error = admin.wait_for_selector("[data-testid=error]:visible")
    assert "at least 10 characters" in error.inner_text()
    assert row(admin, "wen").count() == 0

    row(admin, "li").locator("[data-testid=disable-user]").click()
    admin.wait_for_selector("[data-testid=user-row][data-name=li][data-disabled=true]")
    assert any("li" in message for message in admin.dialogs)
    assert "Disabled" in row(admin, "li").inner_text()
    assert row(admin, "li").locator("[data-testid=disable-user]").count() == 0
    assert accounts.user("li").disabled and accounts.user("li").role == "agent"

    operator = sign_in(browser, base, "olga")
    assert operator.locator("[data-testid=nav-users]").is_hidden()
    operator.evaluate("() => { location.hash = '#/users'; }")
    operator.wait_for_selector("#view-templates:visible")
    assert operator.locator("[data-testid=users]").is_hidden()
    assert operator.locator("[data-testid=user-row]").count() == 0


def test_admin_sets_the_display_name_users_see(browser, server):
    base, accounts = server
    admin = sign_in(browser, base, "admin")
    admin.click("[data-testid=nav-users]")
    admin.wait_for_selector("[data-testid=users] [data-testid=user-row][data-name=olga]")
    assert row(admin, "olga").locator("[data-testid=display-name]").inner_text() == "olga"  # the login by default

    row(admin, "olga").locator("[data-testid=edit-display-name]").click()
    field = row(admin, "olga").locator("[data-testid=display-name-input]")
    field.fill("   ")
    row(admin, "olga").locator("[data-testid=save-display-name]").click()
    assert "cannot be empty" in admin.wait_for_selector("[data-testid=error]:visible").inner_text()
    field.fill("x" * 60 + "<b>")  # the field keeps 60 characters; the server would refuse more
    assert len(field.input_value()) == 60
    field.fill("Olga <b>Petrova</b>")
    admin.screenshot(path=str(SHOTS / "admin-display-name-edit.png"))
    field.press("Enter")
    admin.wait_for_function(
        """() => { const n = document.querySelector("[data-testid=user-row][data-name=olga] [data-testid=display-name]");
                   return n && n.textContent === 'Olga <b>Petrova</b>'; }""", timeout=10_000)
    assert accounts.user("olga").display_name == "Olga <b>Petrova</b>"

    row(admin, "olga").locator("[data-testid=edit-display-name]").click()
    row(admin, "olga").locator("[data-testid=display-name-input]").press("Escape")  # cancel: unchanged
    assert row(admin, "olga").locator("[data-testid=display-name]").inner_text() == "Olga <b>Petrova</b>"

    admin.fill("[data-testid=new-user-name]", "wen")
    admin.fill("[data-testid=new-user-display-name]", "Wen Li")
    admin.fill("[data-testid=new-user-password]", "a long enough secret")
    admin.click("[data-testid=add-user]")
    admin.wait_for_selector("[data-testid=user-row][data-name=wen]")
    assert row(admin, "wen").locator("[data-testid=display-name]").inner_text() == "Wen Li"
    assert accounts.user("wen").display_name == "Wen Li"
    admin.screenshot(path=str(SHOTS / "admin-display-names.png"))
    assert admin.evaluate("() => document.querySelectorAll('[data-testid=users] b').length") == 0


def test_admin_manages_an_account_from_the_users_tab(browser, server):
    from bot.store import CLAIMED, WAITING
    from tests.browser import open_page

    base, accounts = server
    accounts.add_user("kai", "agent", PASSWORD)
    store = accounts.store
    kai = console_sign_in(browser, base, "kai", PASSWORD, "/agent")
    kai.wait_for_selector("[data-testid=user-name]:text-is('kai')")
    assert kai.locator("[data-testid=console-switch]").is_hidden()  # agents have one console
    assert kai.get_attribute("[data-testid=change-password]", "href") == "/account/password"
    # An agent who opens the operator console is shown the way back, in the sign-in page's look.
    kai.goto(f"{base}/operator")
    kai.wait_for_selector("[data-testid=forbidden]")
    kai.screenshot(path=str(SHOTS / "forbidden-console.png"))
    kai.click("[data-testid=console-link]")
    kai.wait_for_url("**/agent")

    admin = sign_in(browser, base, "admin")
    switch = admin.locator("[data-testid=console-switch]")
    assert switch.is_visible() and switch.get_attribute("href") == "/agent"
    admin.click("[data-testid=nav-users]")
    admin.wait_for_selector("[data-testid=user-row][data-name=kai]")
    assert row(admin, "admin").locator("[data-testid=user-role]").count() == 0  # not your own role

    # Sign out everywhere: kai's open console is signed out.
    row(admin, "kai").locator("[data-testid=sign-out-user]").click()
    admin.wait_for_selector("[data-testid=notice]:has-text('Signed kai out everywhere')")
    assert any("Sign “kai” out everywhere" in message for message in admin.dialogs)
    kai.goto(f"{base}/agent")
    kai.wait_for_url("**/login**")

    # Reset the password: the next sign-in goes to the change-password page first.
    row(admin, "kai").locator("[data-testid=reset-password]").click()
    field = admin.locator("[data-testid=reset-password-row][data-name=kai] [data-testid=reset-password-input]")
    assert field.get_attribute("type") == "password" and field.get_attribute("autocomplete") == "new-password"
    field.fill("short")
    admin.click("[data-testid=save-reset-password]")
    assert "at least 10 characters" in admin.wait_for_selector("[data-testid=error]:visible").inner_text()
    field.fill("temporary password 1")
    admin.screenshot(path=str(SHOTS / "admin-reset-password.png"))
    admin.click("[data-testid=save-reset-password]")
    admin.wait_for_selector("[data-testid=user-row][data-name=kai][data-must-change=true]")
    assert row(admin, "kai").locator("[data-testid=must-change-password]").is_visible()
    admin.screenshot(path=str(SHOTS / "admin-users-actions.png"), full_page=True)

    kai = open_page(browser, f"{base}/agent")
    kai.wait_for_url("**/login**")
    kai.fill("#name", "kai")
    kai.fill("#password", "temporary password 1")
    kai.click("button[type=submit]")
    kai.wait_for_url("**/account/password**")
    assert "temporary password" in kai.inner_text("[data-testid=note]")
    kai.fill("#current_password", "temporary password 1")
    kai.fill("#new_password", "kai's own password")
    kai.fill("#repeat_password", "kai's own password")
    kai.screenshot(path=str(SHOTS / "change-password.png"))
    kai.click("button[type=submit]")
    kai.wait_for_url("**/agent")
    kai.wait_for_selector("[data-testid=user-name]:text-is('kai')")
    admin.click("#users-refresh")
    admin.wait_for_selector("[data-testid=user-row][data-name=kai][data-must-change=false]")

    # Change the role, and back.
    row(admin, "kai").locator("[data-testid=user-role]").select_option("operator")
    admin.wait_for_selector("[data-testid=user-row][data-name=kai][data-role=operator]")
    assert accounts.user("kai").role == "operator"
    row(admin, "kai").locator("[data-testid=user-role]").select_option("agent")
    admin.wait_for_selector("[data-testid=user-row][data-name=kai][data-role=agent]")

    # Disabling gives kai's claimed conversation back to the queue; enabling lets kai in again.
    held = store._ensure_conversation("widget", "held-by-kai", "v", "Visitor", "2026-01-01T00:00:00")
    store.set_owner(held["id"], CLAIMED, "kai")
    row(admin, "kai").locator("[data-testid=disable-user]").click()
    admin.wait_for_selector("[data-testid=user-row][data-name=kai][data-disabled=true]")
    assert store.conversation(held["id"])["status"] == WAITING
    assert row(admin, "kai").locator("[data-testid=reset-password]").count() == 0
    admin.screenshot(path=str(SHOTS / "admin-users-disabled.png"), full_page=True)
    row(admin, "kai").locator("[data-testid=enable-user]").click()
    admin.wait_for_selector("[data-testid=user-row][data-name=kai][data-disabled=false]")
    assert not accounts.user("kai").disabled
    again = console_sign_in(browser, base, "kai", "kai's own password", "/agent")
    again.wait_for_selector("[data-testid=user-name]:text-is('kai')")
