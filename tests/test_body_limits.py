"""Bodies are bounded while they stream: a chunked upload with no declared length is cut off
at its route's limit, before it reaches memory or disk, on every route and without a login."""

from __future__ import annotations

import httpx
import pytest

from bot.settings import Settings
from bot.web.body_limits import BodyLimits
from engine.stub import StubEngine
from tests.live_server import live_server

MB = 1024 * 1024
SENT_TOTAL = 64 * MB


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("limits"), engine=StubEngine(), widget_max_images=1,
                     image_max_bytes=MB) as (base, app):
        yield base, app


async def test_a_body_without_a_declared_length_stops_at_the_limit():
    """What an application reads of an endless chunked body: the limit, then 413, never more."""
    import json

    from bot.web.body_limits import BodyLimitMiddleware

    read = 0

    async def app(scope, receive, send):  # reads everything it is given, as a form parser would
        nonlocal read
        while True:
            message = await receive()
            read += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    offered = 0

    async def endless_receive():
        nonlocal offered
        offered += 256 * 1024
        return {"type": "http.request", "body": b"x" * (256 * 1024), "more_body": offered < SENT_TOTAL}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    limits = BodyLimits(by_prefix=(("/login", 64 * 1024),), default=MB)
    scope = {"type": "http", "method": "POST", "path": "/login", "headers": [], "query_string": b""}
    await BodyLimitMiddleware(app, limits)(scope, endless_receive, send)
    assert sent[0]["status"] == 413 and json.loads(sent[1]["body"])["error"] == "too_large"
    assert read <= 64 * 1024 and offered <= 64 * 1024 + 256 * 1024, "read on past the limit"


def test_an_oversized_declared_body_is_refused_before_it_is_read(server):
    base, app = server
    response = httpx.post(f"{base}/login", content=b"x" * (200 * 1024),
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413 and response.json()["error"] == "too_large"
    assert "64 KB" in response.json()["message"]


def test_the_widget_says_what_to_do_when_a_message_is_too_large(server):
    base, _ = server
    token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
    files = [("images", ("big.png", b"\x89PNG" + b"0" * (3 * MB), "image/png"))]
    response = httpx.post(f"{base}/widget/api/messages", headers={"Authorization": f"Bearer {token}"},
                          data={"client_message_id": "too-large-1", "text": "hi"}, files=files)
    assert response.status_code == 413
    assert response.json() == {"error": "too_large",
                               "message": "That message is too large. Please send smaller screenshots."}


def test_limits_follow_the_image_settings():
    limits = BodyLimits.from_settings(Settings(image_max_bytes=2 * MB, widget_max_images=3))
    assert 6 * MB < limits.for_path("/widget/api/messages") < 7 * MB
    assert limits.for_path("/login") == 64 * 1024 and limits.for_path("/something/else") == 64 * 1024
