"""The conversation core through ConversationManager, with the real store and templates."""

from __future__ import annotations

import asyncio
import gc
import io
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image

from bot.context import ContextOptions
from bot.conversation import ConversationManager, ManagerOptions
from bot.escalation import EscalationPolicy
from bot.messages import ChannelRegistry, Inbound, utcnow
from bot.store import CLAIMED, RESOLVED, WAITING, Store
from bot.template_versions import PublishedTemplates
from bot.templates import TemplateLibrary
from engine.base import EngineError, EngineOverloaded, ImagePart, TextPart
from engine.stub import StubEngine, last_user_text


class RecordingChannel:
    name = "widget"

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []  # (conversation key, kind, text)

    async def send(self, conversation, outbound) -> None:
        self.sent.append((conversation.conversation_key, outbound.kind, outbound.text))


def png(width: int = 1920, height: int = 1080, colour: str = "white") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def make(data_dir: Path, engine=None, *, request_timeout_s: float | None = None, engine_slots: int | None = None,
         channel=None, **context) -> tuple[ConversationManager, RecordingChannel, StubEngine]:
    """A manager over a fresh store in `data_dir`, answering through `engine` to `channel`
    (a RecordingChannel named "widget" unless given)."""
    engine = engine or StubEngine(reply="You were charged 88 for the automatic renewal of your membership.")
    engine.start()
    store = Store(data_dir)
    templates = PublishedTemplates(store, TemplateLibrary())
    templates.seed()
    channel = channel if channel is not None else RecordingChannel()
    channels = ChannelRegistry()
    channels.register(channel)
    options = ManagerOptions(context=ContextOptions(**context), busy_wait_s=BUSY_WAIT_S,
                             request_timeout_s=request_timeout_s, engine_slots=engine_slots)
    return ConversationManager(store, engine, templates, EscalationPolicy(), channels, options), channel, engine


BUSY_WAIT_S = 0.6  # how long a turn waits for a full engine queue in these tests
_counter = iter(range(1, 10**9))


def inbound(text: str = "Why was I charged?", key: str = "visitor-1", images: tuple[bytes, ...] = (), mid: str | None = None):
    return Inbound(channel="widget", conversation_key=key, message_id=mid or f"m{next(_counter)}",
                   user_id=key, user_name="Ana", text=text, images=images)


async def test_a_redelivered_message_is_answered_once(tmp_path):
    manager, channel, _ = make(tmp_path)
    message = inbound(mid="evt-1")
    first = await manager.handle(message)
    second = await manager.handle(message)
    assert first.kind == "answered" and second.kind == "duplicate"
    assert [kind for _, kind, _ in channel.sent] == ["answer"]
    assert len([m for m in manager.store.messages(first.conversation_id) if m["role"] == "bot"]) == 1


async def test_turns_of_one_conversation_stay_in_order_while_conversations_overlap(tmp_path):
    active, peak = 0, 0

    class SlowEngine(StubEngine):
        async def generate(self, request, timeout=None):
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            text = last_user_text(request)
            await asyncio.sleep(0.05 if text.endswith("0") else 0.001)  # the first turn is the slowest
            active -= 1
            return await super().generate(request, timeout)

    engine = SlowEngine(script=lambda r: (f"answer to {last_user_text(r)}", 0.9))
    manager, channel, _ = make(tmp_path, engine)
    turns = [inbound(f"{key} question {i}", key=key) for i in range(5) for key in ("a", "b")]
    await asyncio.gather(*(manager.handle(t) for t in turns))
    for key in ("a", "b"):
        answers = [text for k, kind, text in channel.sent if k == key and kind == "answer"]
        assert answers == [f"answer to {key} question {i}" for i in range(5)]
    assert peak >= 2, "different conversations should be answered concurrently"


CRASHING_CLIENT = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    sys.path.insert(0, {root!r})
    from tests.test_conversation import make, inbound

    async def main():
        manager, _, _ = make({data!r})
        accepted = await manager.accept(inbound("Why was I charged?", mid="evt-crash"))
        print(accepted.message_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # die between storing and answering

    asyncio.run(main())
    """
)


async def test_a_crash_between_storing_and_answering_is_recovered_with_one_answer(tmp_path):
    root = str(Path(__file__).resolve().parent.parent)
    script = CRASHING_CLIENT.format(root=root, data=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == -9, result.stderr
    message_id = int(result.stdout.strip())

    manager, channel, _ = make(tmp_path)
    assert manager.store.message(message_id)["status"] == "pending"
    report = await manager.recover()
    assert report["reprocessed"] == 1
    assert [kind for _, kind, _ in channel.sent] == ["answer"]
    again = await manager.recover()  # a second restart answers nothing twice
    assert again == {"reprocessed": 0, "failed": 0, "redelivered": 0}
    duplicate = await manager.handle(inbound("Why was I charged?", mid="evt-crash"))
    assert duplicate.kind == "duplicate" and len(channel.sent) == 1


async def test_undelivered_replies_are_sent_after_a_restart(tmp_path):
    class BrokenChannel(RecordingChannel):
        async def send(self, conversation, outbound):
            raise ConnectionError("platform down")

    manager, _, _ = make(tmp_path)
    manager.channels.register(BrokenChannel())
    outcome = await manager.handle(inbound())
    assert outcome.kind == "answered"
    assert len(manager.store.undelivered()) == 1  # stored, not lost

    restarted, channel, _ = make(tmp_path)
    assert (await restarted.recover())["redelivered"] == 1
    assert channel.sent[0][1] == "answer" and not restarted.store.undelivered()


async def test_a_hand_over_notice_sent_after_a_restart_still_says_why(tmp_path):
    class BrokenChannel(RecordingChannel):
        async def send(self, conversation, outbound):
            raise ConnectionError("platform down")

    class ReasonChannel(RecordingChannel):
        reasons: list = []

        async def send(self, conversation, outbound):
            self.reasons.append((outbound.kind, outbound.reason, outbound.confidence))
            await super().send(conversation, outbound)

    manager, _, _ = make(tmp_path, scripted("It may be a renewal.", 0.2))
    manager.channels.register(BrokenChannel())
    outcome = await manager.handle(inbound("Why was I charged?"))
    assert outcome.reason == "low_confidence"
    restarted, _, _ = make(tmp_path)
    channel = ReasonChannel()
    restarted.channels.register(channel)
    assert (await restarted.recover())["redelivered"] == 1
    [(kind, reason, confidence)] = channel.reasons
    assert kind == "handover" and reason == "low_confidence" and confidence == pytest.approx(0.2, abs=0.05)


async def test_the_bot_stays_silent_while_a_person_owns_the_thread(tmp_path):
    manager, channel, engine = make(tmp_path)
    handover = await manager.handle(inbound("Can I talk to a real person?"))
    assert handover.kind == "handed_over" and handover.reason == "user_request"
    cid = handover.conversation_id
    assert manager.store.conversation(cid)["status"] == WAITING
    calls = len(engine.requests)

    waiting = await manager.handle(inbound("Hello? Anyone?"))
    assert waiting.kind == "for_agent"
    assert await manager.claim(cid, "mei") and not await manager.claim(cid, "li")  # one agent only
    assert manager.store.conversation(cid)["status"] == CLAIMED
    claimed = await manager.handle(inbound("Still there?"))
    assert claimed.kind == "for_agent"
    assert len(engine.requests) == calls, "the model must not be asked while a person owns the thread"
    await manager.agent_reply(cid, "mei", "Hi Ana, I'm looking at your bill now.")
    assert channel.sent[-1] == ("visitor-1", "agent", "Hi Ana, I'm looking at your bill now.")

    await manager.hand_back(cid, "mei")
    back = await manager.handle(inbound("Thanks. How do I turn off auto-renew?"))
    assert back.kind == "answered"

    await manager.handle(inbound("human please"))
    await manager.resolve(cid, "mei")
    assert manager.store.conversation(cid)["status"] == RESOLVED
    fresh = await manager.handle(inbound("One more question: why was I charged?"))
    assert fresh.kind == "answered"
    conversation = manager.store.conversation(cid)
    assert conversation["episode"] == 2
    assert all(
        "human please" not in (p.text if isinstance(p, TextPart) else "")
        for m in engine.requests[-1].messages for p in m.parts
    ), "a fresh episode starts without the old history"


def scripted(reply: str, confidence: float = 0.9):
    return StubEngine(reply=reply, confidence=confidence)


@pytest.mark.parametrize(
    "engine, turns, reason, language",
    [
        (scripted("ok"), ["我要转人工"], "user_request", "zh"),
        (scripted("ok"), ["Can I speak to a human agent?"], "user_request", "en"),
        (scripted("It may be a renewal.", 0.2), ["Why was I charged?"], "low_confidence", "en"),
        (scripted("[[HANDOVER]] the screenshot shows a full card number"), ["Is my card OK?"], "model_declined", "en"),
        (scripted("ok"), ["I want a refund for this charge"], "sensitive_topic", "en"),
        (scripted("ok"), ["我要退款"], "sensitive_topic", "zh"),
        (scripted("Restart the router."), ["My router light is red", "that didn't help"], "repeated_failure", "en"),
        (StubEngine(script=lambda r: EngineError("CUDA error: device-side assert")), ["Where is my parcel?"], "engine_error", "en"),
        (StubEngine(script=lambda r: EngineOverloaded("queue full")), ["Where is my parcel?"], "busy", "en"),
    ],
)
async def test_each_hand_over_reason_from_a_realistic_case(tmp_path, engine, turns, reason, language):
    manager, channel, _ = make(tmp_path, engine)
    for text in turns:
        outcome = await manager.handle(inbound(text))
    assert outcome.kind == "handed_over" and outcome.reason == reason
    escalation = manager.store.escalations(outcome.conversation_id)[-1]
    assert escalation["reason"] == reason
    notice = channel.sent[-1]
    assert notice[1] == "handover"
    has_chinese = any("\u4e00" <= ch <= "\u9fff" for ch in notice[2])
    assert has_chinese == (language == "zh")
    if reason == "model_declined":
        assert "[[HANDOVER]]" not in escalation["draft_answer"]
    if reason == "low_confidence":
        assert escalation["draft_answer"] == "It may be a renewal." and escalation["confidence"] < 0.3


async def test_an_unreadable_image_alone_hands_over_with_a_clear_message(tmp_path):
    manager, channel, engine = make(tmp_path)
    outcome = await manager.handle(inbound("", images=(b"<!DOCTYPE html><html>not an image</html>",)))
    assert outcome.kind == "handed_over" and outcome.reason == "unreadable_image"
    kinds = [kind for _, kind, _ in channel.sent]
    assert kinds == ["notice", "handover"]
    assert "PNG" in channel.sent[0][2]
    assert not engine.requests


async def test_an_unreadable_image_with_a_question_still_gets_an_answer(tmp_path):
    manager, channel, _ = make(tmp_path)
    outcome = await manager.handle(inbound("Why was I charged?", images=(b"\x89PNG\r\n\x1a\n broken",)))
    assert outcome.kind == "answered"
    assert [kind for _, kind, _ in channel.sent] == ["notice", "answer"]


async def test_old_screenshots_become_numbered_stand_ins_and_the_budget_holds(tmp_path):
    manager, _, engine = make(tmp_path, budget_tokens=4096, recent_images=1)  # the new one + one earlier
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    for i, colour in enumerate(colours):
        await manager.handle(inbound(f"What does screenshot {i + 1} show?", images=(png(colour=colour),)))
    last = engine.requests[-1]
    images = [p for m in last.messages for p in m.parts if isinstance(p, ImagePart)]
    assert len(images) == 2 and images[-1].image.getpixel((5, 5)) == (255, 165, 0)
    texts = [p.text for m in last.messages for p in m.parts if isinstance(p, TextPart)]
    stand_ins = [t for t in texts if t.startswith("[screenshot #")]
    assert stand_ins, "older screenshots should be described, not dropped silently"
    assert all("You were charged 88" in t for t in stand_ins), "the description comes from the bot's answer"
    prompt_tokens = sum(
        engine.count_text_tokens(p.text) if isinstance(p, TextPart) else engine.count_image_tokens(*p.image.size)
        for m in last.messages for p in m.parts
    )
    assert prompt_tokens <= 4096
    files = list((tmp_path / "attachments").rglob("*.png"))
    assert len(files) == 6 and all(len(f.stem) == 64 for f in files)  # content-addressed, re-encoded


async def test_a_broken_published_template_never_reaches_the_user(tmp_path):
    manager, channel, _ = make(tmp_path)
    good = manager.store.template_versions("general")[-1]["body"]
    broken = good.replace("{{ company }}", "{{ ''.__class__.__mro__ }}", 1)
    assert broken != good
    version = manager.store.add_template_version("general", broken, author="op", publish=True)
    outcome = await manager.handle(inbound("Why was I charged?"))
    assert outcome.kind == "answered"
    bot = [m for m in manager.store.messages(outcome.conversation_id) if m["role"] == "bot"][-1]
    assert bot["template_version"] != version  # the last good version answered


async def test_purge_removes_old_conversations_and_their_files(tmp_path):
    manager, _, _ = make(tmp_path)
    old = await manager.handle(inbound("old question", key="old", images=(png(colour="red"),)))
    new = await manager.handle(inbound("new question", key="new", images=(png(colour="blue"),)))
    store = manager.store
    store.update_conversation(old.conversation_id, last_message_at=(utcnow() - timedelta(days=40)).isoformat())
    removed = store.purge(30)
    assert removed["conversations"] == 1 and removed["attachments"] == 1 and removed["messages"] >= 2
    assert store.conversation(old.conversation_id) is None and store.conversation(new.conversation_id)
    assert len(list((tmp_path / "attachments").rglob("*.png"))) == 1
    store.add_platform_event("slack", "T1:Ev1", {"event": {"text": "old secret text"}})
    store.finish_platform_event("slack", "T1:Ev1")
    store.add_platform_event("slack", "T1:Ev2", {"event": {"text": "not processed yet"}})
    later = utcnow() + timedelta(days=31)
    assert store.purge(30, now=later)["platform_events"] == 1
    assert [e["event_key"] for e in store.pending_platform_events("slack")] == ["T1:Ev2"]


async def test_the_server_applies_the_retention_period_at_start(tmp_path):
    import httpx

    from tests.live_server import live_server

    manager, _, _ = make(tmp_path)
    old = await manager.handle(inbound("old question", key="old"))
    new = await manager.handle(inbound("new question", key="new"))
    manager.store.update_conversation(old.conversation_id, last_message_at=(utcnow() - timedelta(days=40)).isoformat())
    manager.close()
    with live_server(tmp_path, engine=StubEngine(keep_requests=0), retention_days=30) as (base, app):
        store = app.state.runtime.store
        for _ in range(100):
            if store.conversation(old.conversation_id) is None:
                break
            await asyncio.sleep(0.05)
        assert store.conversation(old.conversation_id) is None, "older than the retention period"
        assert store.conversation(new.conversation_id) is not None
        assert httpx.get(f"{base}/healthz").status_code == 200


def test_purge_and_chat_commands(tmp_path):
    env = {**os.environ, "SNAPDESK_ENGINE": "stub", "SNAPDESK_DATA_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    shot = tmp_path / "bill.png"
    shot.write_bytes(png())
    chat = subprocess.run(
        [sys.executable, "-m", "bot.cli", "chat"],
        input=f"/image {shot}\nWhy was I charged?\n/human\nhello?\n",
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert chat.returncode == 0, chat.stderr
    assert "[answered · confidence 0.90]" in chat.stdout
    assert "handed over to a person: user_request" in chat.stdout
    assert "the bot stays silent" in chat.stdout
    purge = subprocess.run([sys.executable, "-m", "bot.cli", "purge", "--older-than", "30"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert purge.returncode == 0 and "removed 0 conversations" in purge.stdout


def test_an_unwritable_data_directory_is_a_clear_error(tmp_path):
    from bot.store import StoreError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="not writable"):
        Store(blocker / "data")


async def test_a_transient_storage_failure_is_retried_not_lost(tmp_path, monkeypatch):
    import sqlite3

    import bot.turn_retries as turn_retries

    monkeypatch.setattr(turn_retries, "TURN_RETRY_PAUSES_S", (0.01, 0.01))
    manager, channel, _ = make(tmp_path)
    real_store_turn = manager.turns._store_turn
    failures = iter([sqlite3.OperationalError("database is locked")])

    def flaky(*args, **kwargs):
        error = next(failures, None)
        if error is not None:
            raise error
        return real_store_turn(*args, **kwargs)

    manager.turns._store_turn = flaky
    outcome = await manager.handle(inbound("Why was I charged?"))
    assert outcome.kind == "answered"
    assert [kind for _, kind, _ in channel.sent] == ["answer"]


async def test_a_turn_that_failed_every_retry_is_run_again_by_the_periodic_round(tmp_path, monkeypatch):
    import bot.turn_retries as turn_retries

    monkeypatch.setattr(turn_retries, "TURN_RETRY_PAUSES_S", (0.01,))
    manager, channel, _ = make(tmp_path)
    store_turn = manager.turns._store_turn
    disk = {"full": True}

    def flaky(*args, **kwargs):
        if disk["full"]:
            raise OSError("disk full")
        return store_turn(*args, **kwargs)

    manager.turns._store_turn = flaky
    accepted = await manager.accept(inbound("Why was I charged?"))
    with pytest.raises(OSError):
        await manager.process(accepted.message_id, accepted.conversation_id)
    assert await manager.retry_pending(min_age_s=0) == 0, "still failing: still pending, nothing sent"
    assert manager.store.message(accepted.message_id)["status"] == "pending" and channel.sent == []
    assert await manager.retry_pending(min_age_s=3600) == 0, "too recent for this round"
    disk["full"] = False
    assert await manager.retry_pending(min_age_s=0) == 1
    assert await manager.retry_pending(min_age_s=0) == 0
    assert [kind for _, kind, _ in channel.sent] == ["answer"]


async def test_a_turn_that_keeps_failing_stays_pending_for_the_next_start(tmp_path, monkeypatch):
    import bot.turn_retries as turn_retries

    monkeypatch.setattr(turn_retries, "TURN_RETRY_PAUSES_S", (0.01,))
    manager, channel, _ = make(tmp_path)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    manager.turns._store_turn = broken
    accepted = await manager.accept(inbound("Why was I charged?"))
    with pytest.raises(OSError):
        await manager.process(accepted.message_id, accepted.conversation_id)
    assert manager.store.message(accepted.message_id)["status"] == "pending"
    restarted, channel, _ = make(tmp_path)
    assert (await restarted.recover())["reprocessed"] == 1
    assert [kind for _, kind, _ in channel.sent] == ["answer"]


async def test_a_failure_after_the_answer_is_stored_never_answers_twice(tmp_path, monkeypatch):
    import bot.turn_retries as turn_retries

    monkeypatch.setattr(turn_retries, "TURN_RETRY_PAUSES_S", (0.01, 0.01))
    manager, channel, engine = make(tmp_path)
    real_mark = manager.store.mark_delivered
    failures = iter([OSError("I/O error")])

    def flaky_mark(message_id):
        error = next(failures, None)
        if error is not None:
            raise error
        return real_mark(message_id)

    manager.store.mark_delivered = flaky_mark
    await manager.handle(inbound("Why was I charged?"))
    assert len(engine.requests) == 1
    bots = [m for m in manager.store.messages(1) if m["role"] == "bot"]
    assert len(bots) == 1


async def test_a_full_engine_queue_is_waited_out_not_handed_over(tmp_path):
    refusals = iter([EngineOverloaded("queue full")] * 2)
    engine = StubEngine(script=lambda r: next(refusals, ("Your parcel left the depot today.", 0.9)))
    manager, channel, _ = make(tmp_path, engine)
    outcome = await manager.handle(inbound("Where is my parcel?"))
    assert outcome.kind == "answered" and outcome.reply == "Your parcel left the depot today."
    assert [kind for _, kind, _ in channel.sent] == ["answer"]


async def test_a_queue_that_stays_full_hands_over_politely_after_the_busy_wait(tmp_path):
    engine = StubEngine(script=lambda r: EngineOverloaded("queue full"))
    manager, channel, _ = make(tmp_path, engine)
    started = asyncio.get_running_loop().time()
    outcome = await manager.handle(inbound("Where is my parcel?"))
    waited = asyncio.get_running_loop().time() - started
    assert outcome.kind == "handed_over" and outcome.reason == "busy"
    assert BUSY_WAIT_S <= waited < BUSY_WAIT_S + 1.0
    assert len(engine.requests) >= 3  # it kept trying while it waited
    kinds = [kind for _, kind, _ in channel.sent]
    assert kinds == ["handover"]
    assert "A person will reply here" in channel.sent[0][2]


async def test_undelivered_replies_are_sent_again_periodically_without_a_restart(tmp_path):
    class FlakyChannel(RecordingChannel):
        down = True

        async def send(self, conversation, outbound):
            if self.down:
                raise ConnectionError("platform down")
            await super().send(conversation, outbound)

    manager, _, _ = make(tmp_path)
    channel = FlakyChannel()
    manager.channels.register(channel)
    outcome = await manager.handle(inbound("Why was I charged?"))
    assert outcome.kind == "answered" and channel.sent == []
    rounds = asyncio.ensure_future(manager.maintain_forever(0.05))
    try:
        await asyncio.sleep(0.2)
        assert channel.sent == [], "still down: nothing delivered, nothing lost"
        channel.down = False
        for _ in range(100):
            if channel.sent:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # later rounds must not send it again
    finally:
        rounds.cancel()
    assert [kind for _, kind, _ in channel.sent] == ["answer"]
    assert manager.store.undelivered() == []


async def test_a_burst_waits_for_the_engine_in_arrival_order_and_the_late_ones_go_to_a_person(tmp_path):
    started: list[str] = []

    class SlowEngine(StubEngine):
        async def generate(self, request, timeout=None):
            started.append(last_user_text(request))
            await asyncio.sleep(0.4)
            return await super().generate(request, timeout)

    manager, channel, _ = make(tmp_path, SlowEngine(reply="Your parcel is on its way."), engine_slots=2)
    turns = []
    gc.disable()  # a collection pause among the arrivals (a big heap late in a test run) would spread them out
    try:
        for i in range(6):  # two at a time, 0.4 s each, BUSY_WAIT_S 0.6: four get in, two wait too long
            turns.append(asyncio.ensure_future(manager.handle(inbound(f"Where is my parcel? #{i}", key=f"v{i}"))))
            await asyncio.sleep(0.01)
        outcomes = await asyncio.gather(*turns)
    finally:
        gc.enable()
    assert started == [f"Where is my parcel? #{i}" for i in range(4)], "first come, first served"
    assert [o.kind for o in outcomes] == ["answered"] * 4 + ["handed_over"] * 2
    assert {o.reason for o in outcomes[4:]} == {"busy"}
    assert sorted(key for key, kind, _ in channel.sent) == [f"v{i}" for i in range(6)]


async def test_screenshots_are_decoded_a_bounded_number_at_a_time(tmp_path):
    manager, channel, _ = make(tmp_path)
    manager.intake.image_decoding = asyncio.Semaphore(2)
    prepare, active, peak = manager.intake._prepare, [0], [0]

    def counting(data):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            import time

            time.sleep(0.05)
            return prepare(data)
        finally:
            active[0] -= 1

    manager.intake._prepare = counting
    outcomes = await asyncio.gather(*(
        manager.handle(inbound("What does this say?", key=f"k{i}", images=(png(640, 480),))) for i in range(6)
    ))
    assert peak[0] == 2
    assert all(o.kind == "answered" for o in outcomes) and len(channel.sent) == 6


class StreamingChannel(RecordingChannel):
    def __init__(self) -> None:
        super().__init__()
        self.deltas: list[str] = []

    async def send_delta(self, conversation, reply_to, text) -> None:
        self.deltas.append(text)


def publish_general(manager: ConversationManager, **changes) -> None:
    """A new published version of the default template with `changes` made to it."""
    import yaml

    data = yaml.safe_load(TemplateLibrary().get("general").to_yaml())
    for key, value in changes.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    manager.store.add_template_version("general", yaml.safe_dump(data, allow_unicode=True), publish=True)


async def test_answers_are_shown_only_once_decided_unless_the_template_streams(tmp_path):
    engine = StubEngine(reply="Your renewal of 88 was automatic.")
    engine.start()
    manager, _, _ = make(tmp_path, engine)
    channel = StreamingChannel()
    manager.channels.register(channel)
    await manager.handle(inbound("Why was I charged?"))
    assert channel.deltas == [] and [kind for _, kind, _ in channel.sent] == ["answer"]
    publish_general(manager, stream=True)
    await manager.handle(inbound("And the other charge?"))
    assert "".join(channel.deltas) == "Your renewal of 88 was automatic."


async def test_the_templates_sensitive_topics_replace_the_defaults(tmp_path):
    manager, channel, engine = make(tmp_path)
    publish_general(manager, escalation={"sensitive_topics": ["warranty", "保修"]})
    warranty = await manager.handle(inbound("Is my warranty claim accepted?", key="w"))
    assert warranty.kind == "handed_over" and warranty.reason == "sensitive_topic"
    assert not engine.requests, "a sensitive topic needs no model"
    refund = await manager.handle(inbound("I want a refund", key="r"))
    assert refund.kind == "answered", "the template's list replaced the defaults"
