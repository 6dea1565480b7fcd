"""The Telegram channel: python-telegram-bot (PTB) speaking the Bot API, by webhook or long polling.

How an update flows:

1. Receiving. Webhook mode (`SNAPDESK_TELEGRAM_WEBHOOK_SECRET` set): Telegram POSTs each
   update to `/telegram/webhook`; the secret header is checked in constant time (403 and
   nothing stored when it is wrong or missing), the raw update is stored with
   `record_event("telegram", "<bot id>:<update id>", update)` and only then acknowledged
   with 200. Polling mode (no secret): a background task long-polls `getUpdates`, stores
   each update the same way and only then advances the offset. A stored key is never
   handled twice, so Telegram's redeliveries are acknowledged and not answered again.
2. Intake, per chat in arrival order (a lock per chat): the update is parsed with
   `Update.de_json`; album parts (same `media_group_id`) wait in a buffer until no part has
   come for `album_window_s`, then go on together. Commands /start, /help and /reset are
   answered here without the model; /human is stored as the user message "I would like to
   talk to a human agent, please." (what the agent reads) and goes to the core's
   request-a-person path, which hands the chat over without asking the model. Photos (largest size within the
   limit) and image documents (checked by their magic bytes) are downloaded with
   `getFile`; files over the limit, failed downloads and non-image files get a short reply
   of their own while the text of the message is still answered. The result is one
   `Inbound` (key: the chat id; message id: "<bot id>:<chat id>:<message id>", the first
   part's for an album) given to `gateway.accept`; then the stored events are finished.
3. Answering: `gateway.answer` (after the model is ready) generates the answer; the
   channel shows "typing..." meanwhile and delivers the reply (`adapters.telegram_channel`).

Crash safety: events stored but not finished are handled again at `start()` (album parts
regrouped by `media_group_id`); a message accepted but not answered is the core's
`recover()` business. Groups: only messages that mention the bot (@username), reply to
it, or are commands for it are answered; the whole group chat is one conversation.
The bot token is part of every Bot API and file URL: it is never logged or stored.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from telegram import BotCommand, Message, PhotoSize, Update
from telegram.constants import ChatType, MessageEntityType
from telegram.error import BadRequest
from telegram.ext import ExtBot
from telegram.request import HTTPXRequest

from bot.conversation import Accepted
from bot.gateway import AdapterConfigError, Gateway
from bot.keyed_locks import KeyedLocks
from bot.messages import Inbound
from bot.text import clean_user_text
from engine.images import sniff_format

from .api_urls import api_url_problem
from .telegram_channel import CHANNEL, TelegramChannel
from .telegram_retries import UpdateNotStored, bring_up, long_polling
from .telegram_support import (
    COMMANDS,
    DOWNLOAD_LIMIT,
    bot_api_file_path,
    install_redaction,
    language_of,
    make_rate_limiter,
    megabytes,
    text,
)

log = logging.getLogger(__name__)

ALLOWED_UPDATES = ["message"]
MAX_UPDATE_BYTES = 1024 * 1024
ALBUM_MAX_PARTS = 10  # Telegram's own limit for one media group
TOKEN_PATTERN = re.compile(r"^(\d+):[A-Za-z0-9_-]+$")
SECRET_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # what Telegram accepts as secret_token
COMMAND_PATTERN = re.compile(r"^/([A-Za-z0-9_]{1,32})(?:@([A-Za-z0-9_]{1,64}))?(?:\s|$)")
KNOWN_COMMANDS = {"start", "help", "human", "reset"}
CHAT_TYPES = {ChatType.PRIVATE, ChatType.GROUP, ChatType.SUPERGROUP}
UNSUPPORTED_CONTENT = (
    "voice", "video", "video_note", "audio", "sticker", "location", "contact", "poll", "venue", "dice",
    "story", "paid_media", "game",
)
TOO_BIG = object()  # a download result: the file is over the limit


def setup_telegram(settings: Any, gateway: Gateway) -> "TelegramAdapter | None":
    """The Telegram adapter for these settings (None without a token)."""
    token = settings.telegram_token.strip()
    if not token:
        return None
    if not TOKEN_PATTERN.match(token):
        raise AdapterConfigError(
            "SNAPDESK_TELEGRAM_TOKEN does not look like a bot token (digits, a colon, then letters: "
            "copy it from @BotFather)."
        )
    secret = settings.telegram_webhook_secret
    if secret and not SECRET_PATTERN.match(secret):
        raise AdapterConfigError(
            "SNAPDESK_TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, 0-9, _ and - "
            "(Telegram's rule for webhook secret tokens)."
        )
    url = settings.telegram_webhook_url.strip()
    if url and not secret:
        raise AdapterConfigError(
            "SNAPDESK_TELEGRAM_WEBHOOK_URL is set but SNAPDESK_TELEGRAM_WEBHOOK_SECRET is not: set a secret "
            "so forged updates are refused, or remove the URL to use polling."
        )
    if url and not url.startswith("https://"):
        raise AdapterConfigError(
            "Telegram only delivers webhooks over HTTPS: SNAPDESK_TELEGRAM_WEBHOOK_URL must start with https://"
        )
    api_url = settings.telegram_api_url.strip().rstrip("/")
    problem = api_url_problem(api_url, "SNAPDESK_TELEGRAM_API_URL", "https://api.telegram.org")
    if problem:
        raise AdapterConfigError(problem)
    return TelegramAdapter(
        token=token,
        gateway=gateway,
        webhook_secret=secret,
        webhook_url=url,
        api_url=api_url,
        image_max_bytes=settings.image_max_bytes,
    )


@dataclass
class _Album:
    chat_id: int
    parts: list[tuple[str, Message]] = field(default_factory=list)
    timer: asyncio.Task | None = None


def pick_photo(sizes: Sequence[PhotoSize], limit: int) -> PhotoSize | None:
    """The largest size of a photo whose declared file size is within `limit`."""
    fitting = [size for size in sizes if size.file_size is None or size.file_size <= limit]
    if not fitting:
        return None
    return max(fitting, key=lambda size: (size.width * size.height, size.file_size or 0))


class TelegramAdapter:
    def __init__(
        self,
        *,
        token: str,
        gateway: Gateway,
        webhook_secret: str = "",
        webhook_url: str = "",
        api_url: str = "https://api.telegram.org",
        image_max_bytes: int = DOWNLOAD_LIMIT,
    ) -> None:
        install_redaction(token, webhook_secret)
        self.gateway = gateway
        self.bot_id = int(token.split(":", 1)[0])
        self.webhook_secret = webhook_secret
        self.webhook_url = webhook_url
        self.mode = "webhook" if webhook_secret else "polling"
        self.file_limit = min(DOWNLOAD_LIMIT, image_max_bytes)
        self._requests = (
            HTTPXRequest(connection_pool_size=64, read_timeout=20.0, write_timeout=20.0, connect_timeout=10.0,
                         pool_timeout=5.0),
            HTTPXRequest(connection_pool_size=2, read_timeout=10.0, write_timeout=10.0, connect_timeout=10.0),
        )
        self.bot = ExtBot(
            token,
            base_url=f"{api_url}/bot",
            base_file_url=f"{api_url}/file/bot",
            request=self._requests[0],
            get_updates_request=self._requests[1],
            rate_limiter=make_rate_limiter(),
        )
        self.channel = TelegramChannel(self.bot, gateway)
        self.router = self._make_router() if self.mode == "webhook" else None
        self.album_window_s = 1.0  # an album is complete when no part came for this long
        self.poll_timeout_s = 30  # long-polling timeout of getUpdates
        self._offset: int | None = None  # the first update getUpdates is still to confirm
        self.loop: asyncio.AbstractEventLoop | None = None
        self.username: str | None = None
        self.ready = asyncio.Event()  # getMe answered: the bot's identity is known
        self._intake_open = asyncio.Event()  # stored updates from before the start are in
        self._albums: dict[str, _Album] = {}
        self._locks = KeyedLocks()
        self._main: asyncio.Task | None = None

    # Lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        # Updates acknowledged but not finished later on are taken in again by the periodic round.
        self.gateway.on_pending_events(CHANNEL, self._recover)
        pending = await self.gateway.pending_events(CHANNEL)
        self._main = asyncio.create_task(self._run(pending))
        self._main.add_done_callback(self._main_ended)

    def _main_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("telegram: receiving stopped (%s)", type(task.exception()).__name__)

    async def stop(self) -> None:
        for album in self._albums.values():
            if album.timer is not None:
                album.timer.cancel()  # its parts stay stored and are handled at the next start
        self._albums.clear()
        if self._main is not None:
            self._main.cancel()
            await asyncio.gather(self._main, return_exceptions=True)
        await self.channel.close()
        try:
            await self.bot.shutdown()
        except Exception as exc:
            log.debug("telegram shutdown: %s", type(exc).__name__)
        for request in self._requests:
            try:
                await request.shutdown()
            except Exception as exc:
                log.debug("telegram shutdown: %s", type(exc).__name__)

    async def _run(self, pending: list[dict]) -> None:
        await self._bring_up()
        await self._recover(pending)
        self._intake_open.set()
        if self.mode == "polling":
            await self._poll()

    async def _bring_up(self) -> None:
        """getMe (retried until Telegram answers), then commands and webhook registration."""
        async for attempt in bring_up():
            with attempt:
                await self.bot.initialize()
        self.username = self.bot.username
        self.ready.set()
        log.info("telegram: connected as @%s (%s mode)", self.username, self.mode)
        for language, commands in COMMANDS.items():
            bot_commands = [BotCommand(name, description) for name, description in commands]
            code = None if language == "en" else language  # English is the default list
            try:
                await self.channel.call(
                    "setMyCommands", lambda c=bot_commands, code=code: self.bot.set_my_commands(c, language_code=code)
                )
            except Exception as exc:
                log.warning("telegram: setting the command list failed (%s)", type(exc).__name__)
        try:
            if self.mode == "webhook" and self.webhook_url:
                await self.channel.call(
                    "setWebhook",
                    lambda: self.bot.set_webhook(
                        self.webhook_url, secret_token=self.webhook_secret, allowed_updates=ALLOWED_UPDATES
                    ),
                )
            elif self.mode == "polling":
                await self.channel.call("deleteWebhook", lambda: self.bot.delete_webhook(drop_pending_updates=False))
        except Exception as exc:
            log.error("telegram: registering the %s failed (%s)", self.mode, type(exc).__name__)

    async def _recover(self, pending: list[dict]) -> None:
        """Handle updates stored before a crash or stop but never finished, oldest first."""
        if not pending:
            return
        log.info("telegram: handling %d stored update(s) that were not finished", len(pending))
        for row in pending:
            try:
                accepted = await self._route(row["event_key"], row["payload"])
                if accepted is not None:
                    self.gateway.spawn(self._process(accepted))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("telegram: stored update %s failed again (%s)", row["event_key"], type(exc).__name__)

    # Receiving --------------------------------------------------------------------------------
    def _make_router(self) -> APIRouter:
        router = APIRouter()
        expected = self.webhook_secret.encode("utf-8")

        @router.post("/telegram/webhook", summary="Telegram updates (webhook mode)", include_in_schema=True)
        async def telegram_webhook(request: Request) -> JSONResponse:
            given = request.headers.get("x-telegram-bot-api-secret-token", "").encode("utf-8")
            if not hmac.compare_digest(given, expected):
                return JSONResponse({"ok": False, "description": "Forbidden"}, status_code=403)
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_UPDATE_BYTES:
                    return JSONResponse({"ok": False, "description": "Update too large"}, status_code=413)
            try:
                update = json.loads(body)
            except ValueError:
                return JSONResponse({"ok": False, "description": "Invalid JSON"}, status_code=400)
            update_id = update.get("update_id") if isinstance(update, dict) else None
            if not isinstance(update_id, int) or isinstance(update_id, bool):
                return JSONResponse({"ok": False, "description": "Not an update"}, status_code=400)
            await self.receive(update)  # stored before the 200 below
            return JSONResponse({"ok": True})

        return router

    async def receive(self, update: dict) -> bool:
        """Store an update, then handle it in the background; False for one already stored."""
        key = f"{self.bot_id}:{update['update_id']}"
        if not await self.gateway.record_event(CHANNEL, key, update):
            return False
        self.gateway.spawn(self._dispatch(key, update))
        return True

    async def _poll(self) -> None:
        poll_round = long_polling(self._poll_round)
        while True:
            await poll_round()

    async def _poll_round(self) -> None:
        """One getUpdates; the offset passes an update only once it is stored."""
        updates = await self.bot.get_updates(
            offset=self._offset, timeout=self.poll_timeout_s, allowed_updates=ALLOWED_UPDATES
        )
        for update in updates:
            payload = update.to_dict()
            key = f"{self.bot_id}:{update.update_id}"
            try:
                new = await self.gateway.record_event(CHANNEL, key, payload)
            except Exception as exc:  # not stored: do not confirm it, fetch it again
                raise UpdateNotStored(key) from exc
            self._offset = update.update_id + 1
            if new:
                self.gateway.spawn(self._dispatch(key, payload))

    # Intake -----------------------------------------------------------------------------------
    async def _dispatch(self, key: str, payload: dict) -> None:
        await self._intake_open.wait()
        accepted = await self._route(key, payload)
        if accepted is not None:
            await self._process(accepted)

    async def _process(self, accepted: Accepted) -> None:
        if not accepted.duplicate:
            await self.gateway.answer(accepted)

    def _message_of(self, key: str, payload: dict) -> Message | None:
        try:
            update = Update.de_json(payload, self.bot)
        except Exception as exc:
            log.warning("telegram update %s could not be read (%s); skipped", key, type(exc).__name__)
            return None
        message = update.message if update is not None else None
        if message is None or message.chat is None or message.chat.type not in CHAT_TYPES:
            return None  # edits, channel posts, member changes...: nothing to answer
        if message.from_user is None or message.from_user.is_bot:
            return None
        return message

    async def _route(self, key: str, payload: dict) -> Accepted | None:
        message = self._message_of(key, payload)
        if message is None:
            await self.gateway.finish_event(CHANNEL, key)
            return None
        if message.media_group_id:
            self._add_album_part(key, message)
            return None
        await self._flush_albums(message.chat.id)  # an album sent before this message goes first
        return await self._intake([(key, message)])

    def _add_album_part(self, key: str, message: Message) -> None:
        group = f"{message.chat.id}:{message.media_group_id}"
        album = self._albums.get(group)
        if album is None:
            album = self._albums[group] = _Album(message.chat.id)
        if any(existing == key for existing, _ in album.parts):
            return
        album.parts.append((key, message))
        if album.timer is not None:
            album.timer.cancel()
        delay = 0.0 if len(album.parts) >= ALBUM_MAX_PARTS else self.album_window_s
        album.timer = self.gateway.spawn(self._album_due(group, album, delay))

    async def _album_due(self, group: str, album: _Album, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._albums.get(group) is not album:
            return
        del self._albums[group]
        accepted = await self._intake(album.parts)
        if accepted is not None:
            await self._process(accepted)

    async def _flush_albums(self, chat_id: int) -> None:
        for group, album in list(self._albums.items()):
            if album.chat_id != chat_id or self._albums.get(group) is not album:
                continue
            del self._albums[group]
            if album.timer is not None:
                album.timer.cancel()
            try:
                accepted = await self._intake(album.parts)
            except Exception as exc:  # its events stay stored: handled again at the next start
                log.warning("telegram: an album could not be taken in (%s)", type(exc).__name__)
                continue
            if accepted is not None:
                self.gateway.spawn(self._process(accepted))

    async def _intake(self, parts: list[tuple[str, Message]]) -> Accepted | None:
        """One turn from one message or one album: store it, then finish its events."""
        parts = sorted(parts, key=lambda part: part[1].message_id)
        messages = [message for _, message in parts]
        async with self._locks(messages[0].chat.id):
            accepted = await self._take(messages)
            for key, _ in parts:
                await self.gateway.finish_event(CHANNEL, key)
        return accepted

    async def _take(self, messages: list[Message]) -> Accepted | None:
        first = messages[0]
        chat, user = first.chat, first.from_user
        language = language_of(user.language_code)
        group = chat.type != ChatType.PRIVATE
        if group and not any(self._addressed(message) for message in messages):
            return None
        reply_to = first.message_id if group else None  # in groups our texts reply to the user's message
        body = ""
        command = self._command(first) if len(messages) == 1 else None
        if command is not None:
            name, target = command
            if target and (self.username or "").lower() != target.lower():
                return None  # meant for another bot in the group
            if name != "human":
                if group and not target and name not in KNOWN_COMMANDS:
                    return None  # probably another bot's command
                await self._command_reply(name, chat.id, user, language, reply_to)
                return None
            body = text("human_request", language)  # what the agent reads; the request itself is below
        else:
            body = self._body(messages, group)
        images, notices = await self._images(messages, language)
        for notice in dict.fromkeys(notices):
            await self._notify(chat.id, notice, reply_to)
        if not body.strip() and not images:
            return None
        inbound = Inbound(
            channel=CHANNEL,
            conversation_key=str(chat.id),
            message_id=f"{self.bot_id}:{chat.id}:{first.message_id}",
            user_id=str(user.id),
            user_name=user.full_name,
            text=body,
            images=tuple(images),
            received_at=first.date,
        )
        accepted = await self.gateway.accept(inbound)
        if command is not None and not accepted.duplicate:  # /human: straight to the agents' queue
            if not await self.gateway.request_human(accepted.conversation_id):
                await self._notify(chat.id, text("already_with_human", language), reply_to)
        return accepted

    def _command(self, message: Message) -> tuple[str, str | None] | None:
        match = COMMAND_PATTERN.match((message.text or "").strip())
        return (match.group(1).lower(), match.group(2)) if match else None

    def _addressed(self, message: Message) -> bool:
        """In a group: does this message speak to the bot?"""
        replied = message.reply_to_message
        if replied is not None and replied.from_user is not None and replied.from_user.id == self.bot_id:
            return True
        value = message.text or message.caption or ""
        if self.username and re.search(rf"@{re.escape(self.username)}\b", value, re.IGNORECASE):
            return True
        for entity in (*(message.entities or ()), *(message.caption_entities or ())):
            if entity.type == MessageEntityType.TEXT_MENTION and entity.user and entity.user.id == self.bot_id:
                return True
        command = self._command(message)
        return command is not None and command[1] is None and command[0] in KNOWN_COMMANDS

    def _body(self, messages: list[Message], group: bool) -> str:
        texts: list[str] = []
        for message in messages:
            value = clean_user_text(message.text or message.caption or "")
            if group and self.username:
                value = re.sub(rf"@{re.escape(self.username)}\b", "", value, flags=re.IGNORECASE)
            value = value.strip()
            if value and value not in texts:
                texts.append(value)
        return "\n".join(texts)

    async def _command_reply(self, name: str, chat_id: int, user: Any, language: str, reply_to: int | None) -> None:
        if name == "start":
            first_name = (user.first_name or "").strip()
            greeting = (f"，{first_name}" if language == "zh" else f", {first_name}") if first_name else ""
            reply = text("start", language, name=greeting)
        elif name == "help":
            reply = text("help", language, mb=megabytes(self.file_limit))
        elif name == "reset":
            await self.gateway.restart(CHANNEL, str(chat_id))
            reply = text("reset", language)
        else:
            reply = text("unknown_command", language)
        await self.channel.send_text(chat_id, reply, reply_to)

    async def _notify(self, chat_id: int, value: str, reply_to: int | None) -> None:
        try:
            await self.channel.send_text(chat_id, value, reply_to)
        except Exception as exc:  # the turn itself still goes on
            log.warning("telegram: a notice could not be delivered (%s)", type(exc).__name__)

    # Files ------------------------------------------------------------------------------------
    async def _images(self, messages: list[Message], language: str) -> tuple[list[bytes], list[str]]:
        """The images of a turn, and the notices for files that could not be used."""
        too_big = text("too_big", language, mb=megabytes(self.file_limit))
        notices: list[str] = []
        jobs: list[tuple[str, bool, str]] = []  # file id, is a document, file name
        for message in messages:
            if message.photo:
                size = pick_photo(message.photo, self.file_limit)
                if size is None:
                    notices.append(too_big)
                else:
                    jobs.append((size.file_id, False, ""))
            elif message.document is not None:
                document = message.document
                if document.file_size and document.file_size > self.file_limit:
                    notices.append(too_big)
                else:
                    jobs.append((document.file_id, True, document.file_name or ""))
            elif any(getattr(message, attribute, None) for attribute in UNSUPPORTED_CONTENT):
                notices.append(text("unsupported", language))
        results = await asyncio.gather(*(self._download(file_id) for file_id, _, _ in jobs))
        images: list[bytes] = []
        for (_, is_document, file_name), result in zip(jobs, results):
            if result is TOO_BIG:
                notices.append(too_big)
            elif result is None:
                notices.append(text("download_failed", language))
            elif is_document and sniff_format(result) is None:
                log.info("telegram: the document “%s” is not an image; the user is told", file_name)
                name = f"“{file_name}”" if file_name else ("这个文件" if language == "zh" else "That file")
                notices.append(text("not_image", language, name=name))
            else:
                images.append(result)
        return images, notices

    async def _download(self, file_id: str) -> Any:
        """The file's bytes, TOO_BIG, or None when it could not be fetched. The file URL
        carries the bot token: nothing about it is logged."""
        try:
            file = await self.channel.call("getFile", lambda: self.bot.get_file(file_id))
            if file.file_size and file.file_size > self.file_limit:
                return TOO_BIG
            # PTB reads a path that names a local file from the disk (a local-mode Bot API
            # server): only a relative Bot API path is fetched, and always over HTTP.
            path = bot_api_file_path(file.file_path, self.bot.base_file_url)
            if path is None:
                log.warning("telegram: getFile answered a path that is not a relative Bot API file path; "
                            "the file is not fetched")
                return None
            url = f"{self.bot.base_file_url}/{quote(path)}"
            data = bytes(await self.channel.call("download", lambda: self._requests[0].retrieve(url)))
        except BadRequest as exc:
            if "too big" in exc.message.lower():
                return TOO_BIG
            log.warning("telegram: a file could not be fetched (%s)", type(exc).__name__)
            return None
        except Exception as exc:
            log.warning("telegram: a file could not be downloaded (%s)", type(exc).__name__)
            return None
        return TOO_BIG if len(data) > self.file_limit else data
