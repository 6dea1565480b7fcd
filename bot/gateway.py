"""What a platform channel may ask of Snapdesk, and nothing more.

An adapter translates platform events into `Inbound` messages and hands them here; replies
come back to it as `Outbound` through its `Channel.send`. It never sees the store, the web
layer or the conversation manager's internals, so a platform's quirks stay in its adapter and
the core can change behind this interface (Rasa's `InputChannel` + `on_new_message`, bolt's
`to_bolt_request` / `to_*_response` keep the same line).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Coroutine

from .conversation import Accepted, ConversationManager
from .messages import Inbound


class AdapterConfigError(Exception):
    """A channel's settings are unsafe or incomplete; the server refuses to start."""


class Gateway:
    def __init__(self, manager: ConversationManager, ready: asyncio.Event,
                 spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task]) -> None:
        self._manager = manager
        self._ready = ready
        self._spawn = spawn

    # Messages -----------------------------------------------------------------------------
    async def accept(self, inbound: Inbound) -> Accepted:
        """Store the message (before the platform is told it arrived); a retry is a duplicate."""
        return await self._manager.accept(inbound)

    async def answer(self, accepted: Accepted) -> None:
        """Give a stored message its one answer or hand-over, once the model is ready."""
        await self._ready.wait()
        await self._manager.process(accepted.message_id, accepted.conversation_id)

    def answer_later(self, accepted: Accepted) -> asyncio.Task:
        return self.spawn(self.answer(accepted))

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run work after the platform has been answered, kept until it ends."""
        return self._spawn(work)

    async def request_human(self, conversation_id: int) -> bool:
        """The user asked for a person with a command or button: False when one has it already."""
        return await self._manager.request_human(conversation_id)

    async def restart(self, channel: str, conversation_key: str) -> bool:
        """The user starts over: the next message opens a fresh bot episode."""
        return await self._manager.agents.restart(channel, conversation_key)

    async def conversation_language(self, channel: str, conversation_key: str) -> str | None:
        """The language of the conversation under this key ("" unknown); None when there is none."""
        return await self._manager.intake.conversation_language(channel, conversation_key)

    async def knows_message(self, channel: str, platform_message_id: str) -> bool:
        """A platform message already stored (one message can come as two events)."""
        return await self._manager.intake.knows_message(channel, platform_message_id)

    async def platform_message_id(self, message_id: int) -> str | None:
        """The platform's own id of a stored user message (to thread a reply under it)."""
        return await self._manager.intake.platform_message_id(message_id)

    # Raw platform events: stored before they are acknowledged --------------------------------
    async def record_event(self, channel: str, event_key: str, payload: dict) -> bool:
        """False for a retry of an event already stored."""
        return await self._manager.intake.record_event(channel, event_key, payload)

    async def finish_event(self, channel: str, event_key: str) -> None:
        await self._manager.intake.finish_event(channel, event_key)

    async def pending_events(self, channel: str) -> list[dict]:
        """Events stored but not finished (a crash or failure after the acknowledgement)."""
        return await self._manager.intake.pending_events(channel)

    def on_pending_events(self, channel: str, replay: Callable[[list[dict]], Awaitable[Any]]) -> None:
        """How the periodic round finishes this channel's events left pending."""
        self._manager.intake.on_pending_events(channel, replay)
