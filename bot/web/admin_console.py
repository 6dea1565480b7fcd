"""User management for admins: list, add and disable console accounts."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from ..accounts import AccountError, Session
from .auth import require
from .runtime import RuntimeDep

AdminSession = Annotated[Session, Depends(require("admin"))]
router = APIRouter(tags=["admin"])


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    role: Literal["agent", "operator", "admin"]
    password: str = Field(min_length=1, max_length=1024)


@router.get("/admin/api/users", summary="Console accounts")
async def users(runtime: RuntimeDep, session: AdminSession) -> dict:
    found = await runtime.manager.db(runtime.accounts.users)
    return {"users": [{"name": u.name, "role": u.role, "disabled": u.disabled} for u in found]}


@router.post("/admin/api/users", summary="Add a console account")
async def add_user(body: UserIn, runtime: RuntimeDep, session: AdminSession) -> dict:
    try:
        user = await runtime.manager.db(runtime.accounts.add_user, body.name, body.role, body.password,
                                        session.user.name)
    except AccountError as exc:
        raise HTTPException(422, detail={"error": "invalid_user", "message": str(exc)}) from None
    return {"name": user.name, "role": user.role, "disabled": False}


@router.post("/admin/api/users/{name}/disable", summary="Disable an account and end its sessions")
async def disable_user(name: str, runtime: RuntimeDep, session: AdminSession) -> dict:
    if name == session.user.name:
        raise HTTPException(409, detail={"error": "self", "message": "You cannot disable your own account."})
    try:
        await runtime.manager.db(runtime.accounts.disable_user, name, session.user.name)
    except AccountError as exc:
        raise HTTPException(404, detail={"error": "not_found", "message": str(exc)}) from None
    return {"ok": True}
