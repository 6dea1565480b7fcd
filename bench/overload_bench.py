"""Overload: a burst of visitors far larger than the engine queue, all at once.

A real `snapdesk serve` with the tiny checkpoint and a small queue (8) receives 100
messages with screenshots in the same instant. Turns that find the queue full wait for room
(`SNAPDESK_BUSY_WAIT_S`, 5 s here) and are handed to a person with reason `busy` when none
comes. Meanwhile `/healthz` is asked every 50 ms: it must keep answering quickly, and every
acknowledged message must still get exactly one answer or hand-over.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time

import httpx

from engine.tiny import build_tiny_checkpoint
from tests.live_server import free_port

from .figures import Figure
from .load_bench import _answering_template, _screenshot
from .widget_load import busy_handovers, run_visitors, start_server

VISITORS = 100
QUEUE = 8
BUSY_WAIT_S = 5


async def _probe(base: str, stop: asyncio.Event, latencies: list[float], failures: list[int]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                ok = (await client.get("/healthz")).status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - started) * 1000.0)
            if not ok:
                failures.append(1)
            await asyncio.sleep(0.05)


async def _burst(port: int) -> tuple:
    base = f"http://127.0.0.1:{port}"
    stop, latencies, failures = asyncio.Event(), [], []
    probe = asyncio.create_task(_probe(base, stop, latencies, failures))
    try:
        result = await run_visitors(port, VISITORS, 1, image=_screenshot(), ramp_s=0.0)
    finally:
        stop.set()
        await probe
    return result, latencies, len(failures), busy_handovers(port)


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_checkpoint(f"{tmp}/model")
        _answering_template(f"{tmp}/data")
        port = free_port()
        env = {"SNAPDESK_MODEL": str(model), "SNAPDESK_QUEUE_SIZE": str(QUEUE), "SNAPDESK_BUSY_WAIT_S": str(BUSY_WAIT_S)}
        server = start_server(f"{tmp}/data", port, env)
        try:
            result, latencies, health_failures, busy = asyncio.run(_burst(port))
        finally:
            server.terminate()
            server.wait(timeout=60)
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    what = f"{VISITORS} messages with a screenshot at once, engine queue {QUEUE}, busy wait {BUSY_WAIT_S} s"
    return [
        Figure("overload_busy_handovers", busy, "", f"turns handed over because the queue stayed full, {what}"),
        Figure("overload_errors", result.errors, "<= 0", f"requests refused or replies not arriving, {what}"),
        Figure("overload_lost_messages", result.lost, "<= 0", f"acknowledged messages with no reply, {what}"),
        Figure("overload_health_p99_ms", cuts[98], "<= 250", f"99th percentile /healthz time during the burst, {what}"),
        Figure("overload_health_failures", health_failures, "<= 0", f"/healthz requests that failed, {what}"),
    ]
