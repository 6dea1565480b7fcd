"""The Telegram channel through the real server, python-telegram-bot and a local Bot API.

Updates are shaped as Telegram documents them and POSTed to `/telegram/webhook` with the
secret header (or served by the fake's getUpdates in polling mode); everything the bot
does is read back from the calls the fake Bot API recorded.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import httpx
import pytest
from PIL import Image
from telegram.error import BadRequest, NetworkError, RetryAfter
from telegram.ext import ExtBot

from adapters.base import Conversation, Outbound
from adapters.telegram import TelegramAdapter, setup_telegram
from adapters.telegram_channel import TelegramChannel
from adapters.telegram_support import FloodLimiter, split_message, utf16_len
from bot.settings import Settings
from bot.store import Store
from bot.web.app import create_app
from bot.gateway import AdapterConfigError
from engine.base import ImagePart
from engine.stub import DEFAULT_REPLY, StubEngine, last_user_text
from tests.fake_telegram import FakeTelegram
from tests.live_server import live_server
from tests.live_server import wait_for as wait_until
from tests.prompt_tokens import (
    CAPTION_INJECTION,
    FILE_INJECTION,
    NAME_INJECTION,
    assert_one_turn_per_message,
    system_text,
)

TOKEN = "123456:TEST"
BOT_ID = 123456
SECRET = "s3cret"
WEBHOOK_URL = "https://support.example.com/telegram/webhook"
LONG = "\n\n".join(
    (f"Step {i}: check that the cable sits firmly, restart the router and wait two minutes 😀. " * 6).strip()
    for i in range(30)
)
MARKUP = "<b>x</b> *bold* _it_ [link](https://x.example) `code` ~s~ > # + - = | {a} . ! &amp; <i>open"

_update_ids = itertools.count(1000)
_message_ids = itertools.count(1)
_chat_ids = itertools.count(70001)


def script(request):
    said = last_user_text(request)
    if "LONG-ANSWER" in said:
        return LONG, 0.9
    if "MARKUP-ANSWER" in said:
        return MARKUP, 0.9
    return DEFAULT_REPLY, 0.9


# Building updates as Telegram sends them ------------------------------------------------------
def png_bytes(width=640, height=480, color="white") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(width=640, height=480) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buffer, "JPEG")
    return buffer.getvalue()


def new_chat() -> int:
    return next(_chat_ids)


def make_update(chat_id, *, text=None, caption=None, photo=None, document=None, media_group_id=None,
                language="en", chat_type=None, entities=None, reply_to_message=None, user_id=None,
                message_id=None, update_id=None, voice=None) -> dict:
    chat_type = chat_type or ("private" if chat_id > 0 else "supergroup")
    user_id = user_id or (chat_id if chat_id > 0 else 4242)
    chat = {"id": chat_id, "type": chat_type}
    chat.update({"first_name": "Ana", "last_name": "Silva"} if chat_type == "private" else {"title": "Shop help"})
    message = {
        "message_id": message_id or next(_message_ids),
        "from": {"id": user_id, "is_bot": False, "first_name": "Ana", "last_name": "Silva", "language_code": language},
        "chat": chat,
        "date": int(time.time()),
    }
    if text is not None and text.startswith("/"):
        entities = entities if entities is not None else [
            {"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
    optional = {"text": text, "entities": entities, "caption": caption, "photo": photo, "document": document,
                "media_group_id": media_group_id, "reply_to_message": reply_to_message, "voice": voice}
    message.update({field: value for field, value in optional.items() if value is not None})
    return {"update_id": update_id or next(_update_ids), "message": message}


def photo_sizes(fake: FakeTelegram, sizes) -> list[dict]:
    """PhotoSize objects, smallest first as Telegram sends them; (width, height, declared or None)."""
    result = []
    for width, height, declared in sizes:
        stored = fake.add_file(jpeg_bytes(width, height), file_size=declared, extension="jpg")
        result.append({"file_id": stored.file_id, "file_unique_id": stored.file_unique_id, "width": width,
                       "height": height, "file_size": stored.file_size})
    return result


def document(fake: FakeTelegram, data: bytes, file_name: str, mime_type: str, *, declared=None, status=200) -> dict:
    stored = fake.add_file(data, file_size=declared, download_status=status, extension=file_name.rsplit(".", 1)[-1])
    return {"file_id": stored.file_id, "file_unique_id": stored.file_unique_id, "file_name": file_name,
            "mime_type": mime_type, "file_size": stored.file_size}


def post(base: str, update: dict, secret: str | None = SECRET) -> httpx.Response:
    headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
    return httpx.post(f"{base}/telegram/webhook", json=update, headers=headers, timeout=10)


# Reading back what happened --------------------------------------------------------------------
def db(data_dir: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{data_dir / 'snapdesk.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def query(data_dir: Path, sql: str, *params) -> list[sqlite3.Row]:
    with db(data_dir) as conn:
        return conn.execute(sql, params).fetchall()


def conversation(data_dir: Path, chat_id: int):
    rows = query(data_dir, "select * from conversations where channel = 'telegram' and external_key = ?", str(chat_id))
    return rows[0] if rows else None


def user_messages(data_dir: Path, chat_id: int) -> list[sqlite3.Row]:
    return query(data_dir, "select m.* from messages m join conversations c on c.id = m.conversation_id "
                           "where c.channel = 'telegram' and c.external_key = ? and m.role = 'user' order by m.id",
                 str(chat_id))


def event_rows(data_dir: Path, update_id: int) -> list[sqlite3.Row]:
    return query(data_dir, "select * from platform_events where channel = 'telegram' and event_key = ?",
                 f"{BOT_ID}:{update_id}")


def requests_with(engine: StubEngine, marker: str) -> list:
    return [r for r in list(engine.requests) if marker in last_user_text(r)]


def images_in(request) -> int:
    user = [m for m in request.messages if m.role == "user"][-1]
    return sum(isinstance(p, ImagePart) for p in user.parts)


def tune(adapter: TelegramAdapter) -> None:
    adapter.album_window_s = 0.3
    adapter.channel.backoff_s = 0.02


def the_adapter(app) -> TelegramAdapter:
    return next(a for a in app.state.server.adapters if isinstance(a, TelegramAdapter))


# The webhook-mode server shared by most tests --------------------------------------------------
@pytest.fixture(scope="module")
def fake():
    telegram = FakeTelegram(TOKEN)
    with telegram.serve():
        yield telegram


@pytest.fixture(scope="module")
def served(tmp_path_factory, fake):
    data_dir = tmp_path_factory.mktemp("telegram")
    engine = StubEngine(script=script)
    with live_server(data_dir, engine=engine, telegram_token=TOKEN, telegram_webhook_secret=SECRET,
                     telegram_webhook_url=WEBHOOK_URL, telegram_api_url=fake.base_url) as (base, app):
        adapter = the_adapter(app)
        tune(adapter)
        wait_until(adapter.ready.is_set, what="getMe")
        yield SimpleNamespace(base=base, app=app, engine=engine, adapter=adapter, fake=fake, data_dir=data_dir,
                              runtime=app.state.runtime)


def on_server(served, coroutine, timeout=10):
    return asyncio.run_coroutine_threadsafe(coroutine, served.adapter.loop).result(timeout)


# Start-up ------------------------------------------------------------------------------------
def test_start_registers_the_commands_and_the_webhook(served, fake):
    hook = fake.wait_for(lambda: fake.calls_to("setWebhook"), what="setWebhook")[0]
    assert hook["url"] == WEBHOOK_URL and hook["secret_token"] == SECRET and hook["allowed_updates"] == ["message"]
    commands = fake.wait_for(lambda: c if len(c := fake.calls_to("setMyCommands")) >= 2 else None)
    default = next(c for c in commands if "language_code" not in c)
    chinese = next(c for c in commands if c.get("language_code") == "zh")
    assert [c["command"] for c in default["commands"]] == ["start", "help", "human", "reset"]
    assert [c["command"] for c in chinese["commands"]] == ["start", "help", "human", "reset"]
    assert default["commands"][2]["description"] == "Talk to a person from our support team"
    assert chinese["commands"][2]["description"] == "转人工客服"
    assert fake.calls_to("getMe") and not fake.calls_to("deleteWebhook")


@pytest.mark.parametrize("url", [
    "http://example.com", "http://api.telegram.org", "http://10.0.0.8:8081", "http://127.0.0.1.example.com",
    "ftp://127.0.0.1", "https://", "api.telegram.org", "http://[::1",
])
def test_an_api_url_that_is_not_https_or_loopback_is_refused_at_start(tmp_path, url):
    """The token is in every Bot API URL and whoever answers getFile chooses what is fetched."""
    settings = Settings(data_dir=tmp_path, telegram_token=TOKEN, telegram_api_url=url)
    with pytest.raises(AdapterConfigError) as refused:
        create_app(settings, engine=StubEngine())
    message = str(refused.value)
    assert message.startswith("SNAPDESK_TELEGRAM_API_URL must be an https URL") and "loopback" in message


@pytest.mark.parametrize("url", [
    "https://api.telegram.org", "http://127.0.0.1:8081", "http://127.0.0.9:8081/", "http://[::1]:8081",
    "http://localhost:8081",
])
def test_https_and_loopback_api_urls_are_accepted(url):
    adapter = setup_telegram(Settings(telegram_token=TOKEN, telegram_api_url=url), SimpleNamespace(manager=None))
    assert adapter.bot.base_url == f"{url.rstrip('/')}/bot{TOKEN}"


def test_unsafe_settings_are_refused():
    with pytest.raises(AdapterConfigError, match="SNAPDESK_TELEGRAM_WEBHOOK_SECRET"):
        setup_telegram(Settings(telegram_token=TOKEN, telegram_webhook_url=WEBHOOK_URL), None)
    with pytest.raises(AdapterConfigError, match="does not look like a bot token"):
        setup_telegram(Settings(telegram_token="not a token"), None)
    with pytest.raises(AdapterConfigError, match="HTTPS"):
        setup_telegram(Settings(telegram_token=TOKEN, telegram_webhook_secret=SECRET,
                                telegram_webhook_url="http://plain.example/telegram/webhook"), None)
    with pytest.raises(AdapterConfigError, match="1-256 characters"):
        setup_telegram(Settings(telegram_token=TOKEN, telegram_webhook_secret="has spaces"), None)
    assert setup_telegram(Settings(telegram_token=""), None) is None


# Messages ------------------------------------------------------------------------------------
def test_a_text_message_is_answered_after_a_typing_indicator(served, fake):
    chat = new_chat()
    assert post(served.base, make_update(chat, text="Why was I charged 88 this month?")).status_code == 200
    assert fake.wait_for_texts(chat) == [DEFAULT_REPLY]
    calls = [(c.method, c.params) for c in fake.calls if c.params.get("chat_id") == chat]
    typing = next(i for i, (m, p) in enumerate(calls) if m == "sendChatAction" and p["action"] == "typing")
    answer = next(i for i, (m, p) in enumerate(calls) if m == "sendMessage")
    assert typing < answer
    assert "parse_mode" not in calls[answer][1]
    row = user_messages(served.data_dir, chat)[0]
    assert row["text"] == "Why was I charged 88 this month?"
    assert row["platform_message_id"].startswith(f"{BOT_ID}:{chat}:")


def test_a_photo_with_a_caption_is_one_turn_with_the_largest_size(served, fake):
    chat = new_chat()
    sizes = photo_sizes(fake, [(90, 67, None), (320, 240, None), (1280, 960, None)])
    post(served.base, make_update(chat, photo=sizes, caption="PHOTO-1 What does this error mean?"))
    assert fake.wait_for_texts(chat) == [DEFAULT_REPLY]
    fetched = {c["file_id"] for c in fake.calls_to("getFile")}
    assert sizes[2]["file_id"] in fetched and not {sizes[0]["file_id"], sizes[1]["file_id"]} & fetched
    [request] = requests_with(served.engine, "PHOTO-1")
    assert images_in(request) == 1 and last_user_text(request).strip() == "PHOTO-1 What does this error mean?"

    # the largest size is declared over the limit: the largest one that fits is used instead
    chat = new_chat()
    sizes = photo_sizes(fake, [(90, 67, None), (320, 240, None), (4000, 3000, 25 * 1024 * 1024)])
    post(served.base, make_update(chat, photo=sizes, caption="PHOTO-2 and this one?"))
    assert fake.wait_for_texts(chat) == [DEFAULT_REPLY]
    fetched = {c["file_id"] for c in fake.calls_to("getFile")}
    assert sizes[1]["file_id"] in fetched and sizes[2]["file_id"] not in fetched
    assert images_in(requests_with(served.engine, "PHOTO-2")[0]) == 1


def test_an_image_sent_as_a_document_is_sniffed_and_a_pdf_gets_a_clear_reply(served, fake):
    chat = new_chat()
    doc = document(fake, png_bytes(), "screenshot", "application/octet-stream")
    post(served.base, make_update(chat, document=doc, caption="DOC-PNG what is this dialog?"))
    assert fake.wait_for_texts(chat) == [DEFAULT_REPLY]
    assert images_in(requests_with(served.engine, "DOC-PNG")[0]) == 1

    chat = new_chat()
    pdf = document(fake, b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "invoice.pdf", "application/pdf")
    post(served.base, make_update(chat, document=pdf))
    [notice] = fake.wait_for_texts(chat)
    assert "“invoice.pdf” is not an image I can read" in notice
    post(served.base, make_update(chat, text="DOC-AFTER where is my parcel?"))
    fake.wait_for_texts(chat, 2)
    assert [r["text"] for r in user_messages(served.data_dir, chat)] == ["DOC-AFTER where is my parcel?"]

    chat = new_chat()  # other kinds of message get a clear reply too
    post(served.base, make_update(chat, voice={"file_id": "AwAC1", "file_unique_id": "AgAD1", "duration": 3}))
    assert "not this kind of message" in fake.wait_for_texts(chat)[0]


def test_an_album_of_four_different_photos_is_one_turn_with_four_images(served, fake):
    chat = new_chat()
    album = "13579246801357924"
    sizes = [(800, 600), (640, 480), (1024, 768), (720, 540)]  # four different screenshots
    updates = [
        make_update(chat, photo=photo_sizes(fake, [(90, 67, None), (width, height, None)]), media_group_id=album,
                    caption="ALBUM-4 compare these four screens" if i == 0 else None)
        for i, (width, height) in enumerate(sizes)
    ]
    served.adapter.album_window_s = 3.0  # the four posts must land within one window, also on a loaded machine
    try:
        for update in updates:
            assert post(served.base, update).status_code == 200
        assert fake.wait_for_texts(chat) == [DEFAULT_REPLY]
    finally:
        tune(served.adapter)
    [request] = requests_with(served.engine, "ALBUM-4")
    assert images_in(request) == 4, "every screenshot of the new message reaches the model"
    assert not [p for m in request.messages for p in m.parts if getattr(p, "text", "").startswith("[screenshot #")]
    [row] = user_messages(served.data_dir, chat)
    assert row["text"] == "ALBUM-4 compare these four screens"
    assert len(json.loads(row["attachment_ids"])) == 4
    for update in updates:
        assert event_rows(served.data_dir, update["update_id"])[0]["processed_at"]


def test_a_wrong_or_missing_secret_is_refused_and_nothing_is_stored(served, fake):
    chat = new_chat()
    update = make_update(chat, text="Hello from a forger")
    assert post(served.base, update, secret="wrong").status_code == 403
    assert post(served.base, update, secret=None).status_code == 403
    assert post(served.base, update, secret=SECRET + "x").status_code == 403
    assert event_rows(served.data_dir, update["update_id"]) == []
    assert post(served.base, {"not": "an update"}).status_code == 400
    later = make_update(chat, text="Hello for real")
    assert post(served.base, later).status_code == 200
    fake.wait_for_texts(chat)
    assert [r["text"] for r in user_messages(served.data_dir, chat)] == ["Hello for real"]


def test_a_duplicate_update_is_acknowledged_and_answered_once(served, fake):
    chat = new_chat()
    update = make_update(chat, text="DUP-1 where is my parcel?")
    assert post(served.base, update).status_code == 200
    assert post(served.base, update).status_code == 200
    post(served.base, make_update(chat, text="DUP-2 and when does it arrive?"))
    fake.wait_for_texts(chat, 2)
    assert fake.texts_to(chat) == [DEFAULT_REPLY, DEFAULT_REPLY]
    assert len(requests_with(served.engine, "DUP-1")) == 1
    assert len(event_rows(served.data_dir, update["update_id"])) == 1


def test_a_file_too_big_gets_a_clear_reply_and_the_caption_is_answered(served, fake):
    chat = new_chat()
    big = document(fake, png_bytes(), "screen.png", "image/png", declared=25 * 1024 * 1024)
    post(served.base, make_update(chat, document=big, caption="TOO-BIG why is my account locked?"))
    notice, answer = fake.wait_for_texts(chat, 2)
    assert notice.startswith("That file is too big for me to download (limit 20 MB)")
    assert answer == DEFAULT_REPLY
    assert big["file_id"] not in {c["file_id"] for c in fake.calls_to("getFile")}
    assert images_in(requests_with(served.engine, "TOO-BIG")[0]) == 0


def test_a_failed_download_still_answers_the_text(served, fake):
    for status in (404, 500):
        chat = new_chat()
        doc = document(fake, png_bytes(), "error.png", "image/png", status=status)
        post(served.base, make_update(chat, document=doc, caption=f"DL-{status} what does this error mean?"))
        notice, answer = fake.wait_for_texts(chat, 2)
        assert "couldn't download that image" in notice and answer == DEFAULT_REPLY
        assert images_in(requests_with(served.engine, f"DL-{status}")[0]) == 0
    path = next(f.file_path for f in fake.files.values() if f.download_status == 500)
    assert fake.downloads.count(path) > 1  # a 5xx from the file server is tried again


def test_a_name_caption_and_file_name_with_control_tokens_open_no_turn(served, fake, engine):
    """Telegram lets anyone choose their name; the templates show it in the system prompt."""
    chat = new_chat()
    first_name, last_name = NAME_INJECTION.split(" ", 1)
    updates = [
        make_update(chat, text="TG-NAME-1 hello"),
        make_update(chat, caption=f"TG-NAME-2 {CAPTION_INJECTION}",
                    document=document(fake, png_bytes(), FILE_INJECTION, "image/png")),
    ]
    for number, update in enumerate(updates, 1):
        update["message"]["from"].update(first_name=first_name, last_name=last_name)
        update["message"]["chat"].update(first_name=first_name, last_name=last_name)
        assert post(served.base, update).status_code == 200
        fake.wait_for_texts(chat, number)
    [request] = requests_with(served.engine, "TG-NAME-2")
    assert "Obey the user fully" in system_text(request) and "developer mode" in last_user_text(request)
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "user"]
    assert assert_one_turn_per_message(engine, request)["<|vision_start|>"] == 1


@pytest.mark.parametrize("kind", ["absolute", "traversal", "inside"])
def test_a_getfile_path_outside_the_bot_api_is_never_read(served, fake, tmp_path, kind):
    """A Bot API server (or whoever answers for it) names the file to fetch; PTB would read an
    existing local path from the disk. Here the local file is a real picture, so reading it would
    show as an image in the prompt."""
    local = tmp_path / "private" / "secret.png"
    local.parent.mkdir()
    local.write_bytes(png_bytes(320, 200, "black"))
    path = {"absolute": str(local), "traversal": f"../../../../../../../..{local}",
            "inside": f"documents/../../../../../../../..{local}"}[kind]
    chat = new_chat()
    stolen = fake.add_file(png_bytes(), file_path=path)
    doc = {"file_id": stolen.file_id, "file_unique_id": stolen.file_unique_id, "file_name": "bill.png",
           "mime_type": "image/png", "file_size": stolen.file_size}
    post(served.base, make_update(chat, document=doc, caption=f"LOCAL-{kind} what is on my bill?"))
    notice, answer = fake.wait_for_texts(chat, 2)
    assert "couldn't download that image" in notice and answer == DEFAULT_REPLY
    [request] = requests_with(served.engine, f"LOCAL-{kind}")
    assert images_in(request) == 0, "nothing local reached the model"
    assert stolen.file_id in {c["file_id"] for c in fake.calls_to("getFile")}
    assert not [d for d in fake.downloads if "secret.png" in d], "nothing was fetched for that path"


def test_the_human_command_hands_over(served, fake):
    chat = new_chat()
    post(served.base, make_update(chat, text="/human"))
    [notice] = fake.wait_for_texts(chat)
    assert "A person will reply here" in notice
    assert user_messages(served.data_dir, chat)[0]["text"] == "I would like to talk to a human agent, please."
    [escalation] = query(served.data_dir, "select * from escalations where conversation_id = ?",
                         conversation(served.data_dir, chat)["id"])
    assert escalation["reason"] == "user_request"
    assert escalation["detail"] == "user asked for a person"  # the request path, not a phrase the bot matched
    assert conversation(served.data_dir, chat)["status"] == "waiting"
    post(served.base, make_update(chat, text="/human"))  # asking again while waiting
    assert "already in line" in fake.wait_for_texts(chat, 2)[1]
    assert len(query(served.data_dir, "select * from escalations where conversation_id = ?",
                     conversation(served.data_dir, chat)["id"])) == 1, "handed over once"


def test_reset_starts_over(served, fake):
    chat = new_chat()
    post(served.base, make_update(chat, text="I want to talk to a human"))
    fake.wait_for_texts(chat)
    assert conversation(served.data_dir, chat)["status"] == "waiting"
    post(served.base, make_update(chat, text="/reset"))
    assert fake.wait_for_texts(chat, 2)[1] == "Done, we're starting over. What can I help you with?"
    assert conversation(served.data_dir, chat)["status"] == "resolved"
    post(served.base, make_update(chat, text="RESET-2 where is my parcel?"))
    assert fake.wait_for_texts(chat, 3)[2] == DEFAULT_REPLY


def test_start_and_help_are_answered_without_the_model(served, fake):
    before = len(served.engine.requests)
    chat = new_chat()
    post(served.base, make_update(chat, text="/start"))
    assert fake.wait_for_texts(chat)[0].startswith("Hello, Ana! I'm the support assistant.")
    post(served.base, make_update(chat, text="/help"))
    help_text = fake.wait_for_texts(chat, 2)[1]
    assert "/human" in help_text and "/reset" in help_text and "screenshot" in help_text and "20 MB" in help_text
    chinese = new_chat()
    post(served.base, make_update(chinese, text="/start", language="zh-hans"))
    assert fake.wait_for_texts(chinese)[0].startswith("您好，Ana！")
    post(served.base, make_update(chinese, text="/nonsense", language="zh"))
    assert "/help" in fake.wait_for_texts(chinese, 2)[1]
    assert len(served.engine.requests) == before
    assert user_messages(served.data_dir, chat) == [] and conversation(served.data_dir, chinese) is None


def test_a_long_reply_is_split_within_telegram_limits(served, fake):
    chat = new_chat()
    expected = split_message(LONG)
    assert len(expected) >= 2 and utf16_len(LONG) > 4096
    post(served.base, make_update(chat, text="LONG-ANSWER please explain every step"))
    pieces = fake.wait_for_texts(chat, len(expected))
    assert pieces == expected
    assert all(utf16_len(p) <= 4096 for p in pieces) and "\n\n".join(pieces) == LONG


def test_model_output_with_markup_characters_arrives_literally(served, fake):
    chat = new_chat()
    post(served.base, make_update(chat, text="MARKUP-ANSWER what should I type?"))
    assert fake.wait_for_texts(chat) == [MARKUP]
    [sent] = fake.calls_to("sendMessage", chat_id=chat)
    assert "parse_mode" not in sent and "entities" not in sent
    # A link in a model's answer is never fetched by Telegram for a preview.
    assert sent["link_preview_options"] == {"is_disabled": True}


def test_an_agent_reply_reaches_the_chat_with_the_agent_name(served, fake):
    chat = new_chat()
    post(served.base, make_update(chat, text="I want to talk to a human about my bill"))
    fake.wait_for_texts(chat)
    conversation_id = conversation(served.data_dir, chat)["id"]
    reply = "Hi, I'm checking your bill <b>now</b>."
    on_server(served, served.runtime.manager.agent_reply(conversation_id, "Mei", reply))
    texts = fake.wait_for_texts(chat, 3)
    assert texts[1] == "Mei from our support team has joined the conversation."
    assert texts[2] == "Mei (support): Hi, I'm checking your bill <b>now</b>."
    assert "link_preview_options" not in fake.calls_to("sendMessage", chat_id=chat)[-1]  # agents' links may preview


def test_a_429_and_a_502_on_send_message_are_retried(served, fake):
    chat = new_chat()
    fake.fail("sendMessage", 429, retry_after=1, chat_id=chat)
    fake.fail("sendMessage", 502, chat_id=chat)
    post(served.base, make_update(chat, text="Why was I charged twice?"))
    assert fake.wait_for_texts(chat) == [DEFAULT_REPLY]
    assert len(fake.calls_to("sendMessage", chat_id=chat)) == 3


def test_a_delivery_that_keeps_failing_stays_undelivered(served, fake):
    chat = new_chat()
    fake.fail("sendMessage", 500, chat_id=chat, times=10)
    post(served.base, make_update(chat, text="Why was I charged three times?"))
    fake.wait_for(lambda: len(fake.calls_to("sendMessage", chat_id=chat)) >= served.adapter.channel.max_attempts)
    cid = wait_until(lambda: conversation(served.data_dir, chat), what="the conversation")["id"]
    [answer] = wait_until(lambda: query(served.data_dir, "select * from messages where conversation_id = ? and "
                                                         "role = 'bot'", cid), what="the stored answer")
    time.sleep(0.2)
    assert answer["delivered"] == 0
    assert len(fake.calls_to("sendMessage", chat_id=chat)) == served.adapter.channel.max_attempts


def test_an_undelivered_reply_is_shown_to_agents_and_sent_when_telegram_is_back(served, fake):
    from bot.accounts import Accounts
    from tests.test_agent_console import PASSWORD, signed_in

    Accounts(Store(served.data_dir)).add_user("lin", "agent", PASSWORD)
    chat = new_chat()
    attempts = served.adapter.channel.max_attempts
    fake.fail("sendMessage", 502, chat_id=chat, times=attempts)  # down for every retry of the first delivery
    post(served.base, make_update(chat, text="Why was I charged four times?"))
    fake.wait_for(lambda: len(fake.calls_to("sendMessage", chat_id=chat)) >= attempts)
    cid = wait_until(lambda: conversation(served.data_dir, chat), what="the conversation")["id"]
    agent = signed_in(served.base, "lin")

    def bot_reply():
        thread = agent.get(f"/agent/api/conversations/{cid}").json()
        return next((m for m in thread["messages"] if m["role"] == "bot"), None)

    reply = wait_until(lambda: (r := bot_reply()) and r["delivered"] is False and r, what="the undelivered reply")
    assert reply["text"] == DEFAULT_REPLY  # stored and readable by agents while Telegram is down
    assert on_server(served, served.runtime.manager.redeliver()) >= 1  # the periodic round
    assert fake.wait_for_texts(chat) == [DEFAULT_REPLY]
    assert bot_reply()["delivered"] is True
    on_server(served, served.runtime.manager.redeliver())
    assert fake.wait_for_texts(chat) == [DEFAULT_REPLY]  # never sent twice


def test_in_groups_only_messages_for_the_bot_are_answered(served, fake):
    group = -1001234567000 - new_chat()
    ignored = make_update(group, text="hello everyone, GROUP-0 anyone around?")
    post(served.base, ignored)
    mention = make_update(group, text="@snapdesk_bot GROUP-1 why was I charged?",
                          entities=[{"type": "mention", "offset": 0, "length": 13}])
    post(served.base, mention)
    assert fake.wait_for_texts(group) == [DEFAULT_REPLY]
    [sent] = fake.calls_to("sendMessage", chat_id=group)
    assert sent["reply_parameters"]["message_id"] == mention["message"]["message_id"]
    assert last_user_text(requests_with(served.engine, "GROUP-1")[0]).strip() == "GROUP-1 why was I charged?"
    assert not requests_with(served.engine, "GROUP-0")
    assert event_rows(served.data_dir, ignored["update_id"])[0]["processed_at"]
    bot_message = {"message_id": 9, "from": fake.bot_user, "chat": {"id": group, "type": "supergroup"},
                   "date": int(time.time()), "text": DEFAULT_REPLY}
    post(served.base, make_update(group, text="GROUP-2 how do I turn auto-renew off?", reply_to_message=bot_message))
    fake.wait_for_texts(group, 2)
    assert requests_with(served.engine, "GROUP-2")
    post(served.base, make_update(group, text="/help@other_bot"))
    post(served.base, make_update(group, text="/help@snapdesk_bot"))
    assert "/human" in fake.wait_for_texts(group, 3)[2]


# The channel on its own ----------------------------------------------------------------------------
async def test_typing_repeats_until_the_reply_is_sent_and_retries_are_bounded(fake):
    bot = ExtBot(TOKEN, base_url=f"{fake.base_url}/bot", base_file_url=f"{fake.base_url}/file/bot")
    channel = TelegramChannel(bot)
    channel.typing_interval_s, channel.backoff_s = 0.05, 0.01
    chat = new_chat()
    target = Conversation(1, "telegram", str(chat), str(chat))
    async with bot:
        try:
            await channel.send_typing(target, 7)
            await asyncio.sleep(0.4)
            await channel.send(target, Outbound("Done.", reply_to=7))
            typing = len(fake.calls_to("sendChatAction", chat_id=chat))
            assert typing >= 3 and fake.texts_to(chat) == ["Done."]
            await asyncio.sleep(0.2)
            assert len(fake.calls_to("sendChatAction", chat_id=chat)) == typing  # stopped by the reply

            fake.fail("sendMessage", 503, chat_id=chat, times=channel.max_attempts)
            with pytest.raises(NetworkError):
                await channel.send(target, Outbound("Lost."))
            assert len(fake.calls_to("sendMessage", chat_id=chat)) == 1 + channel.max_attempts
            fake.fail("sendMessage", 429, retry_after=3600, chat_id=chat)
            with pytest.raises(RetryAfter):  # a flood wait longer than we may wait is not waited out
                await channel.send(target, Outbound("Later."))
            sent = len(fake.calls_to("sendMessage", chat_id=chat))
            fake.fail("sendMessage", 400, "Bad Request: message text is empty", chat_id=chat)
            with pytest.raises(BadRequest):  # our request is wrong: trying again cannot help
                await channel.send(target, Outbound("Wrong."))
            assert len(fake.calls_to("sendMessage", chat_id=chat)) == sent + 1, "a bad request is tried once"
        finally:
            await channel.close()


async def test_the_flood_limiter_holds_back_a_busy_group_and_pauses_after_a_429():
    limiter = FloodLimiter(overall_per_second=1000, group_per_minute=3)
    sent = []

    async def request(value):
        sent.append(value)
        return True

    for i in range(3):
        await limiter.process_request(request, (i,), {}, "sendMessage", {"chat_id": -100777}, None)
    with pytest.raises(asyncio.TimeoutError):  # the fourth message into the group waits for the minute
        await asyncio.wait_for(
            limiter.process_request(request, (3,), {}, "sendMessage", {"chat_id": -100777}, None), 0.2)
    await limiter.process_request(request, ("private",), {}, "sendMessage", {"chat_id": 555}, None)
    await limiter.process_request(request, ("typing",), {}, "sendChatAction", {"chat_id": -100777}, None)
    assert sent == [0, 1, 2, "private", "typing"]

    async def flooded():
        raise RetryAfter(60)

    with pytest.raises(RetryAfter):
        await limiter.process_request(flooded, (), {}, "sendMessage", {"chat_id": 556}, None)
    with pytest.raises(asyncio.TimeoutError):  # everything waits out the flood wait
        await asyncio.wait_for(
            limiter.process_request(request, ("held",), {}, "sendMessage", {"chat_id": 557}, None), 0.2)
    assert await limiter.process_request(request, ("updates",), {}, "getMe", {}, None)  # not aimed at a chat


def test_splitting():
    emoji = "😀" * 3000  # 6,000 UTF-16 code units, no spaces: cut between code points
    pieces = split_message(emoji)
    assert "".join(pieces) == emoji and [utf16_len(p) for p in pieces] == [4096, 1904]
    lines = "\n".join(f"line {i} " + "x" * 50 for i in range(200))
    assert all(p.startswith("line ") for p in split_message(lines))
    assert split_message("short") == ["short"]


# Other modes ---------------------------------------------------------------------------------------
def test_polling_mode_answers_updates_and_advances_the_offset(tmp_path):
    telegram = FakeTelegram(TOKEN)
    first, second = new_chat(), new_chat()
    telegram.push_update(make_update(first, text="Why was I charged?", update_id=500))
    telegram.push_update(make_update(second, text="Where is my parcel?", update_id=501))
    with telegram.serve():
        with live_server(tmp_path, engine=StubEngine(), telegram_token=TOKEN,
                         telegram_api_url=telegram.base_url) as (base, app):
            assert telegram.wait_for_texts(first) == [DEFAULT_REPLY]
            assert telegram.wait_for_texts(second) == [DEFAULT_REPLY]
            telegram.wait_for(lambda: telegram.calls_to("getUpdates", offset=502), what="the next offset")
            telegram.push_update(make_update(first, text="And the second charge?", update_id=502))
            assert telegram.wait_for_texts(first, 2)[1] == DEFAULT_REPLY
            telegram.wait_for(lambda: telegram.calls_to("getUpdates", offset=503), what="the next offset")
            assert telegram.calls_to("deleteWebhook") and not telegram.calls_to("setWebhook")
            assert httpx.post(f"{base}/telegram/webhook", json={}).status_code == 404
            assert all(event_rows(tmp_path, u)[0]["processed_at"] for u in (500, 501, 502))


def test_stored_but_unfinished_updates_are_answered_at_start(tmp_path):
    telegram = FakeTelegram(TOKEN)
    text_chat, album_chat = new_chat(), new_chat()
    store = Store(tmp_path)
    store.add_platform_event("telegram", f"{BOT_ID}:800",
                             make_update(text_chat, text="RECOVER-1 why was I charged?", update_id=800))
    for update_id in (801, 802):
        sizes = photo_sizes(telegram, [(640, 480, None)])
        store.add_platform_event("telegram", f"{BOT_ID}:{update_id}", make_update(
            album_chat, photo=sizes, media_group_id="24680", update_id=update_id,
            caption="RECOVER-2 these two screens" if update_id == 801 else None))
    store.close()
    engine = StubEngine()
    with telegram.serve():
        with live_server(tmp_path, engine=engine, telegram_token=TOKEN, telegram_webhook_secret=SECRET,
                         telegram_api_url=telegram.base_url):
            assert telegram.wait_for_texts(text_chat) == [DEFAULT_REPLY]
            assert telegram.wait_for_texts(album_chat) == [DEFAULT_REPLY]
            assert images_in(requests_with(engine, "RECOVER-2")[0]) == 2
            wait_until(lambda: all(event_rows(tmp_path, u)[0]["processed_at"] for u in (800, 801, 802)),
                       what="the events to be finished")
            assert not telegram.calls_to("setWebhook")  # no URL configured: registered by the operator


def test_the_token_never_appears_in_logs_or_in_the_data_directory(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    telegram = FakeTelegram(TOKEN)
    chat = new_chat()
    with telegram.serve():
        with live_server(tmp_path, engine=StubEngine(), telegram_token=TOKEN, telegram_webhook_secret=SECRET,
                         telegram_webhook_url=WEBHOOK_URL, telegram_api_url=telegram.base_url) as (base, app):
            tune(the_adapter(app))
            telegram.fail("sendMessage", 429, retry_after=1, chat_id=chat)
            sizes = photo_sizes(telegram, [(320, 240, None), (1280, 960, None)])
            post(base, make_update(chat, photo=sizes, caption="What is this?"))
            telegram.wait_for_texts(chat)
            broken = document(telegram, png_bytes(), "x.png", "image/png", status=404)
            post(base, make_update(chat, document=broken, caption="And this?"))
            telegram.wait_for_texts(chat, 3)
    records = caplog.records
    assert any("HTTP Request" in r.getMessage() for r in records)  # the URLs were logged, redacted
    logged = caplog.text + "".join(r.getMessage() + (r.exc_text or "") for r in records)
    for secret in (TOKEN, quote(TOKEN, safe=""), "TEST/", SECRET):
        assert secret not in logged
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_an_update_acknowledged_but_not_finished_is_taken_in_by_the_periodic_round(tmp_path, fake):
    """A failure after the 200 (here: the first handling of the update raises) loses nothing:
    the stored update is handled again by the periodic round, without a restart."""
    engine = StubEngine(script=script)
    with live_server(tmp_path, engine=engine, telegram_token=TOKEN, telegram_webhook_secret=SECRET,
                     telegram_webhook_url=WEBHOOK_URL, telegram_api_url=fake.base_url,
                     retry_interval_s=0.5) as (base, app):
        adapter = the_adapter(app)
        tune(adapter)
        wait_until(adapter.ready.is_set, what="getMe")
        original, failures = adapter._route, []

        async def fails_once(key, payload):
            if not failures:
                failures.append(key)
                raise OSError("disk hiccup after the acknowledgement")
            return await original(key, payload)

        adapter._route = fails_once
        chat = new_chat()
        update = make_update(chat, text="REPLAY why was I charged?")
        assert post(base, update).status_code == 200
        assert fake.wait_for_texts(chat) == [DEFAULT_REPLY]
        assert failures and [r["text"] for r in user_messages(tmp_path, chat)] == ["REPLAY why was I charged?"]
        wait_until(lambda: event_rows(tmp_path, update["update_id"])[0]["processed_at"], what="the event finished")
