"""The held engine (tests/held_engine.py): requests wait until the test lets them go."""

from __future__ import annotations

import asyncio

import pytest

from engine.base import (
    ChatMessage,
    Engine,
    EngineClosed,
    EngineError,
    EngineOverloaded,
    EngineTimeout,
    GenerationRequest,
    GenerationStream,
)
from tests.held_engine import HeldEngine


def ask(text: str) -> GenerationRequest:
    return GenerationRequest((ChatMessage.of("user", text),))


@pytest.fixture
def engine() -> HeldEngine:
    engine = HeldEngine()
    engine.start()
    return engine


async def test_it_speaks_the_engine_interface(engine):
    assert isinstance(engine, Engine)
    assert engine.ready and engine.model_name == "held"
    assert engine.count_text_tokens("Why was I charged?") > 0
    assert engine.count_image_tokens(1280, 720) > 0


async def test_a_request_is_held_until_released(engine):
    task = asyncio.ensure_future(engine.generate(ask("Why was I charged?")))
    (held,) = await engine.wait_for_requests(1)
    assert held.request.messages[0].parts[0].text == "Why was I charged?"
    assert not held.done and engine.pending() == [held]
    await asyncio.sleep(0.02)
    assert not task.done(), "nothing comes back before the test releases it"
    held.release("You were charged 88 for the automatic renewal.", confidence=0.7)
    generation = await task
    assert generation.text == "You were charged 88 for the automatic renewal."
    assert generation.confidence == pytest.approx(0.7)
    assert generation.completion_tokens == len(generation.token_logprobs) == 9
    assert generation.prompt_tokens > 0 and generation.finish_reason == "stop"
    assert held.done and engine.pending() == []


async def test_the_stream_returns_at_once_and_streams_on_release(engine):
    stream = engine.stream(ask("Where is my parcel?"))
    assert isinstance(stream, GenerationStream)
    deltas: list[str] = []

    async def read():
        async for delta in stream:
            deltas.append(delta)
        return await stream.result()

    reader = asyncio.ensure_future(read())
    await asyncio.sleep(0.01)
    assert deltas == []
    engine.requests[0].release("Your parcel left the depot today.")
    generation = await reader
    assert deltas == ["Your", " parcel", " left", " the", " depot", " today."]
    assert generation.text == "".join(deltas)
    assert generation.confidence == pytest.approx(0.9)


async def test_requests_are_released_out_of_order(engine):
    tasks = [asyncio.ensure_future(engine.generate(ask(f"question {i}"))) for i in range(3)]
    handles = await engine.wait_for_requests(3)
    assert [h.text for h in handles] == ["question 0", "question 1", "question 2"], "arrival order"
    finished: list[int] = []
    for i, task in enumerate(tasks):
        task.add_done_callback(lambda _, i=i: finished.append(i))
    handles[2].release("third")
    await asyncio.wait_for(tasks[2], 5)
    assert finished == [2] and engine.pending() == handles[:2]
    handles[0].release("first")
    handles[1].release("second")
    assert [g.text for g in await asyncio.gather(*tasks)] == ["first", "second", "third"]
    assert finished == [2, 0, 1]
    with pytest.raises(RuntimeError, match="already"):
        handles[0].release()


async def test_a_request_fails_with_the_given_error(engine):
    default = asyncio.ensure_future(engine.generate(ask("one")))
    overloaded = asyncio.ensure_future(engine.generate(ask("two")))
    first, second = await engine.wait_for_requests(2)
    first.fail()
    second.fail(EngineOverloaded("queue full"))
    with pytest.raises(EngineError, match="boom"):
        await default
    with pytest.raises(EngineOverloaded, match="queue full"):
        await overloaded
    assert first.done and second.done and engine.pending() == []


async def test_auto_answers_new_requests_and_hold_goes_back_to_holding(engine):
    held = asyncio.ensure_future(engine.generate(ask("held before auto")))
    await engine.wait_for_requests(1)
    engine.auto("Restart the router.", confidence=0.4)
    generation = await asyncio.wait_for(engine.generate(ask("answered at once")), 5)
    assert (generation.text, round(generation.confidence, 6)) == ("Restart the router.", 0.4)
    assert [h.text for h in engine.pending()] == ["held before auto"], "auto() only concerns new requests"
    engine.hold()
    later = asyncio.ensure_future(engine.generate(ask("held again")))
    await engine.wait_for_requests(3)
    assert [h.text for h in engine.pending()] == ["held before auto", "held again"]
    for handle in engine.pending():
        handle.release()
    assert [g.text for g in await asyncio.gather(held, later)] == ["An answer.", "An answer."]


async def test_wait_for_requests_times_out_with_a_clear_message(engine):
    engine.stream(ask("Why was I charged?"))
    with pytest.raises(AssertionError, match=r"expected at least 2 engine request\(s\) within 0.05 s, "
                                             r"but 1 arrived \('Why was I charged\?'\)"):
        await engine.wait_for_requests(2, timeout=0.05)


async def test_wait_for_requests_wakes_when_requests_arrive(engine):
    waiter = asyncio.ensure_future(engine.wait_for_requests(2))
    await asyncio.sleep(0)
    engine.stream(ask("a"))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    engine.stream(ask("b"))
    assert [h.text for h in await asyncio.wait_for(waiter, 1)] == ["a", "b"]


async def test_a_caller_that_times_out_is_no_longer_pending(engine):
    with pytest.raises(EngineTimeout):
        await engine.generate(ask("slow"), timeout=0.05)
    (handle,) = engine.requests
    assert handle.cancelled and not handle.done and engine.pending() == []


async def test_close_fails_what_is_still_held_and_refuses_new_requests(engine):
    task = asyncio.ensure_future(engine.generate(ask("in flight")))
    await engine.wait_for_requests(1)
    engine.close()
    with pytest.raises(EngineClosed):
        await task
    with pytest.raises(EngineError, match="not started"):
        engine.stream(ask("after close"))
