"""Load: visitors ramping to 200 concurrent conversations, each sending text and screenshots.

Runs a real `snapdesk serve` on loopback twice: with the tiny Qwen3-VL checkpoint (the model
really runs: batching, vision encoder, streaming) and with the zero-cost stub engine (`_stub`
figures: the server's own cost). Latency is from sending a message until its reply (answer or
hand-over notice) arrives on the event stream; a message with no reply counts at the wait bound
(`widget_load.ANSWER_WAIT_S`). The tiny model's confidence is always low, so an operator-published
template version with a zero threshold keeps the bot answering, as a confident model would.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import tempfile

from PIL import Image, ImageDraw

from bot.store import Store
from bot.template_versions import PublishedTemplates
from bot.templates import Template, TemplateLibrary
from engine.tiny import build_tiny_checkpoint
from tests.live_server import free_port

from .figures import Figure
from .widget_load import ANSWER_WAIT_S, busy_handovers, peak_rss_mb, run_visitors, start_server

VISITORS = 200
MESSAGES = 3
RAMP_S = 10.0


def _screenshot() -> bytes:
    image = Image.new("RGB", (640, 480), (248, 248, 250))
    draw = ImageDraw.Draw(image)
    for row in range(20, 460, 24):
        draw.text((20, row), f"Order #1042  status: in transit  {row}", fill=(30, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _answering_template(data_dir: str) -> None:
    store = Store(data_dir)
    PublishedTemplates(store, TemplateLibrary()).seed()
    general = TemplateLibrary().get("general").to_dict()
    general["escalation"]["confidence_threshold"] = 0.0
    general["generation"]["max_new_tokens"] = 32
    store.add_template_version("general", Template.from_dict(general).to_yaml(), "bench", publish=True)
    store.close()


def _run(env: dict[str, str], data_dir: str) -> tuple:
    port = free_port()
    server = start_server(data_dir, port, env)
    try:
        result = asyncio.run(run_visitors(port, VISITORS, MESSAGES, image=_screenshot(), ramp_s=RAMP_S))
        rss = peak_rss_mb(server.pid)
        result.busy_handovers = busy_handovers(port)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return result, rss


def _figures(suffix: str, what: str, result, rss: float) -> list[Figure]:
    cuts = statistics.quantiles(result.answer_ms, n=100) if len(result.answer_ms) > 1 else [0.0] * 99
    return [
        Figure(f"load_msgs_per_s{suffix}", result.messages_per_s, "",
               f"replies (answer or hand-over notice) arrived per second, {what}"),
        Figure(f"load_answers_per_s{suffix}", result.answers_per_s, "", f"of those, the bot's answers per second, {what}"),
        Figure(f"load_p50_ms{suffix}", cuts[49], "",
               f"median time from sending to the reply (none: {ANSWER_WAIT_S:.0f} s), {what}"),
        Figure(f"load_p99_ms{suffix}", cuts[98], "",
               f"99th percentile time from sending to the reply (none: {ANSWER_WAIT_S:.0f} s), {what}"),
        Figure(f"load_errors{suffix}", result.errors, "<= 0",
               f"messages refused or without a reply within {ANSWER_WAIT_S:.0f} s, {what}"),
        Figure(f"load_lost_messages{suffix}", result.lost, "<= 0",
               f"acknowledged messages without a stored answer or hand-over (or kept for the person who has "
               f"the conversation), {what}"),
        Figure(f"load_peak_rss_mb{suffix}", rss, "", f"server's peak resident memory, {what}"),
        Figure(f"load_busy_handovers{suffix}", result.busy_handovers, "",
               f"turns handed over because the engine queue (default size) stayed full, {what}"),
        Figure(f"load_for_person{suffix}", result.for_person, "",
               f"messages sent after their conversation was handed over (a person answers them), {what}"),
    ]


def run() -> list[Figure]:
    what = f"{VISITORS} visitors x {MESSAGES} messages with a screenshot"
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_checkpoint(f"{tmp}/model")
        _answering_template(f"{tmp}/data")
        tiny, tiny_rss = _run({"SNAPDESK_MODEL": str(model)}, f"{tmp}/data")
    with tempfile.TemporaryDirectory() as tmp:
        stub, stub_rss = _run({"SNAPDESK_ENGINE": "stub"}, tmp)
    return _figures("", f"{what}, tiny checkpoint", tiny, tiny_rss) + _figures("_stub", f"{what}, stub engine", stub, stub_rss)
