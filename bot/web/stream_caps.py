"""Caps on open event streams: per visitor, per address, per console session and in total.

An event stream holds a socket and a file descriptor for as long as the page stays open, so
streams that nobody caps let one client exhaust the process's open-file limit and starve every
other client. Each stream is counted under a few keys (its visitor, its address, its session)
and under the total; beyond any cap the answer is 429 before the stream starts.

A place is taken inside the response itself, when the server starts sending it, and given back
in the same `finally`: a stream that ends, fails, is cancelled, or whose client left before it
started always gives its place back, and a response that is never sent never took one. The
route checks the caps beforehand only to answer 429 early (without a database query); the
count that decides is the one taken here, with no await between the check and the increment.
"""

from __future__ import annotations

from collections import Counter
from typing import Mapping

from fastapi import HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from ..settings import Settings

RETRY_AFTER_S = 10
TOTAL = ("total", "")

# What the person behind a refused stream is told, by the kind of cap that is full.
MESSAGES = {
    "visitor": "This chat is open in too many tabs (at most {cap} live connections). "
               "Close a tab, or wait a moment and try again.",
    "ip": "Too many live chat connections from your network (at most {cap}). Please try again later.",
    "session": "This console session already has {cap} live update streams open. Close other console tabs.",
    "total": "The server has too many live connections right now. Please try again in a moment.",
}

Caps = Mapping[tuple[str, str], int]  # (kind, key) -> most open streams for that key


class StreamCaps:
    """Counts of open event streams by key, shared by the widget and the consoles."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._open: Counter[tuple[str, str]] = Counter()

    @classmethod
    def from_settings(cls, settings: Settings) -> "StreamCaps":
        return cls(settings.event_streams_total)

    @property
    def open(self) -> int:
        return self._open[TOTAL]

    def count(self, kind: str, key: str) -> int:
        return self._open[(kind, key)]

    def _with_total(self, caps: Caps) -> dict[tuple[str, str], int]:
        return {**caps, TOTAL: self.total}

    def full(self, caps: Caps) -> tuple[str, int] | None:
        """The (kind, cap) of the first full cap, or None when a stream would be admitted."""
        for (kind, key), cap in self._with_total(caps).items():
            if self._open[(kind, key)] >= cap:
                return kind, cap
        return None

    def admit(self, caps: Caps) -> tuple[str, int] | None:
        """Take a place under every key, or none: returns the full cap if refused."""
        refused = self.full(caps)
        if refused is None:
            for key in self._with_total(caps):
                self._open[key] += 1
        return refused

    def release(self, caps: Caps) -> None:
        for key in self._with_total(caps):
            self._open[key] -= 1
            if self._open[key] <= 0:
                del self._open[key]


def refusal_body(kind: str, cap: int) -> dict:
    return {"error": "too_many_streams", "message": MESSAGES[kind].format(cap=cap), "retry_after": RETRY_AFTER_S}


def refusal_headers() -> dict[str, str]:
    return {"Retry-After": str(RETRY_AFTER_S), "Cache-Control": "no-store"}


def check_caps(counts: StreamCaps, caps: Caps) -> None:
    """429 now, before any work, when a cap is already full."""
    refused = counts.full(caps)
    if refused is not None:
        raise HTTPException(429, detail=refusal_body(*refused), headers=refusal_headers())


class CappedStreamingResponse(StreamingResponse):
    """A StreamingResponse that holds its places under `caps` while (and only while) it runs."""

    def __init__(self, counts: StreamCaps, caps: Caps, content, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self._counts = counts
        self._caps = dict(caps)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = self._counts.admit(self._caps)
        if refused is not None:  # filled up since the route checked
            await self._close_body()
            refusal = JSONResponse(refusal_body(*refused), status_code=429, headers=refusal_headers())
            await refusal(scope, receive, send)
            return
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._counts.release(self._caps)
            await self._close_body()

    async def _close_body(self) -> None:
        """Run the stream's own `finally` (an unstarted generator has none to run)."""
        close = getattr(self.body_iterator, "aclose", None)
        if close is not None:
            await close()
