"""Simulated widget visitors against a real `snapdesk serve` process on loopback.

Each visitor behaves like the widget: it gets a token, opens its event stream, sends a
message (optionally with a screenshot), waits for the answer or hand-over to arrive on the
stream, then sends the next. Afterwards every acknowledged message must have a stored answer
or hand-over: anything else is lost. Bounded in visitors, messages and time; loopback only.

Rates count replies that arrived, not acknowledgements: a server that stores every message
and answers none must not look fast. A message that gets no reply (refused, or nothing within
`ANSWER_WAIT_S`) enters the latency figures at that bound rather than being left out, so
percentiles cannot improve by losing the slowest messages.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

import httpx

ANSWER_WAIT_S = 120.0


@dataclass
class LoadResult:
    messages_per_s: float  # replies (answers or hand-over notices) that arrived, per second
    ack_ms: list[float] = field(default_factory=list)  # POST until 202 (stored)
    # POST until the reply arrived; a message that got none counts as ANSWER_WAIT_S.
    answer_ms: list[float] = field(default_factory=list)
    answers_per_s: float = 0.0  # of those replies, the bot's own answers, per second
    replies: int = 0
    answers: int = 0
    errors: int = 0  # refused, or no reply within ANSWER_WAIT_S
    lost: int = 0
    peak_rss_mb: float = 0.0
    busy_handovers: float = 0.0
    for_person: int = 0  # sent after a hand-over: a person answers them, not the bot


def start_server(data_dir: str, port: int, env: dict[str, str], ready_timeout: float = 120.0) -> subprocess.Popen:
    full_env = {
        **os.environ,
        "SNAPDESK_DATA_DIR": data_dir,
        "SNAPDESK_WIDGET_RATE_PER_IP": "1000000",  # every simulated visitor shares 127.0.0.1
        "SNAPDESK_WIDGET_RATE_PER_VISITOR": "1000",
        "SNAPDESK_WIDGET_STREAMS_PER_IP": "1000000",  # and so do their event streams
        **env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "serve", "--port", str(port)],
        env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start")


def busy_handovers(port: int) -> float:
    """Turns the server handed over because its engine queue stayed full (from /metrics)."""
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    found = re.search(r'snapdesk_handovers_total\{reason="busy"\} ([0-9.e+]+)', metrics)
    return float(found.group(1)) if found else 0.0


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident memory (Linux), in MiB."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


async def _visitor(client: httpx.AsyncClient, messages: int, image: bytes | None, result: LoadResult,
                   acked: list[tuple[str, int]], start_delay: float) -> None:
    await asyncio.sleep(start_delay)
    token = (await client.post("/widget/api/session", json={})).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    replies: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    connected = asyncio.Event()
    handed_over = False

    async def listen() -> None:
        async with client.stream("GET", "/widget/api/events", params={"token": token}, timeout=None) as stream:
            event = None
            async for line in stream.aiter_lines():
                connected.set()
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "message":
                    nonlocal handed_over
                    data = json.loads(line[6:])
                    handed_over = handed_over or data.get("kind") == "handover"
                    if data.get("reply_to") and data.get("kind") in ("answer", "handover"):
                        replies.put_nowait((data["reply_to"], data["kind"]))

    listener = asyncio.create_task(listen())
    try:
        await asyncio.wait_for(connected.wait(), 30)
        for i in range(messages):
            files = [("images", ("screenshot.png", image, "image/png"))] if image is not None else None
            started = time.perf_counter()
            response = await client.post(
                "/widget/api/messages", headers=headers, files=files,
                data={"client_message_id": uuid.uuid4().hex, "text": f"Where is my parcel? ({i})"},
            )
            result.ack_ms.append((time.perf_counter() - started) * 1000.0)
            if response.status_code != 202:
                result.errors += 1
                result.answer_ms.append(ANSWER_WAIT_S * 1000.0)
                continue
            message_id = response.json()["message_id"]
            acked.append((token, message_id))
            if handed_over:  # the conversation is a person's now: the bot rightly stays silent
                result.for_person += 1
                continue
            try:
                async with asyncio.timeout(ANSWER_WAIT_S):
                    while (reply := await replies.get())[0] != message_id:
                        pass
                result.answer_ms.append((time.perf_counter() - started) * 1000.0)
                result.replies += 1
                result.answers += reply[1] == "answer"
            except TimeoutError:
                result.errors += 1
                result.answer_ms.append(ANSWER_WAIT_S * 1000.0)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def _missing(client: httpx.AsyncClient, acked: list[tuple[str, int]], settle_s: float) -> int:
    by_visitor: dict[str, set[int]] = {}
    for token, message_id in acked:
        by_visitor.setdefault(token, set()).add(message_id)
    deadline = time.monotonic() + settle_s
    while True:
        missing = 0
        for token, ids in by_visitor.items():
            conversation = (await client.get("/widget/api/conversation",
                                             headers={"Authorization": f"Bearer {token}"})).json()
            answered = {m["reply_to"] for m in conversation["messages"] if m["role"] != "user" and m["reply_to"]}
            handovers = [m["id"] for m in conversation["messages"] if m["kind"] == "handover"]
            if conversation["status"] in ("waiting", "claimed") and handovers:
                answered |= {i for i in ids if i > max(handovers)}  # kept for the person who has it
            missing += len(ids - answered)
        if missing == 0 or time.monotonic() > deadline:
            return missing
        await asyncio.sleep(0.5)


async def run_visitors(port: int, visitors: int, messages: int, image: bytes | None = None,
                       ramp_s: float = 0.0) -> LoadResult:
    """`visitors` simulated visitors, started evenly over `ramp_s` seconds."""
    base = f"http://127.0.0.1:{port}"
    # One small client per visitor, as in real life: a shared pool of hundreds of connections
    # costs the load generator more than the server it measures.
    clients = [httpx.AsyncClient(base_url=base, timeout=60) for _ in range(visitors)]
    result = LoadResult(messages_per_s=0.0)
    acked: list[tuple[str, int]] = []
    try:
        started = time.perf_counter()
        await asyncio.gather(*(
            _visitor(client, messages, image, result, acked, ramp_s * i / max(visitors, 1))
            for i, client in enumerate(clients)
        ))
        elapsed = time.perf_counter() - started
        result.messages_per_s = result.replies / elapsed
        result.answers_per_s = result.answers / elapsed
        result.lost = await _missing(clients[0], acked, settle_s=30)
        return result
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
