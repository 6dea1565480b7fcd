"""The remote request's retry policy: what is tried again, how often, and never past the deadline."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.base import EngineError, EngineOverloaded, EngineTimeout
from engine.openai_engine import OpenAICompatibleEngine
from engine.openai_retries import RetryableFailure, remote_request
from tests.test_openai_engine import GUARD_S, MODEL, FakeServer, ask


class Calls:
    """An attempt that fails with the given errors in turn, then answers."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.count = 0

    async def __call__(self) -> str:
        self.count += 1
        if self.errors:
            raise self.errors.pop(0)
        return "answer"


def refused(n: int) -> RetryableFailure:
    return RetryableFailure(f"refused {n}", mark_down=True)


async def test_a_failure_before_any_token_is_tried_again_after_a_doubling_pause():
    policy = remote_request(attempts=4, backoff_s=0.01, deadline=None)
    calls = Calls(refused(1), refused(2), refused(3))
    assert await policy(calls) == "answer"
    assert calls.count == 4
    assert policy.statistics["idle_for"] == pytest.approx(0.01 + 0.02 + 0.04)


async def test_the_last_failure_is_raised_as_it_is_after_the_attempts():
    policy = remote_request(attempts=3, backoff_s=0.0, deadline=None)
    calls = Calls(*(refused(n) for n in range(1, 6)))
    with pytest.raises(RetryableFailure, match="refused 3"):
        await policy(calls)
    assert calls.count == 3


@pytest.mark.parametrize("error", [EngineError("broke mid-answer"), asyncio.CancelledError()])
async def test_other_errors_and_cancellation_are_never_tried_again(error):
    calls = Calls(error)
    with pytest.raises(type(error)):
        await remote_request(attempts=3, backoff_s=0.0, deadline=None)(calls)
    assert calls.count == 1


async def test_no_pause_ends_past_the_deadline():
    policy = remote_request(attempts=5, backoff_s=0.4, deadline=time.monotonic() + 1.0)
    calls = Calls(*(refused(n) for n in range(1, 6)))
    with pytest.raises(RetryableFailure, match="refused 2"):  # paused 0.4 s; 0.8 s more would pass the deadline
        await policy(calls)
    assert calls.count == 2 and policy.statistics["idle_for"] == pytest.approx(0.4)


def test_the_last_failure_reaches_the_caller_as_an_engine_error():
    assert type(RetryableFailure("x", mark_down=True, timeout=True).engine_error()) is EngineTimeout
    assert type(RetryableFailure("x", mark_down=True, overloaded=True).engine_error()) is EngineOverloaded
    error = RetryableFailure("http://gpu1:8000/v1 answered HTTP 503", mark_down=True).engine_error()
    assert type(error) is EngineError and str(error) == "no inference server could answer: http://gpu1:8000/v1 answered HTTP 503"


async def test_an_overloaded_server_is_asked_again_until_the_attempts_are_spent():
    server = FakeServer(mode="overloaded").start()
    engine = OpenAICompatibleEngine(urls=[server.url], model=MODEL, retries=2, retry_backoff_s=0.02)
    try:
        await asyncio.to_thread(engine.start)
        with pytest.raises(EngineOverloaded):
            await asyncio.wait_for(engine.generate(ask("hello")), GUARD_S)
        assert len(server.chat_requests) == 3
    finally:
        engine.close()
        server.stop()


async def test_a_retry_that_could_not_start_before_the_callers_deadline_is_not_waited_for():
    """The caller gets the server's answer at once, not a timeout after a pause that could not help."""
    server = FakeServer(mode="overloaded").start()
    engine = OpenAICompatibleEngine(urls=[server.url], model=MODEL, retries=3, retry_backoff_s=30.0)
    try:
        await asyncio.to_thread(engine.start)
        with pytest.raises(EngineOverloaded, match="no inference server could answer"):
            await asyncio.wait_for(engine.generate(ask("hello"), timeout=GUARD_S / 2), GUARD_S)
        assert len(server.chat_requests) == 1
    finally:
        engine.close()
        server.stop()
