"""The operator console's template editor: CodeMirror as released, served strictly, and in Chromium a
YAML editor that wraps, highlights, keeps the console's draft handling, and runs under the page's CSP
(with the plain textarea still working when CodeMirror does not load)."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import httpx
import pytest

from bot.web.static_files import ASSETS
from engine.stub import StubEngine
from tests.browser import chromium, editor_text, needs_chromium, set_editor, sign_in, wait_for_editor
from tests.live_server import PASSWORD, live_server

STATIC = resources.files("bot.web").joinpath("static")
VENDORED = json.loads(STATIC.joinpath("vendored.json").read_text(encoding="utf-8"))
CM = "document.querySelector('#code .CodeMirror').CodeMirror"
LONG = "A line far longer than the editor is wide, " * 12


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("editor"), engine=StubEngine(), login_rate_per_ip=1000,
                     users={"olga": "operator"}) as (base, app):
        yield base


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def test_the_vendored_editor_is_the_release_byte_for_byte():
    codemirror = VENDORED["codemirror"]
    assert codemirror["version"].startswith("5.65.") and codemirror["license"] == "MIT"
    for name, entry in codemirror["files"].items():
        data = STATIC.joinpath(name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{name} differs from CodeMirror {codemirror['version']}"
    assert f'CodeMirror.version = "{codemirror["version"]}"'.encode() in STATIC.joinpath("codemirror.js").read_bytes()
    assert b"MIT License" in STATIC.joinpath("codemirror-LICENSE.txt").read_bytes()


def test_the_vendored_files_are_served_as_released_with_strict_types(server):
    types = {"js": "text/javascript", "css": "text/css", "txt": "text/plain"}
    for name in [*VENDORED["codemirror"]["files"], "yaml-editor.js"]:
        response = httpx.get(f"{server}/static/{name}")
        assert response.status_code == 200, name
        assert response.content == STATIC.joinpath(name).read_bytes(), name
        assert response.headers["content-type"].startswith(types[name.rsplit(".", 1)[1]]), name
        assert response.headers["x-content-type-options"] == "nosniff"
        assert name in ASSETS
        # Revalidated, not downloaded again: the 400 KB editor costs one round trip on a reload.
        again = httpx.get(f"{server}/static/{name}", headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
    assert httpx.get(f"{server}/static/vendored.json").status_code == 404  # the manifest is for tests only


def contrast(foreground: str, background: str) -> float:
    """WCAG contrast ratio of two CSS rgb() colours."""
    def luminance(css: str) -> float:
        channels = [int(v) / 255 for v in css[css.index("(") + 1:css.index(")")].split(",")[:3]]
        r, g, b = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    high, low = sorted([luminance(foreground), luminance(background)], reverse=True)
    return (high + 0.05) / (low + 0.05)


def open_billing(browser, server, problems: list[str]):
    page = sign_in(browser, server, "olga", PASSWORD, "/operator")
    page.on("console", lambda m: m.type == "error" and problems.append(m.text))
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.set_viewport_size({"width": 1280, "height": 900})
    page.click("[data-testid=template-item][data-name=billing] [data-testid=edit-template]")
    wait_for_editor(page, "name: billing")
    return page


@needs_chromium
def test_the_editor_wraps_highlights_and_keeps_the_drafts_behaviour(browser, server, tmp_path):
    problems: list[str] = []
    page = open_billing(browser, server, problems)
    assert page.is_hidden("#editor") and page.is_hidden("#gutter")  # CodeMirror took the textarea's place
    assert page.evaluate(f"() => [{CM}.getOption('mode'), {CM}.getOption('lineWrapping'), {CM}.getOption('lineNumbers')]") \
        == ["yaml", True, True]
    original = editor_text(page)
    assert page.get_attribute("#ws-draft", "data-state") == "clean"

    # A comment and a long line: highlighted by kind, wrapped (no sideways scrolling at 1280 px).
    set_editor(page, "# Billing, edited in the console\n" + original.replace("  en: Explains", f"  en: {LONG}Explains", 1))
    page.wait_for_selector("#ws-draft[data-state=dirty]")
    for kind in ("cm-atom", "cm-string", "cm-comment", "cm-meta"):
        assert page.locator(f".CodeMirror .{kind}").count() > 0, kind
    assert page.inner_text(".CodeMirror .cm-comment >> nth=0") == "# Billing, edited in the console"
    assert page.inner_text(".CodeMirror .cm-atom >> nth=0") == "name"
    scroll = page.evaluate("() => { const s = document.querySelector('.CodeMirror-scroll'); return [s.scrollWidth, s.clientWidth] }")
    assert scroll[0] <= scroll[1], scroll
    assert page.is_hidden(".CodeMirror-hscrollbar")
    colours = page.evaluate("""() => {
      const of = sel => getComputedStyle(document.querySelector(sel)).color;
      return {atom: of('.CodeMirror .cm-atom'), string: of('.CodeMirror .cm-string'), comment: of('.CodeMirror .cm-comment'),
              background: getComputedStyle(document.querySelector('#code .CodeMirror')).backgroundColor};
    }""")
    assert len({colours["atom"], colours["string"], colours["comment"]}) == 3, colours
    for kind in ("atom", "string", "comment"):
        assert contrast(colours[kind], colours["background"]) >= 4.5, (kind, colours)

    # Typing re-validates: a broken expression is an issue on its line; clicking it goes there.
    broken = editor_text(page).replace("{{ company }}", "{{ company ", 1)
    line = broken.split("\n").index(next(t for t in broken.split("\n") if "{{ company " in t and "{{ company }}" not in t)) + 1
    set_editor(page, broken)
    page.wait_for_selector(f"[data-testid=issue][data-line='{line}']", timeout=10_000)
    assert page.locator(".CodeMirror .op-issue-mark .CodeMirror-linenumber").inner_text() == str(line)
    assert page.is_disabled("[data-testid=publish]")
    page.evaluate(f"() => {CM}.setCursor(0, 0)")
    page.click(f"[data-testid=issue][data-line='{line}'] button")
    assert page.evaluate(f"() => {CM}.getCursor().line") + 1 == line
    assert page.evaluate(f"() => {CM}.hasFocus()")
    assert page.inner_text("#cursor-pos").startswith(f"Ln {line},")

    # Real keys: Tab indents with spaces, typing marks the draft dirty and re-validates.
    set_editor(page, original)
    page.wait_for_selector("[data-testid=issues] #issues-ok:not([hidden])", timeout=10_000)
    page.evaluate(f"() => {{ {CM}.focus(); {CM}.setCursor({{line: 0, ch: 0}}); }}")
    page.keyboard.press("Tab")
    page.keyboard.type("x")
    assert editor_text(page).startswith("  xname: billing") and "\t" not in editor_text(page)
    page.wait_for_selector("#ws-draft[data-state=dirty]")
    page.wait_for_selector("[data-testid=issue]", timeout=10_000)  # the indented key breaks the YAML
    page.keyboard.press("Backspace")
    page.keyboard.press("Shift+Tab")
    assert editor_text(page) == original
    page.wait_for_selector("#ws-draft[data-state=clean]")
    page.wait_for_selector("[data-testid=issues] #issues-ok:not([hidden])", timeout=10_000)
    # Esc then Tab leaves the editor instead of indenting (no keyboard trap).
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")
    assert not page.evaluate(f"() => {CM}.hasFocus()") and editor_text(page) == original

    page.screenshot(path=str(tmp_path / "editor.png"))
    assert not problems, problems  # no CSP violation, no script error


@needs_chromium
def test_publish_reads_the_editor_and_a_loaded_version_replaces_its_text(browser, tmp_path):
    with live_server(tmp_path, engine=StubEngine(), login_rate_per_ip=1000, users={"olga": "operator"}) as (base, app):
        problems: list[str] = []
        page = open_billing(browser, base, problems)
        original = editor_text(page)
        set_editor(page, original.replace("Acme", "Globex"))
        page.wait_for_selector("[data-testid=issues] #issues-ok:not([hidden])", timeout=10_000)
        page.click("[data-testid=publish]")
        page.wait_for_selector("[data-testid=version][data-version='2'][data-live=true]", timeout=10_000)
        assert "Globex" in app.state.runtime.store.published_template_versions("billing")[0]["body"]
        page.wait_for_selector("#ws-draft[data-state=clean]")
        page.click("[data-testid=version][data-version='1'] [data-testid=restore]")
        page.wait_for_selector("[data-testid=version][data-version='3'][data-live=true]", timeout=10_000)
        page.wait_for_function(f"() => !{CM}.getValue().includes('Globex')")
        assert editor_text(page) == original
        assert page.evaluate(f"() => {CM}.historySize().undo") == 0  # loading a version is not an undoable edit
        assert not problems, problems


@needs_chromium
def test_without_codemirror_the_plain_textarea_still_edits(browser, server):
    page = sign_in(browser, server, "olga", PASSWORD, "/operator")
    page.route("**/static/codemirror.js", lambda route: route.fulfill(status=404, body="gone"))
    page.reload()
    page.click("[data-testid=template-item][data-name=billing] [data-testid=edit-template]")
    wait_for_editor(page, "name: billing")
    assert page.query_selector(".CodeMirror") is None and page.is_visible("#editor") and page.is_visible("#gutter")
    original = page.input_value("#editor")
    page.fill("#editor", original.replace("{{ company }}", "{{ company ", 1))
    page.wait_for_selector("#ws-draft[data-state=dirty]")
    issue = page.wait_for_selector("[data-testid=issue]", timeout=10_000)
    line = int(issue.get_attribute("data-line"))
    assert page.inner_text("#gutter .is-issue") == str(line)
    page.click("[data-testid=issue] button")
    assert page.inner_text("#cursor-pos").startswith(f"Ln {line},")
    page.fill("#editor", original)
    page.wait_for_selector("#ws-draft[data-state=clean]")
