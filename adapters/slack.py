"""The Slack channel on slack-bolt: Events API over HTTP (`POST /slack/events`) or Socket Mode.

One event's trip:

1. bolt reads the request: over HTTP through its Starlette adapter, whose `AsyncRequestVerification`
   checks the signature (HMAC-SHA256 of `v0:{timestamp}:{body}`, five-minute window,
   constant-time compare; anything else is a 401), and answers `url_verification` with its
   challenge; over Socket Mode through `AsyncSocketModeHandler` (the connection itself is
   authenticated with the app-level token). A signed body bolt cannot read is a 400.
2. bolt's listeners and matchers pick the events Snapdesk answers: a direct message, a mention
   in a channel, or a follow-up in a thread the bot already answers. Bot messages, the bot's
   own messages (bolt's `IgnoringSelfEvents`), edits and deletions are acknowledged and
   dropped without being stored.
3. The app runs with `process_before_response=True`: a kept event is stored with
   `record_event("slack", "{team_id}:{event_id}", payload)` inside the listener, and only then
   acknowledged (200, or the Socket Mode envelope ack). If storing fails the listener raises,
   bolt answers 500 (no ack), and Slack delivers the event again. A redelivery of a stored
   event is acknowledged and not processed again.
4. In the background the event becomes one `Inbound`: files are downloaded (size, origin
   and format checked; problems get a clear reply), the message is accepted by the manager
   (idempotent on `team:channel:ts`), the event is marked finished, and the turn is answered.
   Events stored but not finished (a crash) are processed again at start.

The bot's identity comes from `auth.test` at start; bolt gets it through `authorize`, so an
event that arrives while Slack cannot say who the bot is gets a 500 and comes again, instead
of being acknowledged unanswered (what bolt's single-workspace authorization would do).

Conversation keys: `team:channel` for a direct message, `team:channel:thread_ts` for a thread.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.starlette.async_handler import to_async_bolt_request, to_starlette_response
from slack_bolt.async_app import AsyncApp, AsyncBoltRequest
from slack_bolt.authorization import AuthorizeResult
from slack_sdk.signature import SignatureVerifier

from bot.language import detect_language
from bot.conversation import Accepted
from bot.keyed_locks import KeyedLocks
from bot.messages import Inbound
from bot.gateway import AdapterConfigError, Gateway
from bot.settings import Settings

from .api_urls import api_url_problem
from .slack_api import (
    AUTH_ERRORS,
    FileFetcher,
    FileProblem,
    SlackApi,
    SlackCallError,
    retry_handlers,
    web_client,
)
from .slack_channel import CHANNEL, SLACK_ID, TS, Place, SlackChannel, localized
from .slack_text import from_slack

log = logging.getLogger(__name__)

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


def setup_slack(settings: Settings, gateway: Gateway) -> "SlackAdapter":
    check_settings(settings)
    if settings.slack_agent_channel and not settings.public_url:
        log.warning("SNAPDESK_PUBLIC_URL is not set: hand-over announcements in Slack will carry no console link")
    return SlackAdapter(settings, gateway)


# What an event means -----------------------------------------------------------------------------
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
    in_thread: bool  # a follow-up in a channel thread: answered only where the bot takes part

    @property
    def message_id(self) -> str:
        return f"{self.team}:{self.place.channel}:{self.ts}"


def bot_user_of(payload: dict, known: str | None) -> str | None:
    if known:
        return known
    for authorization in payload.get("authorizations") or ():
        if isinstance(authorization, dict) and authorization.get("is_bot"):
            return authorization.get("user_id")
    return None


def route_of(payload: dict, bot_user: str | None) -> Route | None:
    """Which conversation an event belongs to, or None for events Snapdesk does not answer."""
    event = payload.get("event")
    team = payload.get("team_id")
    if payload.get("type") != "event_callback" or not isinstance(event, dict) or not isinstance(team, str) \
            or not payload.get("event_id"):
        return None
    kind, channel, ts, user = event.get("type"), event.get("channel"), event.get("ts"), event.get("user")
    if kind not in ("message", "app_mention") or event.get("subtype") not in ACCEPTED_SUBTYPES:
        return None  # edits, deletions, joins, bot_message ...
    if event.get("bot_id") or event.get("bot_profile") or event.get("hidden"):
        return None
    if not isinstance(user, str) or not user or user == bot_user:
        return None
    if not (isinstance(channel, str) and SLACK_ID.match(channel) and isinstance(ts, str) and TS.match(ts)):
        return None
    thread_ts = event.get("thread_ts")
    thread_ts = thread_ts if isinstance(thread_ts, str) and TS.match(thread_ts) else None
    in_thread = False
    if kind == "app_mention":
        place = Place(team, channel, thread_ts or ts)
    elif event.get("channel_type") == "im":
        place = Place(team, channel)
    elif thread_ts and event.get("channel_type") in ("channel", "group"):
        place, in_thread = Place(team, channel, thread_ts), True
    else:
        return None
    files = tuple(f for f in (event.get("files") or ()) if isinstance(f, dict))[:MAX_FILES]
    text = from_slack(event.get("text") or "", bot_user)
    return Route(team, place, place.key(), ts, user, text, files, in_thread)


# The adapter ------------------------------------------------------------------------------------
class SlackAdapter:
    def __init__(self, settings: Settings, gateway: Gateway) -> None:
        self.settings = settings
        self.gateway = gateway
        self.api = SlackApi(settings.slack_bot_token, settings.slack_api_url)
        self.channel = SlackChannel(self.api, agent_channel=settings.slack_agent_channel,
                                    public_url=settings.public_url, user_name=self._user_name)
        self.fetcher = FileFetcher(settings.slack_bot_token, settings.slack_api_url, settings.image_max_bytes)
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None
        self.team_id: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.app = self._make_app()
        self.router: APIRouter | None = self._make_router() if settings.slack_signing_secret else None
        self.socket: AsyncSocketModeHandler | None = None
        self._connecting: asyncio.Task | None = None
        self._intake_locks = KeyedLocks()  # messages of one conversation are taken in in arrival order
        self._user_cache: dict[str, tuple[str, float]] = {}
        # Threads a mention has opened whose conversation may not be stored yet (a quick follow-up).
        self._mentioned_threads: OrderedDict[str, None] = OrderedDict()

    # Lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self._identify()
        if self.settings.slack_app_token:
            await self._start_socket_mode()
        # Events acknowledged but not finished later on (a failure after the acknowledgement)
        # are taken in again by the periodic round.
        self.gateway.on_pending_events(CHANNEL, self._recover)
        pending = await self.gateway.pending_events(CHANNEL)
        if pending:
            log.info("Slack: %d stored events were not finished; processing them now", len(pending))
            self.gateway.spawn(self._recover(pending))

    async def stop(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self.socket is not None:
            socket, self.socket = self.socket, None
            await socket.close_async()
        await self.fetcher.close()
        await self.api.close()

    async def _identify(self) -> None:
        """Who the bot is (auth.test): its own messages are never answered."""
        try:
            identity = await self.api.call("auth.test")
        except SlackCallError as exc:
            if exc.error in AUTH_ERRORS:
                raise AdapterConfigError(f"Slack rejected SNAPDESK_SLACK_BOT_TOKEN ({exc.error}).") from None
            log.warning("Slack auth.test failed (%s); asked again at the next event", exc.error)
            return
        self.bot_user_id, self.bot_id = identity.get("user_id"), identity.get("bot_id")
        self.team_id = identity.get("team_id")
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
                self.gateway.spawn(self._answer(accepted))

    # bolt -------------------------------------------------------------------------------------
    def _make_app(self) -> AsyncApp:
        secret = self.settings.slack_signing_secret
        app = AsyncApp(
            logger=logging.getLogger("adapters.slack.bolt"),
            process_before_response=True,  # store the event, then acknowledge it
            signing_secret=secret or None,
            request_verification_enabled=bool(secret),
            authorize=lambda: self._authorize(),
            # Only for bolt's own calls (none today): Snapdesk calls Slack through self.api.
            client=web_client(None, self.api.base_url, retry_handlers(3, 30.0, self.api.backoff)),
        )

        # bolt passes listeners and matchers the arguments they name (bound methods would get `self` too).
        async def kept(body: dict) -> bool:
            return self._route(body) is not None

        async def direct(event: dict) -> bool:
            return event.get("channel_type") == "im"

        async def in_bot_thread(body: dict) -> bool:
            return await self._in_bot_thread(body)

        async def store(body: dict, request: AsyncBoltRequest) -> None:
            await self._on_event(body, request)

        async def drop() -> None:
            """Every other event is acknowledged (so Slack does not deliver it again) and dropped."""

        app.event("app_mention", matchers=[kept])(store)
        app.event("message", matchers=[kept, direct])(store)
        app.event("message", matchers=[kept, in_bot_thread])(store)
        app.event(re.compile(".*"))(drop)
        return app

    async def _authorize(self) -> AuthorizeResult:
        if self.bot_user_id is None:
            await self._identify()
            if self.bot_user_id is None:  # a 500: Slack delivers the event again later
                raise SlackCallError("auth.test", "identity unknown")
        return AuthorizeResult(enterprise_id=None, team_id=self.team_id, bot_token=self.settings.slack_bot_token,
                               bot_id=self.bot_id, bot_user_id=self.bot_user_id)

    def _route(self, payload: dict) -> Route | None:
        return route_of(payload, bot_user_of(payload, self.bot_user_id))

    async def _in_bot_thread(self, body: dict) -> bool:
        """A follow-up in a channel thread that a mention opened or that has a conversation."""
        route = self._route(body)
        if route is None or not route.in_thread:
            return False
        if route.conversation_key in self._mentioned_threads:
            return True
        return await self.gateway.conversation_language(CHANNEL, route.conversation_key) is not None

    async def _on_event(self, body: dict, request: AsyncBoltRequest) -> None:
        retry = (request.headers.get("x-slack-retry-num") or ["0"])[0]
        if retry not in ("", "0"):
            reason = (request.headers.get("x-slack-retry-reason") or ["?"])[0]
            log.info("Slack redelivery %s (%s)", retry, reason)
        await self.receive(body)  # raises when not stored: bolt answers 500, Slack delivers again

    # HTTP mode --------------------------------------------------------------------------------
    def _make_router(self) -> APIRouter:
        router = APIRouter()
        verifier = SignatureVerifier(self.settings.slack_signing_secret)

        @router.post("/slack/events", summary="Slack Events API endpoint (signed requests only)")
        async def slack_events(request: Request) -> Response:
            body = await request.body()  # at most 1 MiB (the body limits of /slack/)
            timestamp = request.headers.get("x-slack-request-timestamp", "")
            if not timestamp.isdigit():  # bolt's verification would fail with a 500 on a word
                return JSONResponse({"error": "invalid signature"}, status_code=401)
            try:
                bolt_request = to_async_bolt_request(request, body)
            except Exception:  # not UTF-8, not JSON, not an object, fields of the wrong type
                try:
                    signed = verifier.is_valid(body, timestamp, request.headers.get("x-slack-signature"))
                except (ValueError, UnicodeDecodeError):  # the signature covers UTF-8 text only
                    signed = False
                if not signed:
                    return JSONResponse({"error": "invalid signature"}, status_code=401)
                return JSONResponse({"error": "unreadable payload"}, status_code=400)
            return to_starlette_response(await self.app.async_dispatch(bolt_request))

        return router

    # Socket Mode ------------------------------------------------------------------------------
    async def _start_socket_mode(self) -> None:
        """Check the app-level token, then let slack_sdk connect (and reconnect) in the background.

        slack_sdk's client retries a failed connection by itself, forever, so a token Slack
        rejects is found out first, with one `apps.connections.open`, to refuse the start.
        """
        self.socket = AsyncSocketModeHandler(self.app, self.settings.slack_app_token,
                                             logger=logging.getLogger("adapters.slack.socket"),
                                             web_client=self.api.client)
        try:
            await self.api.call("apps.connections.open", quick=True, app_token=self.settings.slack_app_token)
        except SlackCallError as exc:
            if exc.error in AUTH_ERRORS:
                raise AdapterConfigError(
                    f"Slack rejected SNAPDESK_SLACK_APP_TOKEN ({exc.error}); it needs the connections:write scope."
                ) from None
            log.warning("Slack Socket Mode is not reachable yet (%s); connecting in the background", exc.error)
        self._connecting = asyncio.create_task(self.socket.connect_async())

    # Intake -----------------------------------------------------------------------------------
    async def receive(self, payload: dict) -> str:
        """Store an event callback bolt has verified and start processing it: stored / duplicate / ignored."""
        route = self._route(payload)
        if route is None:
            return "ignored"
        if (payload.get("event") or {}).get("type") == "app_mention":
            self._mentioned_threads[route.conversation_key] = None
            while len(self._mentioned_threads) > MAX_MENTIONED_THREADS:
                self._mentioned_threads.popitem(last=False)
        key = f"{route.team}:{payload.get('event_id')}"
        if not await self.gateway.record_event(CHANNEL, key, payload):
            return "duplicate"  # a retry of an event already stored: it is (being) answered
        self.gateway.spawn(self._process(key, payload))
        return "stored"

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
        try:
            route = self._route(payload)
            accepted = None
            if route is not None:
                async with self._intake_locks(route.conversation_key):
                    # the same message may come as app_mention and as message
                    if not await self.gateway.knows_message(CHANNEL, route.message_id):
                        inbound = await self._inbound(route)
                        if inbound is not None:
                            accepted = await self.gateway.accept(inbound)
                    await self.gateway.finish_event(CHANNEL, event_key)
            else:
                await self.gateway.finish_event(CHANNEL, event_key)
            return accepted if accepted is not None and not accepted.duplicate else None
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Slack event %s could not be taken in; it is retried at the next start", event_key)
            return None

    async def _answer(self, accepted: Accepted) -> None:
        try:
            await self.gateway.answer(accepted)
        except asyncio.CancelledError:
            raise
        except Exception:  # the message is stored as pending: the manager's recovery answers it
            log.exception("answering Slack message %d failed", accepted.message_id)

    async def _inbound(self, route: Route) -> Inbound | None:
        images, problems = await self._download(route.files)
        language = detect_language(route.text)
        if problems:
            if not route.text.strip():
                language = await self.gateway.conversation_language(CHANNEL, route.conversation_key) or "en"
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
                file = (await self.api.call("files.info", quick=True, file=file["id"])).get("file") or file
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
            info = (await self.api.call("users.info", quick=True, user=user)).get("user") or {}
        except SlackCallError as exc:
            log.info("Slack users.info failed: %s", exc.error)
            return cached[0] if cached else ""
        profile = info.get("profile") or {}
        name = str(profile.get("display_name") or profile.get("real_name") or info.get("real_name")
                   or info.get("name") or "")
        self._user_cache[user] = (name, time.monotonic() + USER_NAME_TTL_S)
        return name
