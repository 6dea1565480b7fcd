"""The engine's queue, shared between the support bot and the callers of /v1.

Customers come first: API requests (and the operator console's "try it", which takes its
places from the same share) may hold at most API_QUEUE_SHARE of the engine's queue, so a busy
integration can never push a customer's turn out of the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Callable

from .openai_errors import ApiError, busy

API_QUEUE_SHARE = 0.5  # of the engine queue that API requests may hold at once
PLACE_POLL_S = 0.05  # how often a wait for a place looks again


class ApiShare:
    """How many API requests are queued or generating; refuses beyond their share of the queue."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.active = 0

    @classmethod
    def from_settings(cls, settings) -> "ApiShare":
        return cls(int(settings.queue_size * API_QUEUE_SHARE))

    def acquire(self) -> "Ticket":
        if self.active >= self.limit:
            raise busy(f"The model is busy: API requests may hold {self.limit} places in its queue and all are "
                       "taken (the rest is kept for the support bot). Retry in a moment.")
        self.active += 1
        return Ticket(self)

    def places(self, wait_s: float | None = None, busy_error: Callable[[], Exception] | None = None):
        """The `places` a turn run from the consoles takes (bot.regression.turn): each use holds
        one place for the generation, waiting for one to free; past `wait_s` seconds (None: as
        long as it takes) `busy_error()` is raised, or the share's own ApiError."""

        @contextlib.asynccontextmanager
        async def place() -> AsyncIterator[None]:
            ticket = await self._wait(wait_s, busy_error)
            try:
                yield
            finally:
                ticket.release()

        return place

    async def _wait(self, wait_s: float | None, busy_error: Callable[[], Exception] | None) -> "Ticket":
        loop = asyncio.get_running_loop()
        deadline = None if wait_s is None else loop.time() + wait_s
        while True:
            try:
                return self.acquire()
            except ApiError:
                if deadline is not None and loop.time() >= deadline:
                    if busy_error is None:
                        raise
                    raise busy_error() from None
            await asyncio.sleep(PLACE_POLL_S)


class Ticket:
    def __init__(self, share: ApiShare) -> None:
        self._share: ApiShare | None = share

    def release(self) -> None:
        if self._share is not None:
            self._share.active -= 1
            self._share = None
