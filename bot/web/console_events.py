"""Live updates for the consoles: conversation events fanned out to open pages.

Pages only learn *that* something changed (which conversation, what kind of change) and
fetch what they show through the same role-checked API as everything else.

Each open stream remembers whose session it serves, so signing out, a disabled account or a
password reset can end that user's streams at once (`end_sessions`) instead of leaving a page
that still receives updates for a session that no longer exists.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import AsyncIterator, Awaitable, Callable

from fastapi import Request

from ..accounts import Accounts, _digest
from ..messages import utcnow
from ..queries import console_session
from ..store import iso
from .event_stream import KEEPALIVE_S, live_events

FORWARDED = {"handover", "answer", "message", "note", "status", "inbound", "delivered"}


@dataclass(eq=False)
class _Subscriber:
    user_name: str
    session_token: str
    queue: asyncio.Queue
    closed: bool = field(default=False)

    def close(self) -> None:
        """Wake the stream so it ends; a full queue wakes it anyway."""
        self.closed = True
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            pass


def session_is_open(accounts: Accounts, token: str, role: str) -> bool:
    """Whether a console session is still signed in, its account enabled and allowed `role`
    (a change made by another process, such as `snapdesk user`, reaches no hub), without
    refreshing its idle timer: an open page alone does not keep a session alive."""
    if not token:
        return False
    row = console_session(accounts.store, _digest(token))
    if row is None or row["disabled"] or row["role"] not in ("admin", role):
        return False
    now = iso(utcnow())
    idle_deadline = iso(datetime.fromisoformat(row["last_seen_at"]) + accounts.idle_timeout)
    return row["expires_at"] > now and idle_deadline > now


class ConsoleHub:
    def __init__(self, max_buffered: int = 500) -> None:
        self._subscribers: set[_Subscriber] = set()
        self._max_buffered = max_buffered

    def on_event(self, event: str, data: dict) -> None:
        """ConversationManager listener."""
        if event not in FORWARDED or "conversation_id" not in data:
            return
        update = {"type": "message" if event == "inbound" else event, "conversation_id": data["conversation_id"]}
        for subscriber in list(self._subscribers):
            try:
                subscriber.queue.put_nowait(("update", update))
            except asyncio.QueueFull:  # a stalled page is ended; it re-fetches everything when it reconnects
                self._subscribers.discard(subscriber)
                subscriber.closed = True

    def end_sessions(self, user_name: str | None = None, session_token: str | None = None) -> int:
        """Close the open streams of `user_name` (all their sessions) or of one `session_token`;
        returns how many were closed. Call it with neither and nothing is closed."""
        if user_name is None and session_token is None:
            return 0
        ended = 0
        for subscriber in list(self._subscribers):
            if user_name is not None and subscriber.user_name != user_name:
                continue
            if session_token is not None and subscriber.session_token != session_token:
                continue
            self._subscribers.discard(subscriber)
            subscriber.close()
            ended += 1
        return ended

    def open_streams(self, user_name: str | None = None) -> int:
        return sum(1 for s in self._subscribers if user_name is None or s.user_name == user_name)

    async def stream(self, request: Request, user_name: str, session_token: str,
                     still_valid: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[str]:
        """The event stream of one console page. `still_valid` is asked about every keep-alive
        interval, a backstop for a session that ended without `end_sessions` being called."""
        subscriber = _Subscriber(user_name, session_token, asyncio.Queue(self._max_buffered))
        self._subscribers.add(subscriber)
        try:
            async for line in live_events(request, subscriber.queue, closed=lambda: subscriber.closed,
                                          still_valid=still_valid, keepalive_s=KEEPALIVE_S):
                yield line
        finally:
            self._subscribers.discard(subscriber)
