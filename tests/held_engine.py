"""An engine that holds every request until the test releases it.

Tests of what happens *while* the model is generating (typing indicators, a hand-over that
lands mid-turn, answers finishing out of order, a failure of one request among several)
need to decide when each generation ends. `HeldEngine` speaks the engine interface of
`engine.stub.StubEngine`; each request waits, as a `HeldRequest` in `engine.requests`,
until the test calls `release()` or `fail()` on it.

    engine = HeldEngine(); engine.start()
    turn = asyncio.ensure_future(manager.handle(inbound))
    first, = await engine.wait_for_requests(1)
    ...                                   # look at the state while the model "thinks"
    first.release("Your parcel left the depot today.", confidence=0.8)
    outcome = await turn

`auto()` answers every new request at once (and `hold()` goes back to holding). Everything
runs on the test's event loop; `release()` and `fail()` are plain methods.
"""

from __future__ import annotations

import asyncio
import time

from engine.base import (
    EngineClosed,
    EngineError,
    Generation,
    GenerationRequest,
    GenerationStream,
    Timings,
    generate_from_stream,
)
from engine.loading import visual_tokens
from engine.stub import last_user_text, scripted_generation, stub_prompt_tokens, stub_text_tokens

DEFAULT_TEXT = "An answer."


class HeldRequest:
    """One request waiting for the test: `release()` answers it, `fail()` makes it fail."""

    def __init__(self, engine: "HeldEngine", request: GenerationRequest, stream: GenerationStream) -> None:
        self.request = request
        self.stream = stream
        self.done = False  # released or failed
        self.cancelled = False  # its caller gave up (timeout, cancellation)
        self.generation: Generation | None = None  # what release() answered
        self.error: BaseException | None = None  # what fail() raised
        self._engine = engine
        self._arrived = time.perf_counter()

    @property
    def text(self) -> str:
        """The last user message's text, to tell requests apart."""
        return last_user_text(self.request)

    def release(self, text: str = DEFAULT_TEXT, confidence: float = 0.9) -> Generation:
        """Stream `text` word by word, then the result, whose confidence is `confidence`."""
        self._finishing()
        elapsed = (time.perf_counter() - self._arrived) * 1000.0
        generation = scripted_generation(text, confidence, self._engine.prompt_tokens(self.request),
                                         Timings(0.0, elapsed, elapsed))
        words = text.split(" ")
        self.stream.push_delta(words[0])
        for word in words[1:]:
            self.stream.push_delta(" " + word)
        self.stream.push_result(generation)
        self.generation = generation
        return generation

    def fail(self, exc: BaseException | None = None) -> None:
        """End the request with `exc` (default `EngineError("boom")`), e.g. `EngineOverloaded(...)`."""
        self._finishing()
        self.error = exc if exc is not None else EngineError("boom")
        self.stream.push_error(self.error)

    def _cancelled(self) -> None:  # the stream's cancel: its caller timed out or was cancelled
        self.cancelled = True

    def _finishing(self) -> None:
        if self.done:
            raise RuntimeError(f"request {self.text!r} was already released or failed")
        self.done = True

    def __repr__(self) -> str:
        state = "done" if self.done else "cancelled" if self.cancelled else "held"
        return f"<HeldRequest {self.text!r} {state}>"


class HeldEngine:
    """Same interface as `StubEngine`; every request waits for the test (see the module doc)."""

    model_name = "held"

    def __init__(self) -> None:
        self.requests: list[HeldRequest] = []
        self._ready = False
        self._auto: tuple[str, float] | None = None
        self._waiters: list[tuple[int, asyncio.Future]] = []

    # Engine interface ------------------------------------------------------------
    def start(self) -> None:
        self._ready = True

    @property
    def ready(self) -> bool:
        return self._ready

    def close(self) -> None:
        """Stop; requests still held fail with EngineClosed, as on a real engine."""
        self._ready = False
        for handle in self.pending():
            handle.fail(EngineClosed("the engine has been stopped"))

    def count_text_tokens(self, text: str) -> int:
        return stub_text_tokens(text)

    def count_image_tokens(self, width: int, height: int) -> int:
        return visual_tokens(width, height)

    def prompt_tokens(self, request: GenerationRequest) -> int:
        return stub_prompt_tokens(request)

    def stream(self, request: GenerationRequest, timeout: float | None = None) -> GenerationStream:
        if not self._ready:
            raise EngineError("the engine is not started")
        holder: list[HeldRequest] = []
        stream = GenerationStream(cancel=lambda: holder and holder[0]._cancelled(), timeout=timeout)
        handle = HeldRequest(self, request, stream)
        holder.append(handle)
        self.requests.append(handle)
        if self._auto is not None:
            handle.release(*self._auto)
        self._wake_waiters()
        return stream

    async def generate(self, request: GenerationRequest, timeout: float | None = None) -> Generation:
        return await generate_from_stream(self.stream(request, timeout))

    # Test controls ---------------------------------------------------------------
    def pending(self) -> list[HeldRequest]:
        """Requests still held: neither released, failed, nor given up by their caller."""
        return [h for h in self.requests if not h.done and not h.cancelled]

    def auto(self, text: str = DEFAULT_TEXT, confidence: float = 0.9) -> None:
        """From now on answer every new request at once (requests already held stay held)."""
        self._auto = (text, confidence)

    def hold(self) -> None:
        """Hold new requests again (the default)."""
        self._auto = None

    async def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[HeldRequest]:
        """Wait until at least `n` requests have arrived; returns the first `n`."""
        if len(self.requests) < n:
            future = asyncio.get_running_loop().create_future()
            entry = (n, future)
            self._waiters.append(entry)
            try:
                await asyncio.wait_for(future, timeout)
            except (asyncio.TimeoutError, TimeoutError):
                arrived = ", ".join(repr(h.text) for h in self.requests) or "none"
                raise AssertionError(
                    f"expected at least {n} engine request(s) within {timeout:g} s, "
                    f"but {len(self.requests)} arrived ({arrived})"
                ) from None
            finally:
                if entry in self._waiters:
                    self._waiters.remove(entry)
        return self.requests[:n]

    def _wake_waiters(self) -> None:
        for n, future in list(self._waiters):
            if len(self.requests) >= n:
                self._waiters.remove((n, future))
                try:
                    future.get_loop().call_soon_threadsafe(_resolve, future)
                except RuntimeError:  # that loop is closed
                    pass


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
