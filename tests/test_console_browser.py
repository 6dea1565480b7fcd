"""Both consoles in a real browser (Debian's Chromium via Playwright) against the real server."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.accounts import Accounts
from bot.store import Store
from engine.stub import StubEngine
from tests.browser import chromium, editor_text, needs_chromium, open_page, set_editor, wait_for_editor
from tests.browser import sign_in as console_sign_in
from tests.live_server import PASSWORD, live_server

pytestmark = needs_chromium
XSS = '<img src=x onerror="window.__snapdesk_xss = 1; alert(1)">'
ENGINE = StubEngine(reply=f"You were charged 88 for the renewal. {XSS}", confidence=0.9)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("consoles"), engine=ENGINE, login_rate_per_ip=1000,
                     widget_rate_per_ip=10_000, users={"mei": "agent", "olga": "operator"}) as (base, app):
        yield base


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


def sign_in(browser, base: str, name: str, path: str):
    return console_sign_in(browser, base, name, PASSWORD, path)


def widget_send(page, text: str) -> None:
    page.fill("[data-testid=input]", text)
    page.keyboard.press("Enter")


def test_agent_sees_a_hand_over_live_claims_it_and_the_edited_reply_reaches_the_widget(browser, server):
    agent = sign_in(browser, server, "mei", "/agent")
    agent.wait_for_selector("[data-testid=queue]")
    visitor = open_page(browser, f"{server}/")
    visitor.click("[data-testid=launcher]")
    widget_send(visitor, f"Can I talk to a human? {XSS}")
    visitor.wait_for_selector("[data-testid=message][data-kind=handover]", timeout=10_000)

    item = agent.wait_for_selector("[data-testid=queue-item][data-reason=user_request]", timeout=10_000)
    item.click()
    agent.wait_for_selector("[data-testid=thread]")
    agent.click("[data-testid=claim]")
    composer = agent.locator("[data-testid=composer]")
    agent.wait_for_selector("[data-testid=thread][aria-busy=false]")
    assert composer.input_value() == ""  # a draft is only ever offered (see test_handover_browser.py)
    composer.fill("You were charged 88 for the renewal — Mei from support here.")
    agent.click("[data-testid=send-reply]")

    reply = visitor.wait_for_selector("[data-testid=message][data-role=agent]", timeout=10_000)
    assert "Mei from support here." in reply.inner_text()
    user_text = agent.locator("[data-testid=thread-message][data-role=user] [data-testid=thread-message-text]").first
    assert XSS in user_text.inner_text()  # shown as text in the agent console
    assert agent.evaluate("() => window.__snapdesk_xss") is None and agent.dialogs == []
    assert visitor.evaluate("() => window.__snapdesk_xss") is None


def test_operator_edits_tries_publishes_sees_the_diff_and_restores(browser, server, tmp_path):
    operator = sign_in(browser, server, "olga", "/operator")
    operator.wait_for_selector("[data-testid=template-item][data-name=billing]")
    operator.click("[data-testid=template-item][data-name=billing] [data-testid=edit-template]")
    wait_for_editor(operator, "name: billing")
    set_editor(operator, editor_text(operator).replace("Acme", "Globex"))
    operator.wait_for_function(
        "() => document.querySelector('[data-testid=preview]') && "
        "document.querySelector('[data-testid=preview]').textContent.includes('Globex')", timeout=10_000)

    shot = tmp_path / "statement.png"
    buffer = io.BytesIO()
    Image.new("RGB", (640, 400), "white").save(buffer, "PNG")
    shot.write_bytes(buffer.getvalue())
    operator.fill("[data-testid=try-text]", "Why was I charged?")
    operator.set_input_files("[data-testid=try-images]", str(shot))
    operator.click("[data-testid=try-run]")
    result = operator.wait_for_selector("[data-testid=try-reply]", timeout=10_000)
    assert XSS in result.inner_text()  # the model's text, shown as text
    decision = operator.locator("[data-testid=try-decision]")
    assert decision.get_attribute("data-handover") == "false"
    assert "Globex" in ENGINE.requests[-1].messages[0].parts[0].text  # the unsaved draft was used

    operator.click("[data-testid=publish]")
    operator.wait_for_selector("[data-testid=version][data-version='2']", timeout=10_000)
    diff = operator.locator("[data-testid=version][data-version='2'] [data-testid=diff]").inner_text()
    assert "Globex" in diff and "Acme" in diff
    operator.click("[data-testid=version][data-version='1'] [data-testid=restore]")
    operator.wait_for_selector("[data-testid=version][data-version='3'][data-live=true]", timeout=10_000)
    assert operator.evaluate("() => window.__snapdesk_xss") is None
    assert not [d for d in operator.dialogs if "1" == d.strip()]


def test_a_conversation_link_opens_it_and_an_undelivered_reply_is_marked(browser, tmp_path):
    from tests.test_agent_console import visitor_hands_over

    Accounts(Store(tmp_path)).add_user("lin", "agent", PASSWORD)
    with live_server(tmp_path, engine=StubEngine(keep_requests=0), login_rate_per_ip=1000) as (base, app):
        visitor_hands_over(base, "I want to talk to a human about my invoice", image=False)
        store = Store(tmp_path)  # as if the user's platform had refused the hand-over notice
        notice = store._one("select id, conversation_id from messages where kind = 'handover'")
        store._update("messages", notice["id"], {"delivered": 0})
        store.close()
        agent = sign_in(browser, base, "lin", "/agent")
        agent.goto(f"{base}/agent/conversations/{notice['conversation_id']}")  # the link Slack posts
        agent.wait_for_url(f"**/agent#/conversations/{notice['conversation_id']}")
        marked = agent.wait_for_selector("[data-testid=undelivered]", timeout=10_000)
        assert marked.inner_text() == "Not delivered yet"
        assert "about my invoice" in agent.inner_text("[data-testid=thread]")
        agent.close()
