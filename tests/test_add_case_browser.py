"""'Add to regression set' in the agent console, in Debian's Chromium: an admin makes a case of a
real user message (the bot got it wrong: it should have handed over), an operator reads a
conversation (read only: no composer, no claim) and makes a case of an older hand-over, agents
never see the action."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from engine.stub import StubEngine
from tests.browser import chromium, needs_chromium, sign_in
from tests.live_server import PASSWORD, live_server
from tests.test_agent_console import signed_in
from tests.test_handover_browser import open_conversation
from tests.test_regression_cases_from_turns import picture, two_hand_overs, widget_turn

pytestmark = needs_chromium
SHOTS = Path(os.environ.get("SNAPDESK_SCREENSHOTS", tempfile.gettempdir()))
QUESTION = "Why was I charged <b>88</b> twice? My card 4716 is on the screenshot"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("add-case-browser")
    with live_server(data_dir, engine=StubEngine(reply="That is your yearly renewal."), login_rate_per_ip=1000,
                     widget_rate_per_ip=10_000, users={"boss": "admin", "mei": "agent", "olga": "operator"}) as (base, app):
        boss = signed_in(base, "boss")
        billing = boss.post("/operator/api/channels", json={"channel": "widget", "template": "billing"})
        assert billing.status_code == 200, billing.text
        yield base, app


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def test_an_admin_turns_an_answered_message_into_a_hand_over_case(browser, server):
    base, app = server
    store = app.state.runtime.store
    user, reply = widget_turn(base, QUESTION, picture("navy"))
    assert reply["kind"] == "answer"
    conversation_id = store.message(user["id"])["conversation_id"]

    page = sign_in(browser, base, "boss", PASSWORD, "/agent")
    open_conversation(page, conversation_id)
    message = page.locator(f"[data-testid=thread-message][data-role=user][data-id='{user['id']}']")
    action = message.locator("[data-testid=add-case]")
    assert action.inner_text() == "Add to regression set"
    assert page.locator("[data-testid=add-case]").count() == 1  # user messages only

    # From the keyboard: it opens on what the bot did, Escape closes it and focus goes back.
    action.focus()
    page.keyboard.press("Enter")
    dialog = page.locator("[data-testid=case-dialog]")
    dialog.wait_for(state="visible")
    assert page.evaluate("document.activeElement.id") == "case-expect-answer"
    assert page.locator("[data-testid=case-did]").inner_text() == "The bot answered (confidence 0.90)."
    assert page.locator("[data-testid=case-text]").inner_text() == QUESTION  # as text, never markup
    assert page.locator("[data-testid=case-text] b").count() == 0
    shot = page.locator("[data-testid=case-shot]")
    assert shot.count() == 1 and "Not checked for personal data" in shot.inner_text()
    assert shot.locator("img").get_attribute("src") == message.locator("[data-testid=thread-image] img").get_attribute("src")
    assert page.locator("#case-reason-wrap").is_hidden()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.getElementById('case-dialog').contains(document.activeElement)")
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    assert page.evaluate("document.activeElement.dataset.testid") == "add-case"

    # The bot got it wrong: one click to "should have handed over", with the reason.
    action.click()
    dialog.wait_for(state="visible")
    page.wait_for_selector("[data-testid=case-template] option[value=billing]", state="attached")
    assert page.inner_text("[data-testid=case-flip]") == "The bot got this wrong: it should have handed over"
    dialog.screenshot(path=str(SHOTS / "add-case-open.png"))
    page.click("[data-testid=case-flip]")
    assert page.is_checked("[data-testid=case-expect-handover]")
    assert page.inner_text("[data-testid=case-flip]") == "The bot got this right"
    page.select_option("[data-testid=case-reason]", "user_request")
    page.fill("[data-testid=case-must-not-contain]", "4716 2630 5531 1881\n\n  <script>alert(1)</script>  ")
    page.fill("[data-testid=case-notes]", "Asks about a second charge: a person must check the bank's side.")

    # Saved once: the server wants the operator's word on the unchecked screenshot.
    page.click("[data-testid=case-save]")
    unchecked = page.locator("[data-testid=case-unchecked]")
    unchecked.wait_for(state="visible")
    assert "not checked for personal data" in unchecked.inner_text()
    assert page.evaluate("document.activeElement.id") == "case-allow"
    dialog.screenshot(path=str(SHOTS / "add-case-dialog.png"))
    page.click("[data-testid=case-save]")  # not ticked yet: the page says so and sends nothing
    assert "tick the box" in page.inner_text("[data-testid=case-status]")
    assert store._all("select id from eval_cases") == []
    page.check("[data-testid=case-allow]")
    page.click("[data-testid=case-save]")

    notice = page.locator("[data-testid=case-notice]")
    notice.wait_for(state="visible")
    assert dialog.is_hidden()
    assert "Added to the billing regression set" in notice.inner_text()
    assert page.get_attribute("[data-testid=case-notice-link]", "href") == "/operator#/templates/billing"
    assert page.evaluate("document.activeElement.dataset.testid") == "add-case"
    page.screenshot(path=str(SHOTS / "add-case-notice.png"))

    (case,) = store._all("select * from eval_cases")
    assert case["template"] == "billing" and case["expect"] == "handover" and case["expect_reason"] == "user_request"
    assert case["source_message_id"] == user["id"] and case["created_by"] == "boss" and case["text"] == QUESTION
    assert json.loads(case["must_not_contain"]) == ["4716 2630 5531 1881", "<script>alert(1)</script>"]
    assert len(json.loads(case["screenshots"])) == 1
    assert page.dialogs == []  # nothing ran the hostile text


def test_an_operator_reads_a_conversation_and_adds_an_older_hand_over(browser, server):
    base, app = server
    store = app.state.runtime.store
    first, _ = two_hand_overs(base, store, signed_in(base, "mei"))
    conversation_id = store.message(first["id"])["conversation_id"]

    page = sign_in(browser, base, "olga", PASSWORD, "/agent")
    open_conversation(page, conversation_id)
    banner = page.locator("[data-testid=read-only]")
    assert banner.is_visible()
    assert banner.inner_text() == "Read only: operators can read conversations and add them to regression sets."
    assert page.locator("[data-testid=status]").inner_text() == "Waiting"
    for control in ("composer", "send-reply", "add-note", "resolve", "hand-back", "claim", "transfer"):
        assert page.locator(f"[data-testid={control}]").is_hidden(), control
    switch = page.locator("[data-testid=console-switch]")
    assert switch.is_visible() and switch.get_attribute("href") == "/operator"
    assert page.locator("[data-testid=add-case]").count() == 2
    page.screenshot(path=str(SHOTS / "agent-console-read-only.png"))

    # The first hand-over, not the newest: its own reason and the template that handed over.
    first_message = page.locator(f"[data-testid=thread-message][data-role=user][data-id='{first['id']}']")
    first_message.locator("[data-testid=add-case]").click()
    page.locator("[data-testid=case-dialog]").wait_for(state="visible")
    assert page.inner_text("[data-testid=case-did]") == "The bot handed over: Asked for a person."
    assert page.is_checked("[data-testid=case-expect-handover]")
    assert page.input_value("[data-testid=case-reason]") == "user_request"
    version = store._one("select template_version from messages where reply_to = ? and kind = 'handover'",
                         [first["id"]])["template_version"]
    assert page.locator("[data-testid=case-template] option").first.inner_text() == \
        f"The one that answered (billing v{version})"
    page.fill("[data-testid=case-notes]", "Asked for a person: the bot was right to hand over.")
    page.click("[data-testid=case-save]")
    notice = page.locator("[data-testid=case-notice]")
    notice.wait_for(state="visible")
    assert "Added to the billing regression set" in notice.inner_text()

    case = store._one("select * from eval_cases where source_message_id = ?", [first["id"]])
    assert case["created_by"] == "olga" and case["template"] == "billing"
    assert case["expect"] == "handover" and case["expect_reason"] == "user_request"
    # Reading changed nothing: the conversation still waits for an agent, nobody's.
    conversation = store.conversation(conversation_id)
    assert conversation["status"] == "waiting" and conversation["assigned_agent"] is None
    assert page.dialogs == []


def test_agents_do_not_see_the_action(browser, server):
    base, app = server
    user, _ = widget_turn(base, "Where is my parcel?")
    page = sign_in(browser, base, "mei", PASSWORD, "/agent")
    open_conversation(page, app.state.runtime.store.message(user["id"])["conversation_id"])
    page.wait_for_selector(f"[data-testid=thread-message][data-role=user][data-id='{user['id']}']")
    assert page.locator("[data-testid=add-case]").count() == 0
    assert page.locator("[data-testid=composer]").is_visible() and page.locator("[data-testid=read-only]").is_hidden()
