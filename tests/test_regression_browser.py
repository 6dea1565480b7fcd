"""The regression set card of the operator console in Chromium against the real server: run the set
from the editor, watch its progress, read the cases side by side with the reply diff and the totals,
confirm publishing a draft that does worse, and apply the threshold advice to the draft.

A scripted engine plays both versions with a real server's timing: the draft (rebranded Globex)
misses the invoices path that the live version gives, at a confidence the threshold advice can
separate. What users and the model wrote (an <img onerror> among it) must stay text.
"""

from __future__ import annotations

import io

import httpx
import pytest
import yaml
from PIL import Image

from engine.stub import StubEngine, last_user_text
from tests.browser import chromium, editor_text, needs_chromium, set_editor, sign_in, wait_for_editor
from tests.live_server import PASSWORD, live_server, wait_for

pytestmark = needs_chromium
XSS = '<img src=x onerror="window.__snapdesk_xss = 1">'
CASES = {
    "template": "billing",
    "cases": [
        {"id": "renewal", "text": "Why was I charged 88?", "expect": "answer", "must_contain": ["88"]},
        {"id": "invoices", "text": "Where can I download my invoices?", "expect": "answer", "must_contain": ["Billing"]},
        {"id": "person", "text": "let me talk to a human please", "expect": "handover", "reason": "user_request"},
    ],
}
OWN_TEXT = f"What is this charge? {XSS}"


def scripted(request):
    draft = "Globex" in request.messages[0].parts[0].text
    text = last_user_text(request)
    if "invoices" in text:
        return (f"Look somewhere in your account. {XSS}", 0.7) if draft else ("Invoices are under Account > Billing.", 0.9)
    if "charge?" in text:
        return "It is the renewal of 88.", 0.8
    return ("You paid 88 for the renewal.", 0.95) if draft else ("You paid 88.", 0.9)


ENGINE = StubEngine(script=scripted, first_token_ms=700, tokens_per_s=20)


def picture() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 200), (40, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def own_case(base: str) -> None:
    """A visitor's message with a screenshot, made a billing case by an operator over the API."""
    from tests.test_agent_console import signed_in

    token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    sent = httpx.post(f"{base}/widget/api/messages", headers=headers, data={"client_message_id": "own-case-1",
                      "text": OWN_TEXT}, files=[("images", ("bill.png", picture(), "image/png"))], timeout=30)
    assert sent.status_code == 202

    def answered():
        messages = httpx.get(f"{base}/widget/api/conversation", headers=headers).json()["messages"]
        return messages if any(m["kind"] in ("answer", "handover") for m in messages) else None

    user = next(m for m in wait_for(answered, timeout=30, what="the bot's reply") if m["kind"] == "user")
    added = signed_in(base, "olga").post(f"/operator/api/messages/{user['id']}/case", json={
        "template": "billing", "expect": "answer", "must_contain": ["88"], "allow_unchecked_screenshots": True})
    assert added.status_code == 200, added.text


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("regression-browser")
    cases = root / "cases"
    (cases / "screenshots").mkdir(parents=True)
    (cases / "billing.yaml").write_text(yaml.safe_dump(CASES), encoding="utf-8")
    with live_server(root / "data", engine=ENGINE, login_rate_per_ip=1000, widget_rate_per_ip=10_000,
                     users={"olga": "operator"}) as (base, app):
        app.state.server.regression.cases_directory = cases
        own_case(base)
        yield base


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def rows(page) -> dict[str, dict]:
    return {row.get_attribute("data-key"): {
        "change": row.get_attribute("data-change"), "draft": row.get_attribute("data-draft-passed"),
        "live": row.get_attribute("data-live-passed")} for row in page.query_selector_all("[data-testid=rg-case-row]")}


def test_run_the_set_read_the_results_confirm_publishing_and_apply_the_threshold(browser, server, tmp_path):
    page = sign_in(browser, server, "olga", PASSWORD, "/operator")
    page.set_default_timeout(20_000)
    page.click("[data-testid=template-item][data-name=billing] [data-testid=edit-template]")
    wait_for_editor(page, "name: billing")
    live = editor_text(page)
    set_editor(page, live.replace("Acme", "Globex"))

    # The set: three shipped cases and the team's own, its screenshot as a thumbnail
    page.wait_for_function("() => document.querySelectorAll('[data-testid=rg-set-case]').length === 4")
    page.click("#rg-set-block summary")
    thumb = page.wait_for_selector("[data-testid=rg-thumb]")
    page.wait_for_function("img => img.complete && img.naturalWidth === 320", arg=thumb)
    assert page.inner_text("[data-testid=rg-set-count]") == "4 cases: 3 shipped, 1 of your team's"
    assert XSS in page.inner_text("[data-testid=rg-cases]")

    # Run: progress, then the cases side by side and the totals
    page.click("[data-testid=rg-run]")
    progress = page.wait_for_selector("[data-testid=rg-progress]:not([hidden])")
    assert int(progress.get_attribute("data-total")) == 8 and int(progress.get_attribute("data-done")) < 8
    assert page.is_visible("[data-testid=rg-cancel]")
    page.screenshot(path=str(tmp_path / "1-progress.png"), full_page=True)
    page.wait_for_selector("[data-testid=rg-result][data-status=done]", timeout=60_000)
    assert page.is_hidden("[data-testid=rg-progress]") and page.is_hidden("[data-testid=rg-cancel]")
    found = rows(page)
    assert found["shipped:invoices"] == {"change": "broken", "draft": "false", "live": "true"}
    assert found["shipped:person"] == {"change": "same", "draft": "true", "live": "true"}
    assert found["shipped:renewal"]["change"] == "changed" and len(found) == 4
    invoices = page.locator("[data-testid=rg-case-row][data-key='shipped:invoices']")
    assert "the answer does not say “Billing”" in invoices.locator("[data-arm=draft] [data-testid=rg-failures]").inner_text()
    invoices.locator("[data-testid=rg-replies] summary").click()
    diff = invoices.locator("[data-testid=rg-diff]")
    assert "Billing" in diff.locator("del").all_inner_texts()[-1] and XSS in " ".join(diff.locator("ins").all_inner_texts())
    assert invoices.locator("[data-testid=rg-reply][data-arm=draft]").inner_text() == f"Look somewhere in your account. {XSS}"
    invoices.screenshot(path=str(tmp_path / "2-diff.png"))
    figures = {row.get_attribute("data-figure"): row for row in page.query_selector_all("[data-testid=rg-totals-table] [data-testid=rg-figure]")}
    assert {"pass_rate", "handover_precision", "handover_recall", "answer_check_rate", "confidence_auroc",
            "engine_errors"} <= set(figures)
    assert figures["pass_rate"].query_selector("[data-arm=draft]").inner_text() == "75% · 3 of 4 cases"
    assert figures["pass_rate"].query_selector("[data-arm=live]").inner_text() == "100% · 4 of 4 cases"
    assert "engine failure" in figures["pass_rate"].query_selector(".rg-how").inner_text()
    assert len(page.query_selector_all("[data-testid=rg-reliability] [data-testid=rg-bin]")) == 5
    advice = page.inner_text("[data-testid=rg-advice-text]")
    assert "Hand over below 0.80 to reach 90% precision (keeps 2 of 3 answers)" in advice
    page.click("[data-testid=rg-filter][data-filter=failing]")
    assert list(rows(page)) == ["shipped:invoices"]
    page.click("[data-testid=rg-filter][data-filter=changed]")
    assert set(rows(page)) == {"shipped:invoices", "shipped:renewal"}
    page.click("[data-testid=rg-filter][data-filter=all]")
    page.screenshot(path=str(tmp_path / "2-results.png"), full_page=True)

    # Publishing the draft that does worse asks, with the comparison; keeping the draft publishes nothing
    page.click("[data-testid=publish]")
    dialog = page.wait_for_selector("[data-testid=publish-gate][open]")
    asked = page.dialogs[-1]  # the confirmation before publishing names the run's comparison
    assert "of this draft: pass rate 75% (live 100%)" in asked and "does worse than the live version" in asked, asked
    assert "pass rate 75% against 100% live" in page.inner_text("[data-testid=publish-gate-why]")
    assert page.is_visible("[data-testid=publish-gate-totals]") and page.is_visible("[data-testid=publish-anyway]")
    page.screenshot(path=str(tmp_path / "3-publish-gate.png"))
    page.click("[data-testid=publish-gate-keep]")
    page.wait_for_selector("[data-testid=publish-gate]:not([open])", state="attached")
    assert page.query_selector("[data-testid=version][data-version='2']") is None
    page.click("[data-testid=publish]")
    page.wait_for_selector("[data-testid=publish-gate][open]")
    page.click("[data-testid=publish-anyway]")
    page.wait_for_selector("[data-testid=version][data-version='2'][data-live=true]")
    assert dialog.get_attribute("open") is None

    # The threshold advice goes into the draft as an edit: that one line, unsaved
    page.click("[data-testid=rg-apply-threshold]")
    page.wait_for_function("() => document.querySelector('#ws-draft').dataset.state === 'dirty'")
    before, after = live.replace("Acme", "Globex").splitlines(), editor_text(page).splitlines()
    changed = [(b, a) for b, a in zip(before, after) if b != a]
    assert len(before) == len(after) and [a.strip() for _, a in changed] == ["confidence_threshold: 0.8"], changed
    assert page.is_visible("[data-testid=rg-stale]")  # the run shown answered the draft before this edit
    page.screenshot(path=str(tmp_path / "4-threshold-applied.png"), full_page=True)
    page.click(".CodeMirror")  # an edit like any other: Ctrl+Z takes it back
    page.keyboard.press("Control+z")
    page.wait_for_function("() => !document.querySelector('.CodeMirror').CodeMirror.getValue()"
                           ".includes('confidence_threshold: 0.8')")
    assert editor_text(page).splitlines() == before
    assert page.evaluate("() => window.__snapdesk_xss") is None


def test_a_run_goes_on_when_its_page_closes_and_the_template_reopened_follows_it(browser, server, monkeypatch):
    monkeypatch.setattr(ENGINE, "first_token_ms", 2500)  # slow enough to be still going after a new sign-in
    page = sign_in(browser, server, "olga", PASSWORD, "/operator")
    page.set_default_timeout(20_000)
    page.goto(f"{server}/operator#/templates/billing")
    wait_for_editor(page, "name: billing")
    page.click("[data-testid=rg-run]")
    page.wait_for_selector("[data-testid=rg-progress]:not([hidden])")
    run_id = page.get_attribute("[data-testid=rg-run-item][aria-current=true]", "data-run")
    page.close()  # the run is the server's: it goes on without the page

    again = sign_in(browser, server, "olga", PASSWORD, "/operator")
    again.set_default_timeout(30_000)
    again.goto(f"{server}/operator#/templates/billing")
    followed = again.wait_for_selector(f"[data-testid=rg-run-item][data-run='{run_id}'][aria-current=true]")
    assert followed.get_attribute("data-status") == "running"
    again.wait_for_selector("[data-testid=rg-progress]:not([hidden])")
    again.wait_for_selector("[data-testid=rg-result][data-status=done]", timeout=60_000)
    assert len(again.query_selector_all("[data-testid=rg-case-row]")) == 4
    oldest = again.query_selector_all("[data-testid=rg-run-item]")[-1]
    oldest.query_selector("[data-testid=rg-open-run]").click()
    again.wait_for_function("id => document.querySelector('#rg-result-heading').textContent.startsWith('Run ' + id + ' ')",
                            arg=oldest.get_attribute("data-run"))
    again.wait_for_selector("[data-testid=rg-result][data-status=done] [data-testid=rg-case-row]")
