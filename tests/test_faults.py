"""Faults in the model: one request that crashes, runs out of memory or hangs.

The real engine on the tiny checkpoint, driven by the conversation core. Each fault is
injected where it happens in production (the processor, the model's forward pass) for
one conversation only; the user of that conversation gets a hand-over and the others
are answered as if nothing happened.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import torch

from engine.loading import LoadOptions
from engine.openai_engine import OpenAICompatibleEngine
from engine.stub import StubEngine, last_user_text
from engine.transformers_engine import TransformersEngine
from tests.live_server import live_server
from tests.test_conversation import inbound, make
from tests.test_openai_engine import GUARD_S, MODEL, FakeServer

POISON = "POISON"


class Faults:
    """Arms a fault for any batch that holds a request whose text contains POISON."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine
        self.mode: str | None = None
        self.poisoned_batch = False
        self.hang_s = 0.0
        self.batch_sizes: list[int] = []
        build_inputs = engine.build_inputs

        def watched_build_inputs(requests):
            self.batch_sizes.append(len(requests))
            self.poisoned_batch = any(POISON in last_user_text(r) for r in requests)
            if self.poisoned_batch and self.mode == "raise":
                raise ValueError("the processor choked on this input")
            return build_inputs(requests)

        engine.build_inputs = watched_build_inputs
        engine.loaded.model.register_forward_pre_hook(self._forward)

    def _forward(self, module, args):
        if not self.poisoned_batch:
            return
        if self.mode == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        if self.mode == "hang" and self.hang_s:
            hang, self.hang_s = self.hang_s, 0.0
            time.sleep(hang)  # the model is stuck, e.g. on a hung kernel


@pytest.fixture(scope="module")
def faulty(tiny_model_dir):
    engine = TransformersEngine(LoadOptions(model=str(tiny_model_dir)), batch_window_ms=100.0, max_batch_size=8,
                                request_timeout_s=60.0)
    engine.start()
    yield engine, Faults(engine)
    engine.close()


async def four_conversations(manager, poisoned_key="c"):
    texts = {key: f"Why was I charged twice? {POISON if key == poisoned_key else ''}" for key in "abcd"}
    outcomes = await asyncio.gather(*(manager.handle(inbound(texts[key], key=key)) for key in "abcd"))
    return dict(zip("abcd", outcomes))


@pytest.mark.parametrize("mode", ["raise", "oom"])
async def test_a_request_that_breaks_its_batch_hands_over_only_its_own_user(tmp_path, faulty, mode):
    engine, faults = faulty
    faults.mode, faults.batch_sizes = mode, []
    manager, channel, _ = make(tmp_path, engine, max_new_tokens=8)
    try:
        outcomes = await four_conversations(manager)
    finally:
        faults.mode = None
    assert faults.batch_sizes[0] == 4, "the four turns should have shared one batch"
    assert faults.batch_sizes[1:] == [1, 1, 1, 1], "then been retried one by one"
    poisoned = outcomes.pop("c")
    assert poisoned.kind == "handed_over" and poisoned.reason == "engine_error"
    for key, outcome in outcomes.items():
        assert outcome.reason != "engine_error", key
        assert outcome.confidence is not None, f"{key} was not generated"
    replies = [(key, kind) for key, kind, _ in channel.sent if kind in ("answer", "handover")]
    assert sorted(key for key, _ in replies) == ["a", "b", "c", "d"], "exactly one reply per conversation"


async def test_a_hung_model_hands_the_waiting_user_over_and_reports_the_stall(tmp_path, faulty):
    engine, faults = faulty
    faults.mode, faults.hang_s = "hang", 3.5
    engine.request_timeout_s = 1.0  # what stall detection measures against
    manager, channel, _ = make(tmp_path, engine, max_new_tokens=8, request_timeout_s=1.0)
    try:
        outcome = await manager.handle(inbound(f"Where is my order? {POISON}", key="stuck"))
        assert engine.worker.busy_for_s, "the user was handed over only once the model came back"
        assert outcome.kind == "handed_over" and outcome.reason == "engine_error"
        assert "EngineTimeout" in outcome.detail
        while not engine.stalled and engine.worker.busy_for_s:
            await asyncio.sleep(0.05)
        assert engine.stalled, "a batch stuck past 1.5 x the timeout must be reported"
        while engine.worker.busy_for_s:  # the model comes back
            await asyncio.sleep(0.05)
        assert not engine.stalled
    finally:
        faults.mode, engine.request_timeout_s = None, 60.0
    # The same model answers the next conversation (without the test's tight one-second limit,
    # which a loaded machine could miss for a normal answer).
    relaxed, _, _ = make(tmp_path / "after", engine, max_new_tokens=8)
    after = await relaxed.handle(inbound("Where is my order?", key="next"))
    relaxed.close()
    assert after.confidence is not None, "the next conversation is generated normally"
    assert [kind for key, kind, _ in channel.sent if key == "stuck"] == ["handover"]


async def test_a_remote_request_that_hangs_hands_over_while_the_others_are_answered(tmp_path):
    server = FakeServer(mode="hang_if_poisoned").start()
    engine = OpenAICompatibleEngine(urls=[server.url], model=MODEL, retry_backoff_s=0.02, request_timeout_s=60.0)
    try:
        await asyncio.to_thread(engine.start)
        manager, channel, _ = make(tmp_path, engine, max_new_tokens=8, request_timeout_s=1.5)
        finished: dict[str, float] = {}
        started = time.monotonic()

        async def turn(key):
            outcome = await manager.handle(inbound(f"Why was I charged? {POISON if key == 'c' else ''}", key=key))
            finished[key] = time.monotonic() - started
            return outcome

        outcomes = dict(zip("abcd", await asyncio.gather(*(turn(key) for key in "abcd"))))
        deadline = time.monotonic() + GUARD_S  # the hung request is abandoned, not left open on the server
        while not server.disconnects and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert server.disconnects == 1
    finally:
        engine.close()
        server.stop()
    poisoned = outcomes.pop("c")
    assert poisoned.kind == "handed_over" and "EngineTimeout" in poisoned.detail
    assert 1.5 <= finished["c"] < 4.0
    for key, outcome in outcomes.items():
        assert outcome.reason != "engine_error" and outcome.confidence is not None, key
        assert finished[key] < 1.5, f"{key} waited for the hung request"
    assert sorted(key for key, kind, _ in channel.sent if kind in ("answer", "handover")) == ["a", "b", "c", "d"]


def test_readyz_reports_a_stuck_model_and_health_still_answers(tmp_path):
    engine = StubEngine(keep_requests=0)
    with live_server(tmp_path, engine=engine) as (base, _):
        engine.stalled = True
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "stalled"
        assert httpx.get(f"{base}/healthz").status_code == 200
        engine.stalled = False
        assert httpx.get(f"{base}/readyz").json()["status"] == "ready"
