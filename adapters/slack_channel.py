"""The Slack channel's outbound side: replies, the "working on it" placeholder, agents, hand-overs.

Where a reply goes comes from the conversation key alone: `T:D` (a direct message) is
answered in the DM, `T:C:thread_ts` (a mention in a channel) in that thread. Every text is
rendered mrkdwn-safe and split below Slack's limits; the first chunk of a bot reply replaces
the "Looking at this…" placeholder when there is one.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable

from bot.messages import Conversation, Outbound

from .slack_api import SlackApi, SlackCallError
from .slack_text import MESSAGE_LIMIT, escape, render, split_message

log = logging.getLogger(__name__)

CHANNEL = "slack"
SLACK_ID = re.compile(r"^[A-Z0-9]{2,30}$")
TS = re.compile(r"^\d{1,12}\.\d{1,9}$")
MAX_PLACEHOLDERS = 2000

PLACEHOLDER = {"en": "Looking at this…", "zh": "正在查看，请稍候…"}
AGENT_LABEL = {"en": "{name} (support)", "zh": "{name}（客服）"}
REASONS = {
    "user_request": "The customer asked for a person",
    "low_confidence": "The bot was not confident",
    "model_declined": "The bot could not help",
    "sensitive_topic": "Sensitive topic",
    "repeated_failure": "Repeated failure",
    "unreadable_image": "Unreadable image",
    "engine_error": "The model failed",
    "busy": "The bot was too busy",
}
# Errors of chat.update after which posting a new message is the right fallback.
NOT_UPDATABLE = {"message_not_found", "cant_update_message", "edit_window_closed", "msg_too_long"}


def localized(table: dict[str, str], language: str) -> str:
    return table.get(language) or table["en"]


@dataclass(frozen=True)
class Place:
    """Where in Slack a conversation lives."""

    team: str
    channel: str
    thread_ts: str | None = None

    @classmethod
    def of(cls, conversation_key: str) -> "Place":
        team, channel, *rest = conversation_key.split(":")
        return cls(team, channel, rest[0] if rest else None)

    def key(self) -> str:
        return f"{self.team}:{self.channel}" + (f":{self.thread_ts}" if self.thread_ts else "")


SOURCES_LABEL = {"en": "Sources", "zh": "参考资料"}


def sources_line(sources, language: str) -> str:
    """An answer's cited help-centre articles as one mrkdwn line of links ("" when it cites none)."""
    shown = []
    for source in sources:
        title = str(source.get("title") or "article")
        url = str(source.get("url") or "")
        label = f"[{source['n']}] "
        shown.append(label + (link(url, title) if url.startswith(("https://", "http://")) else escape(title)))
    return f"*{SOURCES_LABEL.get(language, SOURCES_LABEL['en'])}:* " + " · ".join(shown) if shown else ""


def plain_name(name: str) -> str:
    """A display name safe inside bold mrkdwn: no formatting characters, no control sequences."""
    name = re.sub(r"[*_~`\n\r]+", " ", name or "").strip()
    return escape(name[:80])


def link(url: str, label: str) -> str:
    """A mrkdwn link to a URL we built, with an escaped label."""
    return f"<{escape(url).replace('|', '%7C')}|{escape(label).replace('|', '/')}>"


class SlackChannel:
    """`bot.messages.Channel` for Slack."""

    name = CHANNEL

    def __init__(self, api: SlackApi, *, agent_channel: str = "", public_url: str = "",
                 user_name: Callable[[str], Awaitable[str]] | None = None) -> None:
        self.api = api
        self.agent_channel = agent_channel
        self.public_url = public_url.rstrip("/")
        self.user_name = user_name  # Slack user id -> display name (cached by the adapter)
        self._placeholders: OrderedDict[tuple[int, int], tuple[str, str]] = OrderedDict()

    # Posting ------------------------------------------------------------------------------------
    async def post(self, place: Place, text: str, *, quick: bool = False, **extra) -> dict:
        """Post already-rendered mrkdwn at `place` (in its thread, if it has one)."""
        arguments = {"channel": place.channel, "text": text or "…", "unfurl_links": False, "unfurl_media": False,
                     **extra}
        if place.thread_ts:
            arguments["thread_ts"] = place.thread_ts
        return await self.api.call("chat.postMessage", quick=quick, **arguments)

    async def post_text(self, place: Place, text: str) -> None:
        """Post plain text (escaped, split) at `place`."""
        for chunk in split_message(render(text)):
            await self.post(place, chunk)

    # The Channel protocol -------------------------------------------------------------------------
    async def send_typing(self, conversation: Conversation, reply_to: int) -> None:
        key = (conversation.id, reply_to)
        if key in self._placeholders:
            return
        place = Place.of(conversation.conversation_key)
        # A courtesy: never hold the answer back for long over it.
        response = await self.post(place, escape(localized(PLACEHOLDER, conversation.language)), quick=True)
        self._placeholders[key] = (response.get("channel") or place.channel, response["ts"])
        while len(self._placeholders) > MAX_PLACEHOLDERS:  # answers that never came (e.g. a crash)
            self._placeholders.popitem(last=False)

    async def send(self, conversation: Conversation, outbound: Outbound) -> None:
        place = Place.of(conversation.conversation_key)
        prefix = ""
        if outbound.kind == "agent":
            label = localized(AGENT_LABEL, conversation.language).format(name=plain_name(outbound.author) or "Support")
            prefix = f"*{label}:* "
        body = render(outbound.text)
        cited = sources_line(outbound.sources, conversation.language)
        chunks = split_message(f"{body}\n\n{cited}" if cited else body, MESSAGE_LIMIT - len(prefix))
        chunks[0] = prefix + chunks[0]
        placeholder = None
        if outbound.reply_to is not None:
            placeholder = self._placeholders.pop((conversation.id, outbound.reply_to), None)
        elif outbound.kind == "status":  # a person took over while the bot was working: no answer will come
            placeholder = self._take_placeholder(conversation.id)
        for i, chunk in enumerate(chunks):
            if i == 0 and placeholder is not None and await self._replace(placeholder, chunk):
                continue
            await self.post(place, chunk)
        if outbound.kind == "handover" and self.agent_channel:
            try:
                await self.announce_handover(conversation, outbound, place)
            except SlackCallError as exc:  # the user has the notice; agents still see the queue
                log.warning("hand-over announcement in %s failed: %s", self.agent_channel, exc.error)

    def _take_placeholder(self, conversation_id: int) -> tuple[str, str] | None:
        keys = [key for key in self._placeholders if key[0] == conversation_id]
        for key in keys[:-1]:
            self._placeholders.pop(key)
        return self._placeholders.pop(keys[-1]) if keys else None

    async def _replace(self, placeholder: tuple[str, str], text: str) -> bool:
        channel, ts = placeholder
        try:
            await self.api.call("chat.update", channel=channel, ts=ts, text=text or "…")
            return True
        except SlackCallError as exc:
            if exc.error in NOT_UPDATABLE:
                return False
            raise

    # Agents ---------------------------------------------------------------------------------------
    def console_url(self, conversation_id: int) -> str:
        return f"{self.public_url}/agent#/conversations/{conversation_id}" if self.public_url else ""

    async def announce_handover(self, conversation: Conversation, outbound: Outbound, place: Place) -> None:
        """A Block Kit message in the agents' channel: why, how sure the bot was, where to answer."""
        reason = REASONS.get(outbound.reason or "", (outbound.reason or "unknown").replace("_", " "))
        confidence = f"{outbound.confidence:.2f}" if outbound.confidence is not None else "n/a"
        name = await self.user_name(conversation.user_id) if self.user_name and conversation.user_id else ""
        customer = name or conversation.user_id or "unknown"
        channel_ok = SLACK_ID.match(place.channel) is not None
        if place.thread_ts is None:
            where = "Direct message"
        elif channel_ok:
            where = f"Thread in <#{place.channel}>"
        else:
            where = "Thread in a channel"
        url = self.console_url(conversation.id)
        title = f"Hand-over: {escape(reason)}"
        fields = [
            {"type": "mrkdwn", "text": f"*Reason*\n{escape(reason)}"},
            {"type": "mrkdwn", "text": f"*Bot confidence*\n{confidence}"},
            {"type": "mrkdwn", "text": f"*Customer*\n{escape(customer)}"},
            {"type": "mrkdwn", "text": f"*Where*\n{where}"},
        ]
        target = link(url, f"Open conversation #{conversation.id} in the agent console") if url else (
            f"Conversation #{conversation.id} is waiting in the agent console."
        )
        blocks = [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*"}},
            {"type": "section", "fields": fields},
            {"type": "section", "text": {"type": "mrkdwn", "text": target}},
        ]
        fallback = f"{title} (conversation #{conversation.id})" + (f": {link(url, 'open')}" if url else "")
        await self.post(Place(place.team, self.agent_channel), fallback, blocks=blocks)
