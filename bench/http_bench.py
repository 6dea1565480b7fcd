"""The widget API under load: a real `snapdesk serve` process on loopback, stub engine.

64 simulated visitors behave like the widget: each opens its event stream, sends a message,
waits for the answer to arrive on the stream, then sends the next, 20 times. Latency is the
time to the 202 acknowledgement (the message is stored by then). Afterwards every
acknowledged message must have a stored answer or hand-over: anything else is lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import httpx

from tests.live_server import free_port

from .figures import Figure

VISITORS = 64
MESSAGES = 20
ANSWER_WAIT_S = 10.0


def _start_server(data_dir: str, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "SNAPDESK_ENGINE": "stub",
        "SNAPDESK_DATA_DIR": data_dir,
        "SNAPDESK_WIDGET_RATE_PER_IP": "100000",  # every simulated visitor shares 127.0.0.1
        "SNAPDESK_WIDGET_RATE_PER_VISITOR": str(MESSAGES * 10),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "serve", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start")


async def _visitor(client: httpx.AsyncClient, latencies: list[float], acked: list[tuple[dict, int]]) -> int:
    token = (await client.post("/widget/api/session", json={})).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    answers: asyncio.Queue[int] = asyncio.Queue()
    connected = asyncio.Event()

    async def listen() -> None:
        async with client.stream("GET", "/widget/api/events", params={"token": token}, timeout=None) as stream:
            event = None
            async for line in stream.aiter_lines():
                connected.set()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "message":
                    reply_to = json.loads(line[6:]).get("reply_to")
                    if reply_to:
                        answers.put_nowait(reply_to)

    listener = asyncio.create_task(listen())
    errors = 0
    try:
        await asyncio.wait_for(connected.wait(), ANSWER_WAIT_S)
        for i in range(MESSAGES):
            started = time.perf_counter()
            response = await client.post(
                "/widget/api/messages", headers=headers,
                data={"client_message_id": uuid.uuid4().hex, "text": f"Where is my parcel? ({i})"},
            )
            latencies.append((time.perf_counter() - started) * 1000.0)
            if response.status_code != 202:
                errors += 1
                continue
            message_id = response.json()["message_id"]
            acked.append((headers, message_id))
            try:
                while await asyncio.wait_for(answers.get(), ANSWER_WAIT_S) != message_id:
                    pass
            except asyncio.TimeoutError:
                errors += 1
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
    return errors


async def _answered(client: httpx.AsyncClient, headers: dict) -> set[int]:
    conversation = (await client.get("/widget/api/conversation", headers=headers)).json()
    return {m["reply_to"] for m in conversation["messages"] if m["role"] != "user" and m["reply_to"]}


async def _load(port: int) -> tuple[float, list[float], int, int]:
    base = f"http://127.0.0.1:{port}"
    # One small client per visitor, as in real life: a shared pool of 128 connections
    # costs the load generator more than the server it measures.
    clients = [httpx.AsyncClient(base_url=base, timeout=30) for _ in range(VISITORS)]
    try:
        latencies: list[float] = []
        acked: list[tuple[dict, int]] = []
        started = time.perf_counter()
        errors = sum(await asyncio.gather(*(_visitor(client, latencies, acked) for client in clients)))
        elapsed = time.perf_counter() - started
        by_visitor: dict[str, set[int]] = {}
        for headers, message_id in acked:
            by_visitor.setdefault(headers["Authorization"], set()).add(message_id)
        missing = sum(len(ids) for ids in by_visitor.values())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            missing = 0
            for auth, ids in by_visitor.items():
                missing += len(ids - await _answered(clients[0], {"Authorization": auth}))
            if missing == 0:
                break
            await asyncio.sleep(0.5)
        return len(acked) / elapsed, latencies, errors, missing
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = _start_server(tmp, port)
        try:
            throughput, latencies, errors, lost = asyncio.run(_load(port))
        finally:
            server.terminate()
            server.wait(timeout=30)
    cuts = statistics.quantiles(latencies, n=100)
    return [
        Figure("http_msgs_per_s", throughput, "", f"answered widget messages per second, {VISITORS} visitors"),
        Figure("http_p50_ms", cuts[49], "", "median time to the 202 acknowledgement"),
        Figure("http_p99_ms", cuts[98], "<= 100", "99th percentile time to the 202 acknowledgement"),
        Figure("http_errors", errors, "<= 0", "requests not acknowledged"),
        Figure("http_lost_messages", lost, "<= 0", "acknowledged messages without a stored answer or hand-over"),
    ]
