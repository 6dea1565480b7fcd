"""What the web server adds around the core `Runtime`: its HTTP-only parts, each typed.

Limits per address, visitor or API key, the consoles' live updates, the widget's channel and
the platform adapters with their webhook routes exist only because Snapdesk is served over
HTTP; keeping them here leaves `bot.runtime` free of FastAPI and of every channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from fastapi import APIRouter

from adapters.widget import WidgetChannel

from ..messages import Channel
from ..regression.runner import RegressionRuns
from .console_events import ConsoleHub
from .api_share import ApiShare
from .ratelimit import RateLimiter, WidgetLimits
from .stream_caps import StreamCaps


class Adapter(Protocol):
    """A platform channel running inside the server (Slack, Telegram)."""

    channel: Channel
    router: APIRouter | None  # its webhook routes, if it has any

    async def start(self) -> None:
        """Begin receiving (socket mode, polling, webhook registration) and finish stored events."""

    async def stop(self) -> None: ...


@dataclass(kw_only=True)
class ServerState:
    secret_key: bytes  # signs widget visitor tokens
    widget_channel: WidgetChannel
    api_limiter: RateLimiter  # /v1 requests per API key
    api_share: ApiShare  # the engine places /v1 and the operator's "try it" may hold
    login_limiter: RateLimiter  # sign-in attempts per client address
    widget_limits: WidgetLimits  # widget requests per address and messages per visitor
    console_hub: ConsoleHub  # live updates to the consoles' open pages
    stream_caps: StreamCaps  # open event streams, widget and consoles
    regression: RegressionRuns | None = None  # regression-set runs going in this server
    demo_banner: str | None = None
    adapters: list[Adapter] = field(default_factory=list)
