"""The widget's HTTP API: sessions, messages, history, hand-over, feedback and event streams.

Messages are stored before the POST is acknowledged, keyed by the client's own message id,
so a retried POST is never answered twice. Every route checks the page's origin and the
client's rate; the visitor is the one named by the signed token (`adapters.widget`), whose
`WidgetChannel` carries replies to the visitor's open event streams.
"""

from __future__ import annotations

import logging
import re
import secrets
from typing import Annotated, Any, AsyncIterator

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from adapters.widget import CHANNEL, WidgetChannel, issue_token, verify_token
from bot.context import attachment_ids
from bot.knowledge.retrieval import stored_sources
from bot.messages import Inbound
from bot.queries import ChannelReads
from bot.text import clean_user_text

from .client_address import client_key
from .event_stream import live_events, sse
from ..runtime import Runtime
from .deps import RuntimeDep, ServerDep
from .stream_caps import CappedStreamingResponse, check_caps

log = logging.getLogger(__name__)

TOKEN_MAX_CHARS = 200  # "v1." + 32 hex + a timestamp + 43 of signature: about 90
CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{8,100}$")
MAX_FEEDBACK_CHARS = 1000


# HTTP API --------------------------------------------------------------------------------
class ApiError(HTTPException):
    """An error the widget shows to the visitor: a stable code and a readable message."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        super().__init__(status, detail={"error": code, "message": message}, headers=headers)


class SessionOut(BaseModel):
    token: str
    visitor_id: str


class ConfigOut(BaseModel):
    max_images: int
    max_image_bytes: int
    max_text_chars: int
    demo: bool
    banner: str | None


class SourceOut(BaseModel):
    n: int  # the number the answer cites it by: [n]
    title: str
    url: str  # "" when the article has no address of its own: the widget links to /help/{article_id}
    article_id: int


class MessageOut(BaseModel):
    id: int | None
    role: str
    kind: str
    text: str
    author: str
    images: list[str]
    created_at: str
    client_message_id: str | None
    reply_to: int | None
    status: str | None = None  # kind "status": the new owner
    sources: list[SourceOut] = []  # kind "answer": the help-centre articles it cites


class ConversationOut(BaseModel):
    status: str
    agent: str | None  # the display name of the agent who has it
    messages: list[MessageOut]
    working: bool = False  # the bot is still answering one of the visitor's messages
    feedback_requested: bool = False  # resolved, and the visitor has not said yet whether it helped


class FeedbackIn(BaseModel):
    helpful: bool
    comment: str = Field("", max_length=MAX_FEEDBACK_CHARS)


class AcceptedOut(BaseModel):
    message_id: int
    duplicate: bool
    client_message_id: str


def _too_many(retry_after: float) -> ApiError:
    seconds = max(1, int(retry_after + 0.999))
    return ApiError(
        429, "rate_limited", f"Too many messages. Please wait {seconds} seconds and try again.",
        headers={"Retry-After": str(seconds)},
    )


async def check_origin_and_rate(request: Request, runtime: RuntimeDep, server: ServerDep) -> None:
    """Refuse pages on origins that may not embed the widget, and over-eager clients."""
    origin = request.headers.get("origin")
    if origin is not None:
        own = f"{request.url.scheme}://{request.url.netloc}"
        allowed = set(runtime.settings.allowed_origins) | {own}
        if origin.rstrip("/") not in allowed:
            raise ApiError(403, "origin_not_allowed", "This site may not use the support chat.")
    retry = server.widget_limits.ip.check(client_key(request))
    if retry is not None:
        raise _too_many(retry)


async def visitor_id(
    server: ServerDep,
    authorization: Annotated[str | None, Header()] = None,
) -> str:
    token = authorization[7:] if authorization and authorization.lower().startswith("bearer ") else ""
    visitor = verify_token(server.secret_key, token.strip()) if token else None
    if visitor is None:
        raise ApiError(401, "bad_token", "Your chat session has expired. Please reload the page.")
    return visitor


Visitor = Annotated[str, Depends(visitor_id)]
router = APIRouter(prefix="/widget/api", tags=["widget"], dependencies=[Depends(check_origin_and_rate)])


@router.get("/config", response_model=ConfigOut, summary="Limits and demo banner for the widget")
async def config(runtime: RuntimeDep, server: ServerDep) -> ConfigOut:
    settings = runtime.settings
    return ConfigOut(
        max_images=settings.widget_max_images,
        max_image_bytes=settings.image_max_bytes,
        max_text_chars=settings.widget_max_text_chars,
        demo=server.demo_banner is not None,
        banner=server.demo_banner,
    )


@router.post("/session", response_model=SessionOut, summary="Get (or keep) an anonymous visitor token")
async def session(server: ServerDep, authorization: Annotated[str | None, Header()] = None) -> SessionOut:
    if authorization and authorization.lower().startswith("bearer "):
        token = authorization[7:].strip()
        existing = verify_token(server.secret_key, token)
        if existing is not None:
            return SessionOut(token=token, visitor_id=existing)
    new_id = secrets.token_hex(16)
    return SessionOut(token=issue_token(server.secret_key, new_id), visitor_id=new_id)


def _attachment_url(sha256: str, token: str) -> str:
    """Relative, so it holds behind a reverse proxy; the widget resolves it against its server."""
    return f"/widget/api/attachments/{sha256}?token={token}"


def _reads(runtime: RuntimeDep) -> ChannelReads:
    """What the widget may read of its visitors' conversations (run on the database thread)."""
    return ChannelReads(runtime.manager, CHANNEL)


Reads = Annotated[ChannelReads, Depends(_reads)]


@router.get("/conversation", response_model=ConversationOut, summary="The visitor's conversation so far")
async def conversation(reads: Reads, visitor: Visitor,
                       authorization: Annotated[str, Header()]) -> ConversationOut:
    token = authorization[7:].strip()
    found, rows, attachments = await reads.history(visitor)
    if found is None:
        return ConversationOut(status="bot", agent=None, messages=[])
    messages = [_message_out(row, attachments, token) for row in rows]
    working = found["status"] == "bot" and any(row["role"] == "user" and row["status"] == "pending" for row in rows)
    return ConversationOut(status=found["status"], agent=found["agent_name"], messages=messages, working=working,
                           feedback_requested=found["feedback_requested"])


@router.post("/handover", summary="Ask for a person (the widget's \"Talk to a person\")")
async def handover(runtime: RuntimeDep, reads: Reads, visitor: Visitor) -> dict:
    if await reads.conversation(visitor) is None:
        raise ApiError(409, "no_conversation", "Please write your question first, then ask for a person.")
    if not await runtime.manager.agents.ask_for_person(CHANNEL, visitor):
        raise ApiError(409, "already_with_person", "A person from our support team already has your conversation.")
    return {"ok": True}


@router.post("/feedback", summary="Say whether a resolved conversation solved the problem")
async def feedback(body: FeedbackIn, runtime: RuntimeDep, visitor: Visitor) -> dict:
    if not await runtime.manager.agents.record_feedback(CHANNEL, visitor, body.helpful, clean_user_text(body.comment).strip()):
        raise ApiError(409, "nothing_to_rate", "There is no resolved conversation to rate, or you rated it already.")
    return {"ok": True}


def _message_out(row: dict, attachments: dict, token: str) -> MessageOut:
    kind = "user" if row["role"] == "user" else (row.get("kind") or "notice")
    images = [_attachment_url(attachments[i].sha256, token) for i in attachment_ids(row) if i in attachments]
    client_id = row["platform_message_id"].split(":", 1)[1] if row["role"] == "user" and row["platform_message_id"] else None
    return MessageOut(
        id=row["id"], role=row["role"], kind=kind, text=row["text"] or "",
        author=row.get("author_name") or row.get("author") or "",
        images=images, created_at=row["created_at"], client_message_id=client_id, reply_to=row.get("reply_to"),
        status=row.get("status_change"), sources=list(stored_sources(row.get("knowledge"))),
    )


async def _read_images(form: Any, runtime: Runtime) -> list[bytes]:
    files = [value for key, value in form.multi_items() if key == "images" and hasattr(value, "read")]
    if len(files) > runtime.settings.widget_max_images:
        raise ApiError(413, "too_many_images", f"Please send at most {runtime.settings.widget_max_images} images at a time.")
    images = []
    limit = runtime.settings.image_max_bytes
    for upload in files:
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, "too_large", f"That image is too large (limit {limit // (1024 * 1024)} MB).")
        images.append(data)
    return images


@router.post("/messages", status_code=202, response_model=AcceptedOut,
             summary="Send a message with optional screenshots (multipart/form-data)",
             description="Fields: `client_message_id` (8-100 characters of A-Z a-z 0-9 _ -, reused when retrying), "
                         "`text`, and one `images` file per screenshot. The message is stored before this answers; "
                         "the reply arrives on the event stream.")
async def post_message(request: Request, runtime: RuntimeDep, server: ServerDep, reads: Reads,
                       visitor: Visitor) -> AcceptedOut:
    settings = runtime.settings  # the body's size is bounded while it streams (bot.web.body_limits)
    retry = server.widget_limits.visitor.check(visitor)
    if retry is not None:
        raise _too_many(retry)
    try:
        form = await request.form(max_files=settings.widget_max_images + 1, max_fields=20,
                                  max_part_size=settings.image_max_bytes + 1)
    except HTTPException:
        raise
    except Exception as exc:
        if re.search(r"maximum|too many", str(exc), re.IGNORECASE):
            raise ApiError(413, "too_large", "That message is too large. Please send smaller screenshots.") from None
        raise ApiError(400, "bad_request", "That message could not be read. Please try again.") from None
    client_id = str(form.get("client_message_id") or "")
    if not CLIENT_ID.fullmatch(client_id):
        raise ApiError(400, "bad_request", "client_message_id must be 8 to 100 letters, digits, '-' or '_'.")
    text = str(form.get("text") or "")
    if len(text) > settings.widget_max_text_chars:
        raise ApiError(413, "text_too_long", f"Please keep messages under {settings.widget_max_text_chars} characters.")
    images = await _read_images(form, runtime)
    if not clean_user_text(text).strip() and not images:  # control characters alone are nothing
        raise ApiError(400, "empty", "Please type a message or attach a screenshot.")
    inbound = Inbound(channel=CHANNEL, conversation_key=visitor, message_id=f"{visitor}:{client_id}",
                      user_id=visitor, user_name=f"Visitor {visitor[:6]}", text=text, images=tuple(images))
    accepted = await runtime.manager.accept(inbound)
    if not accepted.duplicate:
        # The visitor's other open tabs show the message before its reply arrives.
        row, attachments = await reads.message(accepted.message_id)
        token = request.headers.get("authorization", "")[7:].strip()
        server.widget_channel.publish(visitor, "message", _message_out(row, attachments, token).model_dump())
        runtime.gateway.answer_later(accepted)
    return AcceptedOut(message_id=accepted.message_id, duplicate=accepted.duplicate, client_message_id=client_id)


@router.get("/events", summary="Server-sent events: message, delta and status",
            response_class=StreamingResponse,
            description="Open streams are capped per visitor, per address and in total: beyond a cap the answer is "
                        "429 `too_many_streams` with Retry-After, before the stream starts.")
async def events(request: Request, runtime: RuntimeDep, server: ServerDep, reads: Reads,
                 token: Annotated[str, Query(max_length=TOKEN_MAX_CHARS)]) -> StreamingResponse:
    visitor = verify_token(server.secret_key, token)
    if visitor is None:
        raise ApiError(401, "bad_token", "Your chat session has expired. Please reload the page.")
    settings = runtime.settings
    caps = {("visitor", visitor): settings.widget_streams_per_visitor,
            ("ip", client_key(request)): settings.widget_streams_per_ip}
    check_caps(server.stream_caps, caps)
    channel: WidgetChannel = server.widget_channel
    found = await reads.conversation(visitor)

    async def stream() -> AsyncIterator[str]:
        queue = channel.subscribe(visitor)  # only once the stream runs: an unsent response holds nothing
        opening = [sse("status", {"status": found["status"], "agent": found["agent_name"]})] if found else []
        try:
            async for line in live_events(request, queue, opening=opening):
                yield line
        finally:
            channel.unsubscribe(visitor, queue)

    return CappedStreamingResponse(server.stream_caps, caps, stream(), media_type="text/event-stream",
                                   headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/attachments/{sha256}", summary="A screenshot from the visitor's own conversation",
            response_class=FileResponse)
async def attachment(server: ServerDep, reads: Reads, sha256: str, token: Annotated[str, Query()]):
    visitor = verify_token(server.secret_key, token)
    if visitor is None:
        raise ApiError(401, "bad_token", "Your chat session has expired. Please reload the page.")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ApiError(404, "not_found", "No such image.")
    found = await reads.attachment(visitor, sha256)
    if found is None or not found.path.is_file():
        raise ApiError(404, "not_found", "No such image.")
    return FileResponse(found.path, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


def api_error_response(request: Request, exc: HTTPException) -> JSONResponse:
    """Widget errors as flat JSON ({"error", "message"}) instead of FastAPI's {"detail": ...}."""
    if isinstance(exc.detail, dict) and "error" in exc.detail:
        return JSONResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
    return JSONResponse({"error": "http_error", "message": str(exc.detail)}, status_code=exc.status_code,
                        headers=exc.headers)
