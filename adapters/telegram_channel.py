"""Delivering into Telegram chats: replies, hand-over notices, agent replies, typing.

Text goes out as plain text (no parse_mode), so whatever the model or an agent writes
(`<b>`, `*_[]`, backticks) arrives literally and nothing needs escaping. Replies longer
than Telegram's 4,096 UTF-16 code units are split on paragraph, line or space
boundaries. Each request is retried a bounded number of times on network errors, 5xx
answers and 429 flood waits; after that `send` raises, so the conversation core keeps the
reply as undelivered and sends it again later.

Link previews are off for what the bot writes: a preview makes Telegram fetch the URL, and
a URL in a model's answer may come from a hostile message or screenshot. An agent's reply
keeps them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from telegram import LinkPreviewOptions, ReplyParameters
from telegram.constants import ChatAction
from telegram.ext import ExtBot

from bot.gateway import Gateway
from bot.messages import Conversation, Outbound

from .telegram_retries import bot_api_request
from .telegram_support import split_message, text, with_sources

log = logging.getLogger(__name__)

CHANNEL = "telegram"
NO_PREVIEW = LinkPreviewOptions(is_disabled=True)


class TelegramChannel:
    name = CHANNEL

    def __init__(self, bot: ExtBot, gateway: Gateway | None = None) -> None:
        self.bot = bot
        self.gateway = gateway
        self.max_attempts = 4  # per request, the first try included
        self.backoff_s = 0.5  # doubled after each failed try (network errors, 5xx)
        self.max_retry_after_s = 60.0  # a longer flood wait is not waited out inside `send`
        self.typing_interval_s = 4.0  # Telegram shows "typing..." for about 5 s
        self.typing_max_s = 300.0  # a safety bound if no reply ever comes
        self.typing_first_timeout_s = 5.0
        self._typing: dict[tuple[int, int | None], asyncio.Task] = {}

    # Requests with retries ------------------------------------------------------------------
    async def call(self, what: str, request: Callable[[], Awaitable[Any]]) -> Any:
        """Run one Bot API request, retrying flood waits, network errors and 5xx answers."""
        policy = bot_api_request(what, attempts=self.max_attempts, backoff_s=self.backoff_s,
                                 max_retry_after_s=self.max_retry_after_s)
        async for attempt in policy:
            with attempt:
                return await request()
        raise AssertionError("unreachable")

    async def send_text(self, chat_id: int, value: str, reply_to_message: int | None = None,
                        previews: bool = False) -> None:
        """Send plain text into a chat, in as many messages as it needs."""
        preview = None if previews else NO_PREVIEW
        for index, piece in enumerate(split_message(value)):
            reply = (
                ReplyParameters(reply_to_message, allow_sending_without_reply=True)
                if reply_to_message is not None and index == 0
                else None
            )
            await self.call(
                "sendMessage",
                lambda piece=piece, reply=reply: self.bot.send_message(
                    chat_id, piece, reply_parameters=reply, link_preview_options=preview
                ),
            )

    # The Channel protocol ------------------------------------------------------------------
    async def send(self, conversation: Conversation, outbound: Outbound) -> None:
        if outbound.kind == "status":  # a person took over while the bot was working: no answer will come
            for key in [key for key in self._typing if key[0] == conversation.id]:
                self._stop_typing(*key)
        self._stop_typing(conversation.id, outbound.reply_to)
        chat_id = int(conversation.conversation_key)
        body = with_sources(outbound.text, outbound.sources, conversation.language)
        if outbound.kind == "agent":
            body = text("agent", conversation.language, name=outbound.author or "Support", text=outbound.text)
        if not body.strip():
            log.warning("telegram: message %s has no text; nothing to send", outbound.message_id)
            return
        await self.send_text(chat_id, body, await self._reply_target(chat_id, outbound),
                             previews=outbound.kind == "agent")

    async def send_typing(self, conversation: Conversation, reply_to: int | None) -> None:
        key = (conversation.id, reply_to)
        if key in self._typing:
            return
        chat_id = int(conversation.conversation_key)
        try:  # before generation starts, so it shows before the reply; never holds the answer up long
            await asyncio.wait_for(self._typing_once(chat_id), self.typing_first_timeout_s)
        except asyncio.TimeoutError:
            pass
        task = asyncio.create_task(self._keep_typing(chat_id))
        self._typing[key] = task
        task.add_done_callback(lambda done, key=key: self._forget_typing(key, done))

    # Typing ---------------------------------------------------------------------------
    async def _typing_once(self, chat_id: int) -> None:
        try:
            await self.bot.send_chat_action(chat_id, ChatAction.TYPING)
        except Exception as exc:  # a courtesy only
            log.debug("telegram typing indicator failed: %s", type(exc).__name__)

    async def _keep_typing(self, chat_id: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.typing_max_s
        while True:
            await asyncio.sleep(self.typing_interval_s)
            if loop.time() >= deadline:
                return
            await self._typing_once(chat_id)

    def _forget_typing(self, key: tuple[int, int | None], task: asyncio.Task) -> None:
        if self._typing.get(key) is task:
            del self._typing[key]

    def _stop_typing(self, conversation_id: int, reply_to: int | None) -> None:
        task = self._typing.pop((conversation_id, reply_to), None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._typing.values())
        self._typing.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # Threading replies in groups ------------------------------------------------------------
    async def _reply_target(self, chat_id: int, outbound: Outbound) -> int | None:
        """In a group, the Telegram message an answer replies to (so it is clear whom it answers)."""
        if chat_id >= 0 or outbound.reply_to is None or self.gateway is None:
            return None
        try:
            platform_id = await self.gateway.platform_message_id(outbound.reply_to) or ""
            return int(platform_id.rsplit(":", 1)[-1])
        except (ValueError, LookupError):
            return None
