"""The server and the widget API over real HTTP on loopback (stub engine)."""

from __future__ import annotations

import io
import threading
import time

import httpx
import pytest
from PIL import Image

from adapters.widget import issue_token, verify_token
from engine.stub import StubEngine
from tests.live_server import live_server, sse_events


def png_bytes(width=640, height=480) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("web"), engine=StubEngine(), widget_rate_per_visitor=5,
                     widget_max_images=2, widget_max_text_chars=200,
                     widget_allowed_origins="https://shop.example") as (base, app):
        yield base, app


def session(base: str) -> dict[str, str]:
    token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def send(base, headers, client_id, text="Why was I charged?", files=None, extra_headers=None):
    return httpx.post(
        f"{base}/widget/api/messages",
        headers={**headers, **(extra_headers or {})},
        data={"client_message_id": client_id, "text": text},
        files=files,
        timeout=30,
    )


def wait_for_answer(base, headers, count=1, timeout=10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conversation = httpx.get(f"{base}/widget/api/conversation", headers=headers).json()
        if sum(m["role"] != "user" for m in conversation["messages"]) >= count:
            return conversation
        time.sleep(0.05)
    raise AssertionError("no answer arrived")


def test_health_ready_metrics_and_openapi(server):
    base, _ = server
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
    spec = httpx.get(f"{base}/openapi.json").json()
    for path in ("/widget/api/session", "/widget/api/messages", "/widget/api/conversation", "/widget/api/events"):
        assert path in spec["paths"]
    headers = session(base)
    assert send(base, headers, "metrics-0001").status_code == 202
    wait_for_answer(base, headers)
    metrics = httpx.get(f"{base}/metrics").text
    assert 'snapdesk_messages_total{channel="widget"}' in metrics
    assert "snapdesk_time_to_first_token_seconds_bucket" in metrics
    assert "snapdesk_engine_queue_depth" in metrics and "snapdesk_tokens_total" in metrics


def test_a_message_is_stored_answered_and_a_retry_is_not_answered_twice(server):
    base, app = server
    headers = session(base)
    first = send(base, headers, "retry-0001")
    assert first.status_code == 202 and first.json()["duplicate"] is False
    again = send(base, headers, "retry-0001")
    assert again.status_code == 202 and again.json() == {**first.json(), "duplicate": True}
    conversation = wait_for_answer(base, headers)
    time.sleep(0.2)
    conversation = httpx.get(f"{base}/widget/api/conversation", headers=headers).json()
    roles = [m["role"] for m in conversation["messages"]]
    assert roles == ["user", "bot"]
    assert conversation["messages"][0]["client_message_id"] == "retry-0001"


def test_screenshots_are_stored_and_served_only_to_their_visitor(server):
    base, _ = server
    headers = session(base)
    response = send(base, headers, "shot-00001", files=[("images", ("bill.png", png_bytes(), "image/png"))])
    assert response.status_code == 202
    conversation = wait_for_answer(base, headers)
    url = base + conversation["messages"][0]["images"][0]
    image = httpx.get(url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    other = session(base)["Authorization"][7:]
    assert httpx.get(url.split("?")[0], params={"token": other}).status_code == 404


def test_bad_and_missing_tokens_are_refused(server):
    base, app = server
    good = session(base)["Authorization"][7:]
    tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    forged = issue_token(b"not the server key", "0" * 32)
    for headers in ({}, {"Authorization": "Basic abc"}, *({"Authorization": f"Bearer {t}"} for t in ("garbage", tampered, forged))):
        response = send(base, headers, "token-0001")
        assert response.status_code == 401 and response.json()["error"] == "bad_token"
    assert httpx.get(f"{base}/widget/api/events", params={"token": tampered}).status_code == 401
    secret = app.state.server.secret_key
    assert verify_token(secret, issue_token(secret, "a" * 32, issued=0)) is None  # expired


def test_wrong_origins_are_refused_and_allowed_ones_get_cors(server):
    base, _ = server
    headers = session(base)
    evil = send(base, headers, "origin-0001", extra_headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403 and evil.json()["error"] == "origin_not_allowed"
    shop = send(base, headers, "origin-0002", extra_headers={"Origin": "https://shop.example"})
    assert shop.status_code == 202
    assert shop.headers["access-control-allow-origin"] == "https://shop.example"
    assert "access-control-allow-credentials" not in shop.headers
    preflight = httpx.options(f"{base}/widget/api/messages", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert preflight.headers.get("access-control-allow-origin") != "*"


def test_upload_limits_answer_413_with_a_readable_message(server):
    base, _ = server
    headers = session(base)
    three = [("images", (f"s{i}.png", png_bytes(), "image/png")) for i in range(3)]
    too_many = send(base, headers, "limit-0001", files=three)
    assert too_many.status_code == 413 and too_many.json()["error"] == "too_many_images"
    assert "at most 2" in too_many.json()["message"]
    long_text = send(base, headers, "limit-0002", text="x" * 201)
    assert long_text.status_code == 413 and long_text.json()["error"] == "text_too_long"
    empty = send(base, headers, "limit-0003", text="   ")
    assert empty.status_code == 400 and empty.json()["error"] == "empty"
    bad_id = send(base, headers, "../../x")
    assert bad_id.status_code == 400


def test_per_visitor_rate_limit_answers_429(server):
    base, _ = server
    headers = session(base)
    codes = [send(base, headers, f"rate-{i:05d}").status_code for i in range(7)]
    assert codes[:5] == [202] * 5 and codes[-1] == 429
    limited = send(base, headers, "rate-99999")
    assert limited.json()["error"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1


def test_events_stream_delivers_the_answer_and_status(server):
    base, _ = server
    headers = session(base)
    token = headers["Authorization"][7:]
    seen: list[tuple[str, dict]] = []

    def listen():
        with httpx.stream("GET", f"{base}/widget/api/events", params={"token": token}, timeout=10) as stream:
            for event, data in sse_events(stream.iter_lines()):
                seen.append((event, data))
                if event == "status" and data["status"] == "waiting":
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(0.3)
    send(base, headers, "events-001", text="Why was I charged?")
    send(base, headers, "events-002", text="Can I talk to a human?")
    listener.join(timeout=10)
    kinds = [(event, data.get("kind")) for event, data in seen]
    # Decide before showing: the page learns that the bot is working, then gets the decided answer.
    assert ("delta", None) not in kinds, "no shipped template streams text that a hand-over could withdraw"
    assert kinds.index(("typing", None)) < kinds.index(("message", "answer"))
    typing = next(d for e, d in seen if e == "typing")
    answer = next(d for e, d in seen if e == "message" and d["kind"] == "answer")
    assert typing["reply_to"] == answer["reply_to"]
    # A request for a person needs no model: no typing for it, the hand-over comes at once.
    assert kinds[kinds.index(("message", "answer")) + 1:] == [("message", "user"), ("message", "handover"),
                                                               ("status", None)]
    assert seen[-1] == ("status", {"status": "waiting", "agent": None})


def test_demo_page_and_widget_script_are_served_with_a_strict_policy(server):
    base, _ = server
    page = httpx.get(f"{base}/")
    assert page.status_code == 200 and '<script src="/widget.js"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "scripted stub engine" in page.text  # the demo banner
    script = httpx.get(f"{base}/widget.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]


class SlowLoadingEngine(StubEngine):
    """A model that takes a while to load, like an 8B checkpoint."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate

    def start(self) -> None:
        self.gate.wait(30)
        super().start()


def test_health_answers_while_the_model_loads_and_messages_wait_for_it(tmp_path):
    import uvicorn

    from bot.settings import Settings
    from bot.web.app import create_app
    from tests.live_server import free_port

    gate = threading.Event()
    port = free_port()
    app = create_app(Settings(data_dir=tmp_path, port=port), engine=SlowLoadingEngine(gate))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{base}/healthz")
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert health.status_code == 200
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        headers = session(base)
        assert send(base, headers, "early-0001").status_code == 202  # stored while loading
        gate.set()
        conversation = wait_for_answer(base, headers)
        assert [m["kind"] for m in conversation["messages"]] == ["user", "answer"]
        assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
    finally:
        gate.set()
        server.should_exit = True
        thread.join(timeout=15)


def test_access_log_lines_hide_query_strings():
    import logging

    from bot.web.app import HideQueryStrings

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/widget/api/events?token=v1.secret", "1.1", 200), None)
    HideQueryStrings().filter(record)
    assert "secret" not in record.getMessage() and "/widget/api/events" in record.getMessage()


def test_malformed_bodies_and_hostile_text_get_clear_answers(server):
    base, app = server
    headers = session(base)
    garbage = httpx.post(f"{base}/widget/api/messages", content=b"not multipart at all",
                         headers={**headers, "Content-Type": "multipart/form-data; boundary=XyZ"})
    assert garbage.status_code == 400 and garbage.json()["error"] == "bad_request"
    invalid_utf8 = (b'--XyZ\r\nContent-Disposition: form-data; name="client_message_id"\r\n\r\nutf8-00001\r\n'
                    b'--XyZ\r\nContent-Disposition: form-data; name="text"\r\n\r\n\xff\xfe why \xc3\r\n--XyZ--\r\n')
    response = httpx.post(f"{base}/widget/api/messages", content=invalid_utf8,
                          headers={**headers, "Content-Type": "multipart/form-data; boundary=XyZ"})
    assert response.status_code == 202  # stored (never lost), decoded leniently
    hostile = send(base, headers, "hostile-001", text="why\x00 was\x1b[31m I \u202echarged\u0007?\r\nthanks")
    assert hostile.status_code == 202
    stored = app.state.runtime.store.message(hostile.json()["message_id"])["text"]
    assert stored == "why was[31m I charged?\nthanks"
