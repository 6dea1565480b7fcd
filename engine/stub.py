"""A zero-cost engine that answers instantly from a script.

Measuring the conversation core, the web server or a load test without the model's cost
needs a backend that behaves like one (streams, reports confidence and token counts,
honours the Engine interface) but spends no time. Selected with `SNAPDESK_ENGINE=stub`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Callable

from .base import (
    EngineError,
    Generation,
    GenerationRequest,
    GenerationStream,
    TextPart,
    Timings,
)
from .loading import visual_tokens

DEFAULT_REPLY = "Thanks for your message. Here is what the screenshot shows and what to do next."
Script = Callable[[GenerationRequest], "tuple[str, float] | BaseException"]


def last_user_text(request: GenerationRequest) -> str:
    for message in reversed(request.messages):
        if message.role == "user":
            return "".join(p.text for p in message.parts if isinstance(p, TextPart))
    return ""


class StubEngine:
    """Answers `reply` with `confidence`, or whatever `script(request)` returns (or raises)."""

    model_name = "stub"

    def __init__(self, reply: str = DEFAULT_REPLY, confidence: float = 0.9, script: Script | None = None,
                 keep_requests: int | None = None) -> None:
        self.reply = reply
        self.confidence = confidence
        self.script = script
        # Requests (screenshots included) kept for inspection: all of them by default, for
        # tests; none in a long-running server, where they would only pile up.
        self.requests: deque[GenerationRequest] = deque(maxlen=keep_requests)
        self._ready = False

    def start(self) -> None:
        self._ready = True

    @property
    def ready(self) -> bool:
        return self._ready

    def close(self) -> None:
        self._ready = False

    def count_text_tokens(self, text: str) -> int:
        return len(text.encode("utf-8")) // 3 + 1

    def count_image_tokens(self, width: int, height: int) -> int:
        return visual_tokens(width, height)

    def _answer(self, request: GenerationRequest) -> Generation:
        started = time.perf_counter()
        self.requests.append(request)
        outcome = self.script(request) if self.script else (self.reply, self.confidence)
        if isinstance(outcome, BaseException):
            raise outcome
        text, confidence = outcome
        words = text.split(" ")
        logprob = math.log(max(confidence, 1e-9))
        prompt_tokens = sum(
            self.count_text_tokens(p.text) if isinstance(p, TextPart) else self.count_image_tokens(*p.image.size)
            for m in request.messages
            for p in m.parts
        )
        elapsed = (time.perf_counter() - started) * 1000.0
        return Generation(
            text=text,
            finish_reason="stop",
            token_logprobs=tuple([logprob] * (len(words) + 1)),
            token_ids=tuple(range(len(words) + 1)),
            prompt_tokens=prompt_tokens,
            completion_tokens=len(words) + 1,
            timings=Timings(0.0, elapsed, elapsed),
        )

    def stream(self, request: GenerationRequest, timeout: float | None = None) -> GenerationStream:
        if not self._ready:
            raise EngineError("the engine is not started")
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

    async def generate(self, request: GenerationRequest, timeout: float | None = None) -> Generation:
        result = await self.stream(request, timeout).result()
        await asyncio.sleep(0)
        return result
