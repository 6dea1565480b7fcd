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


# The operator console's template editor is CodeMirror over the #editor textarea (the textarea
# itself when CodeMirror did not load): tests read and write it through the editor, as typing would.
_EDITOR = "(document.querySelector('#code .CodeMirror') || {}).CodeMirror"
_EDITOR_TEXT = f"() => {_EDITOR} ? {_EDITOR}.getValue() : document.querySelector('#editor').value"


def editor_text(page) -> str:
    """The template YAML in the operator console's editor."""
    return page.evaluate(_EDITOR_TEXT)


def set_editor(page, text: str) -> None:
    """Replace the editor's text as an edit by the operator (the draft turns dirty and is checked)."""
    page.evaluate(f"""text => {{
      const cm = {_EDITOR};
      if (cm) {{ cm.setValue(text); return; }}
      const area = document.querySelector('#editor');
      area.value = text;
      area.dispatchEvent(new Event('input', {{bubbles: true}}));
    }}""", text)


def wait_for_editor(page, fragment: str, timeout: float = 10_000) -> None:
    """Wait until the editor holds a template containing `fragment` (it loads after a click)."""
    page.wait_for_function(f"fragment => ({_EDITOR_TEXT})().includes(fragment)", arg=fragment, timeout=timeout)
