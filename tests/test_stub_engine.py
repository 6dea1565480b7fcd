"""The stub engine: instant by default, a real server's timing when asked.

Timing is checked through what the engine reports (`Generation.timings`) and the order of
events, never through wall-clock bounds of the test itself.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.engine_setup import make_engine
from bot.settings import Settings
from engine.base import ChatMessage, EngineOverloaded, EngineTimeout, GenerationRequest, GenerationStream
from engine.stub import StubEngine

REPLY = "A solid red light usually means the line is down"  # 10 words: 10 tokens and the end of turn


def ask(text: str = "My router shows a solid red light") -> GenerationRequest:
    return GenerationRequest((ChatMessage.of("user", text),))


def started(**options) -> StubEngine:
    engine = StubEngine(reply=REPLY, **options)
    engine.start()
    return engine


async def test_without_timing_the_answer_is_already_in_the_stream():
    engine = started()
    stream = engine.stream(ask())
    deltas = [delta async for delta in stream]
    assert deltas == ["A", " solid red light usually means the line is down"]
    generation = await stream.result()
    assert generation.text == REPLY
    assert generation.completion_tokens == 11
    assert generation.timings.first_token_ms < 50 and generation.timings.total_ms < 50


async def test_stream_returns_at_once_and_words_arrive_in_order_over_time():
    engine = started(first_token_ms=30, tokens_per_s=200)
    stream = engine.stream(ask())
    assert isinstance(stream, GenerationStream)
    arrivals: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    async for delta in stream:
        arrivals.append((delta, time.perf_counter() - t0))
    generation = await stream.result()
    assert "".join(delta for delta, _ in arrivals) == REPLY
    assert arrivals[0][0] == "A", "the first word comes alone, after the first-token delay"
    assert len(arrivals) > 2, "the rest comes token by token, not in one piece"
    times = [t for _, t in arrivals]
    assert times == sorted(times)
    assert generation.timings.first_token_ms >= 30
    # 10 more tokens (9 words and the end of turn) at 200/s: 50 ms after the first
    assert generation.timings.total_ms >= generation.timings.first_token_ms + 50 - 1
    assert generation.timings.queued_ms == 0


async def test_the_stream_is_empty_until_the_first_token_is_due():
    engine = started(first_token_ms=100)
    stream = engine.stream(ask())
    events: list[str] = []

    async def read():
        async for delta in stream:
            events.append(f"delta {delta!r}")
        events.append("result")

    reader = asyncio.ensure_future(read())
    await asyncio.sleep(0.01)  # the loop keeps running while the stub waits
    events.append("loop ran")
    await reader
    assert events[0] == "loop ran"
    assert events[1:] == ["delta 'A'", "delta ' solid red light usually means the line is down'", "result"]


@pytest.mark.parametrize("first_token_ms, tokens_per_s", [(0, 100), (40, 0), (40, 100), (80, 50)])
async def test_first_token_ms_and_tokens_per_s_shape_the_reported_timings(first_token_ms, tokens_per_s):
    engine = started(first_token_ms=first_token_ms, tokens_per_s=tokens_per_s)
    generation = await engine.generate(ask())
    timings = generation.timings
    decoding_ms = 10 * 1000 / tokens_per_s if tokens_per_s else 0.0
    assert timings.first_token_ms >= first_token_ms
    assert timings.total_ms >= first_token_ms + decoding_ms - 1
    assert timings.total_ms - timings.first_token_ms >= decoding_ms - 1
    assert timings.total_ms >= timings.first_token_ms
    assert generation.text == REPLY and generation.finish_reason == "stop"


async def test_a_slower_setting_reports_slower_timings():
    fast = await started(first_token_ms=20, tokens_per_s=400).generate(ask())
    slow = await started(first_token_ms=120, tokens_per_s=100).generate(ask())
    assert slow.timings.first_token_ms > fast.timings.first_token_ms
    assert slow.timings.total_ms - slow.timings.first_token_ms > fast.timings.total_ms - fast.timings.first_token_ms


async def test_a_reply_longer_than_the_timeout_fails_with_engine_timeout():
    engine = started(first_token_ms=10, tokens_per_s=10)  # about 1 s in all
    with pytest.raises(EngineTimeout, match="longer than 0.2 s"):
        await engine.generate(ask(), timeout=0.2)
    stream = engine.stream(ask(), timeout=0.2)
    deltas = []
    with pytest.raises(EngineTimeout):
        async for delta in stream:
            deltas.append(delta)
    assert deltas and deltas[0] == "A", "what came before the timeout was streamed"
    await asyncio.sleep(0.05)
    assert not engine._running, "a timed-out answer stops being produced"


async def test_a_first_token_later_than_the_timeout_fails_with_engine_timeout():
    engine = started(first_token_ms=500)
    with pytest.raises(EngineTimeout):
        await engine.generate(ask(), timeout=0.05)
    assert (await engine.generate(ask(), timeout=5)).text == REPLY


async def test_cancelling_the_caller_stops_the_answer():
    engine = started(first_token_ms=1000)
    task = asyncio.ensure_future(engine.generate(ask()))
    await asyncio.sleep(0.02)
    assert len(engine._running) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert not engine._running


async def test_script_errors_come_through_the_timed_stream():
    engine = StubEngine(script=lambda r: EngineOverloaded("queue full"), first_token_ms=50)
    engine.start()
    with pytest.raises(EngineOverloaded):
        await engine.generate(ask())


@pytest.mark.parametrize("timing", [{}, {"first_token_ms": 5, "tokens_per_s": 1000}])
@pytest.mark.parametrize("confidence", [0.9, 0.35])
async def test_confidence_comes_out_of_the_token_logprobs(timing, confidence):
    engine = started(confidence=confidence, **timing)
    generation = await engine.generate(ask())
    assert generation.confidence == pytest.approx(confidence)
    assert len(generation.token_logprobs) == generation.completion_tokens == 11


def test_settings_build_the_stub_with_its_timing_and_confidence():
    settings = Settings(_env_file=None, engine="stub", stub_first_token_ms=250, stub_tokens_per_s=40,
                        stub_confidence=0.42)
    engine = make_engine(settings)
    assert isinstance(engine, StubEngine)
    assert (engine.first_token_ms, engine.tokens_per_s, engine.confidence) == (250, 40, 0.42)
    default = make_engine(Settings(_env_file=None, engine="stub"))
    assert (default.first_token_ms, default.tokens_per_s, default.confidence) == (0, 0, 0.9)
    assert not default.timed


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SNAPDESK_STUB_FIRST_TOKEN_MS", "150")
    monkeypatch.setenv("SNAPDESK_STUB_TOKENS_PER_S", "25")
    monkeypatch.setenv("SNAPDESK_STUB_CONFIDENCE", "0.3")
    settings = Settings(_env_file=None)
    assert (settings.stub_first_token_ms, settings.stub_tokens_per_s, settings.stub_confidence) == (150, 25, 0.3)


async def test_concurrent_requests_overlap_like_a_batching_server():
    engine = started(first_token_ms=200, tokens_per_s=1000)
    t0 = time.perf_counter()
    generations = await asyncio.gather(*(engine.generate(ask(f"question {i}")) for i in range(20)))
    elapsed_ms = (time.perf_counter() - t0) * 1000
    assert all(g.text == REPLY for g in generations)
    assert all(g.timings.first_token_ms >= 200 for g in generations)
    assert elapsed_ms < 5 * 200, f"20 requests of 200 ms took {elapsed_ms:.0f} ms: they did not overlap"
    assert len(engine.requests) == 20


async def test_close_ends_answers_in_flight():
    engine = started(first_token_ms=1000)
    stream = engine.stream(ask())
    engine.close()
    with pytest.raises(Exception, match="closed"):
        await stream.result()
