"""What one running server holds, and the request dependencies that reach it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Coroutine, Protocol

from fastapi import APIRouter, Depends, Request

from engine.base import Engine

from ..conversation import ConversationManager
from ..gateway import Gateway
from ..settings import Settings
from ..store import Store
from .metrics import Metrics

if TYPE_CHECKING:
    from adapters.widget import WidgetChannel

    from ..accounts import Accounts
    from .console_events import ConsoleHub
    from .openai_api import ApiShare
    from .ratelimit import RateLimiter, WidgetLimits
    from .stream_caps import StreamCaps

log = logging.getLogger(__name__)


class Adapter(Protocol):
    """A platform channel running inside the server (Slack, Telegram)."""

    channel: Any  # a bot.messages.Channel
    router: APIRouter | None  # its webhook routes, if it has any

    async def start(self) -> None:
        """Begin receiving (socket mode, polling, webhook registration) and finish stored events."""

    async def stop(self) -> None: ...


@dataclass(kw_only=True)
class Runtime:
    settings: Settings
    store: Store
    engine: Engine
    manager: ConversationManager
    metrics: Metrics
    secret_key: bytes
    widget_channel: WidgetChannel
    accounts: Accounts
    api_limiter: RateLimiter  # /v1 requests per API key
    api_share: ApiShare  # the engine places /v1 and the operator's "try it" may hold
    login_limiter: RateLimiter  # sign-in attempts per client address
    widget_limits: WidgetLimits  # widget requests per address and messages per visitor
    console_hub: ConsoleHub  # live updates to the consoles' open pages
    stream_caps: StreamCaps  # open event streams, widget and consoles
    demo_banner: str | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    load_error: str | None = None
    tasks: set[asyncio.Task] = field(default_factory=set)
    adapters: list[Adapter] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None  # the server's event loop, once it runs
    gateway: Gateway = field(init=False)  # what platform channels may ask of Snapdesk

    def __post_init__(self) -> None:
        self.gateway = Gateway(self.manager, self.ready, self.spawn)

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run work after the response, keeping a reference so it is not collected."""
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %s", type(task.exception()).__name__)


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
