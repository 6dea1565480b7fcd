"""Live updates for the consoles: conversation events fanned out to open pages.

Pages only learn *that* something changed (which conversation, what kind of change) and
fetch what they show through the same role-checked API as everything else.
"""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

from fastapi import Request

KEEPALIVE_S = 15.0
FORWARDED = {"handover", "answer", "message", "note", "status", "inbound", "delivered"}


class ConsoleHub:
    def __init__(self, max_buffered: int = 500) -> None:
        self._queues: set[asyncio.Queue] = set()
        self._max_buffered = max_buffered

    def on_event(self, event: str, data: dict) -> None:
        """ConversationManager listener."""
        if event not in FORWARDED or "conversation_id" not in data:
            return
        update = {"type": "message" if event == "inbound" else event, "conversation_id": data["conversation_id"]}
        for queue in list(self._queues):
            try:
                queue.put_nowait(update)
            except asyncio.QueueFull:  # a stalled page re-fetches everything when it reconnects
                self._queues.discard(queue)

    async def stream(self, request: Request) -> AsyncIterator[str]:
        queue: asyncio.Queue = asyncio.Queue(self._max_buffered)
        self._queues.add(queue)
        try:
            yield "retry: 2000\n\n"
            while True:
                try:
                    update = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                yield f"event: update\ndata: {json.dumps(update)}\n\n"
        finally:
            self._queues.discard(queue)
