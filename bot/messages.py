"""The normalized messages every channel speaks, and the channel interface.

Adapters turn a platform event into an `Inbound` and deliver an `Outbound` back; the
conversation core only ever sees these, so it never learns which platform it serves.
(`adapters.base` re-exports them for the adapters.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal, Protocol, runtime_checkable

OutboundKind = Literal["answer", "handover", "notice", "agent", "status"]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Inbound:
    channel: str  # "widget", "slack", "telegram", "cli", ...
    conversation_key: str  # chat/thread within the channel
    message_id: str  # the platform's id: the idempotency key with `channel`
    user_id: str
    user_name: str = ""
    text: str = ""
    images: tuple[bytes, ...] = ()
    received_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class Conversation:
    """What a channel needs to deliver into a conversation."""

    id: int
    channel: str
    conversation_key: str
    user_id: str
    language: str = "en"


@dataclass(frozen=True)
class Outbound:
    text: str
    kind: OutboundKind = "answer"
    author: str = ""  # the agent's name for kind "agent"
    message_id: int | None = None  # the stored message this delivers
    reply_to: int | None = None  # the user message this answers
    reason: str | None = None  # for kind "handover": why the thread goes to a person
    confidence: float | None = None  # the bot's confidence in its draft, when there was one
    status: str | None = None  # for kind "status": the new owner ("claimed", "bot", "resolved")
    # for kind "answer": the help-centre articles it cites, in order: {"n", "title", "url"}
    sources: tuple[dict, ...] = ()


@runtime_checkable
class Channel(Protocol):
    """A place users write from. Optional extras a channel may implement:

    - `async send_delta(conversation, reply_to, text)`: show an answer as it is generated;
    - `async send_status(conversation, status, agent)`: show who owns the conversation
      (`bot`, `waiting`, `claimed` by `agent`, `resolved`);
    - `async send_typing(conversation, reply_to)`: show that an answer is being prepared;
    - `async send_screenshots_ready(conversation, message_id)`: the user's message now has its
      redacted screenshots (a page that shows them can load them again).

    A status change reaches `send` as an `Outbound` of kind "status" with a ready line in
    the user's language; `send_status` only updates what shows the owner (a header).
    """

    name: str

    async def send(self, conversation: Conversation, outbound: Outbound) -> None: ...


class ChannelRegistry:
    """Channel name -> channel, so a reply (bot or agent) finds its way back."""

    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}

    def register(self, channel: Channel) -> None:
        self._channels[channel.name] = channel

    def get(self, name: str) -> Channel | None:
        return self._channels.get(name)

    def names(self) -> list[str]:
        return sorted(self._channels)
