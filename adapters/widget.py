"""The web widget channel: visitor tokens and delivery to a visitor's open pages.

A visitor on any page that embeds `/widget.js` is anonymous: the widget asks for a signed
visitor token once, keeps it in localStorage, and sends it with every call; the visitor id
inside it is the conversation key. Replies, streamed text and status changes reach the page
over server-sent events: `WidgetChannel` fans each one out to the visitor's open streams.
The widget's HTTP API (bot/web/widget_api.py) stores messages and serves those streams.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import time

from bot.messages import Conversation, Outbound, utcnow

CHANNEL = "widget"
TOKEN_MAX_AGE_S = 180 * 24 * 3600
KIND_ROLE = {"answer": "bot", "handover": "system", "notice": "system", "agent": "agent", "status": "system"}


# Visitor tokens ------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def issue_token(secret: bytes, visitor_id: str, issued: int | None = None) -> str:
    body = f"v1.{visitor_id}.{issued if issued is not None else int(time.time())}"
    signature = hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64(signature)}"


def verify_token(secret: bytes, token: str, now: float | None = None) -> str | None:
    """The visitor id of a valid, unexpired token; None for anything else."""
    try:
        version, visitor_id, issued, signature = token.split(".")
        if version != "v1" or not re.fullmatch(r"[0-9a-f]{32}", visitor_id):
            return None
        expected = _b64(hmac.new(secret, f"v1.{visitor_id}.{issued}".encode("ascii"), hashlib.sha256).digest())
        if not hmac.compare_digest(expected, signature):
            return None
        if (now if now is not None else time.time()) - int(issued) > TOKEN_MAX_AGE_S:
            return None
        return visitor_id
    except (ValueError, UnicodeError):
        return None


# The channel: delivering to open pages ---------------------------------------------------
class WidgetChannel:
    """Fans each outbound message out to the visitor's open event streams."""

    name = CHANNEL

    def __init__(self, max_buffered: int = 1000) -> None:
        self._subscribers: dict[str, set[asyncio.Queue]] = {}
        self._max_buffered = max_buffered

    def subscribe(self, visitor_id: str) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(self._max_buffered)
        self._subscribers.setdefault(visitor_id, set()).add(queue)
        return queue

    def unsubscribe(self, visitor_id: str, queue: asyncio.Queue) -> None:
        queues = self._subscribers.get(visitor_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._subscribers[visitor_id]

    def publish(self, visitor_id: str, event: str, data: dict) -> None:
        for queue in list(self._subscribers.get(visitor_id, ())):
            try:
                queue.put_nowait((event, data))
            except asyncio.QueueFull:  # a stalled page: it reloads history when it reconnects
                self.unsubscribe(visitor_id, queue)

    async def send(self, conversation: Conversation, outbound: Outbound) -> None:
        self.publish(conversation.conversation_key, "message", outbound_json(outbound))

    async def send_delta(self, conversation: Conversation, reply_to: int, text: str) -> None:
        self.publish(conversation.conversation_key, "delta", {"reply_to": reply_to, "text": text})

    async def send_status(self, conversation: Conversation, status: str, agent: str | None) -> None:
        self.publish(conversation.conversation_key, "status", {"status": status, "agent": agent})

    async def send_typing(self, conversation: Conversation, reply_to: int | None) -> None:
        self.publish(conversation.conversation_key, "typing", {"reply_to": reply_to})

    async def send_screenshots_ready(self, conversation: Conversation, message_id: int) -> None:
        self.publish(conversation.conversation_key, "screenshots", {"message_id": message_id})


def outbound_json(outbound: Outbound) -> dict:
    return {
        "id": outbound.message_id,
        "role": KIND_ROLE.get(outbound.kind, "system"),
        "kind": outbound.kind,
        "text": outbound.text,
        "author": outbound.author,
        "images": [],
        "created_at": utcnow().isoformat(),
        "client_message_id": None,
        "reply_to": outbound.reply_to,
        "status": outbound.status,
        "sources": [dict(source) for source in outbound.sources],
    }
