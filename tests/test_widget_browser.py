"""The widget in a real browser: Debian's Chromium driven by Playwright, against the real server."""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from engine.base import GenerationStream
from engine.stub import StubEngine, last_user_text
from tests.browser import chromium, needs_chromium
from tests.live_server import live_server

pytestmark = needs_chromium
SHOTS = Path(os.environ.get("SNAPDESK_SCREENSHOTS", tempfile.gettempdir()))
ANSWER = "Your membership renewed automatically for 88. You can turn auto-renew off in Settings."


class SlowStreamingEngine(StubEngine):
    """Streams its answer word by word with a pause, like a model would."""

    def stream(self, request, timeout=None):
        generation = self._answer(request)
        stream = GenerationStream(timeout=timeout)

        slow = "twice" in last_user_text(request)  # time for a test to reload the page meanwhile

        async def produce():
            if slow:
                await asyncio.sleep(3)
            for i, word in enumerate(generation.text.split(" ")):
                stream.push_delta(word if i == 0 else " " + word)
                await asyncio.sleep(0.08)
            stream.push_result(generation)

        asyncio.get_running_loop().create_task(produce())
        return stream


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("browser"), engine=SlowStreamingEngine(reply=ANSWER)) as (base, app):
        yield base, app


@pytest.fixture(scope="module")
def server(served):
    return served[0]


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser, server):
    context = browser.new_context(locale="en-US")
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.dialogs = dialogs
    page.goto(server + "/")
    page.click("[data-testid=launcher]")
    page.wait_for_selector("[data-testid=panel]", state="visible")
    yield page
    context.close()


def png_bytes(colour="red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 200), colour).save(buffer, "PNG")
    return buffer.getvalue()


def last_bot_text(page) -> str:
    return page.locator("[data-testid=message][data-role=bot] [data-testid=message-text]").last.inner_text()


def send(page, text: str) -> None:
    page.fill("[data-testid=input]", text)
    page.keyboard.press("Enter")


SHADOW = "document.querySelector('#snapdesk-widget').shadowRoot"


def shadow_text(page, selector: str) -> str:
    return page.evaluate(f"(s) => {{ const n = {SHADOW}.querySelector(s); return n ? n.textContent : null; }}", selector)


def wait_status(page, text: str) -> None:
    page.wait_for_function(
        f"(t) => {SHADOW}.querySelector('[data-testid=status]').textContent.includes(t)", arg=text, timeout=10_000)


def test_a_typing_indicator_shows_until_the_decided_answer_arrives(page):
    assert page.locator("[data-testid=typing]").is_hidden()
    send(page, "Why was I charged?")
    typing = page.wait_for_selector("[data-testid=typing]", state="visible", timeout=5_000)
    assert typing.get_attribute("aria-label") == "The assistant is typing"
    assert page.locator("[data-testid=typing] .tdot").count() == 3
    page.screenshot(path=str(SHOTS / "widget-typing.png"))
    assert page.locator("[data-testid=message][data-role=bot]").count() == 0  # the answer is not shown yet
    page.wait_for_function(
        """(answer) => [...document.querySelector('#snapdesk-widget').shadowRoot
              .querySelectorAll('[data-testid=message][data-role=bot] [data-testid=message-text]')]
              .some(e => e.textContent === answer)""",
        arg=ANSWER, timeout=10_000,
    )
    assert page.locator("[data-testid=typing]").is_hidden()
    assert page.locator("[data-testid=message][data-streaming=true]").count() == 0  # shown whole, once decided
    assert "Assistant" in page.inner_text("[data-testid=status]")


def test_screenshot_by_file_picker_shows_a_preview_and_gets_a_reply(page, tmp_path):
    shot = tmp_path / "bill.png"
    shot.write_bytes(png_bytes())
    page.set_input_files("[data-testid=file-input]", str(shot))
    page.wait_for_selector("[data-testid=preview]")
    assert page.locator("[data-testid=preview]").count() == 1
    send(page, "What is this charge?")
    page.wait_for_selector("[data-testid=message][data-role=user] img", timeout=10_000)
    assert page.locator("[data-testid=preview]").count() == 0
    page.wait_for_function(
        """(answer) => [...document.querySelector('#snapdesk-widget').shadowRoot
              .querySelectorAll('[data-testid=message][data-role=bot]:not([data-streaming=true]) [data-testid=message-text]')]
              .some(e => e.textContent === answer)""",
        arg=ANSWER, timeout=10_000,
    )


def test_pasted_screenshot_is_previewed_and_can_be_removed(page):
    page.evaluate(
        """async () => {
            const canvas = document.createElement('canvas'); canvas.width = 200; canvas.height = 120;
            canvas.getContext('2d').fillRect(0, 0, 200, 120);
            const blob = await new Promise(r => canvas.toBlob(r, 'image/png'));
            const file = new File([blob], 'clipboard.png', {type: 'image/png'});
            const data = new DataTransfer(); data.items.add(file);
            const input = document.querySelector('#snapdesk-widget').shadowRoot.querySelector('[data-testid=input]');
            input.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
        }"""
    )
    page.wait_for_selector("[data-testid=preview]")
    page.click("[data-testid=remove-preview]")
    assert page.locator("[data-testid=preview]").count() == 0
    page.evaluate(
        """async () => {
            const canvas = document.createElement('canvas'); canvas.width = 200; canvas.height = 120;
            const blob = await new Promise(r => canvas.toBlob(r, 'image/png'));
            const data = new DataTransfer(); data.items.add(new File([blob], 'again.png', {type: 'image/png'}));
            const input = document.querySelector('#snapdesk-widget').shadowRoot.querySelector('[data-testid=input]');
            input.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
        }"""
    )
    page.wait_for_selector("[data-testid=preview]")
    send(page, "Pasted screenshot")
    page.wait_for_selector("[data-testid=message][data-role=user] img", timeout=10_000)


def test_history_is_restored_after_a_reload(page):
    send(page, "Where is my parcel?")
    page.wait_for_function(
        """() => [...document.querySelector('#snapdesk-widget').shadowRoot
              .querySelectorAll('[data-testid=message][data-role=bot]:not([data-streaming=true])')].length >= 1""",
        timeout=10_000,
    )
    before = page.locator("[data-testid=message]").count()
    page.reload()
    page.click("[data-testid=launcher]")
    page.wait_for_function(
        f"""() => document.querySelector('#snapdesk-widget').shadowRoot
              .querySelectorAll('[data-testid=message]').length >= {before}""",
        timeout=10_000,
    )
    assert "Where is my parcel?" in page.inner_text("[data-testid=messages]")


def test_a_second_tab_of_the_same_visitor_sees_new_messages_live(page):
    send(page, "First question from tab one")  # the visitor's token is now in this browser's storage
    page.wait_for_selector("[data-testid=message][data-role=bot]:not([data-streaming=true])", timeout=10_000)
    other = page.context.new_page()
    other.goto(page.url)
    other.click("[data-testid=launcher]")
    other.wait_for_selector("[data-testid=message][data-role=bot]", timeout=10_000)  # history restored
    other.wait_for_selector("[data-testid=activity][data-live=true]", state="attached", timeout=10_000)  # live
    send(page, "Second question from tab one")
    user_texts = """() => [...document.querySelector('#snapdesk-widget').shadowRoot
          .querySelectorAll('[data-testid=message][data-role=user] [data-testid=message-text]')]
          .map(e => e.textContent)"""
    other.wait_for_function(f"() => ({user_texts})().includes('Second question from tab one')", timeout=10_000)
    other.wait_for_function(
        """() => [...document.querySelector('#snapdesk-widget').shadowRoot
              .querySelectorAll('[data-testid=message][data-role=bot]:not([data-streaming=true])')].length >= 2""",
        timeout=10_000,
    )
    for tab in (page, other):  # shown once in each tab, in order, before its reply
        texts = tab.evaluate(user_texts)
        assert texts == ["First question from tab one", "Second question from tab one"], texts
    order = other.evaluate("""() => [...document.querySelector('#snapdesk-widget').shadowRoot
          .querySelectorAll('[data-testid=message]')].map(e => e.dataset.role)""")
    assert order == ["user", "bot", "user", "bot"], order
    other.close()


def test_html_in_a_message_is_shown_as_text_and_runs_nothing(page):
    payload = '<img src=x onerror="window.__snapdesk_xss = 1; alert(1)">'
    send(page, payload)
    page.wait_for_function(
        """(p) => [...document.querySelector('#snapdesk-widget').shadowRoot
              .querySelectorAll('[data-testid=message][data-role=user] [data-testid=message-text]')]
              .some(e => e.textContent === p)""",
        arg=payload, timeout=10_000,
    )
    page.wait_for_timeout(300)
    assert page.evaluate("() => window.__snapdesk_xss") is None
    assert page.dialogs == []
    shadow_imgs = page.evaluate(
        "() => document.querySelector('#snapdesk-widget').shadowRoot.querySelectorAll('[data-testid=message] img[src=x]').length"
    )
    assert shadow_imgs == 0


def test_a_hand_over_shows_the_waiting_status(page):
    send(page, "Can I talk to a human, please?")
    page.wait_for_selector("[data-testid=message][data-kind=handover]", timeout=10_000)
    page.wait_for_function(
        """() => document.querySelector('#snapdesk-widget').shadowRoot
              .querySelector('[data-testid=status]').textContent.includes('Waiting')""",
        timeout=10_000,
    )


def test_an_agent_reply_appears_live_with_the_agent_name(page, served):
    _, app = served
    runtime = app.state.runtime
    send(page, "I want to talk to a human")
    page.wait_for_selector("[data-testid=message][data-kind=handover]", timeout=10_000)
    conversation_id = runtime.store._one(
        "select id from conversations where status = 'waiting' order by id desc limit 1")["id"]

    def on_server(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, runtime.loop).result(timeout=10)

    assert on_server(runtime.manager.claim(conversation_id, "Mei"))
    page.wait_for_function(
        """() => document.querySelector('#snapdesk-widget').shadowRoot
              .querySelector('[data-testid=status]').textContent.includes('Mei')""",
        timeout=10_000,
    )
    on_server(runtime.manager.agent_reply(conversation_id, "Mei", "Hi, I'm Mei. Let me check your bill <b>now</b>."))
    agent = page.wait_for_selector("[data-testid=message][data-role=agent]", timeout=10_000)
    assert "Let me check your bill <b>now</b>." in agent.inner_text()
    assert "Mei" in agent.inner_text()


def server_call(app, coroutine):
    runtime = app.state.runtime
    return asyncio.run_coroutine_threadsafe(coroutine, runtime.loop).result(timeout=10)


def test_status_lines_follow_the_owner_and_a_resolved_conversation_asks_for_feedback(page, served):
    _, app = served
    runtime = app.state.runtime
    runtime.accounts.add_user("mei.z", "agent", "correct horse battery", display_name="Mei")
    send(page, "I want to talk to a human")
    page.wait_for_selector("[data-testid=message][data-kind=handover]", timeout=10_000)
    wait_status(page, "Waiting for a person")
    assert page.locator("[data-testid=typing]").is_hidden()
    conversation_id = runtime.store._one(
        "select id from conversations where status = 'waiting' order by id desc limit 1")["id"]

    assert server_call(app, runtime.manager.claim(conversation_id, "mei.z"))
    line = page.wait_for_selector("[data-testid=message][data-kind=status][data-status=claimed]", timeout=10_000)
    assert line.inner_text() == "Mei from our support team has joined the conversation."
    wait_status(page, "Mei (support)")
    server_call(app, runtime.manager.agent_reply(conversation_id, "mei.z", "Hi, Mei here. <i>Checking</i>."))
    reply = page.wait_for_selector("[data-testid=message][data-role=agent]", timeout=10_000)
    assert reply.query_selector(".author").inner_text() == "Mei" and "mei.z" not in reply.inner_text()
    assert "<i>Checking</i>" in reply.inner_text()
    assert page.locator("[data-testid=talk-to-person]").is_disabled()

    server_call(app, runtime.manager.resolve(conversation_id, "mei.z"))
    resolved = page.wait_for_selector("[data-testid=message][data-kind=status][data-status=resolved]", timeout=10_000)
    assert resolved.inner_text().startswith("This conversation is marked as resolved.")
    prompt = page.wait_for_selector("[data-testid=feedback]", timeout=10_000)
    assert "Did this solve your problem?" in prompt.inner_text()
    page.screenshot(path=str(SHOTS / "widget-feedback.png"))

    page.reload()  # still asked after a reload, until answered
    page.click("[data-testid=launcher]")
    page.wait_for_selector("[data-testid=feedback]", timeout=10_000)
    page.click("[data-testid=feedback-down]")
    assert page.get_attribute("[data-testid=feedback-down]", "aria-pressed") == "true"
    page.fill("[data-testid=feedback-comment]", "It took too long <script>x</script>")
    page.screenshot(path=str(SHOTS / "widget-feedback-comment.png"))
    page.click("[data-testid=feedback-send]")
    thanks = page.wait_for_selector("[data-testid=feedback-thanks]", timeout=10_000)
    assert thanks.inner_text() == "Thanks for your feedback."
    row = runtime.store._one("select helpful, comment from feedback where conversation_id = ?", [conversation_id])
    assert row == {"helpful": 0, "comment": "It took too long <script>x</script>"}

    send(page, "One more question about my bill")  # a new message: the assistant again, no prompt
    page.wait_for_selector("[data-testid=feedback]", state="detached", timeout=5_000)
    wait_status(page, "Assistant")
    page.wait_for_function(
        f"() => [...{SHADOW}.querySelectorAll('[data-testid=message][data-role=bot]')].length >= 1", timeout=10_000)


def test_talk_to_a_person_from_the_menu_and_back_with_the_assistant(page, served):
    _, app = served
    runtime = app.state.runtime
    send(page, "Where is my parcel?")
    page.wait_for_selector("[data-testid=message][data-role=bot]", timeout=10_000)
    page.click("[data-testid=menu]")
    item = page.wait_for_selector("[data-testid=talk-to-person]", state="visible")
    assert item.inner_text().startswith("Talk to a person")
    page.screenshot(path=str(SHOTS / "widget-menu.png"))
    item.click()
    notice = page.wait_for_selector("[data-testid=message][data-kind=handover]", timeout=10_000)
    assert notice.inner_text().strip()
    wait_status(page, "Waiting for a person")
    page.screenshot(path=str(SHOTS / "widget-handover.png"))
    page.click("[data-testid=menu]")
    assert page.locator("[data-testid=talk-to-person]").is_disabled()
    page.keyboard.press("Escape")
    assert page.locator("#sd-menu").is_hidden()

    conversation_id = runtime.store._one(
        "select id from conversations where status = 'waiting' order by id desc limit 1")["id"]
    server_call(app, runtime.manager.claim(conversation_id, "li"))
    server_call(app, runtime.manager.hand_back(conversation_id, "li"))
    back = page.wait_for_selector("[data-testid=message][data-kind=status][data-status=bot]", timeout=10_000)
    assert back.inner_text().startswith("You're back with the assistant.")
    wait_status(page, "Assistant")
    assert page.locator("[data-testid=talk-to-person]").is_enabled()


def test_the_widget_speaks_chinese_to_a_chinese_browser(browser, server):
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    page.goto(server + "/")
    page.click("[data-testid=launcher]")
    page.click("[data-testid=menu]")
    assert page.inner_text("[data-testid=talk-to-person]").startswith("转人工客服")
    assert page.get_attribute("[data-testid=typing]", "aria-label") == "助手正在输入"
    context.close()


def test_a_reload_while_the_assistant_works_shows_the_typing_indicator_again(page):
    send(page, "Why was I charged twice?")
    page.wait_for_selector("[data-testid=typing]", state="visible", timeout=5_000)
    page.reload()  # the answer is still being written: the conversation says it is working
    page.click("[data-testid=launcher]")
    page.wait_for_selector("[data-testid=typing]", state="visible", timeout=5_000)
    page.wait_for_function(
        f"() => [...{SHADOW}.querySelectorAll('[data-testid=message][data-role=bot]')].length >= 1", timeout=10_000)
    page.wait_for_selector("[data-testid=typing]", state="hidden", timeout=5_000)
