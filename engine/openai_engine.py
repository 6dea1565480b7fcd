"""The remote backend: generation on OpenAI-compatible inference servers (vLLM, SGLang, llama.cpp).

When one GPU is not enough, or the model runs on an edge machine, Snapdesk keeps its
conversation core and sends generation to one or several servers that speak
`/v1/chat/completions`. Screenshots travel as PNG data URLs, answers come back as
server-sent events, and the log-probability of every chosen token is requested so that
`confidence` is computed exactly as for the in-process engine. Prompt and image token
counts are the local tokenizer's and the image budget's (engine/prompt_tokens.py), not the
server's.

The pieces: what is sent (openai_payload), which server gets it and when one is down
(openai_endpoints), reading the answer (openai_stream), and trying again elsewhere when an
attempt fails before its first token (openai_retries). Every failure reaches the caller as
an `EngineError` (`EngineTimeout` for timeouts), never as a hang.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from .base import (
    generate_from_stream,
    EngineCancelled,
    EngineClosed,
    EngineError,
    EngineOverloaded,
    EngineTimeout,
    FinishReason,
    Generation,
    GenerationRequest,
    GenerationStream,
    ModelLoadError,
    TextPart,
    Timings,
)
from .control_tokens import GENERIC_PATTERN
from .loading import visual_tokens
from .openai_endpoints import Endpoint, EndpointPool
from .openai_payload import Payload, build_payload
from .openai_retries import RetryableFailure, remote_request
from .openai_stream import Answer, try_endpoint
from .prompt_tokens import LocalTokenizer, load_local_tokenizer

log = logging.getLogger(__name__)

BACKSTOP_GRACE_S = 1.0  # the request's own timeout fires this long after the caller's deadline


class OpenAICompatibleEngine:
    """Generation on remote OpenAI-compatible servers; `start()` checks they answer (blocking).

    `urls`: base URLs (`http://gpu1:8000/v1`), used round-robin. `max_queue`: requests accepted
    at once (waiting for a slot or being generated); one more raises EngineOverloaded at once.
    `max_in_flight`: requests sent to the servers at once (default `max_queue`); the others
    wait for a slot, which `timings.queued_ms` reports. Timeouts: `connect_timeout_s` to open
    a connection, `read_timeout_s` between two pieces of the answer (the first token included),
    `request_timeout_s` (or `timeout=` per call) for the whole request. A request that fails
    before its first token is retried `retries` times on another endpoint, after a pause of
    `retry_backoff_s` that doubles each time and never ends past the caller's deadline; an
    endpoint that cannot be reached is skipped for `down_backoff_s`, doubling up to
    `max_down_backoff_s`.
    `extended_sampling`: send top_k / min_p / min_tokens / repetition_penalty (repeat_penalty
    for llama.cpp), fields vLLM, SGLang and llama.cpp accept beyond the OpenAI schema (servers
    that refuse unknown fields need False). `tokenizer`: a local directory, tokenizer.json or
    cached hub id for exact token counts (default: the model name; never downloaded); without
    it counts are estimated.
    """

    def __init__(
        self,
        urls: "list[str] | tuple[str, ...]",
        model: str,
        api_key: str | None = None,
        *,
        max_queue: int = 64,
        max_in_flight: int | None = None,
        request_timeout_s: float | None = 120.0,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        min_image_tokens: int = 256,
        max_image_tokens: int = 1280,
        retries: int = 2,
        retry_backoff_s: float = 0.2,
        down_backoff_s: float = 2.0,
        max_down_backoff_s: float = 60.0,
        extended_sampling: bool = True,
        tokenizer: str | None = None,
    ) -> None:
        self.model_name = model
        self.urls = [url for url in urls if url.strip()]
        self.api_key = api_key
        self.max_queue = max(1, max_queue)
        self.max_in_flight = max(1, max_in_flight or self.max_queue)
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.min_image_tokens = min_image_tokens
        self.max_image_tokens = max(max_image_tokens, min_image_tokens)
        self.retries = max(0, retries)
        self.retry_backoff_s = retry_backoff_s
        self.down_backoff_s = down_backoff_s
        self.max_down_backoff_s = max_down_backoff_s
        self.extended_sampling = extended_sampling
        self.tokenizer_name = tokenizer or model
        self._pool: EndpointPool | None = None
        self._tokenizer: LocalTokenizer | None = None
        self._ready = False
        self._closed = False
        self._outstanding = 0
        self._in_flight = 0
        self._semaphore: asyncio.Semaphore | None = None
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()

    # Lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Check that at least one endpoint answers and serves the model; blocking."""
        if self._ready:
            return
        if self._closed:
            raise ModelLoadError("This engine was closed: build a new one to connect again.")
        if not self.urls:
            raise ModelLoadError(
                "SNAPDESK_ENGINE=openai needs SNAPDESK_ENGINE_URL: set it to the base URL of a vLLM or SGLang "
                "server, e.g. http://gpu1:8000/v1 (several separated by commas)."
            )
        self._pool = EndpointPool(
            self.urls, connect_timeout_s=self.connect_timeout_s, read_timeout_s=self.read_timeout_s,
            down_backoff_s=self.down_backoff_s, max_down_backoff_s=self.max_down_backoff_s,
        )
        self._pool.check_at_start(self.model_name, self._headers())
        self._tokenizer = load_local_tokenizer(self.tokenizer_name)
        counts = "estimated"
        if self._tokenizer is not None:
            counts = "exact, from the local tokenizer" if self._tokenizer.exact else "from the local tokenizer (no chat template)"
        log.info(
            "remote engine ready: model %s on %s (token counts %s)",
            self.model_name,
            ", ".join(f"{ep.url}{f' ({ep.kind})' if ep.kind else ''}" for ep in self.endpoints
                      if ep.available(time.monotonic())),
            counts,
        )
        self._ready = True

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": "snapdesk"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    @property
    def endpoints(self) -> list[Endpoint]:
        """The servers and what is known of their health (none before `start()`)."""
        return self._pool.endpoints if self._pool is not None else []

    @property
    def ready(self) -> bool:
        return self._ready and not self._closed

    @property
    def queue_depth(self) -> int:
        """Requests accepted and not finished (waiting for a slot or being generated)."""
        return self._outstanding

    def close(self) -> None:
        """Cancel what is running and release the connections; safe from any thread."""
        self._closed = True
        self._ready = False
        loop, client, tasks = self._loop, self._client, list(self._tasks)
        self._client = None
        if loop is None or loop.is_closed():
            return

        def shut() -> None:
            for task in tasks:
                task.cancel()
            if client is not None:
                loop.create_task(client.aclose())

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            shut()
        elif not loop.is_running():  # called after the loop's work, from its own thread
            for task in tasks:
                task.cancel()
            if client is not None:
                try:
                    loop.run_until_complete(client.aclose())
                except RuntimeError:
                    pass
        else:
            try:
                loop.call_soon_threadsafe(shut)
            except RuntimeError:  # the loop stopped meanwhile
                pass

    # Token accounting ---------------------------------------------------------------
    def count_text_tokens(self, text: str) -> int:
        """Exact with the model's tokenizer when it is on this machine, else a generous estimate."""
        if self._tokenizer is not None:
            return self._tokenizer.count_text(text)
        return len(text.encode("utf-8")) // 3 + 1

    def count_image_tokens(self, width: int, height: int) -> int:
        return visual_tokens(width, height, self.min_image_tokens, self.max_image_tokens)

    # Requests --------------------------------------------------------------------
    def stream(self, request: GenerationRequest, timeout: float | None = None) -> GenerationStream:
        if self._closed:
            raise EngineClosed("the engine is closed")
        if not self._ready:
            raise EngineError("the engine is not started")
        if self._outstanding >= self.max_queue:
            raise EngineOverloaded(
                f"{self._outstanding} requests are already waiting for the inference servers (queue size {self.max_queue})"
            )
        loop = asyncio.get_running_loop()
        self._bind(loop)
        limit = self.request_timeout_s if timeout is None else timeout
        task_holder: list[asyncio.Task] = []

        def cancel() -> None:
            # One cancellation at a time: the caller's deadline and the request's own timeout end
            # together, and a second cancel landing while httpx closes the first one's connection
            # cuts that close short, leaving the request open on the server.
            if task_holder and not task_holder[0].done() and not task_holder[0].cancelling():
                task_holder[0].cancel()

        stream = GenerationStream(cancel=cancel, timeout=limit)
        deadline = None if limit is None else time.monotonic() + limit
        self._outstanding += 1
        entered: list[bool] = []
        task = loop.create_task(self._run(request, stream, time.perf_counter(), limit, deadline, entered))
        task_holder.append(task)
        self._tasks.add(task)

        def finished(task: asyncio.Task) -> None:
            self._tasks.discard(task)
            if not entered:  # cancelled before it ran: _run could not report or count it
                self._outstanding -= 1
                stream.push_error(
                    EngineClosed("the engine was closed") if self._closed else EngineCancelled("generation was cancelled")
                )

        task.add_done_callback(finished)
        return stream

    async def generate(self, request: GenerationRequest, timeout: float | None = None) -> Generation:
        return await generate_from_stream(self.stream(request, timeout))

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """One HTTP client and one slot semaphore per event loop (a CLI may run several in turn)."""
        if self._loop is loop and self._client is not None:
            return
        self._loop = loop
        self._semaphore = asyncio.Semaphore(self.max_in_flight)
        self._in_flight = 0
        self._client = httpx.AsyncClient(
            headers=self._headers(),
            timeout=httpx.Timeout(
                connect=self.connect_timeout_s,
                read=self.read_timeout_s,
                write=self.read_timeout_s,
                pool=self.connect_timeout_s,
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=self.max_in_flight),
        )

    async def _run(self, request: GenerationRequest, stream: GenerationStream, submitted: float,
                   limit: float | None, deadline: float | None, entered: list[bool]) -> None:
        entered.append(True)
        acquired = False
        semaphore = self._semaphore
        assert semaphore is not None
        try:
            # A backstop a little after the caller's own deadline, which cancels first: two cancels at
            # the same moment would cut short httpx's close of the connection (see `stream`).
            async with asyncio.timeout(None if limit is None else limit + BACKSTOP_GRACE_S):
                await semaphore.acquire()
                acquired = True
                self._in_flight += 1
                slot_at = time.perf_counter()
                if request.images or (self._tokenizer is not None and self._tokenizer.exact):
                    # PNG encoding, a JSON body of megabytes, a template render: not on the loop
                    payload, prompt_tokens = await asyncio.to_thread(self._prepare, request)
                else:
                    payload, prompt_tokens = self._prepare(request)
                answer = await self._with_retries(payload, stream, deadline)
            stream.push_result(self._generation(request, answer, prompt_tokens, submitted, slot_at, time.perf_counter()))
        except TimeoutError:
            stream.push_error(EngineTimeout(f"generation took longer than {limit:g} s"))
        except EngineError as exc:
            stream.push_error(exc)
        except asyncio.CancelledError:
            if self._closed:
                stream.push_error(EngineClosed("the engine was closed during generation"))
            else:
                stream.push_error(EngineCancelled("generation was cancelled"))
            raise
        except Exception as exc:  # never leave a caller waiting
            log.exception("remote generation failed")
            stream.push_error(EngineError(f"generation failed ({type(exc).__name__})"))
        finally:
            if acquired:
                self._in_flight -= 1
                semaphore.release()
            self._outstanding -= 1

    def _prepare(self, request: GenerationRequest) -> tuple[Payload, int | None]:
        """The body to send and the prompt's exact token count (None when it cannot be counted here)."""
        control = self._tokenizer.control if self._tokenizer is not None else GENERIC_PATTERN
        payload = build_payload(request, self.model_name, control, self.extended_sampling)
        prompt_tokens = None
        if self._tokenizer is not None:
            prompt_tokens = self._tokenizer.count_prompt(request, self.count_image_tokens)
        return payload, prompt_tokens

    # Endpoint choice and retries ------------------------------------------------------
    async def _with_retries(self, payload: Payload, stream: GenerationStream, deadline: float | None) -> Answer:
        """The answer of the first endpoint that streams one, tried as `remote_request` says."""
        client, pool = self._client, self._pool
        assert client is not None and pool is not None
        tried: set[int] = set()
        last: RetryableFailure | None = None

        async def attempt() -> Answer:
            nonlocal last
            endpoint = await pool.choose(client, tried, allow_repeat=last is None or last.same_endpoint_ok)
            if endpoint is None:  # none left that this request may try
                assert last is not None
                raise last.engine_error()
            tried.add(id(endpoint))
            try:
                return await try_endpoint(client, endpoint, payload, stream, read_timeout_s=self.read_timeout_s,
                                          extended_sampling=self.extended_sampling)
            except RetryableFailure as failure:
                last = failure
                if failure.mark_down:
                    pool.mark_down(endpoint, failure.reason)
                log.warning("request to %s failed before any token (%s)", endpoint.url, failure.reason)
                raise

        policy = remote_request(attempts=self.retries + 1, backoff_s=self.retry_backoff_s, deadline=deadline)
        try:
            return await policy(attempt)
        except RetryableFailure as failure:
            raise failure.engine_error() from None

    def _generation(self, request: GenerationRequest, state: Answer, counted: int | None, submitted: float,
                    slot_at: float, finished: float) -> Generation:
        reason = state.finish_reason or "stop"
        if reason == "abort":
            raise EngineError("the inference server aborted the request")
        finish: FinishReason = "length" if reason == "length" else "stop"
        completion = state.completion_tokens
        if completion is None:
            completion = len(state.logprobs) or state.content_chunks
        # The local count when there is one; a server's count only for text (llama.cpp's is
        # wrong for Qwen3-VL images, and any server counts with its own image budget).
        prompt = counted
        if prompt is None:
            prompt = state.prompt_tokens if state.prompt_tokens is not None and not request.images else None
        if prompt is None:
            prompt = self._estimate_prompt_tokens(request)
        return Generation(
            text="".join(state.parts),
            finish_reason=finish,
            token_logprobs=tuple(state.logprobs),
            token_ids=tuple(state.token_ids) if len(state.token_ids) == len(state.logprobs) else (),
            prompt_tokens=prompt,
            completion_tokens=completion,
            image_tokens=sum(self.count_image_tokens(*image.size) for image in request.images),
            timings=Timings(
                queued_ms=(slot_at - submitted) * 1000.0,
                first_token_ms=((state.first_token_at or finished) - submitted) * 1000.0,
                total_ms=(finished - submitted) * 1000.0,
            ),
        )

    def _estimate_prompt_tokens(self, request: GenerationRequest) -> int:
        """The parts, and what Qwen's chat format adds around them: `<|im_start|>role\n ... <|im_end|>\n`
        per message, `<|vision_start|>`/`<|vision_end|>` per image, `<|im_start|>assistant\n` at the end."""
        return 3 + sum(
            5 + sum(
                self.count_text_tokens(part.text) if isinstance(part, TextPart)
                else 2 + self.count_image_tokens(*part.image.size)
                for part in message.parts
            )
            for message in request.messages
        )
