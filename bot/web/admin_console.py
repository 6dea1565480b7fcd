"""User management for admins: list, add, disable and enable console accounts, change roles
and display names, reset passwords and sign accounts out everywhere.

Whatever ends an account's sessions also closes its open console event streams, and whatever
takes conversations from an agent (disabling, a role without the agent console) announces
them back in the queue at once.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from ..accounts import MAX_PASSWORD_CHARS, AccountError, NoSuchUser, Session, User
from .auth import require
from .params import Name
from ..runtime import Runtime
from .deps import RuntimeDep, ServerDep

AdminSession = Annotated[Session, Depends(require("admin"))]
router = APIRouter(tags=["admin"])


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    role: Literal["agent", "operator", "admin"]
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_CHARS)
    display_name: str | None = Field(default=None, max_length=1000)


class DisplayNameIn(BaseModel):
    display_name: str = Field(max_length=1000)


class RoleIn(BaseModel):
    role: Literal["agent", "operator", "admin"]


class PasswordIn(BaseModel):
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_CHARS)


def _user_out(user: User) -> dict:
    return {"name": user.name, "role": user.role, "disabled": user.disabled, "display_name": user.display_name,
            "must_change_password": user.must_change_password}


def _not_found(exc: Exception) -> HTTPException:
    return HTTPException(404, detail={"error": "not_found", "message": str(exc)})


def _not_yourself(name: str, session: Session, what: str) -> None:
    if name == session.user.name:
        raise HTTPException(409, detail={"error": "self", "message": f"You cannot {what} your own account."})


async def _announce(runtime: Runtime, released: list[int]) -> None:
    for conversation_id in released:
        await runtime.manager.delivery.announce(conversation_id)


@router.get("/admin/api/users", summary="Console accounts")
async def users(runtime: RuntimeDep, session: AdminSession) -> dict:
    found = await runtime.manager.db(runtime.accounts.users)
    return {"users": [_user_out(u) for u in found]}


@router.post("/admin/api/users", summary="Add a console account")
async def add_user(body: UserIn, runtime: RuntimeDep, session: AdminSession) -> dict:
    try:
        user = await runtime.accounts.create_user(body.name, body.role, body.password, session.user.name,
                                                  body.display_name)
    except AccountError as exc:
        raise HTTPException(422, detail={"error": "invalid_user", "message": str(exc)}) from None
    return _user_out(user)


@router.post("/admin/api/users/{name}/display-name", summary="Set the name users see on an agent's replies")
async def set_display_name(name: Name, body: DisplayNameIn, runtime: RuntimeDep, session: AdminSession) -> dict:
    try:
        user = await runtime.manager.db(runtime.accounts.set_display_name, name, body.display_name,
                                        session.user.name)
    except NoSuchUser as exc:
        raise _not_found(exc) from None
    except AccountError as exc:
        raise HTTPException(400, detail={"error": "invalid_display_name", "message": str(exc)}) from None
    return _user_out(user)


@router.post("/admin/api/users/{name}/disable",
             summary="Disable an account, end its sessions and put its conversations back in the queue")
async def disable_user(name: Name, runtime: RuntimeDep, server: ServerDep, session: AdminSession) -> dict:
    _not_yourself(name, session, "disable")
    try:
        released = await runtime.manager.db(runtime.accounts.disable_user, name, session.user.name)
    except AccountError as exc:
        raise _not_found(exc) from None
    server.console_hub.end_sessions(user_name=name)
    # The account's claims went back to the queue in the same transaction: tell the consoles and
    # the users' chats. release_claims also catches a claim taken between the two steps.
    await _announce(runtime, released)
    await runtime.manager.agents.release_claims(name)
    return {"ok": True, "released": released}


@router.post("/admin/api/users/{name}/enable", summary="Let a disabled account sign in again")
async def enable_user(name: Name, runtime: RuntimeDep, session: AdminSession) -> dict:
    try:
        user = await runtime.manager.db(runtime.accounts.enable_user, name, session.user.name)
    except AccountError as exc:
        raise _not_found(exc) from None
    return _user_out(user)


@router.post("/admin/api/users/{name}/role",
             summary="Change an account's role (an operator's claimed conversations go back to the queue)")
async def set_role(name: Name, body: RoleIn, runtime: RuntimeDep, server: ServerDep, session: AdminSession) -> dict:
    _not_yourself(name, session, "change the role of")
    try:
        user, released = await runtime.manager.db(runtime.accounts.set_role, name, body.role, session.user.name)
    except NoSuchUser as exc:
        raise _not_found(exc) from None
    server.console_hub.end_sessions(user_name=name)  # open pages reconnect under the new role, or are refused
    await _announce(runtime, released)
    return {**_user_out(user), "released": released}


@router.post("/admin/api/users/{name}/reset-password",
             summary="Set a temporary password: the account is signed out and must choose its own at next sign-in")
async def reset_password(name: Name, body: PasswordIn, runtime: RuntimeDep, server: ServerDep,
                         session: AdminSession) -> dict:
    _not_yourself(name, session, "reset the password of")  # your own: /account/password
    try:
        ended = await runtime.accounts.reset_password(name, body.password, session.user.name)
    except NoSuchUser as exc:
        raise _not_found(exc) from None
    except AccountError as exc:
        raise HTTPException(422, detail={"error": "invalid_password", "message": str(exc)}) from None
    server.console_hub.end_sessions(user_name=name)
    return {"ok": True, "sessions_ended": ended}


@router.post("/admin/api/users/{name}/sign-out", summary="End every session of an account")
async def sign_out_everywhere(name: Name, runtime: RuntimeDep, server: ServerDep, session: AdminSession) -> dict:
    _not_yourself(name, session, "sign out from here")  # your own: Sign out, or change your password
    try:
        ended = await runtime.manager.db(runtime.accounts.end_sessions, name, session.user.name)
    except AccountError as exc:
        raise _not_found(exc) from None
    server.console_hub.end_sessions(user_name=name)
    return {"ok": True, "sessions_ended": ended}
