"""Hostile text through every surface: the widget API, Slack, Telegram, /v1, the agent console
API, and every page that shows what users, agents and the model wrote.

One real server (stub engine that echoes the user's words back, so hostile input also comes
back as hostile *output*) runs the widget, Slack (against the local fake Slack) and Telegram
(against the local fake Bot API) at once. Cases already covered elsewhere are not repeated:
see test_web_api.py (blank text, text over the limit, NUL/escape/U+202E cleaning, invalid
UTF-8 in a multipart body), test_slack.py (mrkdwn injection in model output, `<!here>` in an
agent reply), test_telegram.py (markup in model output and agent replies is sent without a
parse mode), test_openai_api.py (empty `messages`, unparseable JSON) and the browser tests
(an `<img onerror>` in the widget, the agent thread and the operator's "Try it").
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from types import SimpleNamespace
from urllib.parse import quote

import httpx
import pytest

from adapters.telegram import TelegramAdapter
from bot.accounts import Accounts
from bot.apikeys import ApiKeys
from bot.store import Store
from engine.stub import StubEngine, last_user_text
from tests.browser import chromium, needs_chromium, open_page, sign_in, wait_for_editor
from tests.fake_slack import BOT_TOKEN, TEAM, FakeSlack, dm_event, event_callback, sign, wait_for
from tests.fake_telegram import FakeTelegram
from tests.live_server import live_server, sse_events

PASSWORD = "correct horse battery"
SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TG_TOKEN = "123456:TEST"
TG_SECRET = "hostile-s3cret"
PLACEHOLDER = "Looking at this…"
# Markup that would run, render or link if any page treated text as HTML or Markdown.
HOSTILE = ('<img src=x onerror=window.__pwned=1> <script>window.__pwned=1</script> '
           '[link](javascript:window.__pwned=1) <a href="javascript:window.__pwned=1">tap</a> **bold** `code`')
MAX_TEXT = 4000  # the default SNAPDESK_WIDGET_MAX_TEXT_CHARS


def echo(request) -> tuple[str, float]:
    return f"Answer to: {last_user_text(request)}", 0.9


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("hostile")
    store = Store(data)
    accounts = Accounts(store)
    accounts.add_user("mei", "agent", PASSWORD)
    accounts.add_user("olga", "operator", PASSWORD)
    api_key = ApiKeys(store).create("hostile-tests", actor="test")[1]
    store.close()
    slack, telegram = FakeSlack().start(), FakeTelegram(TG_TOKEN)
    try:
        with telegram.serve(), live_server(
            data, engine=StubEngine(script=echo), login_rate_per_ip=1000, widget_rate_per_ip=10_000,
            widget_rate_per_visitor=1000, public_url="https://support.example.com",
            slack_bot_token=BOT_TOKEN, slack_signing_secret=SLACK_SECRET, slack_api_url=slack.api_url,
            slack_agent_channel="CAGENTS",
            telegram_token=TG_TOKEN, telegram_webhook_secret=TG_SECRET, telegram_api_url=telegram.base_url,
        ) as (base, app):
            runtime = app.state.runtime
            tg = next(a for a in app.state.server.adapters if isinstance(a, TelegramAdapter))
            wait_for(tg.ready.is_set, what="Telegram getMe")
            yield SimpleNamespace(base=base, app=app, runtime=runtime, slack=slack, telegram=telegram,
                                  api_key=api_key)
    finally:
        slack.stop()


# Helpers ---------------------------------------------------------------------------------------
def on_loop(server, coroutine):
    return asyncio.run_coroutine_threadsafe(coroutine, server.runtime.loop).result(15)


def db(server, fn, *args):
    return on_loop(server, server.runtime.manager.db(fn, *args))


def count(server, table: str) -> int:
    store = server.runtime.store
    return db(server, lambda: store.db[table].count)


def idle(server) -> None:
    wait_for(lambda: not server.runtime.tasks, what="background work to finish")


def visitor(base: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + httpx.post(f"{base}/widget/api/session", json={}).json()["token"]}


def widget_post(base, headers, client_id, text=None) -> httpx.Response:
    data = {"client_message_id": client_id}
    if text is not None:
        data["text"] = text
    return httpx.post(f"{base}/widget/api/messages", headers=headers, data=data, timeout=30)


def multipart(fields: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(b'--XyZ\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\n' + value + b"\r\n"
                    for name, value in fields) + b"--XyZ--\r\n"


def console(base: str, name: str) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=False, timeout=30)
    form = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    assert client.post("/login", data={"name": name, "password": PASSWORD, "csrf_token": csrf}).status_code == 303
    client.headers["X-CSRF-Token"] = client.get("/console/api/me").json()["csrf_token"]
    return client


def slack_post(server, body: bytes, content_type: str = "application/json") -> httpx.Response:
    headers = {**sign(SLACK_SECRET, body), "Content-Type": content_type}
    return httpx.post(f"{server.base}/slack/events", content=body, headers=headers, timeout=10)


def slack_answers(server, channel: str, count: int = 1) -> list[dict]:
    def ready():
        messages = server.slack.channel_messages(channel)
        return messages if sum(m["text"] != PLACEHOLDER for m in messages) >= count else None
    return wait_for(ready, what=f"{count} answer(s) in {channel}")


_tg_ids = iter(range(9000, 10_000))


def tg_update(chat_id: int, text: str, first_name: str = "Ana") -> dict:
    return {"update_id": next(_tg_ids), "message": {
        "message_id": next(_tg_ids), "date": int(time.time()), "text": text,
        "from": {"id": chat_id, "is_bot": False, "first_name": first_name, "language_code": "en"},
        "chat": {"id": chat_id, "type": "private", "first_name": first_name}}}


def tg_post(server, body: bytes) -> httpx.Response:
    return httpx.post(f"{server.base}/telegram/webhook", content=body, timeout=10,
                      headers={"X-Telegram-Bot-Api-Secret-Token": TG_SECRET, "Content-Type": "application/json"})


def with_lone_surrogate(payload: dict, marker: str = "SURROGATE") -> bytes:
    """JSON that is valid UTF-8 but decodes to a string holding an unpaired surrogate."""
    return json.dumps(payload).replace(marker, "\\ud800").encode()


def user_texts(server, channel: str, key: str) -> list[str]:
    store = server.runtime.store
    conversation = db(server, store.conversation_by_key, channel, key)
    return [m["text"] for m in db(server, store.messages, conversation["id"]) if m["role"] == "user"]


# Widget API ------------------------------------------------------------------------------------
def test_widget_refuses_empty_and_control_only_text_and_stores_nothing(server):
    headers = visitor(server.base)
    before = count(server, "messages")
    for i, text in enumerate([None, "", "\x00\u202e\x07\u2066\x1b\x9b", " \u202e \x00\n"]):
        response = widget_post(server.base, headers, f"empty-{i:05d}", text)
        assert response.status_code == 400, (text, response.text)
        assert response.json() == {"error": "empty", "message": "Please type a message or attach a screenshot."}
    idle(server)
    assert count(server, "messages") == before


def test_widget_text_limit_counts_characters_and_100kb_gets_a_readable_413(server):
    headers = visitor(server.base)
    before = count(server, "messages")
    for i, text in enumerate(["x" * 100_000, "😀" * 25_000, "字" * (MAX_TEXT + 1)]):  # 100 KB, 100 KB, 12 KB
        response = widget_post(server.base, headers, f"big-{i:06d}", text)
        assert response.status_code == 413 and response.json()["error"] == "text_too_long"
        assert f"under {MAX_TEXT} characters" in response.json()["message"]
    assert count(server, "messages") == before
    at_limit = widget_post(server.base, headers, "big-limit1", "字" * MAX_TEXT)  # 12 KB of UTF-8, 4,000 characters
    assert at_limit.status_code == 202
    assert db(server, server.runtime.store.message, at_limit.json()["message_id"])["text"] == "字" * MAX_TEXT


def test_widget_undecodable_bytes_never_reach_storage_as_controls_and_a_bad_id_is_400(server):
    headers = visitor(server.base)
    content_type = {**headers, "Content-Type": "multipart/form-data; boundary=XyZ"}
    # Not UTF-8, so the form field is read as Latin-1: 0x9b becomes U+009B, the 8-bit CSI.
    body = multipart([(b"client_message_id", b"c1-control-1"), (b"text", b"why \x9b31m charged\x85 \xff?")])
    response = httpx.post(f"{server.base}/widget/api/messages", content=body, headers=content_type)
    assert response.status_code == 202
    stored = db(server, server.runtime.store.message, response.json()["message_id"])["text"]
    assert stored == "why 31m charged \xff?" and not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", stored)
    bad_id = multipart([(b"client_message_id", b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8"), (b"text", b"hello")])
    response = httpx.post(f"{server.base}/widget/api/messages", content=bad_id, headers=content_type)
    assert response.status_code == 400 and response.json()["error"] == "bad_request"
    odd_charset = {**headers, "Content-Type": "multipart/form-data; boundary=XyZ; charset=no-such-codec"}
    body = multipart([(b"client_message_id", b"charset-01"), (b"text", b"hello \xe2\x80\xae there")])
    response = httpx.post(f"{server.base}/widget/api/messages", content=body, headers=odd_charset)
    assert response.status_code == 202  # an unknown charset reads as Latin-1, and is cleaned the same way
    stored = db(server, server.runtime.store.message, response.json()["message_id"])["text"]
    assert stored.startswith("hello ") and not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", stored)


def test_widget_event_stream_cannot_be_forged_by_text_with_newlines(server):
    """A reply that echoes `\\n\\nevent: status` must arrive as one message event, not a forged event."""
    headers = visitor(server.base)
    token = headers["Authorization"][7:]
    forged = 'help\r\n\r\nevent: status\r\ndata: {"status": "resolved", "agent": "Mallory"}\n\nid: 9\rretry: 1'
    seen: list[tuple[str, dict]] = []
    listening = threading.Event()

    def listen():
        with httpx.stream("GET", f"{server.base}/widget/api/events", params={"token": token}, timeout=10) as stream:
            listening.set()
            for event, data in sse_events(stream.iter_lines()):
                seen.append((event, data))
                if event == "message" and data["role"] != "user":
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    listening.wait(5)
    time.sleep(0.2)
    assert widget_post(server.base, headers, "sse-forge-1", forged).status_code == 202
    listener.join(10)
    assert [(event, data["role"]) for event, data in seen if event not in ("delta", "typing")] == [("message", "user"), ("message", "bot")]
    assert seen[-1][1]["text"] == f"Answer to: {forged}".replace("\r\n", "\n")


# Slack -----------------------------------------------------------------------------------------
def every_slack_post(server) -> list:
    return server.slack.calls_to("chat.postMessage") + server.slack.calls_to("chat.update")


def test_slack_mentions_links_and_broken_unicode_from_a_user_never_make_the_bot_ping(server):
    channel = "D0HOSTILE1"
    text = ("hi <!channel> <!here|here> <!subteam^S123|@team> <@U123> <https://evil.example|click> "
            "&lt;!everyone&gt; &lt;@U999&gt; SURROGATE \u0000\u202e done")
    response = slack_post(server, with_lone_surrogate(event_callback(dm_event(channel, text))))
    assert response.status_code == 200
    [answer] = [m for m in slack_answers(server, channel) if m["text"] != PLACEHOLDER]
    # What the user wrote, as plain text: Slack's entities unwrapped, controls gone, the surrogate replaced.
    plain = "hi @channel here @team @U123 click (https://evil.example) <!everyone> <@U999> \ufffd  done"
    assert user_texts(server, "slack", f"{TEAM}:{channel}") == [plain]
    assert answer["text"] == "Answer to: " + plain.replace("<", "&lt;").replace(">", "&gt;")
    for call in every_slack_post(server):
        if call.args.get("channel") == channel:
            assert "<" not in call.args["text"]
        assert not call.args.get("link_names") and call.args.get("parse") != "full"


def test_slack_hostile_display_and_agent_names_are_escaped_in_announcements_and_replies(server):
    channel, user = "D0HOSTILE2", "U0MALLORY"
    server.slack.add_user(user, "mallory", "Mallory Evil")
    server.slack.users[user]["profile"]["display_name"] = "<!channel> <@U1> *Mal*"
    slack_post(server, json.dumps(event_callback(dm_event(channel, "I want to talk to a human", user=user))).encode())
    slack_answers(server, channel)
    conversation = db(server, server.runtime.store.conversation_by_key, "slack", f"{TEAM}:{channel}")
    [announcement] = wait_for(lambda: [m for m in server.slack.channel_messages("CAGENTS")
                                       if f"#{conversation['id']}" in m["text"]], what="the announcement")
    blocks = json.dumps(announcement["blocks"])
    assert "&lt;!channel&gt; &lt;@U1&gt;" in blocks and "<!channel>" not in blocks and "<@U1>" not in blocks
    on_loop(server, server.runtime.manager.agent_reply(
        conversation["id"], "<!here> Mei", "Call <!channel> about <https://evil.example|your bank> & **now**"))
    texts = [m["text"] for m in slack_answers(server, channel, count=3)]
    assert texts[-2].startswith("&lt;!here&gt; Mei from our support team")
    assert texts[-1] == ("*&lt;!here&gt; Mei (support):* Call &lt;!channel&gt; about "
                         "&lt;https://evil.example|your bank&gt; &amp; *now*")
    for call in every_slack_post(server):
        if call.args.get("channel") in (channel, "CAGENTS"):
            assert "<!" not in call.args["text"] and "<@" not in call.args["text"]
            assert "<!" not in json.dumps(call.args.get("blocks") or [])


def test_slack_signed_bodies_that_are_not_utf8_or_json_get_4xx_and_nothing_is_stored(server):
    before = count(server, "platform_events"), count(server, "messages")
    event = json.dumps(event_callback(dm_event("D0BADBODY1", "why was I charged?"))).encode()
    not_utf8 = slack_post(server, event.replace(b"charged", b"ch\xffrged\xc3"))
    assert not_utf8.status_code == 401  # slack_sdk verifies the signature over UTF-8 text only
    for body, content_type in [(b"{not json", "application/json"), (b"[1, 2]", "application/json"),
                               (b"\xef\xbb\xbf" + event, "application/json"),
                               (b"payload=%FF%FE", "application/x-www-form-urlencoded")]:
        response = slack_post(server, body, content_type)
        assert response.status_code == 400 and response.json() == {"error": "unreadable payload"}, body[:20]
    idle(server)
    assert (count(server, "platform_events"), count(server, "messages")) == before


# Telegram --------------------------------------------------------------------------------------
def test_telegram_html_and_markdown_from_users_and_agents_arrive_literally(server):
    chat = 80001
    text = f"I want to talk to a human {HOSTILE} <b>x</b> *y* _z_ SURROGATE\u0000\u202e!"
    assert tg_post(server, with_lone_surrogate(tg_update(chat, text, first_name="<b>Ana</b>"))).status_code == 200
    server.telegram.wait_for_texts(chat)
    cleaned = f"I want to talk to a human {HOSTILE} <b>x</b> *y* _z_ \ufffd!"
    assert user_texts(server, "telegram", str(chat)) == [cleaned]
    conversation = db(server, server.runtime.store.conversation_by_key, "telegram", str(chat))
    assert conversation["status"] == "waiting" and conversation["user_name"] == "<b>Ana</b>"
    reply = f"Sure <b>Ana</b>, see [this](javascript:alert(1)) {HOSTILE} & <i>more"
    on_loop(server, server.runtime.manager.agent_reply(conversation["id"], "<i>Mei</i>", reply))
    texts = server.telegram.wait_for_texts(chat, 3)
    assert texts[-1] == f"<i>Mei</i> (support): {reply}"
    for call in server.telegram.calls_to("sendMessage", chat_id=chat):
        assert "parse_mode" not in call and "entities" not in call


def test_telegram_control_only_text_is_not_answered_and_bad_bodies_get_400(server):
    chat = 80002
    before = count(server, "messages")
    assert tg_post(server, json.dumps(tg_update(chat, "\u0000\u202e\u2066 \u0007")).encode()).status_code == 200
    idle(server)
    assert count(server, "messages") == before and server.telegram.calls_to("sendMessage", chat_id=chat) == []
    events = count(server, "platform_events")
    good = json.dumps(tg_update(chat, "why was I charged?")).encode()
    for body in [good.replace(b"charged", b"ch\xffrged\xc3"), b"{not json", b"\xff\xfe\x00{", b"[]"]:
        response = tg_post(server, body)
        assert response.status_code == 400 and response.json()["ok"] is False, body[:20]
    assert count(server, "platform_events") == events


# OpenAI-compatible API -------------------------------------------------------------------------
def test_v1_rejects_undecodable_bodies_and_lone_surrogates_with_400_in_openais_shape(server):
    headers = {"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"}
    url = f"{server.base}/v1/chat/completions"
    not_utf8 = b'{"model": "stub", "messages": [{"role": "user", "content": "why \xff\xfe charged"}]}'
    cases = [
        (not_utf8, None),
        (b"\xff\xfe{\x00", None),  # UTF-16 byte-order mark followed by garbage
        (with_lone_surrogate({"model": "stub", "messages": [{"role": "user", "content": "hi SURROGATE"}]}),
         "messages[0].content"),
        (with_lone_surrogate({"model": "stub", "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": [{"type": "text", "text": "SURROGATE"}]}]}),
         "messages[1].content[0].text"),
    ]
    for body, param in cases:
        response = httpx.post(url, content=body, headers=headers, timeout=30)
        assert response.status_code == 400, (body[:40], response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert error["param"] == param and error["message"]
    # Hostile but valid text is the caller's business: it reaches the model and comes back as JSON.
    ok = httpx.post(url, headers=headers, timeout=30, json={"model": "stub", "messages": [
        {"role": "user", "content": HOSTILE + " 😀"}]})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == f"Answer to: {HOSTILE} 😀"


# Agent console API -----------------------------------------------------------------------------
def test_agent_console_refuses_blank_huge_and_invalid_unicode_replies_without_500(server):
    headers = visitor(server.base)
    accepted = widget_post(server.base, headers, "agent-api-1", "I want to talk to a human")
    conversation_id = db(server, server.runtime.store.message, accepted.json()["message_id"])["conversation_id"]
    wait_for(lambda: db(server, server.runtime.store.conversation, conversation_id)["status"] == "waiting",
             what="the hand-over")
    agent = console(server.base, "mei")
    assert agent.post(f"/agent/api/conversations/{conversation_id}/claim").status_code == 200
    before = count(server, "messages")
    for path in ("reply", "note"):
        url = f"/agent/api/conversations/{conversation_id}/{path}"
        for text in ("", "   ", " \n\t ", "x" * 100_000):
            response = agent.post(url, json={"text": text})
            assert response.status_code == 422, (path, text[:5], response.text[:200])
            assert len(response.content) < 2000  # the rejected input is not echoed back
        surrogate = agent.post(url, content=b'{"text": "hi \\ud800 there"}', headers={"Content-Type": "application/json"})
        assert surrogate.status_code == 422 and "unicode" in surrogate.text.lower()
        not_utf8 = agent.post(url, content=b'{"text": "hi \xff there"}', headers={"Content-Type": "application/json"})
        assert not_utf8.status_code == 400
    assert count(server, "messages") == before
    sent = agent.post(f"/agent/api/conversations/{conversation_id}/reply", json={"text": HOSTILE})
    assert sent.status_code == 200
    thread = agent.get(f"/agent/api/conversations/{conversation_id}").json()
    assert thread["messages"][-1]["text"] == HOSTILE  # stored verbatim; pages show it as text


def test_agent_search_takes_hostile_queries(server):
    agent = console(server.base, "mei")
    widget_post(server.base, visitor(server.base), "search-hostile", f"search me {HOSTILE}")
    for query in ["\x00\x00\x00", "%", "_", '"""', "*", "NEAR(a b)", "a OR b", "\u202e\u202e\u202e", "\ud800abc",
                  "<script>"]:
        response = agent.get("/agent/api/search?q=" + quote(query.encode("utf-8", "surrogatepass")))
        assert response.status_code == 200, (query, response.text[:200])
    found = agent.get("/agent/api/search", params={"q": "<script>window"}).json()["results"]
    assert any("<script>window.__pwned=1</script>" in r["snippet"] for r in found)


# Pages in a real browser -----------------------------------------------------------------------
INJECTED = """() => {
    const roots = [document];
    for (let i = 0; i < roots.length; i++) {
        for (const node of roots[i].querySelectorAll('*')) if (node.shadowRoot) roots.push(node.shadowRoot);
    }
    const all = (selector) => roots.flatMap(root => [...root.querySelectorAll(selector)]);
    return {
        pwned: typeof window.__pwned,
        imgs: all('img[src="x"], img[onerror]').length,
        scripts: all('script').filter(s => (s.textContent || '').includes('__pwned') || !s.src).length,
        jsLinks: all('a[href]').filter(a => /^\\s*javascript:/i.test(a.getAttribute('href'))).length,
        formatted: all('[data-testid=message-text] strong, [data-testid=message-text] b, '
                       + '[data-testid=thread-message-text] strong, [data-testid=thread-message-text] b, '
                       + '.qpreview *, [data-testid=try-reply] *').length,
    };
}"""
CLEAN = {"pwned": "undefined", "imgs": 0, "scripts": 0, "jsLinks": 0, "formatted": 0}


@needs_chromium
def test_hostile_text_is_shown_as_text_in_the_widget_and_both_consoles(server):
    """The pages' CSP would block inline handlers anyway, so the DOM itself is checked too."""
    base = server.base
    name = "<img src=x onerror=window.__pwned=1>"
    tg_post(server, json.dumps(tg_update(80003, f"talk to a human please {HOSTILE}", first_name=name)).encode())
    with chromium() as browser:
        page = open_page(browser, f"{base}/")
        page.click("[data-testid=launcher]")
        page.fill("[data-testid=input]", HOSTILE)
        page.keyboard.press("Enter")
        answer = f"Answer to: {HOSTILE}"
        page.wait_for_function(
            """(answer) => [...document.querySelector('#snapdesk-widget').shadowRoot
                  .querySelectorAll('[data-testid=message][data-role=bot]:not([data-streaming=true]) [data-testid=message-text]')]
                  .some(e => e.textContent === answer)""", arg=answer, timeout=10_000)
        handover = f"I want to talk to a human. {HOSTILE}"
        page.fill("[data-testid=input]", handover)
        page.keyboard.press("Enter")
        page.wait_for_selector("[data-testid=message][data-kind=handover]", timeout=10_000)
        user_texts_shown = page.locator("[data-testid=message][data-role=user] [data-testid=message-text]").all_inner_texts()
        assert user_texts_shown[-2:] == [HOSTILE, handover]

        agent = sign_in(browser, base, "mei", PASSWORD, "/agent")
        item = agent.locator("[data-testid=queue-item]", has_text="I want to talk to a human. <img")
        item.wait_for(timeout=10_000)
        assert item.locator(".qpreview").inner_text() == handover[:140]
        telegram_item = agent.locator("[data-testid=queue-item]", has_text="talk to a human please")
        telegram_item.wait_for(timeout=10_000)
        assert name in telegram_item.inner_text()  # the Telegram user's name, as text
        item.click()
        agent.wait_for_selector("[data-testid=thread-message][data-role=bot]", timeout=10_000)
        shown = agent.locator("[data-testid=thread-message] [data-testid=thread-message-text]").all_inner_texts()
        assert HOSTILE in shown and answer in shown and handover in shown
        agent.click("[data-testid=claim]")
        agent.wait_for_selector("[data-testid=thread-message][data-kind=status]", timeout=10_000)  # joined
        assert agent.input_value("[data-testid=composer]") == "", "a draft is never put in the reply box"
        agent.fill("[data-testid=composer]", f"Mei here. {HOSTILE}")
        agent.click("[data-testid=send-reply]")
        reply = page.wait_for_selector("[data-testid=message][data-role=agent]", timeout=10_000)
        assert f"Mei here. {HOSTILE}" in reply.inner_text()
        agent.fill("[data-testid=search]", "window.__pwned")
        agent.press("[data-testid=search]", "Enter")
        agent.wait_for_selector("[data-testid=search-result]", timeout=10_000)
        assert "<script>window.__pwned=1</script>" in agent.locator("[data-testid=search-results]").inner_text()

        operator = sign_in(browser, base, "olga", PASSWORD, "/operator")
        operator.click("[data-testid=template-item][data-name=general] [data-testid=edit-template]")
        wait_for_editor(operator, "name: general")
        operator.fill("[data-testid=try-text]", HOSTILE)
        operator.click("[data-testid=try-run]")
        result = operator.wait_for_selector("[data-testid=try-reply]", timeout=10_000)
        assert result.inner_text() == answer

        page.wait_for_timeout(200)
        for shown_page in (page, agent, operator):
            assert shown_page.evaluate(INJECTED) == CLEAN, shown_page.url
            assert shown_page.dialogs == []
