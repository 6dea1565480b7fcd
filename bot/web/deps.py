"""The request dependencies through which routes reach the running server (FastAPI's
`Annotated` style): one place reads `app.state`, every route declares what it uses."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..runtime import Runtime
from .server_state import ServerState


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def get_server_state(request: Request) -> ServerState:
    return request.app.state.server


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ServerDep = Annotated[ServerState, Depends(get_server_state)]
