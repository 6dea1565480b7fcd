"""A zero-cost engine that answers from a script, instantly or with a model's timing.

Measuring the conversation core, the web server or a load test without the model's cost
needs a backend that behaves like one (streams, reports confidence and token counts,
honours the Engine interface) but spends no time. Selected with `SNAPDESK_ENGINE=stub`.

By default it answers instantly. With `first_token_ms` and/or `tokens_per_s`
(`SNAPDESK_STUB_FIRST_TOKEN_MS`, `SNAPDESK_STUB_TOKENS_PER_S`) it takes the time a real
server would: the first word of the reply arrives after `first_token_ms`, each further
token (the remaining words, then the end-of-turn token) after another `1 / tokens_per_s`
seconds. Requests overlap as on a batching server: each one keeps its own clock, and the
waiting happens on the event loop (timers, no threads, nothing blocks).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import deque
from typing import Callable

from .base import (
    EngineClosed,
    EngineError,
    EngineTimeout,
    Generation,
    GenerationRequest,
    GenerationStream,
    TextPart,
    Timings,
    generate_from_stream,
)
from .loading import visual_tokens

DEFAULT_REPLY = "Thanks for your message. Here is what the screenshot shows and what to do next."
Script = Callable[[GenerationRequest], "tuple[str, float] | BaseException"]


def last_user_text(request: GenerationRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user":
            return "".join(p.text for p in message.parts if isinstance(p, TextPart))
    return ""


def stub_text_tokens(text: str) -> int:
    """The stub's token count of a text: about three UTF-8 bytes a token."""
    return len(text.encode("utf-8")) // 3 + 1


def stub_prompt_tokens(request: GenerationRequest) -> int:
    """The prompt's size as a scripted engine counts it: text by bytes, images by visual tokens."""
    return sum(
        stub_text_tokens(p.text) if isinstance(p, TextPart) else visual_tokens(*p.image.size)
        for m in request.messages
        for p in m.parts
    )


def scripted_generation(text: str, confidence: float, prompt_tokens: int, timings: Timings) -> Generation:
    """A `Generation` of `text` whose token log-probs make `.confidence` come out as `confidence`.

    One token per word of the reply, plus the end-of-turn token.
    """
    tokens = len(text.split(" ")) + 1
    logprob = math.log(max(confidence, 1e-9))
    return Generation(
        text=text,
        finish_reason="stop",
        token_logprobs=tuple([logprob] * tokens),
        token_ids=tuple(range(tokens)),
        prompt_tokens=prompt_tokens,
        completion_tokens=tokens,
        timings=timings,
    )


class StubEngine:
    """Answers `reply` with `confidence`, or whatever `script(request)` returns (or raises).

    `first_token_ms` and `tokens_per_s` (0 = instant, the default) give it a real server's
    timing; `Generation.timings` then reports the measured first-token and total times.
    """

    model_name = "stub"

    def __init__(self, reply: str = DEFAULT_REPLY, confidence: float = 0.9, script: Script | None = None,
                 keep_requests: int | None = None, first_token_ms: float = 0.0, tokens_per_s: float = 0.0) -> None:
        if first_token_ms < 0 or tokens_per_s < 0:
            raise ValueError("first_token_ms and tokens_per_s must not be negative")
        self.reply = reply
        self.confidence = confidence
        self.script = script
        self.first_token_ms = first_token_ms
        self.tokens_per_s = tokens_per_s
        # Requests (screenshots included) kept for inspection: all of them by default, for
        # tests; none in a long-running server, where they would only pile up.
        self.requests: deque[GenerationRequest] = deque(maxlen=keep_requests)
        self._ready = False
        # Timed answers still being produced: their tasks and streams (to end them on close()).
        self._running: dict[asyncio.Task, GenerationStream] = {}

    @property
    def timed(self) -> bool:
        """Whether answers take time (first_token_ms or tokens_per_s set)."""
        return self.first_token_ms > 0 or self.tokens_per_s > 0

    def start(self) -> None:
        self._ready = True

    @property
    def ready(self) -> bool:
        return self._ready

    def close(self) -> None:
        self._ready = False
        running, self._running = self._running, {}
        for task, stream in running.items():
            stream.push_error(EngineClosed("the engine was closed during generation"))
            try:
                task.get_loop().call_soon_threadsafe(task.cancel)
            except RuntimeError:  # its loop is closed: the task is gone with it
                pass

    def count_text_tokens(self, text: str) -> int:
        return stub_text_tokens(text)

    def count_image_tokens(self, width: int, height: int) -> int:
        return visual_tokens(width, height)

    def _prompt_tokens(self, request: GenerationRequest) -> int:
        return stub_prompt_tokens(request)

    def _answer(self, request: GenerationRequest) -> Generation:
        started = time.perf_counter()
        self.requests.append(request)
        outcome = self.script(request) if self.script else (self.reply, self.confidence)
        if isinstance(outcome, BaseException):
            raise outcome
        text, confidence = outcome
        prompt_tokens = self._prompt_tokens(request)
        elapsed = (time.perf_counter() - started) * 1000.0
        return scripted_generation(text, confidence, prompt_tokens, Timings(0.0, elapsed, elapsed))

    def stream(self, request: GenerationRequest, timeout: float | None = None) -> GenerationStream:
        if not self._ready:
            raise EngineError("the engine is not started")
        if self.timed:
            return self._timed_stream(request, timeout)
        stream = GenerationStream(timeout=timeout)
        try:
            generation = self._answer(request)
        except BaseException as exc:  # the script may raise any engine error
            stream.push_error(exc)
            return stream
        first, _, rest = generation.text.partition(" ")  # streamed in two chunks, as a batch would coalesce
        stream.push_delta(first)
        if rest:
            stream.push_delta(" " + rest)
        stream.push_result(generation)
        return stream

    def _timed_stream(self, request: GenerationRequest, timeout: float | None) -> GenerationStream:
        """Returns at once; a task on the running loop pushes the answer over time."""
        holder: list[asyncio.Task] = []
        stream = GenerationStream(cancel=lambda: holder and holder[0].cancel(), timeout=timeout)
        started = time.perf_counter()
        try:
            generation = self._answer(request)  # the script's outcome, decided now, delivered later
        except BaseException as exc:  # an error (overload, failure) is reported at once
            stream.push_error(exc)
            return stream
        task = asyncio.get_running_loop().create_task(self._produce(stream, generation, started, timeout))
        holder.append(task)
        self._running[task] = stream
        task.add_done_callback(lambda t: self._running.pop(t, None))
        return stream

    async def _produce(self, stream: GenerationStream, generation: Generation, started: float,
                       timeout: float | None) -> None:
        """Push the words of `generation` on schedule, then the result with the measured timings.

        The first word is due `first_token_ms` after the request; each further token is due
        `1 / tokens_per_s` later than the one before, counted from when the first one went out
        (no drift from timer lateness). Tokens that are due together go out as one delta, as a
        batching server coalesces its steps.
        """
        loop = asyncio.get_running_loop()
        origin = loop.time() - (time.perf_counter() - started)
        deadline = None if timeout is None else origin + timeout
        words = generation.text.split(" ")
        interval = 1.0 / self.tokens_per_s if self.tokens_per_s > 0 else 0.0
        # Token i (0 = first word, len(words) = end of turn) is due at first + i * interval.
        due = [origin + self.first_token_ms / 1000.0 + i * interval for i in range(len(words) + 1)]
        first_token_ms = None
        sent = 0
        while sent <= len(words):
            if deadline is not None and due[sent] > deadline:
                await asyncio.sleep(max(deadline - loop.time(), 0.0))
                stream.push_error(EngineTimeout(f"generation took longer than {timeout:g} s"))
                return
            while (wait := due[sent] - loop.time()) > 0:  # a timer may fire a hair early
                await asyncio.sleep(wait)
            now = loop.time()
            ready = sent
            while ready <= len(words) and due[ready] <= now:
                ready += 1
            ready = sent + 1 if sent == 0 else max(ready, sent + 1)  # the first word goes alone
            chunk = words[sent:min(ready, len(words))]
            if chunk:
                stream.push_delta((" " if sent else "") + " ".join(chunk))
            if first_token_ms is None:
                first_token_ms = (time.perf_counter() - started) * 1000.0
                late = loop.time() - due[0]  # decoding starts when the first token is out
                due = [due[0]] + [t + late for t in due[1:]]
            sent = ready
        total_ms = (time.perf_counter() - started) * 1000.0
        timings = Timings(0.0, first_token_ms if first_token_ms is not None else total_ms, total_ms)
        stream.push_result(dataclasses.replace(generation, timings=timings))

    async def generate(self, request: GenerationRequest, timeout: float | None = None) -> Generation:
        if self.timed:
            return await generate_from_stream(self.stream(request, timeout))
        result = await self.stream(request, timeout).result()
        await asyncio.sleep(0)
        return result
