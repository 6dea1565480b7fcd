"""What every engine backend speaks: requests, results, streams and errors.

The bot builds a `GenerationRequest` and gets a `Generation` back without knowing whether
the model runs in this process or on a remote inference server; both backends implement
`Engine` and pass the same tests.
"""

from __future__ import annotations

import asyncio
import math
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Literal, Protocol, Union, runtime_checkable

if TYPE_CHECKING:
    from PIL import Image

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image that already went through `engine.images.prepare_image` (RGB, within budget)."""

    image: "Image.Image"


Part = Union[TextPart, ImagePart]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    parts: tuple[Part, ...]

    @classmethod
    def of(cls, role: Role, *parts: "str | Image.Image | Part") -> "ChatMessage":
        """Build a message from strings, PIL images or parts, in order."""
        converted: list[Part] = []
        for part in parts:
            if isinstance(part, (TextPart, ImagePart)):
                converted.append(part)
            elif isinstance(part, str):
                converted.append(TextPart(part))
            else:
                converted.append(ImagePart(part))
        return cls(role, tuple(converted))

    @property
    def images(self) -> list["Image.Image"]:
        return [p.image for p in self.parts if isinstance(p, ImagePart)]


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings. temperature 0 means greedy decoding."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[ChatMessage, ...]
    max_new_tokens: int = 512
    min_new_tokens: int = 0
    sampling: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError("a generation request needs at least one message")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("min_new_tokens must be between 0 and max_new_tokens")

    @property
    def images(self) -> list["Image.Image"]:
        return [image for message in self.messages for image in message.images]


@dataclass(frozen=True)
class Timings:
    queued_ms: float
    first_token_ms: float
    total_ms: float


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: FinishReason
    token_logprobs: tuple[float, ...]
    token_ids: tuple[int, ...]
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    image_tokens: int = 0

    @property
    def confidence(self) -> float | None:
        return confidence_from_logprobs(self.token_logprobs)

    @property
    def min_token_prob(self) -> float | None:
        return min_token_prob(self.token_logprobs)


def confidence_from_logprobs(logprobs: "tuple[float, ...] | list[float]") -> float | None:
    """Geometric-mean probability of the generated tokens: exp(mean log-prob).

    The log-probs are those of the model's own distribution (softmax of the raw logits,
    before temperature or top-p), for every generated token including the end-of-turn
    token. None when nothing was generated or the backend returned no log-probs.
    """
    if not logprobs:
        return None
    return math.exp(math.fsum(logprobs) / len(logprobs))


def min_token_prob(logprobs: "tuple[float, ...] | list[float]") -> float | None:
    """Probability of the least likely generated token."""
    if not logprobs:
        return None
    return math.exp(min(logprobs))


class EngineError(Exception):
    """Generation failed; the bot turns this into a hand-over."""

    code = "engine_error"


class EngineOverloaded(EngineError):
    code = "overloaded"


class EngineTimeout(EngineError):
    code = "timeout"


class EngineCancelled(EngineError):
    code = "cancelled"


class EngineClosed(EngineError):
    code = "closed"


class ModelLoadError(Exception):
    """The model could not be loaded; the message says what to do."""


class _Mailbox:
    """Hands items from worker threads to one event loop, waking it once per burst.

    A batch of eight streams produces eight deltas per decoding step; waking the loop
    for each would make the loop thread fight the model thread for the GIL.
    """

    _by_loop: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox]" = weakref.WeakKeyDictionary()
    _registry_lock = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> "_Mailbox":
        with cls._registry_lock:
            mailbox = cls._by_loop.get(loop)
            if mailbox is None:
                mailbox = cls._by_loop[loop] = cls(loop)
            return mailbox

    def post(self, queue: asyncio.Queue, item: tuple) -> None:
        self.post_many([(queue, item)])

    def post_many(self, items: "list[tuple[asyncio.Queue, tuple]]") -> None:
        with self._lock:
            self._items.extend(items)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _deliver(self) -> None:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._scheduled = False
        for queue, item in items:
            queue.put_nowait(item)


class GenerationStream:
    """Text deltas of one request as they are produced, then its `Generation`.

    Iterate with `async for delta in stream`; afterwards `await stream.result()` gives the
    full result. Errors (overload, timeout, failure) are raised from iteration or result().
    """

    def __init__(self, cancel=None, timeout: float | None = None) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._mailbox = _Mailbox.of(self._loop)
        self._result: Generation | None = None
        self._error: BaseException | None = None
        self._cancel = cancel
        self._deadline = None if timeout is None else self._loop.time() + timeout
        self._timeout = timeout

    # Producer side: safe to call from any thread.
    def push_delta(self, text: str) -> None:
        self._mailbox.post(self._queue, ("delta", text))

    def push_result(self, generation: Generation) -> None:
        self._mailbox.post(self._queue, ("done", generation))

    def push_error(self, error: BaseException) -> None:
        self._mailbox.post(self._queue, ("error", error))

    @staticmethod
    def push_deltas(deltas: "list[tuple[GenerationStream, str]]") -> None:
        """Deliver one decoding step's deltas for many streams with one wake-up per loop."""
        by_mailbox: dict[_Mailbox, list] = {}
        for stream, text in deltas:
            by_mailbox.setdefault(stream._mailbox, []).append((stream._queue, ("delta", text)))
        for mailbox, items in by_mailbox.items():
            mailbox.post_many(items)

    # Consumer side.
    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        while self._result is None:
            if self._error is not None:
                raise self._error
            kind, value = await self._next()
            if kind == "delta":
                if value:
                    yield value
            elif kind == "done":
                self._result = value
            else:
                self._error = value
                raise value

    async def _next(self):
        if self._deadline is None:
            return await self._queue.get()
        remaining = self._deadline - self._loop.time()
        try:
            return await asyncio.wait_for(self._queue.get(), max(remaining, 0.0))
        except (asyncio.TimeoutError, TimeoutError):
            self.cancel()
            raise EngineTimeout(f"generation took longer than {self._timeout:g} s") from None

    async def result(self) -> Generation:
        """Wait for the end of generation (consuming any deltas not yet read)."""
        async for _ in self:
            pass
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Stop generating for this request (the other requests of its batch go on)."""
        if self._cancel is not None:
            self._cancel()


async def generate_from_stream(stream: GenerationStream) -> Generation:
    """The whole result of a stream; cancelling the caller cancels the generation."""
    try:
        return await stream.result()
    except asyncio.CancelledError:
        stream.cancel()
        raise


@runtime_checkable
class Engine(Protocol):
    """A backend that turns chat messages with screenshots into text."""

    model_name: str

    def start(self) -> None:
        """Load the model / connect; blocking, call from a thread when in a server."""

    @property
    def ready(self) -> bool: ...

    def stream(self, request: GenerationRequest, timeout: float | None = None) -> GenerationStream:
        """Queue the request; raises EngineOverloaded at once when the queue is full."""

    async def generate(self, request: GenerationRequest, timeout: float | None = None) -> Generation: ...

    def count_text_tokens(self, text: str) -> int:
        """Tokens the text costs in a prompt (for fitting history into the context budget)."""

    def count_image_tokens(self, width: int, height: int) -> int:
        """Visual tokens an image of this size costs."""

    def close(self) -> None: ...
