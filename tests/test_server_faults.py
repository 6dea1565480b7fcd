"""The real server under faults: a burst larger than the engine queue, and kill -9.

Both run the real Qwen3-VL classes on the tiny checkpoint behind the real HTTP surface
(the widget API), because what matters is what a visitor sees: every message that was
acknowledged gets exactly one answer or hand-over, whatever happened in between.
"""

from __future__ import annotations

import io
import re
import signal
import socket
import sqlite3
import threading
import time
import uuid
from collections import Counter

import httpx
from PIL import Image

from bench.widget_load import start_server
from bot.accounts import Accounts
from bot.store import Store
from tests.live_server import free_port, live_server, wait_for

PASSWORD = "correct horse battery"


def screenshot() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (480, 320), (240, 240, 250)).save(buffer, "PNG")
    return buffer.getvalue()


def new_visitor(base: str) -> dict[str, str]:
    token = httpx.post(f"{base}/widget/api/session", json={}, timeout=30).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def post(base: str, headers: dict[str, str], text: str) -> int:
    response = httpx.post(f"{base}/widget/api/messages", headers=headers, timeout=30,
                          data={"client_message_id": uuid.uuid4().hex, "text": text},
                          files=[("images", ("bill.png", screenshot(), "image/png"))])
    assert response.status_code == 202, response.text
    return response.json()["message_id"]


def replies(base: str, headers: dict[str, str]) -> list[dict]:
    """The answers and hand-overs the visitor sees, each with the message it replies to."""
    conversation = httpx.get(f"{base}/widget/api/conversation", headers=headers, timeout=30).json()
    return [m for m in conversation["messages"] if m["kind"] in ("answer", "handover")]


def wait_for_replies(base: str, visitors: list[tuple[dict, int]], timeout: float) -> dict[int, list[dict]]:
    deadline = time.monotonic() + timeout
    while True:
        seen = {mid: [r for r in replies(base, headers) if r["reply_to"] == mid] for headers, mid in visitors}
        if all(seen.values()) or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def signed_in_agent(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=False, timeout=30)
    form = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    assert client.post("/login", data={"name": "mei", "password": PASSWORD, "csrf_token": csrf}).status_code == 303
    return client


def test_a_burst_larger_than_the_queue_is_answered_or_politely_handed_over(tmp_path, tiny_model_dir):
    Accounts(Store(tmp_path)).add_user("mei", "agent", PASSWORD)
    settings = dict(model=str(tiny_model_dir), queue_size=2, max_batch_size=1, busy_wait_s=0.5,
                    max_new_tokens=24, widget_rate_per_ip=10_000, widget_rate_per_visitor=1000,
                    login_rate_per_ip=1000)
    with live_server(tmp_path, **settings) as (base, _):
        agent = signed_in_agent(base)
        visitors = [new_visitor(base) for _ in range(16)]
        latencies: dict[str, list[float]] = {"healthz": [], "agent queue": []}
        stop = threading.Event()

        def probe():  # what an orchestrator and an agent see while the model is saturated
            while not stop.is_set():
                for name, call in (("healthz", lambda: httpx.get(f"{base}/healthz", timeout=10)),
                                   ("agent queue", lambda: agent.get("/agent/api/queue"))):
                    started = time.monotonic()
                    assert call().status_code == 200
                    latencies[name].append(time.monotonic() - started)
                time.sleep(0.05)

        prober = threading.Thread(target=probe)
        prober.start()
        sent: list[tuple[dict, int]] = []
        senders = [threading.Thread(target=lambda h=h: sent.append((h, post(base, h, "Why was I charged twice?"))))
                   for h in visitors]
        try:
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
            seen = wait_for_replies(base, sent, timeout=120)
        finally:
            stop.set()
            prober.join()
        assert len(sent) == 16
        assert all(len(found) == 1 for found in seen.values()), "each message gets exactly one reply"
        handovers = [r for found in seen.values() for r in found if r["kind"] == "handover"]
        queue = agent.get("/agent/api/queue", params={"reason": "busy"}).json()["conversations"]
        assert queue, "a burst twice the queue's size should have found it full"
        assert all(item["reason"] == "busy" for item in queue)
        busy_texts = {r["text"] for r in handovers}
        assert any("A person will reply here" in text for text in busy_texts), busy_texts
        for name, values in latencies.items():
            assert values and max(values) < 2.0, f"{name} took {max(values):.2f} s while the engine was saturated"
        metrics = httpx.get(f"{base}/metrics").text
        assert "snapdesk_engine_busy_waits_total" in metrics and 'snapdesk_handovers_total{reason="busy"}' in metrics


def settled(data_dir) -> bool:
    """No user message waits for its answer and no reply waits to be delivered (read-only)."""
    with sqlite3.connect(f"file:{data_dir / 'snapdesk.db'}?mode=ro", uri=True) as db:
        pending = db.execute("select count(*) from messages where role = 'user' and status = 'pending'").fetchone()[0]
        undelivered = db.execute("select count(*) from messages where role in ('bot', 'system', 'agent') "
                                 "and delivered = 0").fetchone()[0]
    return pending == 0 and undelivered == 0


def test_kill_9_while_answering_then_restart_gives_every_acknowledged_message_one_reply(tmp_path, tiny_model_dir):
    data, port = str(tmp_path / "data"), free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"SNAPDESK_MODEL": str(tiny_model_dir), "SNAPDESK_MAX_BATCH_SIZE": "2", "SNAPDESK_MAX_NEW_TOKENS": "64"}
    server = start_server(data, port, env)
    sent: list[tuple[dict, int]] = []
    try:
        for i in range(12):
            headers = new_visitor(base)
            sent.append((headers, post(base, headers, f"Why was I charged twice? ({i})")))
        # Kill it as soon as the first reply is out: the others are queued or being generated.
        deadline = time.monotonic() + 60
        while not any(replies(base, headers) for headers, _ in sent):
            assert time.monotonic() < deadline, "no reply before the kill"
            time.sleep(0.02)
        answered_before = sum(bool(replies(base, headers)) for headers, _ in sent)
        server.send_signal(signal.SIGKILL)
        assert server.wait(timeout=30) == -signal.SIGKILL
    finally:
        if server.poll() is None:
            server.kill()
    assert answered_before < 12, "the kill should have come while messages were still being answered"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the killed server still listens"

    server = start_server(data, port, env)  # the same data directory: recovery runs at start
    try:
        seen = wait_for_replies(base, sent, timeout=180)
        # Recovery is over when no message is left pending and no reply undelivered: a second
        # answer to anything would be stored by then.
        wait_for(lambda: settled(tmp_path / "data"), timeout=60, what="recovery to finish")
        seen = wait_for_replies(base, sent, timeout=1)
    finally:
        server.terminate()
        server.wait(timeout=30)
    counts = Counter(len(found) for found in seen.values())
    assert counts == Counter({1: 12}), f"replies per acknowledged message: {dict(counts)}"
