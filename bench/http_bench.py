"""The widget API under load: a real `snapdesk serve` process on loopback, stub engine.

64 simulated visitors each send 20 messages, waiting for each answer on their event stream
(see widget_load). Latency is the time to the 202 acknowledgement (the message is stored by
then); every acknowledged message must end with a stored answer or hand-over.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile

from tests.live_server import free_port

from .figures import Figure
from .widget_load import run_visitors, start_server

VISITORS = 64
MESSAGES = 20


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = start_server(tmp, port, {"SNAPDESK_ENGINE": "stub"})
        try:
            result = asyncio.run(run_visitors(port, VISITORS, MESSAGES))
        finally:
            server.terminate()
            server.wait(timeout=30)
    cuts = statistics.quantiles(result.ack_ms, n=100)
    return [
        Figure("http_msgs_per_s", result.messages_per_s, "", f"replies arrived per second, {VISITORS} visitors"),
        Figure("http_p50_ms", cuts[49], "", "median time to the 202 acknowledgement"),
        Figure("http_p99_ms", cuts[98], "<= 100", "99th percentile time to the 202 acknowledgement"),
        Figure("http_errors", result.errors, "<= 0", "requests not acknowledged or not answered"),
        Figure("http_lost_messages", result.lost, "<= 0", "acknowledged messages without a stored answer or hand-over"),
    ]
