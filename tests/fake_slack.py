"""A local stand-in for Slack: the Web API methods Snapdesk calls, a files host and Socket Mode.

It speaks Slack's wire format: API methods at `/api/{method}` take form, multipart or JSON
bodies (as slack_sdk sends them) with the token in `Authorization: Bearer`, and answer
`{"ok": true, ...}` or `{"ok": false, "error": "..."}` (HTTP 429 with Retry-After when rate
limited). Private files live at `/files-pri/{team}-{file id}/{name}` and need the bot token
(without it Slack answers with its HTML sign-in page). `apps.connections.open` hands out a
`ws://` URL of a websocket server that sends `hello` and events in Socket Mode envelopes and
records the acknowledgements. Every call is recorded for the tests to inspect.

The module also builds signed event payloads shaped as Slack documents them.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from tests.live_server import free_port, wait_for  # noqa: F401  (wait_for: for the Slack tests)

TEAM = "T0TEST"
BOT_USER = "UBOT"
BOT_ID = "BBOT"
APP_ID = "A0TEST"
BOT_TOKEN = "xoxb-test"
APP_TOKEN = "xapp-test"

LOGIN_PAGE = (
    '<!DOCTYPE html><html lang="en-US"><head><meta charset="utf-8"><title>Slack</title></head>'
    '<body><div id="page"><h1>Sign in to Snapdesk Test</h1><form action="/signin" method="post">'
    '<input type="email" name="email"><button type="submit">Sign in with email</button></form></div></body></html>'
)


@dataclass
class FakeFile:
    id: str
    name: str
    data: bytes
    kind: str  # ok | html | error500 | slow | huge | moved | moved_away
    mimetype: str


@dataclass
class Failure:
    status: int = 200
    error: str = ""
    retry_after: int | None = None
    channel: str | None = None  # only calls for this channel fail


@dataclass
class Call:
    method: str
    args: dict
    token: str | None
    status: int = 200
    at: float = field(default_factory=time.monotonic)


class FakeSlack:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], dict] = {}  # (channel, ts) -> message
        self.files: dict[str, FakeFile] = {}
        self.downloads: list[dict] = []
        self.failures: dict[str, list[Failure]] = {}
        self.users: dict[str, dict] = {}
        self.acks: list[dict] = []
        self.sockets: list[Any] = []
        self._ts = itertools.count(1)
        self._file_ids = itertools.count(1)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.base_url}/api/"
        self.app = self._build_app()
        self._server: uvicorn.Server | None = None
        self._ws_server: Any = None
        self.ws_port = 0
        self.add_user("U1", "alice", "Alice Chen")
        self.add_user("U2", "bob", "Bob Wang")

    # Running ------------------------------------------------------------------------------------
    def start(self) -> "FakeSlack":
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        threading.Thread(target=self._server.run, daemon=True).start()
        from websockets.sync.server import serve

        self._ws_server = serve(self._socket_handler, "127.0.0.1", 0, compression=None)
        self.ws_port = self._ws_server.socket.getsockname()[1]
        threading.Thread(target=self._ws_server.serve_forever, daemon=True).start()
        wait_for(lambda: self._server.started, timeout=10, what="fake Slack to start")
        return self

    def stop(self) -> None:
        if self._ws_server is not None:
            self._ws_server.shutdown()
        if self._server is not None:
            self._server.should_exit = True

    # Test set-up ---------------------------------------------------------------------------------
    def add_user(self, user_id: str, name: str, real_name: str) -> None:
        self.users[user_id] = {
            "id": user_id, "team_id": TEAM, "name": name, "deleted": False, "real_name": real_name,
            "tz": "Europe/London", "is_bot": False,
            "profile": {"real_name": real_name, "display_name": real_name.split()[0], "team": TEAM},
        }

    def fail(self, method: str, *, times: int = 1, status: int = 200, error: str = "",
             retry_after: int | None = None, channel: str | None = None) -> None:
        """The next `times` calls of `method` (for `channel`) fail: HTTP `status`, Slack `error`, or rate limiting."""
        status = 429 if retry_after is not None else status
        with self.lock:
            self.failures.setdefault(method, []).extend(
                Failure(status, error, retry_after, channel) for _ in range(times))

    def add_file(self, name: str, data: bytes = b"", *, kind: str = "ok", mimetype: str = "image/png",
                 size: int | None = None, host: str | None = None) -> dict:
        """Host a file and return the file object an event carries (as in Slack's `files[]`)."""
        file_id = f"F{next(self._file_ids):06d}"
        self.files[file_id] = FakeFile(file_id, name, data, kind, mimetype)
        base = f"http://{host}:{self.port}" if host else self.base_url
        filetype = name.rsplit(".", 1)[-1].lower()
        path = quote(name, safe="")  # Slack percent-encodes the name in file URLs
        return {
            "id": file_id, "created": int(time.time()), "timestamp": int(time.time()), "name": name, "title": name,
            "mimetype": mimetype, "filetype": filetype, "pretty_type": filetype.upper(), "user": "U1",
            "user_team": TEAM, "editable": False, "size": len(data) if size is None else size, "mode": "hosted",
            "is_external": False, "external_type": "", "is_public": False, "public_url_shared": False,
            "display_as_bot": False, "username": "",
            "url_private": f"{base}/files-pri/{TEAM}-{file_id}/{path}",
            "url_private_download": f"{base}/files-pri/{TEAM}-{file_id}/download/{path}",
            "permalink": f"https://snapdesk-test.slack.com/files/U1/{file_id}/{path}",
            "has_rich_preview": False, "file_access": "visible",
        }

    # Inspection ----------------------------------------------------------------------------------
    def calls_to(self, method: str, **match: Any) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method and all(c.args.get(k) == v for k, v in match.items())]

    def channel_messages(self, channel: str) -> list[dict]:
        """The messages the bot posted in a channel, in order, with updates applied."""
        with self.lock:
            return [dict(m) for (c, _), m in sorted(self.messages.items(), key=lambda kv: kv[1]["seq"]) if c == channel]

    def thread(self, channel: str, thread_ts: str) -> list[dict]:
        return [m for m in self.channel_messages(channel) if m.get("thread_ts") == thread_ts]

    # The app -------------------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.api_route("/api/{method}", methods=["GET", "POST"])
        async def api(method: str, request: Request) -> Response:
            args: dict[str, Any] = dict(request.query_params)
            content_type = request.headers.get("content-type", "")
            if content_type.startswith("application/json"):
                raw = await request.body()
                if raw.strip():  # slack_sdk sends this content type with no body for argument-less calls
                    args.update(json.loads(raw))
            elif content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
                args.update({k: v for k, v in (await request.form()).items()})
            authorization = request.headers.get("authorization", "")
            token = authorization[7:] if authorization.startswith("Bearer ") else args.pop("token", None)
            return self._dispatch(method, args, token)

        @app.get("/files-pri/{team_file}/{name}")
        @app.get("/files-pri/{team_file}/download/{name}")
        async def private_file(team_file: str, name: str, request: Request) -> Response:
            file = self.files.get(team_file.split("-", 1)[-1])
            authorized = request.headers.get("authorization") == f"Bearer {BOT_TOKEN}"
            with self.lock:
                self.downloads.append({"file": file.id if file else None, "authorized": authorized,
                                       "host": request.headers.get("host")})
            if file is None:
                return Response(status_code=404)
            if not authorized or file.kind == "html":  # what Slack shows a browser without a session
                return HTMLResponse(LOGIN_PAGE)
            if file.kind == "error500":
                return HTMLResponse("<html><body>Internal Server Error</body></html>", status_code=500)
            if file.kind == "slow":
                return StreamingResponse(_slow(file.data), media_type=file.mimetype)
            if file.kind == "huge":
                return StreamingResponse(_huge(file.data), media_type=file.mimetype)
            if file.kind in ("moved", "moved_away"):  # served from another path, or another host
                base = self.base_url if file.kind == "moved" else f"http://localhost:{self.port}"
                return Response(status_code=302, headers={"Location": f"{base}/files-tmb/{team_file}/{name}"})
            return Response(file.data, media_type=file.mimetype)

        @app.get("/files-tmb/{team_file}/{name}")
        async def moved_file(team_file: str, name: str, request: Request) -> Response:
            file = self.files[team_file.split("-", 1)[-1]]
            authorized = request.headers.get("authorization") == f"Bearer {BOT_TOKEN}"
            with self.lock:
                self.downloads.append({"file": file.id, "authorized": authorized, "host": request.headers.get("host"),
                                       "moved": True})
            return Response(file.data, media_type=file.mimetype) if authorized else HTMLResponse(LOGIN_PAGE)

        return app

    def _dispatch(self, method: str, args: dict, token: str | None) -> Response:
        with self.lock:
            failures = self.failures.get(method) or []
            failure = next((f for f in failures if f.channel in (None, args.get("channel"))), None)
            if failure is not None:
                failures.remove(failure)
            call = Call(method, args, token, status=failure.status if failure else 200)
            self.calls.append(call)
        if failure is not None:
            if failure.retry_after is not None:
                return JSONResponse({"ok": False, "error": "ratelimited"}, status_code=429,
                                    headers={"Retry-After": str(failure.retry_after)})
            if failure.status >= 500:
                return HTMLResponse("<html><body>Service Unavailable</body></html>", status_code=failure.status)
            return JSONResponse({"ok": False, "error": failure.error or "internal_error"})
        handler: Callable[[dict], dict] | None = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return JSONResponse({"ok": False, "error": "unknown_method"})
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token is None:
            return JSONResponse({"ok": False, "error": "not_authed"})
        if token != expected:
            return JSONResponse({"ok": False, "error": "invalid_auth"})
        return JSONResponse(handler(args))

    def _next_ts(self) -> str:
        return f"{1760000000 + next(self._ts)}.{next(self._ts):06d}"

    def _m_auth_test(self, args: dict) -> dict:
        return {"ok": True, "url": "https://snapdesk-test.slack.com/", "team": "Snapdesk Test", "user": "snapdesk",
                "team_id": TEAM, "user_id": BOT_USER, "bot_id": BOT_ID, "is_enterprise_install": False}

    def _m_chat_postMessage(self, args: dict) -> dict:
        channel, text, blocks = args.get("channel"), args.get("text"), args.get("blocks")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}
        if text and len(text) > 40000:
            return {"ok": False, "error": "msg_too_long"}
        ts = self._next_ts()
        message = {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "app_id": APP_ID, "text": text or "",
                   "ts": ts, "team": TEAM, "seq": ts}
        if blocks:
            message["blocks"] = json.loads(blocks) if isinstance(blocks, str) else blocks
        if args.get("thread_ts"):
            message["thread_ts"] = args["thread_ts"]
        with self.lock:
            self.messages[(channel, ts)] = message
        public = {k: v for k, v in message.items() if k != "seq"}
        return {"ok": True, "channel": channel, "ts": ts, "message": public}

    def _m_chat_update(self, args: dict) -> dict:
        channel, ts = args.get("channel"), args.get("ts")
        with self.lock:
            message = self.messages.get((channel, ts))
            if message is None:
                return {"ok": False, "error": "message_not_found"}
            message["text"] = args.get("text") or ""
            message["edited"] = {"user": BOT_USER, "ts": self._next_ts()}
        return {"ok": True, "channel": channel, "ts": ts, "text": message["text"],
                "message": {"text": message["text"], "user": BOT_USER, "bot_id": BOT_ID}}

    def _m_users_info(self, args: dict) -> dict:
        user = self.users.get(args.get("user", ""))
        return {"ok": True, "user": user} if user else {"ok": False, "error": "user_not_found"}

    def _m_files_info(self, args: dict) -> dict:
        file = self.files.get(args.get("file", ""))
        if file is None:
            return {"ok": False, "error": "file_not_found"}
        return {"ok": True, "file": self._file_object(file)}

    def _file_object(self, file: FakeFile) -> dict:
        path = quote(file.name, safe="")
        return {"id": file.id, "name": file.name, "mimetype": file.mimetype, "size": len(file.data),
                "url_private": f"{self.base_url}/files-pri/{TEAM}-{file.id}/{path}",
                "url_private_download": f"{self.base_url}/files-pri/{TEAM}-{file.id}/download/{path}"}

    def _m_apps_connections_open(self, args: dict) -> dict:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.ws_port}/link/?ticket={uuid.uuid4()}&app_id={APP_ID}"}

    # Socket Mode ---------------------------------------------------------------------------------
    def _socket_handler(self, connection: Any) -> None:
        connection.send(json.dumps({
            "type": "hello", "num_connections": 1,
            "debug_info": {"host": "applink-fake", "build_number": 1, "approximate_connection_time": 18060},
            "connection_info": {"app_id": APP_ID},
        }))
        with self.lock:
            self.sockets.append(connection)
        try:
            for message in connection:
                with self.lock:
                    self.acks.append(json.loads(message))
        except Exception:
            pass
        finally:
            with self.lock:
                if connection in self.sockets:
                    self.sockets.remove(connection)

    def send_envelope(self, payload: dict, *, retry_attempt: int = 0) -> str:
        """Deliver an event callback over Socket Mode; returns the envelope id to wait for."""
        envelope_id = str(uuid.uuid4())
        envelope = {"envelope_id": envelope_id, "payload": payload, "type": "events_api",
                    "accepts_response_payload": False, "retry_attempt": retry_attempt,
                    "retry_reason": "timeout" if retry_attempt else ""}
        with self.lock:
            connection = self.sockets[-1]
        connection.send(json.dumps(envelope))
        return envelope_id


async def _slow(head: bytes):
    yield head
    for _ in range(300):  # never finishes in time; stops when the client goes away
        await asyncio.sleep(0.05)
        yield b"\0"


async def _huge(head: bytes):
    yield head
    chunk = b"\0" * 65536
    for _ in range(1024):  # 64 MiB, sent without a Content-Length
        yield chunk




# Slack's payloads --------------------------------------------------------------------------------
_event_ids = itertools.count(1)
_ts_counter = itertools.count(1)


def new_ts() -> str:
    return f"{1750000000 + next(_ts_counter)}.{next(_ts_counter):06d}"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers Slack sends: X-Slack-Request-Timestamp and the v0 HMAC-SHA256 signature."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    base = f"v0:{timestamp}:".encode() + body
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={digest}",
            "Content-Type": "application/json"}


def event_callback(event: dict, *, event_id: str | None = None, team: str = TEAM) -> dict:
    """The Events API envelope around one event."""
    return {
        "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
        "team_id": team,
        "context_team_id": team,
        "context_enterprise_id": None,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_event_ids):010d}",
        "event_time": int(time.time()),
        "authorizations": [{"enterprise_id": None, "team_id": team, "user_id": BOT_USER, "is_bot": True,
                            "is_enterprise_install": False}],
        "is_ext_shared_channel": False,
        "event_context": "4-eyJldCI6Im1lc3NhZ2UiLCJ0aWQiOiJUMFRFU1QiLCJhaWQiOiJBMFRFU1QifQ",
    }


def _rich_text(text: str) -> list[dict]:
    return [{"type": "rich_text", "block_id": "b1", "elements": [
        {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}]}]


def dm_event(channel: str, text: str, *, user: str = "U1", ts: str | None = None, files: list[dict] | None = None,
             **extra: Any) -> dict:
    """A `message` event in a direct message (message.im), optionally with shared files."""
    ts = ts or new_ts()
    event = {"type": "message", "channel": channel, "user": user, "text": text, "ts": ts, "event_ts": ts,
             "channel_type": "im", "team": TEAM, "client_msg_id": str(uuid.uuid4()), "blocks": _rich_text(text)}
    if files:
        event.update(subtype="file_share", files=files, upload=False, display_as_bot=False)
    event.update(extra)
    return event


def mention_event(channel: str, text: str, *, user: str = "U1", ts: str | None = None,
                  thread_ts: str | None = None, files: list[dict] | None = None) -> dict:
    """An `app_mention` event (someone wrote @Snapdesk in a channel)."""
    ts = ts or new_ts()
    event = {"type": "app_mention", "user": user, "text": f"<@{BOT_USER}> {text}", "ts": ts, "channel": channel,
             "event_ts": ts, "team": TEAM, "client_msg_id": str(uuid.uuid4()),
             "blocks": _rich_text(text)}
    if thread_ts:
        event["thread_ts"] = thread_ts
    if files:
        event["files"] = files
    return event


def channel_message_event(channel: str, text: str, *, user: str = "U1", ts: str | None = None,
                          thread_ts: str | None = None) -> dict:
    """A `message` event in a public channel (message.channels)."""
    ts = ts or new_ts()
    event = {"type": "message", "channel": channel, "user": user, "text": text, "ts": ts, "event_ts": ts,
             "channel_type": "channel", "team": TEAM, "client_msg_id": str(uuid.uuid4())}
    if thread_ts:
        event["thread_ts"] = thread_ts
        event["parent_user_id"] = "U1"
    return event
