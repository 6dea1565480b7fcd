"""Conversation-core figures: history cost over a long conversation, manager throughput."""

from __future__ import annotations

import asyncio
import io
import random
import tempfile
import time

from PIL import Image, ImageDraw

from bot.context import ContextOptions
from bot.conversation import ConversationManager, ManagerOptions
from bot.escalation import EscalationPolicy
from bot.messages import ChannelRegistry, Inbound
from bot.store import Store
from bot.template_versions import PublishedTemplates
from bot.templates import Template, TemplateLibrary
from engine.loading import LoadOptions
from engine.stub import StubEngine
from engine.tiny import build_tiny_checkpoint
from engine.transformers_engine import TransformersEngine

from .figures import Figure

TURNS = 30
BUDGET = 8192
RECENT_IMAGES = 2
# Screenshots per turn, one to four (the widget's limit), in an order no rule of the history
# could be tuned to: seeded, so every run sends the same conversation.
_order = random.Random(30)
SCREENSHOTS = [_order.randint(1, 4) for _ in range(TURNS)]


class NullChannel:
    name = "widget"

    async def send(self, conversation, outbound) -> None:
        return None


class RecordingEngine:
    """Passes requests to the real engine and keeps each request and Generation."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.requests = []
        self.generations = []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    async def generate(self, request, timeout=None):
        self.requests.append(request)
        generation = await self.engine.generate(request, timeout)
        self.generations.append(generation)
        return generation


def screenshot_1080p(turn: int, index: int = 0) -> bytes:
    image = Image.new("RGB", (1920, 1080), (250, 250, 250))
    draw = ImageDraw.Draw(image)
    draw.text((100, 100 + 20 * turn), f"Order #{1000 + turn}-{index}  status: in transit", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def manager_for(data_dir: str, engine) -> ConversationManager:
    store = Store(data_dir)
    templates = PublishedTemplates(store, TemplateLibrary())
    templates.seed()
    channels = ChannelRegistry()
    channels.register(NullChannel())
    options = ManagerOptions(context=ContextOptions(budget_tokens=BUDGET, recent_images=RECENT_IMAGES))
    return ConversationManager(store, engine, templates, EscalationPolicy(), channels, options)


def long_conversation() -> tuple[float, int, int]:
    """30 turns of one to four 1080p screenshots each, on the tiny checkpoint.

    Returns visual tokens at turn 30 / at turn 3, the largest prompt, and the most earlier
    screenshots any prompt carried as images.
    """
    with tempfile.TemporaryDirectory() as tmp:
        engine = TransformersEngine(LoadOptions(model=str(build_tiny_checkpoint(f"{tmp}/model"))))
        engine.start()
        recording = RecordingEngine(engine)
        manager = manager_for(f"{tmp}/data", recording)
        # The tiny model's confidence is always low: an operator-published version with a
        # zero threshold keeps the bot answering, as a confident real model would.
        shipped = TemplateLibrary().get("general").to_dict()
        shipped["escalation"]["confidence_threshold"] = 0.0
        shipped["generation"]["max_new_tokens"] = 24
        manager.store.add_template_version("general", Template.from_dict(shipped).to_yaml(), "bench", publish=True)

        async def run() -> None:
            for turn in range(TURNS):
                await manager.handle(
                    Inbound("widget", "long", f"t{turn}", "u1", "Ana", f"Where is order {1000 + turn}?",
                            tuple(screenshot_1080p(turn, i) for i in range(SCREENSHOTS[turn])))
                )

        try:
            asyncio.run(run())
        finally:
            manager.close()
            engine.close()
        generations = recording.generations
        assert len(generations) == TURNS, f"only {len(generations)} of {TURNS} turns reached the model"
        # Every screenshot of the new message goes in, and at most the two most recent earlier
        # ones: the figures are whether that holds, and what it costs, over a long conversation.
        ratio = generations[-1].image_tokens / generations[2].image_tokens
        earlier = max(len(r.images) - len(r.messages[-1].images) for r in recording.requests)
        return ratio, max(g.prompt_tokens for g in generations), earlier


def manager_throughput(conversations: int = 50, per_conversation: int = 20) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        engine = StubEngine()
        engine.start()
        manager = manager_for(tmp, engine)

        async def visitor(index: int) -> None:
            for turn in range(per_conversation):
                await manager.handle(
                    Inbound("widget", f"visitor-{index}", f"{index}-{turn}", f"u{index}", "", "Where is my parcel?")
                )

        async def run() -> float:
            started = time.perf_counter()
            await asyncio.gather(*(visitor(i) for i in range(conversations)))
            return time.perf_counter() - started

        try:
            elapsed = asyncio.run(run())
        finally:
            manager.close()
        return conversations * per_conversation / elapsed


def run() -> list[Figure]:
    ratio, largest, earlier = long_conversation()
    bound = (SCREENSHOTS[-1] + RECENT_IMAGES) / (SCREENSHOTS[2] + min(RECENT_IMAGES, sum(SCREENSHOTS[:2])))
    return [
        Figure("history_visual_tokens_ratio_30", ratio, f"<= {bound:.3f}",
               f"visual tokens in the prompt at turn 30 / at turn 3, one to four 1080p screenshots a turn "
               f"(turn 3 sends {SCREENSHOTS[2]}, turn 30 sends {SCREENSHOTS[-1]}; the target is that plus "
               f"{RECENT_IMAGES} earlier each)"),
        Figure("history_earlier_images_max_30", earlier, f"<= {RECENT_IMAGES}",
               "most earlier screenshots any of those 30 prompts carried as images"),
        Figure("history_prompt_tokens_max_30", largest, f"<= {BUDGET}", "largest prompt over those 30 turns"),
        Figure("manager_msgs_per_s", manager_throughput(), ">= 500",
               "messages through handle() per second, stub engine, 50 conversations in parallel"),
    ]
