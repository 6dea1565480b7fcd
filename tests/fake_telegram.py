"""A local Telegram Bot API for tests: the wire format of every method the adapter calls.

`FakeTelegram` serves `POST /bot<token>/<method>` (form or JSON bodies, as
python-telegram-bot sends them) and `GET /file/bot<token>/<file_path>` on 127.0.0.1 in a
thread, answers `{"ok": true, "result": ...}` with objects shaped as Telegram documents
them, records every call, long-polls a queue of updates for `getUpdates`, and can be told
to fail a method (429 with retry_after, 5xx, ...) or a file download.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from tests.live_server import free_port, wait_for

STRING_FIELDS = {
    "text", "caption", "url", "secret_token", "file_id", "action", "language_code", "description",
    "parse_mode", "emoji", "ip_address",
}
TELEGRAM_DOWNLOAD_LIMIT = 20 * 1024 * 1024


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


@dataclass
class FakeFile:
    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes
    file_size: int
    download_status: int = 200


def utf16_len(value: str) -> int:
    return len(value.encode("utf-16-le")) // 2


def _decode(name: str, value: str) -> Any:
    """Form values as PTB encodes them: strings as they are, everything else as JSON."""
    if name in STRING_FIELDS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


class FakeTelegram:
    def __init__(self, token: str = "123456:TEST", username: str = "snapdesk_bot") -> None:
        self.token = token
        self.bot_user = {
            "id": int(token.split(":")[0]), "is_bot": True, "first_name": "Snapdesk", "username": username,
            "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False,
        }
        self.calls: list[Call] = []
        self.downloads: list[str] = []  # file paths requested
        self.updates: list[dict] = []
        self.files: dict[str, FakeFile] = {}
        self.max_poll_wait_s = 1.0
        self._failures: list[dict] = []
        self._lock = threading.Lock()
        self._message_ids = itertools.count(9000)
        self.base_url = ""
        self.app = self._build_app()

    # What tests set up ------------------------------------------------------------------------
    def add_file(self, data: bytes, *, file_size: int | None = None, download_status: int = 200,
                 extension: str = "jpg", file_path: str | None = None) -> FakeFile:
        """A file the bot may fetch; `file_size` is what Telegram declares (default: the real size),
        `file_path` what getFile answers (default: a relative path such as documents/file_3.jpg)."""
        file_id = f"AgAC{uuid.uuid4().hex}"
        fake = FakeFile(
            file_id=file_id,
            file_unique_id=f"AQAD{uuid.uuid4().hex[:12]}",
            file_path=file_path or f"documents/file_{len(self.files)}.{extension}",
            data=data,
            file_size=len(data) if file_size is None else file_size,
            download_status=download_status,
        )
        with self._lock:
            self.files[file_id] = fake
        return fake

    def fail(self, method: str, error_code: int, description: str = "", *, retry_after: int | None = None,
             times: int = 1, chat_id: int | None = None) -> None:
        """The next `times` calls of `method` (to `chat_id`, if given) fail with this error."""
        with self._lock:
            self._failures.append({
                "method": method.lower(), "error_code": error_code, "retry_after": retry_after,
                "description": description or _describe(error_code), "times": times, "chat_id": chat_id,
            })

    def push_update(self, update: dict) -> None:
        with self._lock:
            self.updates.append(update)

    # What tests look at ---------------------------------------------------------------------
    def calls_to(self, method: str, **match: Any) -> list[dict]:
        with self._lock:
            calls = list(self.calls)
        return [c.params for c in calls if c.method.lower() == method.lower()
                and all(c.params.get(k) == v for k, v in match.items())]

    def texts_to(self, chat_id: int) -> list[str]:
        """The texts successfully delivered into a chat, in order."""
        with self._lock:
            calls = list(self.calls)
        return [c.params["text"] for c in calls
                if c.method.lower() == "sendmessage" and c.params.get("chat_id") == chat_id and c.params.get("_ok")]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "the fake Bot API") -> Any:
        try:
            return wait_for(predicate, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; calls: {[c.method for c in self.calls][-30:]}") from None

    def wait_for_texts(self, chat_id: int, count: int = 1, timeout: float = 10.0) -> list[str]:
        return self.wait_for(lambda: t if len(t := self.texts_to(chat_id)) >= count else None,
                             timeout, f"{count} message(s) to chat {chat_id}")

    # Serving ------------------------------------------------------------------------------
    @contextmanager
    def serve(self) -> Iterator[str]:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning",
                                               access_log=False, lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        self.base_url = f"http://127.0.0.1:{port}"
        try:
            yield self.base_url
        finally:
            server.should_exit = True
            thread.join(timeout=10)

    # The Bot API ------------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.api_route("/bot{token}/{method}", methods=["GET", "POST"])
        async def api(token: str, method: str, request: Request) -> Response:
            if token != self.token:
                return _error(401, "Unauthorized")
            params = await _params(request)
            call = Call(method, params)
            with self._lock:
                self.calls.append(call)
                failure = self._take_failure(method, params)
            if failure is not None:
                extra = {"parameters": {"retry_after": failure["retry_after"]}} if failure["retry_after"] else {}
                return _error(failure["error_code"], failure["description"], **extra)
            handler = getattr(self, f"_m_{method.lower()}", None)
            if handler is None:
                return _error(404, "Not Found")
            result = handler(params)
            if asyncio.iscoroutine(result):
                result = await result
            if isinstance(result, Response):
                return result
            params["_ok"] = True
            return JSONResponse({"ok": True, "result": result})

        @app.get("/file/bot{token}/{file_path:path}")
        async def download(token: str, file_path: str) -> Response:
            if token != self.token:
                return _error(401, "Unauthorized")
            with self._lock:
                self.downloads.append(file_path)
                fake = next((f for f in self.files.values() if f.file_path == file_path), None)
            if fake is None:
                return _error(404, "Not Found")
            if fake.download_status != 200:
                return Response(f"error {fake.download_status}", status_code=fake.download_status)
            return Response(fake.data, media_type="application/octet-stream")

        return app

    def _take_failure(self, method: str, params: dict) -> dict | None:
        for failure in self._failures:
            if failure["method"] != method.lower() or failure["times"] <= 0:
                continue
            if failure["chat_id"] is not None and params.get("chat_id") != failure["chat_id"]:
                continue
            failure["times"] -= 1
            return failure
        return None

    def _m_getme(self, params: dict) -> dict:
        return self.bot_user

    def _m_setmycommands(self, params: dict) -> Any:
        commands = params.get("commands")
        if not isinstance(commands, list) or not all({"command", "description"} <= set(c) for c in commands):
            return _error(400, "Bad Request: commands must be a list of BotCommand")
        return True

    def _m_setwebhook(self, params: dict) -> Any:
        if not str(params.get("url", "")).startswith("https://"):
            return _error(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        return True

    def _m_deletewebhook(self, params: dict) -> bool:
        return True

    def _m_sendchataction(self, params: dict) -> Any:
        if "chat_id" not in params or not params.get("action"):
            return _error(400, "Bad Request: chat_id and action are required")
        return True

    def _m_sendmessage(self, params: dict) -> Any:
        text = params.get("text")
        if "chat_id" not in params:
            return _error(400, "Bad Request: chat_id is empty")
        if not isinstance(text, str) or not text.strip():
            return _error(400, "Bad Request: message text is empty")
        if utf16_len(text) > 4096:
            return _error(400, "Bad Request: message is too long")
        chat_id = params["chat_id"]
        chat = {"id": chat_id, "type": "private", "first_name": "Ana"} if chat_id > 0 else \
            {"id": chat_id, "type": "supergroup", "title": "Support group"}
        return {"message_id": next(self._message_ids), "from": self.bot_user, "chat": chat,
                "date": int(time.time()), "text": text}

    def _m_getfile(self, params: dict) -> Any:
        fake = self.files.get(params.get("file_id", ""))
        if fake is None:
            return _error(400, "Bad Request: invalid file_id")
        if fake.file_size > TELEGRAM_DOWNLOAD_LIMIT:
            return _error(400, "Bad Request: file is too big")
        return {"file_id": fake.file_id, "file_unique_id": fake.file_unique_id, "file_size": fake.file_size,
                "file_path": fake.file_path}

    async def _m_getupdates(self, params: dict) -> list[dict]:
        offset = params.get("offset")
        timeout = float(params.get("timeout") or 0)
        deadline = time.monotonic() + min(timeout, self.max_poll_wait_s)
        while True:
            with self._lock:
                if offset is not None:  # confirms every update before the offset
                    self.updates = [u for u in self.updates if u["update_id"] >= offset]
                ready = list(self.updates[: int(params.get("limit") or 100)])
            if ready or time.monotonic() >= deadline:
                return ready
            await asyncio.sleep(0.02)


async def _params(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        body = await request.body()
        return dict(json.loads(body)) if body else {}
    if request.method == "GET":
        return {k: _decode(k, v) for k, v in request.query_params.items()}
    form = await request.form()
    return {k: _decode(k, v) for k, v in form.items() if isinstance(v, str)}


def _describe(code: int) -> str:
    return {
        429: "Too Many Requests: retry after {}", 500: "Internal Server Error", 502: "Bad Gateway",
        403: "Forbidden: bot was blocked by the user", 400: "Bad Request",
    }.get(code, "Error")


def _error(code: int, description: str, **extra: Any) -> JSONResponse:
    if "{}" in description:
        description = description.format(extra.get("parameters", {}).get("retry_after", 1))
    return JSONResponse({"ok": False, "error_code": code, "description": description, **extra}, status_code=code)
