"""User management for admins: list, add and disable console accounts, set display names."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from ..accounts import AccountError, NoSuchUser, Session, User
from .auth import require
from .runtime import RuntimeDep

AdminSession = Annotated[Session, Depends(require("admin"))]
router = APIRouter(tags=["admin"])


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    role: Literal["agent", "operator", "admin"]
    password: str = Field(min_length=1, max_length=1024)
    display_name: str | None = Field(default=None, max_length=1000)


class DisplayNameIn(BaseModel):
    display_name: str = Field(max_length=1000)


def _user_out(user: User) -> dict:
    return {"name": user.name, "role": user.role, "disabled": user.disabled, "display_name": user.display_name}


@router.get("/admin/api/users", summary="Console accounts")
async def users(runtime: RuntimeDep, session: AdminSession) -> dict:
    found = await runtime.manager.db(runtime.accounts.users)
    return {"users": [_user_out(u) for u in found]}


@router.post("/admin/api/users", summary="Add a console account")
async def add_user(body: UserIn, runtime: RuntimeDep, session: AdminSession) -> dict:
    try:
        user = await runtime.manager.db(runtime.accounts.add_user, body.name, body.role, body.password,
                                        session.user.name, body.display_name)
    except AccountError as exc:
        raise HTTPException(422, detail={"error": "invalid_user", "message": str(exc)}) from None
    return _user_out(user)


@router.post("/admin/api/users/{name}/display-name", summary="Set the name users see on an agent's replies")
async def set_display_name(name: str, body: DisplayNameIn, runtime: RuntimeDep, session: AdminSession) -> dict:
    try:
        user = await runtime.manager.db(runtime.accounts.set_display_name, name, body.display_name,
                                        session.user.name)
    except NoSuchUser as exc:
        raise HTTPException(404, detail={"error": "not_found", "message": str(exc)}) from None
    except AccountError as exc:
        raise HTTPException(400, detail={"error": "invalid_display_name", "message": str(exc)}) from None
    return _user_out(user)


@router.post("/admin/api/users/{name}/disable",
             summary="Disable an account, end its sessions and put its conversations back in the queue")
async def disable_user(name: str, runtime: RuntimeDep, session: AdminSession) -> dict:
    if name == session.user.name:
        raise HTTPException(409, detail={"error": "self", "message": "You cannot disable your own account."})
    try:
        released = await runtime.manager.db(runtime.accounts.disable_user, name, session.user.name)
    except AccountError as exc:
        raise HTTPException(404, detail={"error": "not_found", "message": str(exc)}) from None
    # The account's claims went back to the queue in the same transaction: tell the consoles and
    # the users' chats. release_claims also catches a claim taken between the two steps.
    for conversation_id in released:
        await runtime.manager.announce(conversation_id)
    await runtime.manager.release_claims(name)
    return {"ok": True, "released": released}
