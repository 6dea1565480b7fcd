"""Console and agent answers are about customers: no browser or proxy cache may keep them.

One ASGI middleware marks every JSON answer under the console APIs `Cache-Control: no-store`
(a route that set its own header keeps it), so a new console route cannot forget.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

PRIVATE_PREFIXES = ("/agent/api/", "/operator/api/", "/admin/api/", "/console/api/")


class NoStoreMiddleware:
    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...] = PRIVATE_PREFIXES) -> None:
        self.app = app
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_no_store)
