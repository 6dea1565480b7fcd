"""The agent console's API: the live queue, threads, claiming, replies, notes, search.

Every route needs a signed-in agent (or admin); every change needs the CSRF token and is
written to the audit log by the conversation core. Replies go back to the user's channel
through the same manager that answers for the bot. Operators read everything here (the
routes that only show things) to make regression cases of real turns, and change nothing:
they never claim, answer or hold a conversation.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, field_validator

from .. import queries
from ..accounts import Session
from ..context import attachment_ids
from ..store import CLAIMED, Store
from ..text import clean_user_text
from .auth import SESSION_COOKIE, console_page, current_session, require
from .console_events import session_is_open
from .params import FilterName, RowId
from .deps import RuntimeDep, ServerDep
from .screenshot_evidence import attachment_url, episode_summary, screenshot_view
from .stream_caps import CappedStreamingResponse, check_caps

AgentSession = Annotated[Session, Depends(require("agent"))]
ReaderSession = Annotated[Session, Depends(require("agent", reading=True))]
router = APIRouter(tags=["agent console"])
QUEUE_LIMIT = queries.QUEUE_LIMIT
# What each bot turn cost and how sure it was, shown under the bot's messages.
TURN_FIGURES = ("confidence", "prompt_tokens", "image_tokens", "completion_tokens", "latency_ms")
PREVIEW_CHARS = 140


class TextIn(BaseModel):
    text: str = Field(min_length=1, max_length=20_000)

    @field_validator("text")
    @classmethod
    def not_blank(cls, text: str) -> str:
        if not text.strip():  # a reply of spaces would reach the user as an empty message
            raise ValueError("The message is empty.")
        return text


def _not_found() -> HTTPException:
    return HTTPException(404, detail={"error": "not_found", "message": "No such conversation."})


def _screenshots(row: dict, views: dict[int, dict]) -> list[dict]:
    return [views[i] for i in attachment_ids(row) if i in views]


def queue_rows(store: Store, channel: str | None, reason: str | None) -> list[dict]:
    rows = queries.queue(store, channel, reason, QUEUE_LIMIT)
    out = []
    for row in rows:
        messages = queries.episode_user_messages(store, row["id"], row["episode"])
        first_image = next((i for m in messages for i in attachment_ids(m)), None)
        thumbnail = None
        if first_image is not None:
            found = store.attachments([first_image]).get(first_image)
            thumbnail = attachment_url(found) if found else None
        preview = next((m["text"] for m in reversed(messages) if m["text"]), "")
        out.append({
            "id": row["id"], "channel": row["channel"], "user_name": row["user_name"] or "",
            "user_id": row["user_id"] or "", "status": row["status"], "assigned_agent": row["assigned_agent"],
            "reason": row["reason"], "detail": row["detail"] or "", "confidence": row["confidence"],
            "waiting_since": row["escalated_at"] or row["updated_at"], "thumbnail": thumbnail,
            "preview": preview[:PREVIEW_CHARS],
        })
    return out


def thread(store: Store, conversation_id: int) -> dict | None:
    conversation = store.conversation(conversation_id)
    if conversation is None:
        return None
    rows = store.messages(conversation_id)
    views = {i: screenshot_view(found) for i, found in
             store.attachments({i for row in rows for i in attachment_ids(row)}).items()}
    escalations = store.escalations(conversation_id)
    escalation = store.open_escalation(conversation_id) or next(reversed(escalations), None)
    agent = conversation["assigned_agent"]
    shots = {row["id"]: _screenshots(row, views) for row in rows}
    reasons = _handover_reasons(rows, escalations)
    return {
        "id": conversation["id"], "channel": conversation["channel"], "user_name": conversation["user_name"] or "",
        "user_id": conversation["user_id"] or "", "status": conversation["status"],
        "assigned_agent": agent, "assigned_agent_name": store.display_name(agent) if agent else None,
        "language": conversation["language"],
        "escalation": None if escalation is None else {
            "reason": escalation["reason"], "detail": escalation["detail"] or "",
            "confidence": escalation["confidence"], "draft_answer": escalation["draft_answer"] or "",
            "created_at": escalation["created_at"],
            "screenshot_summary": episode_summary(rows, views, _episode_of(rows, escalation, conversation)),
        },
        "messages": [
            {
                "id": row["id"], "role": row["role"], "text": row["text"] or "", "author": row["author"] or "",
                "author_name": row["author_name"] or row["author"] or "",
                "kind": "user" if row["role"] == "user" else (row["kind"] or ("note" if row["role"] == "note" else "notice")),
                "images": [shot["url"] for shot in shots[row["id"]]], "screenshots": shots[row["id"]],
                "created_at": row["created_at"],
                "reply_to": row["reply_to"], "status_change": row["status_change"],
                **{figure: row[figure] for figure in TURN_FIGURES},
                "template_name": row["template_name"], "template_version": row["template_version"],
                "reason": reasons.get(row["id"]),
                "knowledge": json.loads(row["knowledge"]) if row.get("knowledge") else None,
                "delivered": row["delivered"] == 1 if row["role"] in ("bot", "agent", "system") else None,
                "withheld": row["delivered"] == -1,  # never sent: a person took over first
            }
            for row in rows
        ],
    }


def _handover_reasons(rows: list[dict], escalations: list[dict]) -> dict[int, str]:
    """Each hand-over notice's reason, by the notice's message id. A hand-over is recorded
    against the user message it was raised on: the one the notice replies to, or (a person
    asked for, with no bot turn) the newest user message before it. Rows and escalations
    come oldest first; each escalation belongs to one notice."""
    raised_on: dict[int | None, list[dict]] = {}
    for escalation in escalations:
        raised_on.setdefault(escalation["message_id"], []).append(escalation)
    reasons: dict[int, str] = {}
    last_user = None
    for row in rows:
        if row["role"] == "user":
            last_user = row["id"]
        elif row["kind"] == "handover":
            pending = raised_on.get(row["reply_to"] if row["reply_to"] is not None else last_user)
            if pending:
                reasons[row["id"]] = pending.pop(0)["reason"]
    return reasons


def _episode_of(rows: list[dict], escalation: dict, conversation: dict) -> int:
    """The episode a hand-over belongs to: that of the message it was raised on."""
    return next((row["episode"] for row in rows if row["id"] == escalation["message_id"]), conversation["episode"])


def _snippet(text: str, query: str, width: int = 60) -> str:
    at = text.lower().find(query.lower())
    if at < 0:
        return text[: width * 2]
    start = max(0, at - width)
    return ("…" if start else "") + text[start: at + len(query) + width] + ("…" if at + len(query) + width < len(text) else "")


def search(store: Store, query: str, limit: int = queries.SEARCH_LIMIT) -> list[dict]:
    query = query.strip()
    rows = queries.search_messages(store, query, limit)
    return [
        {"conversation_id": r["conversation_id"], "message_id": r["id"], "role": r["role"],
         "snippet": _snippet((r["text"] if r["screenshot"] is None else r["ocr_text"]) or "", query),
         "in_screenshot": r["screenshot"] is not None, "created_at": r["created_at"], "channel": r["channel"],
         "user_name": r["user_name"] or ""}
        for r in rows
    ]


@router.get("/agent", response_class=HTMLResponse, include_in_schema=False)
async def agent_page(session: Annotated[Session | None, Depends(current_session)]) -> Response:
    return console_page(session, "agent", "/agent", "agent.html")


@router.get("/agent/conversations/{conversation_id}", include_in_schema=False)
async def conversation_link(conversation_id: RowId,
                            session: Annotated[Session | None, Depends(current_session)]) -> Response:
    """A shareable address for one conversation (the page itself keeps it after the #)."""
    page = console_page(session, "agent", "/agent", "agent.html")
    if page.status_code != 200:  # not signed in, or not an agent: what /agent itself answers
        return page
    return RedirectResponse(f"/agent#/conversations/{conversation_id}", status_code=303)


@router.get("/agent/api/queue", summary="Conversations waiting for (or owned by) a person")
async def queue(runtime: RuntimeDep, session: ReaderSession, channel: FilterName = None,
                reason: FilterName = None) -> dict:
    return {"conversations": await runtime.manager.db(queue_rows, runtime.store, channel, reason)}


@router.get("/agent/api/conversations/{conversation_id}", summary="One conversation with everything in it")
async def conversation(conversation_id: RowId, runtime: RuntimeDep, session: ReaderSession) -> dict:
    found = await runtime.manager.db(thread, runtime.store, conversation_id)
    if found is None:
        raise _not_found()
    return found


async def _existing(runtime, conversation_id: int) -> dict:
    found = await runtime.manager.db(runtime.store.conversation, conversation_id)
    if found is None:
        raise _not_found()
    return found


def _is_admin(session: Session) -> bool:
    return session.user.role == "admin"


class TransferIn(BaseModel):
    agent: str = Field(min_length=1, max_length=200)


@router.post("/agent/api/conversations/{conversation_id}/claim", summary="Take a waiting conversation")
async def claim(conversation_id: RowId, runtime: RuntimeDep, session: AgentSession) -> dict:
    if not await runtime.manager.claim(conversation_id, session.user.name):
        found = await _existing(runtime, conversation_id)
        if found["status"] == CLAIMED and found["assigned_agent"] == session.user.name:
            return {"ok": True}  # a second click
        raise HTTPException(409, detail={"error": "claimed", "message": "Someone else has this conversation."}
                            if found["status"] == CLAIMED else
                            {"error": "not_waiting", "message": "This conversation is not waiting for a person."})
    return {"ok": True}


@router.post("/agent/api/conversations/{conversation_id}/reply", summary="Reply to the user on their channel")
async def reply(conversation_id: RowId, body: TextIn, runtime: RuntimeDep, session: AgentSession) -> dict:
    message_id = await runtime.manager.agent_reply(conversation_id, session.user.name, body.text, _is_admin(session))
    return {"message_id": message_id}


@router.post("/agent/api/conversations/{conversation_id}/note", summary="An internal note (agents only)")
async def note(conversation_id: RowId, body: TextIn, runtime: RuntimeDep, session: AgentSession) -> dict:
    return {"message_id": await runtime.manager.add_note(conversation_id, session.user.name, body.text,
                                                          _is_admin(session))}


@router.post("/agent/api/conversations/{conversation_id}/resolve", summary="Close the conversation")
async def resolve(conversation_id: RowId, runtime: RuntimeDep, session: AgentSession) -> dict:
    await runtime.manager.resolve(conversation_id, session.user.name, _is_admin(session))
    return {"ok": True}


@router.post("/agent/api/conversations/{conversation_id}/hand-back", summary="Let the bot answer again")
async def hand_back(conversation_id: RowId, runtime: RuntimeDep, session: AgentSession) -> dict:
    await runtime.manager.hand_back(conversation_id, session.user.name, _is_admin(session))
    return {"ok": True}


@router.post("/agent/api/conversations/{conversation_id}/transfer", summary="Give the conversation to another agent")
async def transfer(conversation_id: RowId, body: TransferIn, runtime: RuntimeDep, session: AgentSession) -> dict:
    target = await runtime.manager.db(runtime.accounts.user, body.agent)
    if target is None or not target.can("agent"):
        raise HTTPException(400, detail={"error": "no_such_agent", "message": "There is no active agent of that name."})
    await runtime.manager.transfer(conversation_id, session.user.name, target.name, _is_admin(session))
    return {"ok": True}


@router.get("/agent/api/agents", summary="Active agents a conversation can be transferred to")
async def agents(runtime: RuntimeDep, session: ReaderSession) -> dict:
    users = await runtime.manager.db(runtime.accounts.users)
    return {"agents": [{"name": u.name, "display_name": u.display_name, "role": u.role}
                       for u in users if u.can("agent")]}


@router.get("/agent/api/search", summary="Search past conversations by text")
async def search_route(runtime: RuntimeDep, session: ReaderSession, q: str = "") -> dict:
    q = clean_user_text(q[:200])  # stored text has no control characters; a NUL breaks the FTS query
    if not q.strip():
        return {"results": []}
    return {"results": await runtime.manager.db(search, runtime.store, q)}


@router.get("/agent/api/events", summary="Live updates (server-sent events)", response_class=StreamingResponse,
            description="Open streams are capped per session and in total: beyond a cap the answer is 429 "
                        "`too_many_streams` with Retry-After. The stream ends when its session does.")
async def events(request: Request, runtime: RuntimeDep, server: ServerDep, session: ReaderSession) -> StreamingResponse:
    hub = server.console_hub
    token = request.cookies.get(SESSION_COOKIE, "")
    caps = {("session", hashlib.sha256(token.encode()).hexdigest()): runtime.settings.console_streams_per_session}
    check_caps(server.stream_caps, caps)

    # Checked against the role the page was opened with: a reader whose role changes reconnects.
    reads_as = "agent" if session.user.can("agent") else session.user.role

    async def still_valid() -> bool:
        return await runtime.manager.db(session_is_open, runtime.accounts, token, reads_as)

    return CappedStreamingResponse(server.stream_caps, caps, hub.stream(request, session.user.name, token, still_valid),
                                   media_type="text/event-stream",
                                   headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/agent/api/attachments/{sha256}", summary="A screenshot", response_class=FileResponse)
async def attachment(sha256: str, runtime: RuntimeDep, session: ReaderSession):
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise HTTPException(404, detail={"error": "not_found", "message": "No such image."})
    path = await runtime.manager.db(queries.attachment_path, runtime.store, sha256)
    if path is None or not path.is_file():
        raise HTTPException(404, detail={"error": "not_found", "message": "No such image."})
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})
