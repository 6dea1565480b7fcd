"""A request whose answer takes a while, answered as server-sent events of its stages.

"Try it" on a busy engine can take a minute: the console asks for `text/event-stream` and gets
each stage as it happens, the model's text as it is written, then the same JSON the plain
request would return (a `result` event), or, where the plain request would have answered an
HTTP error, an `error` event with that status and body. The work runs as a task beside the
response and ends with it: when the client goes away the task is cancelled, which is how a
closed page gives back what the work held (its generation, its place in the engine's queue).

Unlike the console's live event streams (event_stream.py), this one is finite and tied to one
request, so it needs no reconnect delay and no stream caps beyond the ones the work itself has.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Awaitable, Callable

from fastapi import HTTPException, Request
from fastapi.responses import StreamingResponse

from .event_stream import KEEPALIVE_S, sse

log = logging.getLogger(__name__)

Progress = Callable[[str, dict], None]  # (stage, details), told as each stage happens
Work = Callable[[Progress], Awaitable[dict]]

EVENT_STREAM = "text/event-stream"


def wants_events(request: Request) -> bool:
    return EVENT_STREAM in request.headers.get("accept", "")


def error_event(exc: BaseException) -> dict:
    """The body the JSON form answers for `exc`, with its status (and Retry-After, if any)."""
    if not isinstance(exc, HTTPException):
        log.error("a streamed request failed", exc_info=exc)
        return {"status": 500, "error": "internal_error", "message": "The server had a problem (500). Try again in a moment."}
    detail = exc.detail if isinstance(exc.detail, dict) else {"error": "http_error", "message": str(exc.detail)}
    body = {"status": exc.status_code, **detail}
    retry_after = (exc.headers or {}).get("Retry-After")
    if retry_after is not None:
        body["retry_after"] = int(retry_after)
    return body


def progress_response(work: Work, keepalive_s: float = KEEPALIVE_S) -> StreamingResponse:
    """Run `work(progress)` while streaming: each `progress(stage, details)` becomes an event named
    after the stage, then `result` (its return value) or `error`."""

    async def events() -> AsyncIterator[str]:
        told: asyncio.Queue = asyncio.Queue()
        task = asyncio.ensure_future(work(lambda stage, details: told.put_nowait((stage, details))))
        task.add_done_callback(lambda _: told.put_nowait(None))
        try:
            while (item := await _next(told, keepalive_s)) is not None:
                yield ": keep-alive\n\n" if item is _QUIET else sse(*item)
            if task.cancelled():
                return
            error = task.exception()
            yield sse("error", error_event(error)) if error is not None else sse("result", task.result())
        finally:
            task.cancel()  # the client left (or the work is done): stop what it still holds

    return StreamingResponse(events(), media_type=EVENT_STREAM,
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


_QUIET = ("", {})


async def _next(queue: asyncio.Queue, keepalive_s: float):
    try:
        return await asyncio.wait_for(queue.get(), keepalive_s)
    except (asyncio.TimeoutError, TimeoutError):
        return _QUIET
