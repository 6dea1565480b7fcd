"""Request bodies are bounded while they stream, for every route, by one middleware.

A declared `Content-Length` proves nothing: a chunked upload declares none, and the form
parser would spool it to disk whole before any route could look at it. So the body is
counted as it arrives, and the request fails with 413 as soon as it passes its route's
limit: no more than the limit ever reaches memory or disk, and the rest is never read.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from ..settings import Settings
from .operator_console import MAX_TRY_IMAGES

KIB, MIB = 1024, 1024 * 1024


WIDGET_MESSAGES = "/widget/api/messages"
API_PREFIX = "/v1/"


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, path: str = "") -> None:
        self.limit = limit
        message = (
            "That message is too large. Please send smaller screenshots." if path.startswith(WIDGET_MESSAGES)
            else f"The request is too large (the limit is {_size(limit)})."
        )
        if path.startswith(API_PREFIX):  # /v1 clients read OpenAI's error shape
            detail: dict = {"error": {"message": message, "type": "invalid_request_error", "param": None,
                                      "code": "too_large"}}
        else:
            detail = {"error": "too_large", "message": message}
        super().__init__(413, detail=detail)


def _size(limit: int) -> str:
    return f"{limit / MIB:.3g} MB" if limit >= MIB else f"{limit // KIB} KB"


@dataclass(frozen=True)
class BodyLimits:
    """Longest accepted body per path prefix (the longest matching prefix wins)."""

    by_prefix: tuple[tuple[str, int], ...]
    default: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "BodyLimits":
        widget = (settings.widget_max_images * (settings.image_max_bytes + 4 * KIB)
                  + 4 * settings.widget_max_text_chars + 64 * KIB)
        # /v1 carries up to 8 screenshots as base64 data URLs (4/3 of their bytes) in JSON.
        v1 = max(2 * (settings.image_max_bytes * 4 // 3 + 4), 8 * MIB) + MIB
        return cls(
            by_prefix=(
                (WIDGET_MESSAGES, widget),
                ("/widget/api/", 64 * KIB),
                ("/login", 64 * KIB),
                ("/console/api/", 64 * KIB),
                ("/agent/api/", 256 * KIB),
                ("/admin/api/", 64 * KIB),
                # templates (256 KB of YAML), and "try it" with its screenshots
                ("/operator/api/", MAX_TRY_IMAGES * (settings.image_max_bytes + 4 * KIB) + 2 * MIB),
                ("/v1/", v1),
                ("/slack/", MIB),
                ("/telegram/", MIB),
            ),
            default=64 * KIB,
        )

    def for_path(self, path: str) -> int:
        best, limit = -1, self.default
        for prefix, value in self.by_prefix:
            if path.startswith(prefix) and len(prefix) > best:
                best, limit = len(prefix), value
        return limit


class BodyLimitMiddleware:
    """Pure ASGI: counts `http.request` bytes and stops at the route's limit."""

    def __init__(self, app, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.for_path(scope.get("path", ""))
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(limit, scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, scope.get("path", ""))
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if started:
                raise
            await _refuse(limit, scope, receive, send)


async def _refuse(limit: int, scope, receive, send) -> None:
    error = BodyTooLarge(limit, scope.get("path", ""))
    # The connection closes after the answer: the rest of the body is never read.
    response = JSONResponse(error.detail, status_code=413, headers={"Connection": "close"})
    await response(scope, receive, send)
