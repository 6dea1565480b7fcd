"""A conversation's screenshots, read on this machine: only the redacted image is ever kept or sent.

The real OCR (RapidOCR on ONNX Runtime) reads real rendered screenshots here; one reader is
loaded for the whole module, and each screenshot is read once per test that needs it.
"""

from __future__ import annotations

import asyncio
import io
import json
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from bot.conversation import ConversationManager, ManagerOptions
from bot.escalation import EscalationPolicy
from bot.knowledge.index import KnowledgeBase
from bot.messages import ChannelRegistry, Inbound
from bot.screenshots import ReadingOptions
from bot.store import Store
from bot.template_versions import PublishedTemplates
from bot.templates import TemplateLibrary
from engine.ocr import OcrReader
from engine.stub import StubEngine

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
CARD = "4539 1488 0343 6467"
EMAIL = "jane.doe@example.com"
PAINT = (20, 20, 20)


class Recorder:
    name = "widget"

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []  # (kind, text)
        self.outbound: list = []  # what was sent, whole
        self.refreshed: list[int] = []

    async def send(self, conversation, outbound) -> None:
        self.sent.append((outbound.kind, outbound.text))
        self.outbound.append(outbound)

    async def send_screenshots_ready(self, conversation, message_id: int) -> None:
        self.refreshed.append(message_id)


def statement_png(lines: list[str] | None = None, size=(1280, 720), blur: float = 0.0) -> bytes:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 30)
    lines = lines or ["Payment failed", "CARD_DECLINED (E-4012)", f"Card {CARD}", f"Email {EMAIL}",
                      "Amount $88.00 on 2024-03-05"]
    for index, line in enumerate(lines):
        draw.text((60, 60 + 70 * index), line, font=font, fill="black")
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def router_photo_png() -> bytes:
    """A device photo: no text, clear shapes (a router with one solid red light)."""
    rng = np.random.default_rng(7)
    base = np.linspace(90, 170, 900, dtype=np.float32)[None, :, None].repeat(600, 0).repeat(3, 2)
    image = Image.fromarray(np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle([180, 220, 720, 380], 24, fill=(30, 30, 34))
    for x, colour in zip(range(260, 660, 80), [(0, 200, 60), (0, 200, 60), (230, 20, 20), (60, 60, 60), (0, 200, 60)]):
        draw.ellipse([x, 280, x + 22, 302], fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def reader():
    ocr = OcrReader(workers=1, timeout_s=60)
    ocr.load()
    yield ocr
    ocr.close()


def make(tmp_path, reader, engine=None, reading=ReadingOptions(), knowledge: bool = False,
         options: ManagerOptions = ManagerOptions()):
    engine = engine or StubEngine(reply="That charge is your membership renewal.", keep_requests=10)
    engine.start()
    store = Store(tmp_path)
    templates = PublishedTemplates(store, TemplateLibrary())
    templates.seed()
    channels = ChannelRegistry()
    recorder = Recorder()
    channels.register(recorder)
    manager = ConversationManager(store, engine, templates, EscalationPolicy(), channels, options,
                                  reader=reader, reading=reading, knowledge=KnowledgeBase(store) if knowledge else None)
    return manager, recorder, engine


_ids = iter(range(1, 10**9))


def inbound(images: tuple[bytes, ...], text: str = "Why was I charged?", key: str = "visitor-1") -> Inbound:
    return Inbound(channel="widget", conversation_key=key, message_id=f"m{next(_ids)}", user_id=key,
                   user_name="Ana", text=text, images=images)


def stored_attachment(manager, message_id: int):
    row = manager.store.message(message_id)
    (attachment,) = manager.store.attachments(json.loads(row["attachment_ids"])).values()
    return attachment


def painted(image: Image.Image, box) -> bool:
    region = np.asarray(image.crop(tuple(box)))
    return bool((region == np.array(PAINT)).all())


async def test_only_the_redacted_screenshot_is_stored_and_sent_to_the_model(tmp_path, reader):
    manager, recorder, engine = make(tmp_path, reader)
    outcome = await manager.handle(inbound((statement_png(),)))
    assert outcome.kind == "answered"

    attachment = stored_attachment(manager, outcome.message_id)
    kinds = sorted(r["kind"] for r in attachment.reading["redactions"])
    assert kinds == ["card", "email"]
    stored = Image.open(attachment.path).convert("RGB")
    assert all(painted(stored, r["box"]) for r in attachment.reading["redactions"])
    # The card keeps its last four digits as evidence, never the number.
    assert {"kind": "card", "last4": "6467"} in attachment.reading["evidence"]["redacted"]
    assert CARD not in json.dumps(attachment.reading) and EMAIL not in json.dumps(attachment.reading)
    assert "CARD_DECLINED" in attachment.reading["evidence"]["error_codes"]

    # The model saw exactly the stored (redacted) pixels.
    (request,) = engine.requests
    (sent,) = [part.image for message in request.messages for part in message.parts if hasattr(part, "image")]
    assert np.array_equal(np.asarray(sent.convert("RGB")), np.asarray(stored))

    # Read again, the stored screenshot shows none of what was hidden; the evidence stays readable.
    text = " ".join(row.text for row in reader.read_sync(stored))
    assert "4539" not in text and "6467" not in text.replace(" ", "") and "jane" not in text
    assert "CARD_DECLINED" in text and "88.00" in text

    # The user is told, before the answer, and nothing is left in the staging directory.
    kinds_sent = [kind for kind, _ in recorder.sent]
    assert kinds_sent == ["notice", "answer"] and "personal data" in recorder.sent[0][1]
    assert list((tmp_path / "staging").iterdir()) == []
    assert recorder.refreshed == [outcome.message_id]
    manager.close()


async def test_a_chinese_conversation_is_told_in_chinese(tmp_path, reader):
    manager, recorder, _ = make(tmp_path, reader)
    outcome = await manager.handle(inbound((statement_png(),), text="为什么扣我钱？"))
    assert outcome.kind == "answered"
    notice = next(text for kind, text in recorder.sent if kind == "notice")
    assert "个人信息" in notice
    manager.close()


async def test_redaction_off_keeps_the_screenshot_but_still_reads_it(tmp_path, reader):
    manager, recorder, _ = make(tmp_path, reader, reading=ReadingOptions(redact=False))
    outcome = await manager.handle(inbound((statement_png(),)))
    attachment = stored_attachment(manager, outcome.message_id)
    assert attachment.reading["redactions"] == [] and attachment.reading["evidence"]["error_codes"]
    assert [kind for kind, _ in recorder.sent] == ["answer"]
    manager.close()


class BrokenPipeline:
    def __call__(self, image):
        raise RuntimeError("onnxruntime exploded")


class SlowPipeline:
    def __call__(self, image):
        time.sleep(1.5)
        return None


def swapped_reader(pipeline, timeout_s: float) -> OcrReader:
    broken = OcrReader(workers=1, timeout_s=timeout_s)
    broken._pipelines.put(pipeline)
    from concurrent.futures import ThreadPoolExecutor

    broken._executor = ThreadPoolExecutor(max_workers=1)
    broken._loaded = True
    return broken


@pytest.mark.parametrize("pipeline, timeout_s, outcome_name", [(BrokenPipeline(), 5.0, "failed"),
                                                               (SlowPipeline(), 0.3, "timeout")],
                         ids=["ocr-fails", "ocr-times-out"])
async def test_a_reading_that_fails_or_overruns_leaves_the_turn_working(tmp_path, pipeline, timeout_s, outcome_name):
    ocr = swapped_reader(pipeline, timeout_s)
    manager, recorder, _ = make(tmp_path, ocr)
    events = []
    manager.listeners.append(lambda event, data: events.append((event, data)))
    outcome = await manager.handle(inbound((statement_png(),)))
    assert outcome.kind == "answered"
    attachment = stored_attachment(manager, outcome.message_id)
    assert attachment.reading["ocr"] is False and attachment.reading["redactions"] == []  # kept as sent, not read
    assert ("screenshot_read", {"outcome": outcome_name, "redacted": []}) in events
    assert [kind for kind, _ in recorder.sent] == ["answer"]
    manager.close()
    ocr.close()


async def test_screenshots_staged_before_a_crash_are_finished_at_start(tmp_path, reader):
    manager, _, _ = make(tmp_path, reader)
    accepted = await manager.accept(inbound((statement_png(),)))
    (staged,) = manager.store.staged_images(accepted.message_id)
    assert (tmp_path / "staging" / staged["file"]).exists()
    assert json.loads(manager.store.message(accepted.message_id)["attachment_ids"]) == []  # nothing served yet
    (tmp_path / "staging" / "left-by-a-crash.png").write_bytes(b"half a file")
    manager.close()  # the process dies here

    manager, recorder, _ = make(tmp_path, reader)
    report = await manager.recover()
    assert report["reprocessed"] == 1
    attachment = stored_attachment(manager, accepted.message_id)
    assert [r["kind"] for r in attachment.reading["redactions"]] == ["card", "email"]
    assert list((tmp_path / "staging").iterdir()) == []
    assert [kind for kind, _ in recorder.sent] == ["notice", "answer"]
    manager.close()


async def test_two_workers_finishing_one_message_attach_its_screenshots_once(tmp_path, reader):
    manager, _, _ = make(tmp_path, reader)
    accepted = await manager.accept(inbound((statement_png(),)))
    results = await asyncio.gather(*(manager.screenshots.finish(accepted.message_id) for _ in range(3)))
    assert sorted(results) == [False, False, True]
    assert len(json.loads(manager.store.message(accepted.message_id)["attachment_ids"])) == 1
    manager.close()


async def test_an_unreadable_screenshot_is_handed_over_with_a_request_for_a_clearer_one(tmp_path, reader):
    manager, recorder, engine = make(tmp_path, reader)
    outcome = await manager.handle(inbound((statement_png(blur=9),), text=""))
    assert outcome.kind == "handed_over" and outcome.reason == "unreadable_image"
    assert not engine.requests  # decided without the model
    notice = next(text for kind, text in recorder.sent if kind == "notice")
    assert "clearer screenshot" in notice
    attachment = stored_attachment(manager, outcome.message_id)
    assert attachment.reading["unreadable"] is True  # kept for the agent to see
    manager.close()


async def test_a_clear_photo_without_text_is_not_unreadable(tmp_path, reader):
    manager, recorder, engine = make(tmp_path, reader)
    outcome = await manager.handle(inbound((router_photo_png(),), text=""))
    assert outcome.kind == "answered" and len(engine.requests) == 1
    attachment = stored_attachment(manager, outcome.message_id)
    assert attachment.reading["unreadable"] is False and attachment.reading["lines"] == []
    manager.close()


async def test_a_template_can_put_the_screenshot_reading_in_its_prompt(tmp_path, reader):
    manager, _, engine = make(tmp_path, reader)
    name = manager.templates.template_name_for("widget")
    template, _ = next(iter(manager.templates.candidates(name)))
    assert "screenshot_text" not in json.dumps(template.system_prompt)  # off the prompt by default
    source = template.system_prompt["en"] + "\n\nThe screenshot reads:\n{{ screenshot_text }}\nIt shows: {{ screenshot_evidence }}"
    edited = template.model_copy(update={"system_prompt": {**template.system_prompt, "en": source}})
    manager.store.add_template_version(name, edited.to_yaml(), author="test", publish=True)
    await manager.handle(inbound((statement_png(),)))
    (request,) = engine.requests
    system = "".join(part.text for part in request.messages[0].parts if hasattr(part, "text"))
    assert "CARD_DECLINED (E-4012)" in system and "[card •••• 6467]" in system
    assert CARD not in system and EMAIL not in system
    manager.close()


async def test_an_older_screenshot_in_words_says_what_it_showed(tmp_path, reader):
    from bot.context import ContextOptions

    manager, _, engine = make(tmp_path, reader, options=ManagerOptions(context=ContextOptions(recent_images=0)))
    await manager.handle(inbound((statement_png(),)))
    await manager.handle(inbound((), text="And what should I do now?"))
    history = "".join(part.text for message in engine.requests[-1].messages for part in message.parts
                      if hasattr(part, "text"))
    assert "[screenshot #1, sent" in history and "it shows CARD_DECLINED (E-4012)" in history
    assert CARD not in history and "•••• 6467" in history  # the stand-in keeps only what may be shown
    manager.close()


async def test_a_redelivered_screenshot_message_is_stored_and_answered_once(tmp_path, reader):
    manager, recorder, _ = make(tmp_path, reader)
    message = inbound((statement_png(),))
    first, second = await asyncio.gather(manager.accept(message), manager.accept(message))  # both deliveries race
    assert first.message_id == second.message_id and {first.duplicate, second.duplicate} == {False, True}
    outcomes = await asyncio.gather(manager.process(first.message_id), manager.handle(message))
    assert outcomes[1].kind == "duplicate"
    assert [kind for kind, _ in recorder.sent] == ["notice", "answer"]
    assert list((tmp_path / "staging").iterdir()) == []  # the losing delivery's staged copy is gone too
    manager.close()


async def test_a_reading_given_up_while_waiting_for_a_worker_does_not_keep_the_worker(reader):
    image = Image.open(io.BytesIO(statement_png())).convert("RGB")
    reader._slots.acquire()  # the only worker is busy
    waiting = asyncio.ensure_future(reader.read(image))
    await asyncio.sleep(0.2)
    waiting.cancel()  # the turn waiting for it is cancelled (a shutdown, a crash)
    reader._slots.release()  # the worker frees up: the cancelled wait must not take it for good
    await asyncio.sleep(0.3)
    rows = await asyncio.wait_for(reader.read(image), 30)
    assert any("CARD_DECLINED" in row.text for row in rows)
