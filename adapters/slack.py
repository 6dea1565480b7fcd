"""The Slack channel: Events API over HTTP (`POST /slack/events`) or Socket Mode.

One event's trip:

1. HTTP: the raw body and headers are taken as they are (`to_events_request`) and the
   signature is checked with slack_sdk's `SignatureVerifier` (HMAC-SHA256 of
   `v0:{timestamp}:{body}`, five-minute window, constant-time compare) before the body is
   parsed; anything else is a 401. Socket Mode needs no signature: the connection itself
   is authenticated with the app-level token.
2. `url_verification` is answered with its challenge. An `event_callback` is classified:
   a direct message, a mention in a channel, or a follow-up in a thread the bot already
   answers; bot messages, the bot's own messages, edits and deletions are acknowledged and
   dropped without being stored.
3. A kept event is stored with `record_event("slack", "{team_id}:{event_id}", payload)`, and
   only then acknowledged (200, or the Socket Mode envelope ack). A redelivery of a stored
   event (Slack's retries) is acknowledged and not processed again; an event whose first
   delivery was never stored is simply stored now.
4. In the background the event becomes one `Inbound`: files are downloaded (size, origin
   and format checked; problems get a clear reply), the message is accepted by the manager
   (idempotent on `team:channel:ts`), the event is marked finished, and the turn is answered.
   Events stored but not finished (a crash) are processed again at start.

Conversation keys: `team:channel` for a direct message, `team:channel:thread_ts` for a thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier

from bot.language import detect_language
from bot.conversation import Accepted
from bot.messages import Inbound
from bot.settings import Settings
from bot.web.runtime import AdapterConfigError, Runtime

from .api_urls import api_url_problem
from .slack_api import (
    AUTH_ERRORS,
    FileFetcher,
    FileProblem,
    SlackApi,
    SlackCallError,
)
from .slack_channel import CHANNEL, SLACK_ID, TS, Place, SlackChannel, localized
from .slack_text import from_slack

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024  # Slack's event payloads are a few kilobytes
MAX_FILES = 10  # Slack attaches at most 10 files to a message
ACCEPTED_SUBTYPES = {None, "file_share", "thread_broadcast"}
USER_NAME_TTL_S = 3600.0
MAX_MENTIONED_THREADS = 10_000

FILE_NOTICE = {
    "too_big": {
        "en": "{name} is too large for me to open (the limit is {limit}). Could you send a smaller screenshot?",
        "zh": "{name} 太大了，我无法打开（上限为 {limit}）。能否发送一张小一些的截图？",
    },
    "not_image": {
        "en": "I can only read images (PNG, JPEG, GIF, WebP or BMP), so I skipped {name}.",
        "zh": "我只能读取图片（PNG、JPEG、GIF、WebP 或 BMP），因此跳过了 {name}。",
    },
    "unreadable": {"en": "I couldn't open {name}; could you send it again?", "zh": "我无法打开 {name}，能否重新发送一次？"},
}


def _megabytes(size: int) -> str:
    return f"{round(size / 1024 / 1024, 1):g} MB" if size >= 1024 * 1024 else f"{max(1, size // 1024)} KB"


# Thin HTTP adapter (the shape of bolt-python's to_bolt_request / to_starlette_response) -----------
@dataclass(frozen=True)
class EventsRequest:
    body: bytes
    headers: dict[str, str]  # lower-cased names

    @property
    def retry_num(self) -> int:
        value = self.headers.get("x-slack-retry-num", "0")
        return int(value) if value.isdigit() else 0


@dataclass(frozen=True)
class EventsResponse:
    status: int
    body: dict | None = None


async def to_events_request(request: Request, max_bytes: int = MAX_BODY_BYTES) -> EventsRequest | None:
    """The raw request, untouched (the signature covers the exact bytes); None when too large."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            return None
    return EventsRequest(bytes(body), {k.lower(): v for k, v in request.headers.items()})


def to_starlette_response(response: EventsResponse) -> Response:
    if response.body is None:
        return Response(status_code=response.status)
    return JSONResponse(response.body, status_code=response.status)


def parse_body(request: EventsRequest) -> dict | None:
    """The payload of a verified request: JSON events, or a form (ssl_check, interactivity)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        text = request.body.decode("utf-8")
        if content_type == "application/x-www-form-urlencoded":
            form = {k: v[0] for k, v in parse_qs(text).items()}
            return json.loads(form["payload"]) if "payload" in form else form
        payload = json.loads(text)
    except (UnicodeDecodeError, ValueError, KeyError):
        return None
    return payload if isinstance(payload, dict) else None


# Settings ---------------------------------------------------------------------------------------
def check_settings(settings: Settings) -> None:
    """Refuse unsafe or incomplete Slack settings (fail closed); one sentence per problem."""
    if not settings.slack_bot_token:
        raise AdapterConfigError(
            "Slack needs SNAPDESK_SLACK_BOT_TOKEN (the xoxb- bot token) besides the signing secret or app token."
        )
    if not settings.slack_bot_token.startswith("xoxb-"):
        raise AdapterConfigError("SNAPDESK_SLACK_BOT_TOKEN must be a bot token, starting with xoxb-.")
    if settings.slack_app_token and not settings.slack_app_token.startswith("xapp-"):
        raise AdapterConfigError("SNAPDESK_SLACK_APP_TOKEN must be an app-level token, starting with xapp-.")
    if not settings.slack_signing_secret and not settings.slack_app_token:
        raise AdapterConfigError(
            "Slack HTTP mode needs SNAPDESK_SLACK_SIGNING_SECRET to verify that events come from Slack "
            "(or set SNAPDESK_SLACK_APP_TOKEN for Socket Mode), so the server refuses to start without it."
        )
    problem = api_url_problem(settings.slack_api_url, "SNAPDESK_SLACK_API_URL", "https://slack.com/api/")
    if problem:
        raise AdapterConfigError(problem)
    if settings.slack_agent_channel and not SLACK_ID.match(settings.slack_agent_channel):
        raise AdapterConfigError(
            "SNAPDESK_SLACK_AGENT_CHANNEL must be a channel id such as C0123456789, not a channel name."
        )


def setup_slack(settings: Settings, runtime: Runtime) -> "SlackAdapter":
    check_settings(settings)
    if settings.slack_agent_channel and not settings.public_url:
        log.warning("SNAPDESK_PUBLIC_URL is not set: hand-over announcements in Slack will carry no console link")
    return SlackAdapter(settings, runtime)


# The adapter ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    """What an event means for Snapdesk: which conversation, where to answer, what was said."""

    team: str
    place: Place  # where replies go
    conversation_key: str
    ts: str
    user: str
    text: str
    files: tuple[dict, ...]

    @property
    def message_id(self) -> str:
        return f"{self.team}:{self.place.channel}:{self.ts}"


class SlackAdapter:
    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        self.settings = settings
        self.runtime = runtime
        self.api = SlackApi(settings.slack_bot_token, settings.slack_api_url)
        self.channel = SlackChannel(self.api, agent_channel=settings.slack_agent_channel,
                                    public_url=settings.public_url, user_name=self._user_name)
        self.fetcher = FileFetcher(settings.slack_bot_token, settings.slack_api_url, settings.image_max_bytes)
        self.verifier = SignatureVerifier(settings.slack_signing_secret) if settings.slack_signing_secret else None
        self.router: APIRouter | None = self._make_router() if self.verifier is not None else None
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.socket_client: Any = None
        self._intake_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._user_cache: dict[str, tuple[str, float]] = {}
        # Threads a mention has opened whose conversation may not be stored yet (a quick follow-up).
        self._mentioned_threads: OrderedDict[str, None] = OrderedDict()

    # Lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self._identify()
        # Events acknowledged but not finished later on (a failure after the acknowledgement)
        # are taken in again by the periodic round.
        self.runtime.manager.on_pending_events(CHANNEL, self._recover)
        pending = await self.runtime.manager.pending_events(CHANNEL)
        if pending:
            log.info("Slack: %d stored events were not finished; processing them now", len(pending))
            self.runtime.spawn(self._recover(pending))
        if self.settings.slack_app_token:
            await self._start_socket_mode()

    async def stop(self) -> None:
        if self.socket_client is not None:
            client, self.socket_client = self.socket_client, None
            await asyncio.to_thread(client.close)
        await self.fetcher.close()
        await self.api.close()

    async def _identify(self) -> None:
        """Who the bot is (auth.test): its own messages are never answered."""
        try:
            identity = await self.api.call("auth.test", attempts=3)
        except SlackCallError as exc:
            if exc.error in AUTH_ERRORS:
                raise AdapterConfigError(f"Slack rejected SNAPDESK_SLACK_BOT_TOKEN ({exc.error}).") from None
            log.warning("Slack auth.test failed (%s); the bot's identity is taken from events", exc.error)
            return
        self.bot_user_id, self.bot_id = identity.get("user_id"), identity.get("bot_id")
        log.info("Slack: connected to %s as %s", identity.get("team", "?"), identity.get("user", "?"))

    async def _recover(self, pending: list[dict]) -> None:
        """Take the events in, in their order, then answer them (turns of one thread run in order)."""
        for row in pending:
            try:
                accepted = await self._intake(row["event_key"], row["payload"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next round tries it again; the others go on
                log.warning("Slack: stored event %s failed again (%s)", row["event_key"], type(exc).__name__)
                continue
            if accepted is not None:
                self.runtime.spawn(self._answer(accepted))

    # HTTP mode --------------------------------------------------------------------------------
    def _make_router(self) -> APIRouter:
        router = APIRouter()

        @router.post("/slack/events", summary="Slack Events API endpoint (signed requests only)")
        async def slack_events(request: Request) -> Response:
            events_request = await to_events_request(request)
            if events_request is None:
                return to_starlette_response(EventsResponse(413, {"error": "request too large"}))
            return to_starlette_response(await self.handle(events_request))

        return router

    def verify(self, request: EventsRequest) -> bool:
        if self.verifier is None:
            return False
        try:
            return self.verifier.is_valid(
                request.body, request.headers.get("x-slack-request-timestamp"), request.headers.get("x-slack-signature")
            )
        except (ValueError, UnicodeDecodeError):  # a timestamp that is not a number, a body that is not text
            return False

    async def handle(self, request: EventsRequest) -> EventsResponse:
        if not self.verify(request):
            return EventsResponse(401, {"error": "invalid signature"})
        payload = parse_body(request)
        if payload is None:
            return EventsResponse(400, {"error": "unreadable payload"})
        if payload.get("type") == "url_verification":
            return EventsResponse(200, {"challenge": str(payload.get("challenge", ""))})
        if request.retry_num:
            log.info("Slack redelivery %d (%s)", request.retry_num, request.headers.get("x-slack-retry-reason", "?"))
        try:
            await self.receive(payload)
        except Exception:  # not stored: no acknowledgement, so Slack delivers it again
            log.exception("Slack event could not be stored")
            return EventsResponse(500, {"error": "not stored"})
        return EventsResponse(200)

    # Socket Mode ------------------------------------------------------------------------------
    async def _start_socket_mode(self) -> None:
        from slack_sdk import WebClient
        from slack_sdk.socket_mode.builtin import SocketModeClient

        # slack_sdk's threaded Socket Mode client (standard library only); events are handed to
        # this event loop and acknowledged once stored.
        self.socket_client = SocketModeClient(
            app_token=self.settings.slack_app_token,
            web_client=WebClient(base_url=self.api.base_url, timeout=15),
            logger=logging.getLogger("snapdesk.slack.socket"),
        )
        self.socket_client.socket_mode_request_listeners.append(self._on_socket_request)
        try:
            await asyncio.to_thread(self.socket_client.connect)
        except SlackApiError as exc:
            error = exc.response.get("error") if isinstance(exc.response.data, dict) else "?"
            if error in AUTH_ERRORS:
                raise AdapterConfigError(
                    f"Slack rejected SNAPDESK_SLACK_APP_TOKEN ({error}); it needs the connections:write scope."
                ) from None
            log.warning("Slack Socket Mode connection failed (%s); retrying in the background", error)
            self.runtime.spawn(self._keep_connecting())
        except Exception as exc:
            log.warning("Slack Socket Mode connection failed (%s); retrying in the background", type(exc).__name__)
            self.runtime.spawn(self._keep_connecting())

    async def _keep_connecting(self) -> None:
        delay = 2.0
        while self.socket_client is not None:
            await asyncio.sleep(delay)
            try:
                await asyncio.to_thread(self.socket_client.connect)
                log.info("Slack Socket Mode connected")
                return
            except Exception as exc:
                log.warning("Slack Socket Mode connection failed (%s)", type(exc).__name__)
                delay = min(delay * 2, 60.0)

    def _on_socket_request(self, client: Any, request: Any) -> None:
        """Runs on the socket client's worker thread: store on the loop, then acknowledge."""
        from slack_sdk.socket_mode.response import SocketModeResponse

        if request.type == "events_api" and isinstance(request.payload, dict):
            if request.retry_attempt:
                log.info("Slack redelivery %s (%s)", request.retry_attempt, request.retry_reason or "?")
            assert self.loop is not None
            future = asyncio.run_coroutine_threadsafe(self.receive(request.payload), self.loop)
            try:
                future.result(timeout=10)
            except Exception as exc:  # not stored: no ack, so Slack delivers it again
                log.error("Slack event could not be stored (%s); not acknowledged", type(exc).__name__)
                return
        client.send_socket_mode_response(SocketModeResponse(envelope_id=request.envelope_id))

    # Intake -----------------------------------------------------------------------------------
    async def receive(self, payload: dict) -> str:
        """Store a verified event callback and start processing it: stored / duplicate / ignored."""
        if payload.get("type") != "event_callback":
            return "ignored"
        route = await self.route(payload)
        if route is None:
            return "ignored"
        key = f"{route.team}:{payload.get('event_id')}"
        if not await self.runtime.manager.record_event(CHANNEL, key, payload):
            return "duplicate"  # a retry of an event already stored: it is (being) answered
        self.runtime.spawn(self._process(key, payload))
        return "stored"

    def _bot_user(self, payload: dict) -> str | None:
        if self.bot_user_id:
            return self.bot_user_id
        for authorization in payload.get("authorizations") or ():
            if isinstance(authorization, dict) and authorization.get("is_bot"):
                return authorization.get("user_id")
        return None

    async def route(self, payload: dict) -> Route | None:
        """Which conversation an event belongs to, or None for events Snapdesk does not answer."""
        event = payload.get("event")
        team = payload.get("team_id")
        if not isinstance(event, dict) or not isinstance(team, str) or not payload.get("event_id"):
            return None
        kind, channel, ts, user = event.get("type"), event.get("channel"), event.get("ts"), event.get("user")
        if kind not in ("message", "app_mention") or event.get("subtype") not in ACCEPTED_SUBTYPES:
            return None  # edits, deletions, joins, bot_message ...
        if event.get("bot_id") or event.get("bot_profile") or event.get("hidden"):
            return None
        bot_user = self._bot_user(payload)
        if not isinstance(user, str) or not user or user == bot_user:
            return None
        if not (isinstance(channel, str) and SLACK_ID.match(channel) and isinstance(ts, str) and TS.match(ts)):
            return None
        thread_ts = event.get("thread_ts")
        thread_ts = thread_ts if isinstance(thread_ts, str) and TS.match(thread_ts) else None
        if kind == "app_mention":
            place = Place(team, channel, thread_ts or ts)
            self._mentioned_threads[place.key()] = None
            while len(self._mentioned_threads) > MAX_MENTIONED_THREADS:
                self._mentioned_threads.popitem(last=False)
        elif event.get("channel_type") == "im":
            place = Place(team, channel)
        elif thread_ts and event.get("channel_type") in ("channel", "group"):
            place = Place(team, channel, thread_ts)
            manager = self.runtime.manager
            if place.key() not in self._mentioned_threads and await manager.db(
                manager.store.conversation_by_key, CHANNEL, place.key()
            ) is None:
                return None  # a thread the bot is not part of
        else:
            return None
        files = tuple(f for f in (event.get("files") or ()) if isinstance(f, dict))[:MAX_FILES]
        text = from_slack(event.get("text") or "", bot_user)
        return Route(team, place, place.key(), ts, user, text, files)

    @asynccontextmanager
    async def _intake_lock(self, key: str) -> AsyncIterator[None]:
        """Messages of one conversation are taken in one at a time, in arrival order."""
        lock, users = self._intake_locks.get(key) or (asyncio.Lock(), 0)
        self._intake_locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._intake_locks[key]
            if users == 1:
                del self._intake_locks[key]
            else:
                self._intake_locks[key] = (lock, users - 1)

    async def _process(self, event_key: str, payload: dict) -> None:
        """A stored event -> one stored Inbound -> the answer."""
        accepted = await self._intake(event_key, payload)
        if accepted is not None:
            await self._answer(accepted)

    async def _intake(self, event_key: str, payload: dict) -> Accepted | None:
        """Turn a stored event into a stored message and mark the event finished.

        Returns what to answer (None when there is nothing new); if anything fails, the event
        stays pending and is taken in again at the next start.
        """
        manager = self.runtime.manager
        try:
            route = await self.route(payload)
            accepted = None
            if route is not None:
                async with self._intake_lock(route.conversation_key):
                    known = await manager.db(manager.store.find_inbound, CHANNEL, route.message_id)
                    if known is None:  # the same message may come as app_mention and as message
                        inbound = await self._inbound(route)
                        if inbound is not None:
                            accepted = await manager.accept(inbound)
                    await manager.finish_event(CHANNEL, event_key)
            else:
                await manager.finish_event(CHANNEL, event_key)
            return accepted if accepted is not None and not accepted.duplicate else None
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Slack event %s could not be taken in; it is retried at the next start", event_key)
            return None

    async def _answer(self, accepted: Accepted) -> None:
        try:
            await self.runtime.process(accepted.message_id, accepted.conversation_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # the message is stored as pending: the manager's recovery answers it
            log.exception("answering Slack message %d failed", accepted.message_id)

    async def _inbound(self, route: Route) -> Inbound | None:
        images, problems = await self._download(route.files)
        language = detect_language(route.text)
        if problems:
            if not route.text.strip():
                manager = self.runtime.manager
                existing = await manager.db(manager.store.conversation_by_key, CHANNEL, route.conversation_key)
                language = (existing or {}).get("language") or "en"
            notice = "\n".join(
                localized(FILE_NOTICE[kind], language).format(name=name, limit=_megabytes(self.fetcher.max_bytes))
                for name, kind in problems
            )
            try:
                await self.channel.post_text(route.place, notice)
            except SlackCallError as exc:
                log.warning("Slack file notice failed: %s", exc.error)
        if not route.text.strip() and not images:
            return None  # nothing left to answer; the user was asked to send the file again
        return Inbound(
            channel=CHANNEL,
            conversation_key=route.conversation_key,
            message_id=route.message_id,
            user_id=route.user,
            user_name=await self._user_name(route.user),
            text=route.text,
            images=tuple(images),
            received_at=datetime.fromtimestamp(float(route.ts), timezone.utc),
        )

    async def _download(self, files: tuple[dict, ...]) -> tuple[list[bytes], list[tuple[str, str]]]:
        """The images among a message's files, in order, and (name, problem) for the others."""
        results = await asyncio.gather(*(self._download_one(f) for f in files))
        images = [r for r in results if isinstance(r, bytes)]
        problems = [(str(f.get("name") or f.get("title") or "the file"), r)
                    for f, r in zip(files, results) if isinstance(r, str)]
        return images, problems

    async def _download_one(self, file: dict) -> bytes | str:
        name = file.get("name") or file.get("id") or "file"
        try:
            if file.get("file_access") == "check_file_info" and file.get("id"):
                file = (await self.api.call("files.info", file=file["id"], attempts=2)).get("file") or file
            mimetype = str(file.get("mimetype") or "")
            if mimetype and not mimetype.startswith("image/"):
                return "not_image"
            size = file.get("size")
            if isinstance(size, int) and size > self.fetcher.max_bytes:
                return "too_big"
            url = file.get("url_private_download") or file.get("url_private")
            if not isinstance(url, str):
                return "unreadable"
            return await self.fetcher.fetch(url)
        except FileProblem as exc:
            log.info("Slack file %s: %s", name, exc)
            return exc.kind
        except SlackCallError as exc:
            log.info("Slack file %s: files.info failed (%s)", name, exc.error)
            return "unreadable"

    async def _user_name(self, user: str) -> str:
        """The user's display name (users.info, cached); empty when it cannot be had."""
        cached = self._user_cache.get(user)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        try:
            info = (await self.api.call("users.info", user=user, attempts=2)).get("user") or {}
        except SlackCallError as exc:
            log.info("Slack users.info failed: %s", exc.error)
            return cached[0] if cached else ""
        profile = info.get("profile") or {}
        name = str(profile.get("display_name") or profile.get("real_name") or info.get("real_name")
                   or info.get("name") or "")
        self._user_cache[user] = (name, time.monotonic() + USER_NAME_TTL_S)
        return name
