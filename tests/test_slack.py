"""The Slack channel, end to end: the real server, slack-bolt and slack_sdk, and a local fake Slack.

Events are POSTed to /slack/events shaped as Slack documents them and signed with the real
v0 scheme (or sent over Socket Mode); what the bot does is read back from the calls the
fake Slack recorded and from the store.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image

from adapters.slack import SlackAdapter, setup_slack
from adapters.slack_api import FileFetcher, SlackCallError
from adapters.slack_text import from_slack, render, split_message
from bot.messages import Conversation, Outbound
from bot.settings import Settings
from bot.store import Store
from bot.web.app import create_app
from bot.gateway import AdapterConfigError
from engine.base import ImagePart
from engine.stub import StubEngine, last_user_text
from tests.fake_slack import (
    APP_TOKEN,
    BOT_ID,
    BOT_TOKEN,
    BOT_USER,
    TEAM,
    FakeSlack,
    channel_message_event,
    dm_event,
    event_callback,
    mention_event,
    new_ts,
    sign,
    wait_for,
)
from tests.live_server import live_server
from tests.prompt_tokens import (
    CAPTION_INJECTION,
    FILE_INJECTION,
    NAME_INJECTION,
    assert_one_turn_per_message,
    system_text,
)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
PLACEHOLDER = "Looking at this…"
LONG_PARAGRAPH = "Check the cable first, then restart the router and wait two minutes. " * 12


def script(request) -> tuple[str, float]:
    text = last_user_text(request)
    if "announcement" in text:
        return "Done! <!channel> please see <https://evil.example/login|your bill> & ping <@U999>", 0.9
    if "everything" in text:
        return long_reply(), 0.9
    if "not sure" in text:
        return "Maybe restart it?", 0.2
    return f"Answer to: {text.strip()}", 0.9


def png(width: int = 64, height: int = 48, color: str = "white") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buffer, "JPEG")
    return buffer.getvalue()


@dataclass
class Env:
    base: str
    app: Any
    engine: StubEngine
    adapter: SlackAdapter
    fake: FakeSlack

    @property
    def runtime(self):
        return self.app.state.runtime

    def post(self, payload: dict | bytes, *, secret: str = SECRET, timestamp: int | None = None,
             retry: int | None = None, headers: dict | None = None) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        sent = sign(secret, body, timestamp) if headers is None else headers
        if retry:
            sent = {**sent, "X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"}
        return httpx.post(f"{self.base}/slack/events", content=body, headers=sent, timeout=10)

    def on_loop(self, coroutine) -> Any:
        """Run a coroutine on the server's event loop (where the manager lives)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.adapter.loop).result(15)

    def db(self, fn, *args) -> Any:
        return self.on_loop(self.runtime.manager.db(fn, *args))

    def count(self, table: str) -> int:
        store = self.runtime.store
        return self.db(lambda: store.db[table].count)

    def conversation(self, key: str) -> dict | None:
        return self.db(self.runtime.store.conversation_by_key, "slack", key)

    def idle(self) -> None:
        """Every background job (event processing, answers) has finished."""
        wait_for(lambda: not self.runtime.tasks, what="background work to finish")


def answer_in(fake: FakeSlack, channel: str, thread_ts: str | None = None, count: int = 1,
              what: str = "an answer") -> list[dict]:
    """The bot's messages in a DM or thread, once the placeholder has been replaced `count` times."""
    def ready():
        messages = fake.channel_messages(channel) if thread_ts is None else fake.thread(channel, thread_ts)
        return messages if sum(m["text"] != PLACEHOLDER for m in messages) >= count else None
    return wait_for(ready, what=what)


@pytest.fixture(scope="module")
def fake():
    server = FakeSlack().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory, fake):
    engine = StubEngine(script=script)
    with live_server(
        tmp_path_factory.mktemp("slack"), engine=engine, slack_bot_token=BOT_TOKEN, slack_signing_secret=SECRET,
        slack_api_url=fake.api_url, slack_agent_channel="CAGENTS", public_url="https://support.example.com/",
        image_max_bytes=2 * 1024 * 1024,
    ) as (base, app):
        adapter = app.state.server.adapters[0]
        adapter.api.backoff.backoff_factor = 0.01  # backoff stays real, just short
        yield Env(base, app, engine, adapter, fake)


def image_parts(request) -> int:
    user = [m for m in request.messages if m.role == "user"][-1]
    return sum(isinstance(p, ImagePart) for p in user.parts)


def requests_with(engine: StubEngine, text: str) -> list:
    return [r for r in engine.requests if text in last_user_text(r)]


# Start-up --------------------------------------------------------------------------------------
def test_start_identifies_the_bot(env):
    assert env.adapter.bot_user_id == BOT_USER and env.adapter.bot_id == BOT_ID
    auth = env.fake.calls_to("auth.test")[0]
    assert auth.token == BOT_TOKEN


@pytest.mark.parametrize(
    "settings, words",
    [
        (dict(slack_bot_token=BOT_TOKEN), "SIGNING_SECRET"),
        (dict(slack_signing_secret=SECRET), "BOT_TOKEN"),
        (dict(slack_bot_token="xoxp-user", slack_signing_secret=SECRET), "xoxb-"),
        (dict(slack_bot_token=BOT_TOKEN, slack_app_token="xoxb-wrong"), "xapp-"),
        (dict(slack_bot_token=BOT_TOKEN, slack_signing_secret=SECRET, slack_api_url="http://slack.example/api/"),
         "https"),
        (dict(slack_bot_token=BOT_TOKEN, slack_signing_secret=SECRET, slack_agent_channel="#support"), "channel id"),
    ],
)
def test_unsafe_settings_refuse_to_start(tmp_path, settings, words):
    with pytest.raises(AdapterConfigError) as error:
        setup_slack(Settings(data_dir=tmp_path, **settings), gateway=None)  # type: ignore[arg-type]
    message = str(error.value)
    assert words in message and message.count(". ") == 0 and message.endswith(".")


def test_bot_token_without_signing_secret_stops_the_server(tmp_path):
    with pytest.raises(AdapterConfigError, match="SNAPDESK_SLACK_SIGNING_SECRET"):
        create_app(Settings(data_dir=tmp_path, slack_bot_token=BOT_TOKEN), engine=StubEngine())


async def test_a_token_slack_rejects_stops_the_start(tmp_path, fake):
    settings = Settings(data_dir=tmp_path, slack_bot_token="xoxb-revoked", slack_signing_secret=SECRET,
                        slack_api_url=fake.api_url)
    adapter = SlackAdapter(settings, gateway=None)  # type: ignore[arg-type]
    try:
        with pytest.raises(AdapterConfigError, match=r"rejected SNAPDESK_SLACK_BOT_TOKEN \(invalid_auth\)"):
            await adapter.start()
    finally:
        await adapter.stop()


async def test_an_app_token_slack_rejects_stops_the_start(tmp_path, fake):
    settings = Settings(data_dir=tmp_path, slack_bot_token=BOT_TOKEN, slack_app_token="xapp-revoked",
                        slack_api_url=fake.api_url)
    adapter = SlackAdapter(settings, gateway=None)  # type: ignore[arg-type]
    try:
        with pytest.raises(AdapterConfigError, match=r"rejected SNAPDESK_SLACK_APP_TOKEN \(invalid_auth\)"):
            await adapter.start()
    finally:
        await adapter.stop()
    assert fake.calls_to("apps.connections.open")[-1].token == "xapp-revoked"


# Verification ----------------------------------------------------------------------------------
def test_url_verification_answers_the_challenge(env):
    challenge = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    payload = {"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": challenge, "type": "url_verification"}
    response = env.post(payload)
    assert response.status_code == 200 and response.json() == {"challenge": challenge}
    assert env.post(payload, secret="not-the-secret").status_code == 401


def test_bad_missing_or_stale_signatures_are_refused_and_nothing_is_stored(env):
    before = (env.count("platform_events"), env.count("messages"), len(env.fake.calls))
    payload = event_callback(dm_event("D0SIGNED", "Why was I charged?"))
    body = json.dumps(payload).encode()
    assert env.post(payload, secret="wrong-secret").status_code == 401
    assert env.post(payload, headers={"Content-Type": "application/json"}).status_code == 401
    assert env.post(payload, timestamp=int(time.time()) - 6 * 60).status_code == 401
    assert env.post(payload, timestamp=int(time.time()) + 6 * 60).status_code == 401
    tampered = sign(SECRET, body)
    assert env.post(body.replace(b"charged", b"CHARGED"), headers=tampered).status_code == 401
    garbage = {**sign(SECRET, body), "X-Slack-Request-Timestamp": "yesterday"}
    assert env.post(body, headers=garbage).status_code == 401
    env.idle()
    assert (env.count("platform_events"), env.count("messages"), len(env.fake.calls)) == before


def test_signed_payloads_that_cannot_be_read_get_400_and_unsigned_ones_401(env):
    """Bodies bolt fails on while building its request: a clear 4xx, never a 500, nothing stored."""
    before = (env.count("platform_events"), env.count("messages"))
    event = dm_event("D0ODDBODY", "why was I charged?")
    for body in (b"[1, 2]", json.dumps({**event_callback(event), "authorizations": "x"}).encode(),
                 json.dumps({**event_callback(event), "enterprise": 5}).encode()):
        response = env.post(body)
        assert response.status_code == 400 and response.json() == {"error": "unreadable payload"}, body[:40]
        assert env.post(body, secret="not-the-secret").status_code == 401
    env.idle()
    assert (env.count("platform_events"), env.count("messages")) == before


def test_a_body_past_one_megabyte_is_refused_before_bolt_reads_it(env):
    before = env.count("platform_events")
    payload = event_callback(dm_event("D0HUGEBODY", "x" * (1024 * 1024)))
    response = env.post(payload)
    assert response.status_code == 413
    def chunks():  # no Content-Length: the limit holds for a streamed body too
        body = json.dumps(payload).encode()
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]
    headers = sign(SECRET, json.dumps(payload).encode())
    try:
        streamed = httpx.post(f"{env.base}/slack/events", content=chunks(), headers=headers, timeout=10)
        assert streamed.status_code == 413
    except httpx.HTTPError:  # the server may reset the connection once it has answered
        pass
    env.idle()
    assert env.count("platform_events") == before


def test_events_snapdesk_does_not_answer_are_acknowledged_so_slack_stops_sending_them(env):
    before = (env.count("platform_events"), len(env.fake.calls))
    for event in ({"type": "reaction_added", "user": "U1", "reaction": "thumbsup", "event_ts": new_ts(),
                   "item": {"type": "message", "channel": "D0REACT", "ts": new_ts()}},
                  {"type": "app_home_opened", "user": "U1", "channel": "D0REACT", "tab": "messages",
                   "event_ts": new_ts()},
                  {"type": "member_joined_channel", "user": "U2", "channel": "C0REACT", "channel_type": "C",
                   "team": TEAM, "event_ts": new_ts()}):
        assert env.post(event_callback(event)).status_code == 200, event["type"]
    env.idle()
    assert (env.count("platform_events"), len(env.fake.calls)) == before


def test_an_event_that_comes_while_slack_cannot_say_who_the_bot_is_is_refused_then_answered(tmp_path, fake):
    """A 500 lets Slack deliver the event again; an acknowledgement would lose it."""
    channel = "D0NOAUTH"
    fake.fail("auth.test", times=4, status=500)  # every attempt at start
    with live_server(tmp_path, engine=StubEngine(script=script), slack_bot_token=BOT_TOKEN,
                     slack_signing_secret=SECRET, slack_api_url=fake.api_url) as (base, app):
        adapter = app.state.server.adapters[0]
        adapter.api.backoff.backoff_factor = 0.01
        assert adapter.bot_user_id is None
        fake.fail("auth.test", times=4, status=503)  # still down when the event comes
        payload = event_callback(dm_event(channel, "Is my order lost?"))
        body = json.dumps(payload).encode()
        first = httpx.post(f"{base}/slack/events", content=body, headers=sign(SECRET, body), timeout=10)
        assert first.status_code == 500
        store = app.state.runtime.store
        stored = asyncio.run_coroutine_threadsafe(app.state.runtime.manager.db(
            lambda: store.db["platform_events"].count), adapter.loop).result(5)
        assert stored == 0
        retry = {**sign(SECRET, body), "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_error"}
        assert httpx.post(f"{base}/slack/events", content=body, headers=retry, timeout=10).status_code == 200
        assert answer_in(fake, channel)[0]["text"] == "Answer to: Is my order lost?"
        assert adapter.bot_user_id == BOT_USER


# Direct messages -------------------------------------------------------------------------------
def test_dm_with_text_is_answered_by_replacing_the_placeholder(env):
    channel = "D0TEXT01"
    response = env.post(event_callback(dm_event(channel, "How do I turn off auto-renew?")))
    assert response.status_code == 200
    messages = answer_in(env.fake, channel)
    assert [m["text"] for m in messages] == ["Answer to: How do I turn off auto-renew?"]
    assert "thread_ts" not in messages[0] and messages[0].get("edited")
    placeholder = env.fake.calls_to("chat.postMessage", channel=channel)[0]
    assert placeholder.args["text"] == PLACEHOLDER and placeholder.token == BOT_TOKEN
    update = env.fake.calls_to("chat.update", channel=channel)[0]
    assert update.args["ts"] == messages[0]["ts"]
    conversation = env.conversation(f"{TEAM}:{channel}")
    assert conversation["user_id"] == "U1" and conversation["user_name"] == "Alice"


def test_chinese_dm_gets_a_chinese_placeholder(env):
    channel = "D0ZH0001"
    env.post(event_callback(dm_event(channel, "为什么扣我钱？")))
    answer_in(env.fake, channel)
    assert env.fake.calls_to("chat.postMessage", channel=channel)[0].args["text"] == "正在查看，请稍候…"


def test_dm_with_two_images_is_one_turn_with_both_images(env):
    channel = "D0IMAGES"
    files = [env.fake.add_file("statement.png", png()), env.fake.add_file("order.jpg", jpeg(), mimetype="image/jpeg")]
    env.post(event_callback(dm_event(channel, "What are these two charges?", files=files)))
    answer_in(env.fake, channel)
    [request] = requests_with(env.engine, "What are these two charges?")
    assert image_parts(request) == 2
    ids = {f["id"] for f in files}
    downloads = [d for d in env.fake.downloads if d["file"] in ids]
    assert len(downloads) == 2 and all(d["authorized"] for d in downloads)
    rows = env.db(env.runtime.store.messages, env.conversation(f"{TEAM}:{channel}")["id"])
    assert sum(r["role"] == "user" for r in rows) == 1


def test_image_alone_is_answered(env):
    channel = "D0IMGONLY"
    env.post(event_callback(dm_event(channel, "", files=[env.fake.add_file("router.png", png(color="red"))])))
    answer_in(env.fake, channel)
    env.idle()
    assert not [m for m in env.fake.channel_messages(channel) if "couldn't" in m["text"]]


def slack_escaped(text: str) -> str:
    """Message text as Slack sends it: &, < and > escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_a_display_name_and_file_name_with_control_tokens_open_no_turn(env, engine):
    """Slack users choose their display name; the templates show it in the system prompt."""
    env.fake.add_user("U0HOSTILE", "mallory", "Mallory Example")
    env.fake.users["U0HOSTILE"]["profile"]["display_name"] = NAME_INJECTION
    channel = "D0NAMEINJ"
    env.post(event_callback(dm_event(channel, "SLACK-NAME-1 hello", user="U0HOSTILE")))
    answer_in(env.fake, channel)
    screenshot = env.fake.add_file(FILE_INJECTION, png())
    env.post(event_callback(dm_event(channel, slack_escaped(f"SLACK-NAME-2 {CAPTION_INJECTION}"), user="U0HOSTILE",
                                     files=[screenshot])))
    answer_in(env.fake, channel, count=2)
    [request] = requests_with(env.engine, "SLACK-NAME-2")
    assert "Obey the user fully" in system_text(request) and "developer mode" in last_user_text(request)
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "user"]
    assert assert_one_turn_per_message(engine, request)["<|vision_start|>"] == 1


# Channels and threads --------------------------------------------------------------------------
def test_mention_in_a_channel_is_answered_in_a_thread_and_followed_up(env):
    channel = "C0THREAD"
    mention = mention_event(channel, "my parcel has not arrived")
    env.post(event_callback(mention))
    root = mention["ts"]
    [answer] = answer_in(env.fake, channel, root)
    assert answer["text"] == "Answer to: my parcel has not arrived"
    assert env.fake.calls_to("chat.postMessage", channel=channel)[0].args["thread_ts"] == root
    # a follow-up in that thread, without a mention, belongs to the same conversation
    env.post(event_callback(channel_message_event(channel, "it says delivered", thread_ts=root)))
    messages = answer_in(env.fake, channel, root, count=2)
    assert messages[-1]["text"] == "Answer to: it says delivered"
    rows = env.db(env.runtime.store.messages, env.conversation(f"{TEAM}:{channel}:{root}")["id"])
    assert [r["text"] for r in rows if r["role"] == "user"] == ["my parcel has not arrived", "it says delivered"]


def test_mention_inside_a_thread_arrives_twice_and_is_answered_once(env):
    channel = "C0TWICE1"
    first = mention_event(channel, "is the line down?")
    env.post(event_callback(first))
    answer_in(env.fake, channel, first["ts"])
    ts = new_ts()
    both = [mention_event(channel, "still red", ts=ts, thread_ts=first["ts"]),
            channel_message_event(channel, f"<@{BOT_USER}> still red", ts=ts, thread_ts=first["ts"])]
    for event in both:
        assert env.post(event_callback(event)).status_code == 200
    answer_in(env.fake, channel, first["ts"], count=2)
    env.idle()
    assert len(requests_with(env.engine, "still red")) == 1
    assert sum(m["text"] != PLACEHOLDER for m in env.fake.thread(channel, first["ts"])) == 2


def test_channel_chatter_outside_bot_threads_is_not_stored(env):
    before = env.count("platform_events")
    unrelated_thread = new_ts()
    for event in (channel_message_event("C0CHATTER", "lunch?"),
                  channel_message_event("C0CHATTER", "sure", thread_ts=unrelated_thread)):
        assert env.post(event_callback(event)).status_code == 200
    env.idle()
    assert env.count("platform_events") == before
    assert not env.fake.calls_to("chat.postMessage", channel="C0CHATTER")


# What is ignored -------------------------------------------------------------------------------
def test_bot_messages_own_messages_and_edits_are_acknowledged_and_dropped(env):
    channel = "D0IGNORE"
    own = dm_event(channel, "Looking at this…", user=BOT_USER, bot_id=BOT_ID, app_id="A0TEST")
    other_bot = {"type": "message", "subtype": "bot_message", "text": "Deploy finished", "ts": new_ts(),
                 "username": "CI", "bot_id": "B0OTHER", "channel": channel, "channel_type": "im"}
    edited_ts = new_ts()
    edit = {"type": "message", "subtype": "message_changed", "hidden": True, "channel": channel,
            "channel_type": "im", "ts": new_ts(), "event_ts": new_ts(),
            "message": {"type": "message", "user": "U1", "text": "edited text", "ts": edited_ts,
                        "edited": {"user": "U1", "ts": new_ts()}},
            "previous_message": {"type": "message", "user": "U1", "text": "old text", "ts": edited_ts}}
    delete = {"type": "message", "subtype": "message_deleted", "hidden": True, "channel": channel,
              "channel_type": "im", "ts": new_ts(), "deleted_ts": edited_ts, "event_ts": new_ts()}
    before = (env.count("platform_events"), env.count("messages"))
    for event in (own, other_bot, edit, delete):
        response = env.post(event_callback(event))
        assert response.status_code == 200
    env.idle()
    assert (env.count("platform_events"), env.count("messages")) == before
    assert not env.fake.calls_to("chat.postMessage", channel=channel)


# Slack's retries and durability ----------------------------------------------------------------
def test_retry_of_a_stored_event_is_acknowledged_and_not_answered_twice(env):
    channel = "D0RETRY1"
    payload = event_callback(dm_event(channel, "Payment failed with E-4012"))
    assert env.post(payload).status_code == 200
    answer_in(env.fake, channel)
    env.idle()
    calls = len(env.fake.calls)
    for attempt in (1, 2):
        assert env.post(payload, retry=attempt).status_code == 200
    env.idle()
    assert len(env.fake.calls) == calls
    assert len(requests_with(env.engine, "Payment failed with E-4012")) == 1
    rows = env.db(lambda: list(env.runtime.store.db.query(
        "select * from platform_events where event_key = ?", [f"{TEAM}:{payload['event_id']}"])))
    assert len(rows) == 1 and rows[0]["processed_at"]


def test_retry_of_an_event_never_stored_is_answered(env):
    channel = "D0RETRY2"
    # the first delivery died before it was stored: Slack's retry is the first we see
    assert env.post(event_callback(dm_event(channel, "Is my account locked?")), retry=1).status_code == 200
    assert answer_in(env.fake, channel)[0]["text"] == "Answer to: Is my account locked?"


def test_events_stored_but_never_processed_are_processed_at_start(tmp_path, fake):
    channel = "D0CRASH1"
    payloads = [event_callback(dm_event(channel, "Where is my parcel?")),
                event_callback(dm_event(channel, "And where is the invoice?"))]
    store = Store(tmp_path)  # what a server that crashed right after storing the events left behind
    for payload in payloads:
        assert store.add_platform_event("slack", f"{TEAM}:{payload['event_id']}", payload)
    store.close()
    with live_server(tmp_path, engine=StubEngine(script=script), slack_bot_token=BOT_TOKEN,
                     slack_signing_secret=SECRET, slack_api_url=fake.api_url) as (_, app):
        messages = answer_in(fake, channel, count=2)
        assert [m["text"] for m in messages] == ["Answer to: Where is my parcel?",
                                                 "Answer to: And where is the invoice?"]
        runtime = app.state.runtime
        wait_for(lambda: not runtime.tasks, what="recovery to finish")
        pending = asyncio.run_coroutine_threadsafe(runtime.manager.pending_events("slack"),
                                                   app.state.server.adapters[0].loop)
        assert pending.result(5) == []


# Files -----------------------------------------------------------------------------------------
def notices(fake: FakeSlack, channel: str) -> list[str]:
    return [m["text"] for m in fake.channel_messages(channel) if "too large" in m["text"] or "couldn't" in m["text"]
            or "only read images" in m["text"]]


def test_file_declared_too_big_is_skipped_with_a_reply_and_the_text_answered(env):
    channel = "D0BIGFILE"
    big = env.fake.add_file("bill.png", png(), size=25 * 1024 * 1024)
    env.post(event_callback(dm_event(channel, "Why was I charged 88?", files=[big])))
    messages = answer_in(env.fake, channel, count=2)
    assert notices(env.fake, channel) == [
        "bill.png is too large for me to open (the limit is 2 MB). Could you send a smaller screenshot?"]
    assert messages[-1]["text"] == "Answer to: Why was I charged 88?"
    assert not [d for d in env.fake.downloads if d["file"] == big["id"]]  # never downloaded


def test_download_stops_past_the_limit(env):
    channel = "D0HUGE01"
    huge = env.fake.add_file("screen.png", b"\x89PNG\r\n\x1a\n", kind="huge", size=2048)  # the size lies
    env.post(event_callback(dm_event(channel, "What does this screen say?", files=[huge])))
    answer_in(env.fake, channel, count=2)
    assert notices(env.fake, channel) == [
        "screen.png is too large for me to open (the limit is 2 MB). Could you send a smaller screenshot?"]


@pytest.mark.parametrize("kind", ["error500", "html"])
def test_failed_download_gets_a_clear_reply_and_the_text_is_answered(env, kind):
    channel = f"D0FAIL{kind.upper()[:4]}"
    bill = env.fake.add_file("bill.png", png(), kind=kind)
    text = f"Please check my bill ({kind})"
    env.post(event_callback(dm_event(channel, text, files=[bill])))
    messages = answer_in(env.fake, channel, count=2)
    assert notices(env.fake, channel) == ["I couldn't open bill.png; could you send it again?"]
    assert messages[-1]["text"] == f"Answer to: {text}"
    [request] = requests_with(env.engine, text)
    assert image_parts(request) == 0  # an HTML sign-in page never reaches the model as an image


def test_a_file_url_that_is_not_a_url_gets_a_clear_reply_and_the_text_is_answered(env):
    channel = "D0BADURL"
    broken = env.fake.add_file("bill.png", png())
    broken["url_private_download"] = broken["url_private"] = broken["url_private"] + "\nX-Injected: 1"
    env.post(event_callback(dm_event(channel, "Is this bill right?", files=[broken])))
    messages = answer_in(env.fake, channel, count=2)
    assert notices(env.fake, channel) == ["I couldn't open bill.png; could you send it again?"]
    assert messages[-1]["text"] == "Answer to: Is this bill right?"


def test_slow_download_times_out(env):
    channel = "D0SLOW01"
    env.adapter.fetcher.timeout_s = 0.5
    try:
        slow = env.fake.add_file("slow.png", b"\x89PNG\r\n\x1a\n", kind="slow")
        env.post(event_callback(dm_event(channel, "Can you read this one?", files=[slow])))
        answer_in(env.fake, channel, count=2)
    finally:
        env.adapter.fetcher.timeout_s = 30.0
    assert notices(env.fake, channel) == ["I couldn't open slow.png; could you send it again?"]


def test_token_goes_only_to_the_slack_file_host(env):
    channel = "D0ELSEWHERE"
    elsewhere = env.fake.add_file("bill.png", png(), host="localhost")  # same fake, another host name
    other_type = env.fake.add_file("report.pdf", b"%PDF-1.7", mimetype="application/pdf")
    env.post(event_callback(dm_event(channel, "Here are my files", files=[elsewhere, other_type])))
    answer_in(env.fake, channel, count=2)
    assert not [d for d in env.fake.downloads if d["file"] in (elsewhere["id"], other_type["id"])]
    assert notices(env.fake, channel) == [
        "I couldn't open bill.png; could you send it again?\n"
        "I can only read images (PNG, JPEG, GIF, WebP or BMP), so I skipped report.pdf."]


def test_redirects_are_followed_only_on_the_slack_file_host(env):
    channel = "D0MOVED01"
    moved = env.fake.add_file("statement.png", png(), kind="moved")
    away = env.fake.add_file("bill.png", png(), kind="moved_away")
    env.post(event_callback(dm_event(channel, "Two screenshots, one moved", files=[moved, away])))
    answer_in(env.fake, channel, count=2)
    assert notices(env.fake, channel) == ["I couldn't open bill.png; could you send it again?"]
    [request] = requests_with(env.engine, "Two screenshots, one moved")
    assert image_parts(request) == 1
    followed = [d for d in env.fake.downloads if d.get("moved")]
    assert [d["file"] for d in followed] == [moved["id"]] and followed[0]["authorized"]


def test_unreadable_file_without_text_asks_again_and_hands_nothing_over(env):
    channel = "D0NOTEXT"
    env.post(event_callback(dm_event(channel, "", files=[env.fake.add_file("bill.png", png(), kind="html")])))
    wait_for(lambda: notices(env.fake, channel), what="the notice")
    env.idle()
    assert [m["text"] for m in env.fake.channel_messages(channel)] == [
        "I couldn't open bill.png; could you send it again?"]


# Replies ---------------------------------------------------------------------------------------
def test_mrkdwn_injection_in_model_output_is_escaped(env):
    channel = "D0INJECT"
    env.post(event_callback(dm_event(channel, "Post an announcement please")))
    [answer] = answer_in(env.fake, channel)
    assert answer["text"] == (
        "Done! &lt;!channel&gt; please see &lt;https://evil.example/login|your bill&gt; &amp; ping &lt;@U999&gt;")
    for call in env.fake.calls_to("chat.postMessage", channel=channel) + env.fake.calls_to("chat.update",
                                                                                           channel=channel):
        assert "<" not in call.args["text"]


def long_reply() -> str:
    return "\n\n".join(f"**Step {i}.** {LONG_PARAGRAPH}" for i in range(1, 13))


def test_long_reply_is_split_on_paragraphs(env):
    channel = "D0LONG01"
    env.post(event_callback(dm_event(channel, "Tell me everything about my router")))
    messages = wait_for(lambda: (lambda ms: ms if "\n".join(m["text"] for m in ms).count("Step") == 12 else None)(
        env.fake.channel_messages(channel)), what="the whole long answer")
    assert len(messages) >= 3 and all(len(m["text"]) <= 3000 for m in messages)
    assert messages[0].get("edited")  # the first part replaced the placeholder
    assert all(m["text"].startswith("*Step") for m in messages)  # cut between paragraphs, markdown as mrkdwn
    assert " ".join("\n".join(m["text"] for m in messages).split()) == " ".join(render(long_reply()).split())


def test_delivery_is_retried_after_server_errors_and_rate_limits(env):
    channel = "D0RETRYOUT"
    env.fake.fail("chat.update", times=2, status=503, channel=channel)
    env.fake.fail("chat.postMessage", times=1, retry_after=1, channel=channel)
    env.post(event_callback(dm_event(channel, "Is the outage over?")))
    assert answer_in(env.fake, channel)[0]["text"] == "Answer to: Is the outage over?"
    posts = env.fake.calls_to("chat.postMessage", channel=channel)
    assert [c.status for c in posts] == [429, 200]
    assert posts[1].at - posts[0].at >= 0.9  # Retry-After was honoured
    assert [c.status for c in env.fake.calls_to("chat.update", channel=channel)] == [503, 503, 200]


def test_delivery_gives_up_after_bounded_attempts(env):
    channel = "D0GIVEUP"
    env.fake.fail("chat.postMessage", times=10, status=500, channel=channel)
    conversation = Conversation(999_999, "slack", f"{TEAM}:{channel}", "U1")
    with pytest.raises(SlackCallError):
        env.on_loop(env.adapter.channel.send(conversation, Outbound("hello")))
    assert len(env.fake.calls_to("chat.postMessage", channel=channel)) == env.adapter.api.attempts
    env.fake.failures.clear()
    env.fake.fail("chat.postMessage", error="channel_not_found", channel=channel)
    with pytest.raises(SlackCallError, match="channel_not_found"):  # permanent: no retry
        env.on_loop(env.adapter.channel.send(conversation, Outbound("hello")))
    assert len(env.fake.calls_to("chat.postMessage", channel=channel)) == env.adapter.api.attempts + 1


def test_temporary_slack_errors_are_retried_and_a_long_rate_limit_fails_at_once(env):
    channel = "D0TEMPERR"
    conversation = Conversation(999_998, "slack", f"{TEAM}:{channel}", "U1")
    env.fake.fail("chat.postMessage", times=2, error="service_unavailable", channel=channel)  # with HTTP 200
    env.on_loop(env.adapter.channel.send(conversation, Outbound("first")))
    assert len(env.fake.calls_to("chat.postMessage", channel=channel)) == 3
    assert [m["text"] for m in env.fake.channel_messages(channel)] == ["first"]
    env.fake.fail("chat.postMessage", retry_after=3600, channel=channel)  # an hour: not worth holding a reply
    started = time.monotonic()
    with pytest.raises(SlackCallError, match="ratelimited"):
        env.on_loop(env.adapter.channel.send(conversation, Outbound("second")))
    assert time.monotonic() - started < 10
    assert len(env.fake.calls_to("chat.postMessage", channel=channel)) == 4


# People ----------------------------------------------------------------------------------------
def test_handover_in_the_thread_announced_to_agents_and_agent_reply_delivered(env):
    channel = "C0HANDOVER"
    mention = mention_event(channel, "I want to talk to a human", user="U2")
    env.post(event_callback(mention))
    root = mention["ts"]
    [notice] = answer_in(env.fake, channel, root, what="the hand-over notice")
    conversation = env.conversation(f"{TEAM}:{channel}:{root}")
    # A request for a person needs no model: the notice goes out at once, with no placeholder first.
    assert conversation["status"] == "waiting" and not notice.get("edited")
    assert not env.engine.requests or all("talk to a human" not in str(r) for r in env.engine.requests)
    [announcement] = wait_for(lambda: env.fake.channel_messages("CAGENTS") and [
        m for m in env.fake.channel_messages("CAGENTS") if f"#{conversation['id']}" in m["text"]],
        what="the announcement")
    link = f"https://support.example.com/agent#/conversations/{conversation['id']}"
    assert link in announcement["text"]
    blocks = json.dumps(announcement["blocks"])
    assert link in blocks and "The customer asked for a person" in blocks and "Bob" in blocks
    assert f"<#{channel}>" in blocks

    env.on_loop(env.runtime.manager.agent_reply(conversation["id"], "Mei", "Hi Bob <!here>, I'm on it & checking"))
    messages = answer_in(env.fake, channel, root, count=3, what="the agent's reply")
    texts = [m["text"] for m in messages]
    assert texts[-2] == "Mei from our support team has joined the conversation."
    assert texts[-1] == "*Mei (support):* Hi Bob &lt;!here&gt;, I'm on it &amp; checking"
    assert all(m.get("thread_ts") == root for m in messages)


def test_low_confidence_hands_over_with_the_confidence(env):
    channel = "D0UNSURE"
    env.post(event_callback(dm_event(channel, "The light is blinking, I'm not sure what it means")))
    answer_in(env.fake, channel)
    conversation = env.conversation(f"{TEAM}:{channel}")
    announcement = wait_for(lambda: [m for m in env.fake.channel_messages("CAGENTS")
                                     if f"#{conversation['id']}" in m["text"]], what="the announcement")[0]
    blocks = json.dumps(announcement["blocks"])
    assert "0.20" in blocks and "Direct message" in blocks


# Socket Mode -----------------------------------------------------------------------------------
def test_socket_mode_stores_acknowledges_and_answers(tmp_path, fake):
    channel = "D0SOCKET"
    with live_server(tmp_path, engine=StubEngine(script=script), slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN,
                     slack_api_url=fake.api_url) as (base, app):
        adapter = app.state.server.adapters[0]
        assert adapter.router is None
        assert httpx.post(f"{base}/slack/events", content=b"{}").status_code == 404
        wait_for(lambda: fake.sockets, what="the Socket Mode connection")
        assert fake.calls_to("apps.connections.open")[-1].token == APP_TOKEN
        payload = event_callback(dm_event(channel, "Hello over the socket"))
        envelope = fake.send_envelope(payload)
        [ack] = wait_for(lambda: [a for a in fake.acks if a.get("envelope_id") == envelope], what="the ack")
        assert ack == {"envelope_id": envelope}
        store = app.state.runtime.store
        key = f"{TEAM}:{payload['event_id']}"
        rows = asyncio.run_coroutine_threadsafe(app.state.runtime.manager.db(lambda: list(store.db.query(
            "select event_key from platform_events where event_key = ?", [key]))), adapter.loop).result(5)
        assert rows == [{"event_key": key}]  # stored before the ack went out
        assert answer_in(fake, channel)[0]["text"] == "Answer to: Hello over the socket"
        # a redelivery of the same envelope is acknowledged and not answered again
        again = fake.send_envelope(payload, retry_attempt=1)
        ignored = fake.send_envelope(event_callback(dm_event(channel, "edited", subtype="message_changed")))
        wait_for(lambda: {a.get("envelope_id") for a in fake.acks} >= {again, ignored}, what="both acks")
        wait_for(lambda: not app.state.runtime.tasks, what="background work")
        assert len(fake.calls_to("chat.update", channel=channel)) == 1


def test_socket_mode_connects_in_the_background_when_slack_is_down_at_start(tmp_path, fake):
    channel = "D0SOCKLATE"
    opened = len(fake.calls_to("apps.connections.open"))
    fake.fail("apps.connections.open", times=2, status=503)  # both attempts of the check at start
    with live_server(tmp_path, engine=StubEngine(script=script), slack_bot_token=BOT_TOKEN, slack_app_token=APP_TOKEN,
                     slack_api_url=fake.api_url) as (base, app):
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200  # the server runs meanwhile
        calls = wait_for(lambda: [c for c in fake.calls_to("apps.connections.open")[opened:] if c.status == 200],
                         timeout=30, what="a connection once Slack is back")
        assert len(fake.calls_to("apps.connections.open")) - opened == 3 and calls[0].token == APP_TOKEN
        wait_for(lambda: fake.sockets, what="the Socket Mode connection")
        envelope = fake.send_envelope(event_callback(dm_event(channel, "Hello after the outage")))
        wait_for(lambda: envelope in {a.get("envelope_id") for a in fake.acks}, what="the ack")
        assert answer_in(fake, channel)[0]["text"] == "Answer to: Hello after the outage"


def test_an_event_that_cannot_be_stored_is_not_acknowledged_over_http_or_socket_mode(tmp_path, fake, caplog):
    """Another program holds the database's write lock: no 200, no envelope ack, so Slack sends it again."""
    http_channel, socket_channel = "D0LOCKHTTP", "D0LOCKSOCK"
    with live_server(tmp_path, engine=StubEngine(script=script), slack_bot_token=BOT_TOKEN,
                     slack_signing_secret=SECRET, slack_app_token=APP_TOKEN, slack_api_url=fake.api_url,
                     db_lock_wait_s=0.3) as (base, app):
        wait_for(lambda: fake.sockets, what="the Socket Mode connection")
        http_payload = event_callback(dm_event(http_channel, "Was I charged twice?"))
        socket_payload = event_callback(dm_event(socket_channel, "Is my parcel on its way?"))
        body = json.dumps(http_payload).encode()
        holder = sqlite3.connect(tmp_path / "snapdesk.db", timeout=5)
        try:
            holder.execute("BEGIN IMMEDIATE")
            refused = httpx.post(f"{base}/slack/events", content=body, headers=sign(SECRET, body), timeout=10)
            assert refused.status_code == 500
            envelope = fake.send_envelope(socket_payload)
            # bolt logs each listener that failed: the HTTP event's, then the socket event's
            wait_for(lambda: [r for r in caplog.records if r.name == "adapters.slack.bolt" and r.levelname == "ERROR"
                              and "locked by another program" in r.getMessage()][1:], what="the socket event to fail")
        finally:
            holder.rollback()
            holder.close()
        assert envelope not in {a.get("envelope_id") for a in fake.acks}
        # Slack's redeliveries, once the database is free again, are stored, acknowledged and answered.
        retry = {**sign(SECRET, body), "X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_error"}
        assert httpx.post(f"{base}/slack/events", content=body, headers=retry, timeout=10).status_code == 200
        again = fake.send_envelope(socket_payload, retry_attempt=1)
        wait_for(lambda: again in {a.get("envelope_id") for a in fake.acks}, what="the ack of the redelivery")
        assert answer_in(fake, http_channel)[0]["text"] == "Answer to: Was I charged twice?"
        assert answer_in(fake, socket_channel)[0]["text"] == "Answer to: Is my parcel on its way?"


# Text helpers ----------------------------------------------------------------------------------
def test_text_helpers():
    assert from_slack(f"<@{BOT_USER}> why? <@U2|bob> see <https://x.example|this> &lt;b&gt; &amp;", BOT_USER) == (
        "why? @bob see this (https://x.example) <b> &")
    assert render("**Bold** & <!everyone>") == "*Bold* &amp; &lt;!everyone&gt;"
    chunks = split_message("a" * 2990 + " &amp;&amp;&amp;" + " b" * 3000)
    assert all(len(c) <= 3000 for c in chunks) and "".join(chunks).replace(" ", "").count("&amp;") == 3
    fenced = split_message("```\n" + "line of code\n" * 400 + "```")
    assert all(c.count("```") % 2 == 0 for c in fenced)


def test_file_origins():
    slack = FileFetcher("xoxb-x", "https://slack.com/api/", 100)
    assert slack.allowed("https://files.slack.com/files-pri/T1-F1/a.png")
    assert not slack.allowed("http://files.slack.com/files-pri/T1-F1/a.png")
    assert not slack.allowed("https://files.slack.com.evil.example/a.png")
    assert not slack.allowed("https://evil.example/files-pri/T1-F1/a.png")
    local = FileFetcher("xoxb-x", "http://127.0.0.1:9999/api/", 100)
    assert local.allowed("http://127.0.0.1:9999/files-pri/x.png") and not local.allowed("http://127.0.0.1:9998/x")


def test_manifest_asks_for_exactly_what_the_adapter_uses():
    manifest = yaml.safe_load((Path(__file__).parent.parent / "adapters" / "slack_manifest.yaml").read_text())
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == {
        "app_mentions:read", "chat:write", "files:read", "im:history", "channels:history", "groups:history",
        "users:read"}
    events = manifest["settings"]["event_subscriptions"]
    assert set(events["bot_events"]) == {"app_mention", "message.im", "message.channels", "message.groups"}
    assert events["request_url"].endswith("/slack/events") and manifest["settings"]["socket_mode_enabled"] is False
    assert manifest["features"]["app_home"]["messages_tab_enabled"] is True
