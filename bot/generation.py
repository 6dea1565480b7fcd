"""Getting a turn's text out of the engine while the user's channel shows the bot at work.

The engine is shared and bounded, so a turn first waits for one of its places in arrival
order and then, if the engine is still full, tries again until one deadline: a burst is
served first come first served, and nothing hangs (past the deadline the turn goes to a
person). Kept apart from the turn's decision, which only needs the finished `Generation`.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any, Callable

from engine.base import Engine, EngineOverloaded, Generation

from .manager_core import ManagerCore, target
from .messages import Conversation
from .turn_retries import wait_for_engine_room

log = logging.getLogger(__name__)


class TurnGenerator:
    def __init__(self, core: ManagerCore, engine: Engine) -> None:
        self.core = core
        self.engine = engine
        slots = core.options.engine_slots
        self._slots = asyncio.Semaphore(slots) if slots else None

    async def generate(self, request, conversation: dict, message: dict, marker: str,
                       stream: bool = False) -> Generation:
        """Generate while the user's channel shows that the bot is working.

        The user sees the answer only once the policy has decided on it. A template with
        `stream: true` shows the text as it is generated instead, on channels that can:
        such text may still be withdrawn by a hand-over. Text that could still turn into
        the decline marker is never shown.
        """
        options = self.core.options
        channel = self.core.channels.get(conversation["channel"])
        send_delta = getattr(channel, "send_delta", None) if stream else None
        send_typing = getattr(channel, "send_typing", None)
        if send_typing is not None:
            try:
                await send_typing(target(conversation), message["id"])
            except Exception as exc:  # a typing indicator is a courtesy: never fail the turn for it
                log.warning("typing indicator on %s failed: %s", conversation["channel"], type(exc).__name__)
        deadline = asyncio.get_running_loop().time() + options.busy_wait_s
        async with self._engine_slot(deadline):
            # The queue can be full even for a turn holding a slot (other callers share the
            # engine, such as /v1, or a remote server is busy): the turn tries again until
            # `deadline` (the user keeps seeing the typing indicator).
            room = wait_for_engine_room(deadline, on_busy=lambda: self.core.emit("busy"))
            if send_delta is None:
                return await room(self.engine.generate, request, timeout=options.request_timeout_s)
            opened, deltas = await room(self._open_stream, request)
            return await self._relay(opened, deltas, target(conversation), message["id"], marker, send_delta)

    async def _relay(self, stream, deltas, to: Conversation, message_id: int, marker: str,
                     send_delta: Callable) -> Generation:
        held, released = "", False
        async for delta in deltas:
            if released:
                await send_delta(to, message_id, delta)
                continue
            held += delta
            head = held.lstrip()
            if marker and (marker.startswith(head) or head.startswith(marker)):
                continue  # might be (or is) the decline marker: never show it
            released = True
            await send_delta(to, message_id, held)
        return await stream.result()

    @asynccontextmanager
    async def _engine_slot(self, deadline: float):
        """One of the engine's queue places for this turn, first come first served.

        A burst larger than the engine queue waits here in arrival order (a full queue that
        turns kept polling would let late arrivals overtake early ones), and a turn that gets
        no place before `deadline` fails with `EngineOverloaded`: it goes to a person.
        """
        slots = self._slots
        if slots is None:
            yield
            return
        if slots.locked():
            self.core.emit("busy")
            try:
                await asyncio.wait_for(slots.acquire(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except (asyncio.TimeoutError, TimeoutError):
                raise EngineOverloaded(f"no room in the engine queue for {self.core.options.busy_wait_s:g} s") from None
        else:
            await slots.acquire()
        try:
            yield
        finally:
            slots.release()

    async def _open_stream(self, request) -> tuple[Any, Any]:
        """Start streaming and wait for the first text, where a busy engine says so."""
        stream = self.engine.stream(request, timeout=self.core.options.request_timeout_s)
        chunks = aiter(stream)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            return stream, _no_more()

        async def deltas():
            yield first
            async for delta in chunks:
                yield delta

        return stream, deltas()


async def _no_more():
    return
    yield
