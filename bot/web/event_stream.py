"""Server-sent events for pages that stay open: the widget's chat and the consoles.

Both streams do the same thing: tell the browser how soon to reconnect, pass on what is put in
a queue, send a comment line when there has been nothing to say for a while (so proxies keep
the connection and a vanished client is noticed), and end when the client has gone, the stream
was closed from the server side, or its session is no longer valid. One generator does it for
both. (The `/v1` stream is OpenAI's finite chunk format and ends with its answer.)

sse-starlette's EventSourceResponse would run a ping task and a disconnect listener beside
every stream; ours are counted against caps by the response that sends them
(stream_caps.CappedStreamingResponse), and the keep-alive tick is also when a console stream
re-checks its session, so one loop with a timeout serves both without a second task each.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator, Awaitable, Callable, Iterable

from fastapi import Request

KEEPALIVE_S = 15.0
RETRY_MS = 2000  # how long a browser's EventSource waits before it reconnects
_NOTHING = object()


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def live_events(request: Request, queue: asyncio.Queue, *, opening: Iterable[str] = (),
                      closed: Callable[[], bool] = lambda: False,
                      still_valid: Callable[[], Awaitable[bool]] | None = None,
                      keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[str]:
    """The lines of one stream: `opening`, then an event per (event, data) put in `queue`.

    Ends when `queue` yields None or `closed()` is true (the server ended it), or, checked once
    per keep-alive interval even while events flow, when the client is gone or `still_valid()`
    says the session behind the stream has ended."""
    yield f"retry: {RETRY_MS}\n\n"
    for line in opening:
        yield line
    checked = time.monotonic()
    while True:
        try:
            item = await asyncio.wait_for(queue.get(), keepalive_s)
        except asyncio.TimeoutError:
            item = _NOTHING
        if item is None or closed():
            return
        if time.monotonic() - checked >= keepalive_s:
            checked = time.monotonic()
            if await request.is_disconnected():
                return
            if still_valid is not None and not await still_valid():
                return
        if item is _NOTHING:
            yield ": keep-alive\n\n"
        else:
            event, data = item
            yield sse(event, data)
