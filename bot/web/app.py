"""The Snapdesk server: one FastAPI application, assembled here at start-up.

The process answers `/healthz` at once and loads the model in the background (with progress
in the log); `/readyz` turns ready only when the model has answered a first request.
Messages that arrive while it loads are stored and answered as soon as it is ready.
"""

from __future__ import annotations

import gc
import html
import logging
import sys
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response

from adapters.widget import WidgetChannel
from engine.base import Engine
from engine.stub import StubEngine
from engine.tiny import is_tiny_checkpoint

from ..accounts import same_token
from ..conversation import NoSuchConversation, NotHandedOver, NotOwner
from ..gateway import Gateway
from ..runtime import Runtime
from ..settings import Settings
from ..store import StoreBusy, StoreError
from .admin_console import router as admin_router
from .agent_console import router as agent_router
from .operator_console import router as operator_router
from .rollout_console import router as rollout_router
from .help_pages import router as help_router
from .knowledge_console import router as knowledge_router
from .auth import router as auth_router
from .body_limits import BodyLimitMiddleware, BodyLimits
from .console_events import ConsoleHub
from .api_share import ApiShare
from .openai_api import router as openai_router
from .private_responses import NoStoreMiddleware
from .ratelimit import RateLimiter, WidgetLimits
from .stream_caps import StreamCaps
from .server_state import Adapter, ServerState
from .secret_key import load_secret_key
from .regression_console import regression_runs, router as regression_router
from .static_files import router as static_router
from .widget_api import api_error_response
from .widget_api import router as widget_router
from .static_files import static_text

log = logging.getLogger("snapdesk")

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' blob: data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# Retry-After for requests refused because another program held the database lock too long.
STORE_BUSY_RETRY_AFTER_S = 5
DEMO_BANNER = (
    "Demo mode: replies come from a tiny random-weight model, so they are noise and every answer is handed "
    "over to a person."
)


def validation_error_response(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, without echoing the rejected input: it may be hostile, and text that is
    not valid Unicode (a lone surrogate) cannot even be encoded, which turned a 422 into a 500."""
    errors = [{k: v for k, v in error.items() if k != "input"} for error in exc.errors()]
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def demo_banner(settings: Settings, engine: Engine) -> str | None:
    if isinstance(engine, StubEngine):
        return "Demo mode: replies come from a scripted stub engine, not a model."
    if is_tiny_checkpoint(settings.model):
        return DEMO_BANNER
    return None


def build_server(runtime: Runtime) -> ServerState:
    """The web server's parts around the core: limits, live updates, the widget and the
    platform channels whose settings are present."""
    settings = runtime.settings
    widget = WidgetChannel()
    runtime.channels.register(widget)
    server = ServerState(
        secret_key=_secret_key(settings),
        demo_banner=demo_banner(settings, runtime.engine),
        widget_channel=widget,
        api_limiter=RateLimiter(settings.api_rate_per_key),
        api_share=ApiShare.from_settings(settings),
        login_limiter=RateLimiter(settings.login_rate_per_ip),
        widget_limits=WidgetLimits(settings.widget_rate_per_ip, settings.widget_rate_per_visitor),
        console_hub=ConsoleHub(),
        stream_caps=StreamCaps.from_settings(settings),
    )
    server.regression = regression_runs(runtime, server.api_share)
    runtime.manager.listeners.append(server.console_hub.on_event)
    for adapter in platform_adapters(settings, runtime.gateway):
        runtime.channels.register(adapter.channel)
        server.adapters.append(adapter)
    return server


def _secret_key(settings: Settings) -> bytes:
    try:
        return load_secret_key(settings.secret_key, settings.data_dir)
    except OSError as exc:
        raise StoreError(
            f"The key file {settings.data_dir / 'secret_key'} cannot be read or created ({exc.strerror or exc}): "
            "give the user running Snapdesk access to it, or set SNAPDESK_SECRET_KEY."
        ) from None


def store_busy_response(request: Request, exc: StoreBusy) -> JSONResponse:
    """503 with Retry-After when another program held the database lock past the wait bound.

    The request's work was rolled back as a whole, so the client may simply send it again
    (the widget resends with the same client_message_id, which is never answered twice).
    """
    seconds = STORE_BUSY_RETRY_AFTER_S
    return JSONResponse(
        {"error": "busy", "message": f"The service is busy right now. Please try again in {seconds} seconds.",
         "retry_after": seconds},
        status_code=503,
        headers={"Retry-After": str(seconds)},
    )


def ownership_error_response(request: Request, exc: Exception) -> JSONResponse:
    """A change of owner that is not this person's to make, or has nothing to act on."""
    if isinstance(exc, NoSuchConversation):
        return JSONResponse({"error": "not_found", "message": "No such conversation."}, status_code=404)
    if isinstance(exc, NotOwner):
        return JSONResponse({"error": "not_owner", "message": str(exc)}, status_code=409)
    return JSONResponse({"error": "not_handed_over", "message": "The bot already has it."}, status_code=409)


def platform_adapters(settings: Settings, gateway: Gateway) -> list[Adapter]:
    """The Slack and Telegram channels whose settings are present (imported only then)."""
    adapters = []
    if settings.slack_bot_token or settings.slack_app_token or settings.slack_signing_secret:
        from adapters.slack import setup_slack

        adapters.append(setup_slack(settings, gateway))
    if settings.telegram_token:
        from adapters.telegram import setup_telegram

        adapters.append(setup_telegram(settings, gateway))
    return [adapter for adapter in adapters if adapter is not None]


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    runtime = Runtime.build(settings, engine)
    server = build_server(runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if server.demo_banner:
            log.warning("%s", server.demo_banner)
        runtime.start()
        for adapter in server.adapters:
            await adapter.start()
        try:
            yield
        finally:
            for adapter in server.adapters:
                try:
                    await adapter.stop()
                except Exception as exc:
                    log.warning("stopping %s failed: %s", adapter.channel.name, type(exc).__name__)
            await runtime.stop()

    docs = settings.api_docs  # SNAPDESK_API_DOCS=false: no /docs, /redoc or /openapi.json
    app = FastAPI(
        title="Snapdesk",
        version="0.1.0",
        summary="Self-hosted customer-support bot that understands screenshots.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.runtime = runtime
    app.state.server = server
    # Inside CORS, so that a 413 still carries the headers a cross-origin widget needs to read it.
    app.add_middleware(BodyLimitMiddleware, limits=BodyLimits.from_settings(settings))
    app.add_middleware(NoStoreMiddleware)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.allowed_origins,
        allow_credentials=False,
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["Retry-After"],
        max_age=600,
    )
    app.add_exception_handler(HTTPException, api_error_response)
    app.add_exception_handler(StoreBusy, store_busy_response)
    for ownership_error in (NoSuchConversation, NotOwner, NotHandedOver):
        app.add_exception_handler(ownership_error, ownership_error_response)
    app.add_exception_handler(RequestValidationError, validation_error_response)
    app.include_router(widget_router)
    app.include_router(auth_router)
    app.include_router(agent_router)
    app.include_router(operator_router)
    app.include_router(rollout_router)
    app.include_router(knowledge_router)
    app.include_router(regression_router)
    app.include_router(help_router)
    app.include_router(admin_router)
    app.include_router(openai_router)
    app.include_router(static_router)
    for adapter in server.adapters:
        if adapter.router is not None:
            app.include_router(adapter.router)
    _add_pages(app, runtime, server.demo_banner)
    return app


def _add_pages(app: FastAPI, runtime: Runtime, banner: str | None) -> None:
    page_headers = {"Content-Security-Policy": PAGE_CSP, "X-Frame-Options": "DENY",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def demo_page() -> HTMLResponse:
        page = static_text("demo.html")
        if banner:
            page = page.replace(
                '<div id="demo-banner" hidden></div>',
                f'<div id="demo-banner" role="note">{html.escape(banner)}</div>',
            )
        return HTMLResponse(page, headers=page_headers)

    @app.get("/widget.js", include_in_schema=False)
    async def widget_js() -> Response:
        return Response(static_text("widget.js"), media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"})

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and answering")
    async def readyz() -> JSONResponse:
        # Open to anyone: it says how the model is, never where it lives (the log has the details).
        if runtime.load_error:
            return JSONResponse({"status": "failed", "error": "The model could not be loaded: the server log says why."},
                                status_code=503)
        if not runtime.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        if getattr(runtime.engine, "stalled", False):
            return JSONResponse({"status": "stalled"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", summary="Prometheus metrics (a bearer token when SNAPDESK_METRICS_TOKEN is set)")
    async def metrics(request: Request) -> Response:
        token = runtime.settings.metrics_token
        if token and not same_token(token, _bearer(request.headers.get("authorization"))):
            return JSONResponse({"error": "unauthorized", "message": "/metrics needs the metrics bearer token."},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return Response(runtime.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


class HideQueryStrings(logging.Filter):
    """Access-log lines without query strings: the widget's event stream carries its token there."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            args = list(record.args)
            args[2] = args[2].split("?", 1)[0]
            record.args = tuple(args)
        return True


def server_config(app: FastAPI, settings: Settings, **uvicorn_options: Any):
    """uvicorn's settings for Snapdesk: forwarded headers are believed only from the trusted
    proxies (uvicorn would otherwise believe them from any loopback peer)."""
    import uvicorn

    trusted = settings.trusted_proxy_list
    options: dict[str, Any] = {"log_level": "info", "timeout_graceful_shutdown": 5, **uvicorn_options}
    return uvicorn.Config(app, host=settings.host, port=settings.port, proxy_headers=bool(trusted),
                          forwarded_allow_ips=trusted or None, **options)


def serve(settings: Settings, **uvicorn_options: Any) -> None:
    import uvicorn

    logging.getLogger("uvicorn.access").addFilter(HideQueryStrings())
    # The database and model threads hand the GIL back and forth with the event loop many
    # times per message; the default 5 ms switch interval would add that wait each time.
    sys.setswitchinterval(0.0005)
    app = create_app(settings)
    # Everything imported so far lives as long as the process: keep it out of the cyclic
    # collector's way, so its pauses do not show up as slow requests.
    gc.collect()
    gc.freeze()
    log.info("Snapdesk on http://%s:%d (data in %s)", settings.host, settings.port, settings.data_dir)
    # Open event streams never end by themselves: give them a few seconds at shutdown, then close.
    uvicorn.Server(server_config(app, settings, **uvicorn_options)).run()
