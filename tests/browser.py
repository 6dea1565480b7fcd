"""Launching Debian's Chromium for the browser tests (Playwright cannot download browsers here)."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
# On a developer's machine without Chromium the browser tests are skipped; in CI (CI is set) they
# must run, so a missing browser is a failure there, never a quiet skip.
needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("CI"),
                                    reason="Debian's chromium is not installed")


@contextmanager
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str):
    """A fresh context and page; confirm dialogs are accepted, others dismissed, all recorded."""
    context = browser.new_context(locale="en-US", viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.dialogs = []

    def on_dialog(dialog):
        page.dialogs.append(dialog.message)
        dialog.accept() if dialog.type == "confirm" else dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(url)
    return page


def sign_in(browser, base: str, name: str, password: str, path: str):
    """Open a console page, sign in on the login page it redirects to, land back on it."""
    page = open_page(browser, f"{base}{path}")
    page.wait_for_url("**/login**")
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"**{path}")
    return page
