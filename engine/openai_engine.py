"""The remote backend: generation on OpenAI-compatible inference servers (vLLM, SGLang, llama.cpp).

When one GPU is not enough, or the model runs on an edge machine, Snapdesk keeps its
conversation core and sends generation to one or several servers that speak
`/v1/chat/completions`. Screenshots travel as PNG data URLs, answers come back as
server-sent events, and the log-probability of every chosen token is requested so that
`confidence` is computed exactly as for the in-process engine.

Every sampling setting the in-process engine uses is sent explicitly, neutral values
included: a server fills a missing field from its own defaults (vLLM from the checkpoint's
generation_config, llama.cpp with repeat_penalty 1.1, min_p 0.05 and top_k 40), and the
answer would no longer be the in-process engine's. Prompt and image token counts are the
local tokenizer's and the image budget's (engine/prompt_tokens.py), not the server's.

Several base URLs are used round-robin. An endpoint that cannot be reached is marked down
for a backoff period (doubling on each failure) and skipped; when its backoff has passed,
a `GET /models` (or `/health`) tells whether it is back before a request is sent to it.
A request that fails before any token arrived is retried on another endpoint; once text
was streamed it never is, so no text is ever delivered twice. Every failure reaches the
caller as an `EngineError` (`EngineTimeout` for timeouts), never as a hang.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator
from urllib.parse import urlsplit

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
    ImagePart,
    ModelLoadError,
    TextPart,
    Timings,
)
from .control_tokens import GENERIC_PATTERN, neutralize, untrusted
from .loading import visual_tokens
from .prompt_tokens import LocalTokenizer, load_local_tokenizer

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

# Request fields that vLLM, SGLang and llama.cpp accept beyond the OpenAI schema.
EXTENDED_SAMPLING_FIELDS = ("top_k", "min_p", "min_tokens", "repetition_penalty", "repeat_penalty")
# How servers name themselves in `GET /models` (`owned_by`): llama-server says "llamacpp",
# llama-cpp-python's server "me". vLLM says "vllm", SGLang "sglang".
LLAMA_CPP_OWNERS = ("llamacpp", "me")
LLAMA_CPP = "llama.cpp"
STRICT = "openai-only"  # refused the fields beyond OpenAI's schema (transformers serve does)
SERVER_KINDS = ("", LLAMA_CPP, STRICT)  # "": vLLM, SGLang and the rest


class _Retry(Exception):
    """An attempt failed before any token arrived: another endpoint may answer."""

    def __init__(self, reason: str, *, mark_down: bool, timeout: bool = False, overloaded: bool = False,
                 same_endpoint_ok: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.mark_down = mark_down
        self.timeout = timeout
        self.overloaded = overloaded
        self.same_endpoint_ok = same_endpoint_ok


@dataclass(eq=False)
class Endpoint:
    """One server's base URL (ending in /v1) and what Snapdesk knows of its health."""

    url: str
    failures: int = 0
    down_until: float = 0.0  # time.monotonic()
    last_error: str = ""
    requests: int = 0
    checking: bool = False
    kind: str = ""  # LLAMA_CPP, STRICT, or "" (vLLM, SGLang and the rest; also while unknown)

    @property
    def root(self) -> str:
        """The server's root (where vLLM, SGLang and transformers serve `/health`)."""
        return self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url

    def available(self, now: float) -> bool:
        return now >= self.down_until

    @property
    def suspect(self) -> bool:
        """It failed and has not answered a health check since."""
        return self.failures > 0


@dataclass(eq=False)
class _Attempt:
    """What one attempt on one endpoint has received so far."""

    parts: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    content_chunks: int = 0
    got_token: bool = False
    first_token_at: float | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    done: bool = False


def normalize_base_url(url: str) -> str:
    """`http://gpu1:8000`, `http://gpu1:8000/` and `http://gpu1:8000/v1/` all mean `.../v1`."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ModelLoadError(
            f"'{url}' is not an http(s) URL: set SNAPDESK_ENGINE_URL to base URLs such as http://gpu1:8000/v1."
        )
    if parts.path in ("", "/"):
        url += "/v1"
    return url


def image_data_url(image: "Image.Image") -> str:
    """The image as a `data:image/png;base64,...` URL (lossless, so small text stays sharp)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_openai_messages(request: GenerationRequest, control: re.Pattern[str] = GENERIC_PATTERN) -> list[dict]:
    """The request's messages in the chat-completions shape, images as PNG data URLs.

    `control`: the control-token strings to neutralize in untrusted text. Encoding images
    costs milliseconds per screenshot: call it off the event loop.
    """
    messages = []
    for message in request.messages:
        def text(value: str) -> str:  # the server's template would turn control-token strings into tokens
            return neutralize(value, control) if untrusted(message.role) else value

        if all(not isinstance(part, ImagePart) for part in message.parts):
            content: Any = text("".join(part.text for part in message.parts))  # type: ignore[union-attr]
        else:
            content = [
                {"type": "image_url", "image_url": {"url": image_data_url(part.image)}}
                if isinstance(part, ImagePart)
                else {"type": "text", "text": text(part.text)}
                for part in message.parts
            ]
        messages.append({"role": message.role, "content": content})
    return messages


async def iter_sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The `data` of each server-sent event (multi-line data joined with newlines)."""
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):  # a comment, e.g. a keep-alive
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
    if data:
        yield "\n".join(data)


def _error_message(response_text: str) -> str:
    """The human part of an error body from vLLM, SGLang, OpenAI or FastAPI."""
    try:
        payload = json.loads(response_text)
    except ValueError:
        return response_text.strip()[:300]
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or payload.get("message") or payload.get("detail")
            if message:
                return str(message)[:300]
        elif isinstance(error, str):
            return error[:300]
        if "detail" in payload:
            return str(payload["detail"])[:300]
    return response_text.strip()[:300]


@dataclass(frozen=True)
class _Payload:
    """A request body, serialized once (screenshots make it megabytes), and the sampling
    fields whose names or values differ between kinds of server, added per kind."""

    common: bytes
    by_kind: dict[str, dict[str, Any]]

    def for_kind(self, kind: str) -> bytes:
        extra = self.by_kind.get(kind) or {}
        if not extra:
            return self.common
        return self.common[:-1] + b", " + json.dumps(extra, ensure_ascii=False)[1:].encode("utf-8")


def server_kind(response: httpx.Response) -> str:
    """LLAMA_CPP when a `GET /models` answer says so, else ""."""
    try:
        data = response.json().get("data")
        owners = {str(item.get("owned_by", "")).lower() for item in data if isinstance(item, dict)}
    except (ValueError, AttributeError, TypeError):
        return ""
    return LLAMA_CPP if owners & set(LLAMA_CPP_OWNERS) else ""


BACKSTOP_GRACE_S = 1.0  # the request's own timeout fires this long after the caller's deadline


class OpenAICompatibleEngine:
    """Generation on remote OpenAI-compatible servers; `start()` checks they answer (blocking).

    `urls`: base URLs (`http://gpu1:8000/v1`), used round-robin. `max_queue`: requests accepted
    at once (waiting for a slot or being generated); one more raises EngineOverloaded at once.
    `max_in_flight`: requests sent to the servers at once (default `max_queue`); the others
    wait for a slot, which `timings.queued_ms` reports. Timeouts: `connect_timeout_s` to open
    a connection, `read_timeout_s` between two pieces of the answer (the first token included),
    `request_timeout_s` (or `timeout=` per call) for the whole request. A request that fails
    before its first token is retried `retries` times on another endpoint; an endpoint that
    cannot be reached is skipped for `down_backoff_s`, doubling up to `max_down_backoff_s`.
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
        self.endpoints: list[Endpoint] = []
        self._tokenizer: LocalTokenizer | None = None
        self._ready = False
        self._closed = False
        self._next = 0
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
        self.endpoints = [Endpoint(normalize_base_url(url)) for url in self.urls]
        with httpx.Client(headers=self._headers(), timeout=self._probe_timeout()) as client:
            with ThreadPoolExecutor(max_workers=min(8, len(self.endpoints))) as pool:
                checks = list(pool.map(lambda ep: self._check_sync(client, ep), self.endpoints))
        self._apply_checks(checks)
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

    def _check_sync(self, client: httpx.Client, endpoint: Endpoint) -> tuple[str, str, list[str] | None]:
        """(state, detail, served model ids or None when unknown); state is ok/unlisted/auth/down."""
        try:
            response = _get_sync(client, f"{endpoint.url}/models")
        except httpx.HTTPError as exc:
            return "down", _describe(exc), None
        if response.status_code in (401, 403):
            return "auth", f"HTTP {response.status_code}", None
        if response.status_code == 200:
            endpoint.kind = server_kind(response)
            served = _model_ids(response)
            if served is not None and self.model_name in served:
                return "ok", "", served
        else:
            served = None
            try:  # some servers list only cached models and fail without a cache: ask /health
                health = _get_sync(client, f"{endpoint.root}/health")
            except httpx.HTTPError as exc:
                return "down", _describe(exc), None
            if health.status_code != 200:
                return "down", f"HTTP {response.status_code} from /models and {health.status_code} from /health", None
        # Up, but the model is not in its list: ask for one token, the only sure test.
        try:
            probe = client.post(
                f"{endpoint.url}/chat/completions",
                json={"model": self.model_name, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1},
                timeout=httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s),
            )
        except httpx.HTTPError as exc:
            return "down", _describe(exc), None
        if probe.status_code == 200:
            return "unlisted", "", served
        if probe.status_code in (401, 403):
            return "auth", f"HTTP {probe.status_code}", None
        if probe.status_code in (400, 404, 422):
            return "wrong-model", _error_message(probe.text), served
        return "down", f"HTTP {probe.status_code} for a one-token request: {_error_message(probe.text)}", None

    def _apply_checks(self, checks: list[tuple[str, str, list[str] | None]]) -> None:
        states = [state for state, _, _ in checks]
        if "ok" not in states and "unlisted" not in states:
            urls = ", ".join(ep.url for ep in self.endpoints)
            if "wrong-model" in states:
                wrong = [(ep, d, m) for ep, (state, d, m) in zip(self.endpoints, checks) if state == "wrong-model"]
                served = sorted({name for _, _, models in wrong for name in models or []})
                listing = f"it serves {', '.join(served)}" if served else f"it says: {wrong[0][1].rstrip('.')}"
                raise ModelLoadError(
                    f"The inference server at {', '.join(ep.url for ep, _, _ in wrong)} does not serve the model "
                    f"'{self.model_name}' ({listing}): set SNAPDESK_MODEL to the name the server was started with "
                    "(its --served-model-name)."
                )
            if "auth" in states:
                rejecting = [ep.url for ep, (state, _, _) in zip(self.endpoints, checks) if state == "auth"]
                raise ModelLoadError(
                    f"The inference server at {', '.join(rejecting)} rejected the API key: set "
                    "SNAPDESK_ENGINE_API_KEY to the key the server was started with (--api-key)."
                )
            reasons = "; ".join(f"{ep.url}: {detail}" for ep, (_, detail, _) in zip(self.endpoints, checks))
            raise ModelLoadError(
                f"No inference server answered at {urls} ({reasons}): start vLLM or SGLang there, or fix "
                "SNAPDESK_ENGINE_URL."
            )
        for endpoint, (state, detail, _) in zip(self.endpoints, checks):
            if state not in ("ok", "unlisted"):
                self._mark_down(endpoint, f"{state}: {detail}" if detail else state)

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": "snapdesk"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _probe_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(min(self.read_timeout_s, 10.0), connect=self.connect_timeout_s)

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
        self._outstanding += 1
        entered: list[bool] = []
        task = loop.create_task(self._run(request, stream, time.perf_counter(), limit, entered))
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
                   limit: float | None, entered: list[bool]) -> None:
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
                attempt = await self._with_retries(payload, stream)
            stream.push_result(self._generation(request, attempt, prompt_tokens, submitted, slot_at, time.perf_counter()))
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

    def _prepare(self, request: GenerationRequest) -> tuple[_Payload, int | None]:
        """The body to send and the prompt's exact token count (None when it cannot be counted here)."""
        common = json.dumps(self._common_body(request), ensure_ascii=False).encode("utf-8")
        payload = _Payload(common, {kind: self._sampling_fields(request, kind) for kind in SERVER_KINDS})
        prompt_tokens = None
        if self._tokenizer is not None:
            prompt_tokens = self._tokenizer.count_prompt(request, self.count_image_tokens)
        return payload, prompt_tokens

    def build_body(self, request: GenerationRequest, kind: str = "") -> dict:
        """The `/chat/completions` request body for a kind of server (encodes images: call off the event loop)."""
        return {**self._common_body(request), **self._sampling_fields(request, kind)}

    def _common_body(self, request: GenerationRequest) -> dict[str, Any]:
        sampling = request.sampling
        control = self._tokenizer.control if self._tokenizer is not None else GENERIC_PATTERN
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": to_openai_messages(request, control),
            "stream": True,
            "stream_options": {"include_usage": True},
            "logprobs": True,
            "top_logprobs": 0,  # llama.cpp returns log-probs only when this is given too
            "max_tokens": request.max_new_tokens,
        }
        if sampling.greedy:
            body["temperature"] = 0
        else:
            body["temperature"] = sampling.temperature
            body["top_p"] = sampling.top_p
        return body

    def _sampling_fields(self, request: GenerationRequest, kind: str) -> dict[str, Any]:
        """What the in-process engine uses, neutral values included, in the server kind's names."""
        if not self.extended_sampling or kind == STRICT:
            return {}
        sampling = request.sampling
        # "No top-k" is -1 on vLLM and SGLang (SGLang refuses 0) and 0 on llama.cpp (which
        # refuses -1). Left out, vLLM would apply the checkpoint's generation_config default
        # (Qwen ships top_k 20) and llama.cpp its own 40. Greedy decoding ignores it everywhere.
        no_top_k = 0 if kind == LLAMA_CPP else -1
        fields: dict[str, Any] = {
            "top_k": sampling.top_k if sampling.top_k > 0 and not sampling.greedy else no_top_k,
            "min_p": 0.0,
            "repetition_penalty": sampling.repetition_penalty,
        }
        if kind == LLAMA_CPP:
            fields["repeat_penalty"] = sampling.repetition_penalty  # llama.cpp's name (vLLM logs a warning for it)
        if request.min_new_tokens > 0:
            fields["min_tokens"] = request.min_new_tokens
        return fields

    # Endpoint choice and retries ------------------------------------------------------
    async def _with_retries(self, payload: _Payload, stream: GenerationStream) -> _Attempt:
        tried: set[int] = set()
        last: _Retry | None = None
        for number in range(self.retries + 1):
            if number:
                await asyncio.sleep(self.retry_backoff_s * 2 ** (number - 1))
            endpoint = await self._choose(tried, allow_repeat=last is None or last.same_endpoint_ok)
            if endpoint is None:
                break
            tried.add(id(endpoint))
            try:
                return await self._attempt(endpoint, payload, stream)
            except _Retry as retry:
                last = retry
                if retry.mark_down:
                    self._mark_down(endpoint, retry.reason)
                log.warning("request to %s failed before any token (%s)", endpoint.url, retry.reason)
        assert last is not None
        message = f"no inference server could answer: {last.reason}"
        if last.timeout:
            raise EngineTimeout(message)
        if last.overloaded:
            raise EngineOverloaded(message)
        raise EngineError(message)

    async def _choose(self, tried: set[int], allow_repeat: bool) -> Endpoint | None:
        """The next healthy endpoint in round-robin order, preferring ones this request has not tried."""
        count = len(self.endpoints)
        for _ in range(count):
            endpoint = self.endpoints[self._next % count]
            self._next += 1
            if id(endpoint) in tried or not endpoint.available(time.monotonic()) or endpoint.checking:
                continue
            if endpoint.suspect and not await self._health_check(endpoint):
                continue
            return endpoint
        if not allow_repeat:
            candidates = [ep for ep in self.endpoints if id(ep) not in tried]
        else:
            candidates = list(self.endpoints)
        if not candidates:
            return None
        # Nothing healthy: try the endpoint whose backoff ends first rather than failing at once.
        return min(candidates, key=lambda ep: (id(ep) in tried, ep.down_until))

    async def _health_check(self, endpoint: Endpoint) -> bool:
        """`GET /models` (or `/health`) on an endpoint that failed, once its backoff has passed."""
        assert self._client is not None
        endpoint.checking = True
        try:
            for url in (f"{endpoint.url}/models", f"{endpoint.root}/health"):
                try:
                    response = await _get_async(self._client, url, self._probe_timeout())
                except httpx.HTTPError as exc:
                    self._mark_down(endpoint, f"health check: {_describe(exc)}")
                    return False
                if response.status_code == 200:
                    if url.endswith("/models"):
                        endpoint.kind = server_kind(response) or (STRICT if endpoint.kind == STRICT else "")
                    log.info("inference server %s is answering again", endpoint.url)
                    endpoint.failures = 0
                    endpoint.down_until = 0.0
                    endpoint.last_error = ""
                    return True
            self._mark_down(endpoint, f"health check: HTTP {response.status_code}")
            return False
        finally:
            endpoint.checking = False

    def _mark_down(self, endpoint: Endpoint, reason: str) -> None:
        endpoint.failures += 1
        backoff = min(self.down_backoff_s * 2 ** (endpoint.failures - 1), self.max_down_backoff_s)
        endpoint.down_until = time.monotonic() + backoff
        endpoint.last_error = reason
        log.warning("inference server %s marked down for %.1f s: %s", endpoint.url, backoff, reason)

    # One attempt on one endpoint --------------------------------------------------------
    async def _attempt(self, endpoint: Endpoint, payload: _Payload, stream: GenerationStream) -> _Attempt:
        assert self._client is not None
        endpoint.requests += 1
        state = _Attempt()
        url = f"{endpoint.url}/chat/completions"
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        try:
            async with self._client.stream("POST", url, content=payload.for_kind(endpoint.kind), headers=headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    self._raise_for_status(endpoint, response)
                async for data in iter_sse_data(response.aiter_lines()):
                    if data.strip() == "[DONE]":
                        state.done = True
                        break
                    self._take_chunk(endpoint, data, state, stream)
        except httpx.TimeoutException as exc:
            kind = "connect" if isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)) else "read"
            if state.got_token:
                raise EngineTimeout(
                    f"{endpoint.url} sent nothing for {self.read_timeout_s:g} s in the middle of an answer"
                ) from None
            raise _Retry(f"{endpoint.url}: {kind} timeout", mark_down=True, timeout=True) from None
        except httpx.HTTPError as exc:
            if state.got_token:
                raise EngineError(f"the connection to {endpoint.url} broke in the middle of an answer ({_describe(exc)})") from None
            # Unreachable: skip the endpoint for a while. A connection that broke (a stale
            # keep-alive connection, a worker that died) is retried without that verdict.
            raise _Retry(f"{endpoint.url}: {_describe(exc)}", mark_down=isinstance(exc, httpx.ConnectError)) from None
        if state.finish_reason is None:
            # An answer ends with a finish reason. Without one it was cut short, even when the
            # stream says [DONE]: llama-cpp-python's server does that to a running answer when
            # another request arrives (its --interrupt_requests, on by default).
            if state.got_token:
                ended = "ended the answer without a finish reason" if state.done else "closed the stream"
                raise EngineError(f"{endpoint.url} {ended} in the middle of an answer")
            raise _Retry(f"{endpoint.url} closed the stream before answering", mark_down=False)
        endpoint.failures = 0
        endpoint.down_until = 0.0
        return state

    def _raise_for_status(self, endpoint: Endpoint, response: httpx.Response) -> None:
        status = response.status_code
        detail = _error_message(response.text)
        where = f"{endpoint.url} answered HTTP {status}"
        if status in (401, 403):
            raise EngineError(f"{where}: the API key was rejected (SNAPDESK_ENGINE_API_KEY)")
        if status == 429:
            raise _Retry(f"{where} (overloaded)", mark_down=True, overloaded=True)
        if status in (502, 503, 504):
            raise _Retry(f"{where}: {detail}", mark_down=True)
        if status >= 500:  # maybe this request, maybe the server: another replica may do better
            raise _Retry(f"{where}: {detail}", mark_down=False, same_endpoint_ok=False)
        if status in (400, 422) and self.extended_sampling and endpoint.kind != STRICT and _names_a_sampling_field(detail):
            endpoint.kind = STRICT
            log.warning(
                "%s refuses sampling fields beyond OpenAI's (%s): it gets OpenAI's fields only from now on, so its "
                "own defaults apply to top_k, min_p and the repetition penalty", endpoint.url, detail,
            )
            raise _Retry(f"{where}: {detail}", mark_down=False)
        raise EngineError(f"{where}: {detail}")

    def _take_chunk(self, endpoint: Endpoint, data: str, state: _Attempt, stream: GenerationStream) -> None:
        try:
            chunk = json.loads(data)
        except ValueError:
            raise EngineError(f"{endpoint.url} sent an event that is not JSON: {data[:100]!r}") from None
        if not isinstance(chunk, dict):
            raise EngineError(f"{endpoint.url} sent an unexpected event: {data[:100]!r}")
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise EngineError(f"{endpoint.url} reported an error during generation: {str(message)[:300]}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            if usage.get("prompt_tokens") is not None:
                state.prompt_tokens = int(usage["prompt_tokens"])
            if usage.get("completion_tokens") is not None:
                state.completion_tokens = int(usage["completion_tokens"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            logprobs = (choice.get("logprobs") or {}).get("content") or []
            if text or logprobs:
                if not state.got_token:
                    state.got_token = True
                    state.first_token_at = time.perf_counter()
            for entry in logprobs:
                value = entry.get("logprob")
                if value is not None:
                    state.logprobs.append(max(float(value), -1e4) if math.isfinite(float(value)) else -1e4)
                token = entry.get("token")
                if isinstance(token, str) and token.startswith("token_id:"):  # vLLM's return_tokens_as_token_ids
                    try:
                        state.token_ids.append(int(token.removeprefix("token_id:")))
                    except ValueError:
                        pass
            if text:
                state.content_chunks += 1
                state.parts.append(text)
                stream.push_delta(text)
            if choice.get("finish_reason"):
                state.finish_reason = choice["finish_reason"]

    def _generation(self, request: GenerationRequest, state: _Attempt, counted: int | None, submitted: float,
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


def _names_a_sampling_field(message: str) -> bool:
    return any(re.search(rf"\b{name}\b", message) for name in EXTENDED_SAMPLING_FIELDS)


def _describe(exc: BaseException) -> str:
    """'connection refused' rather than a class name where httpx says so."""
    text = str(exc).strip()
    if isinstance(exc, httpx.ConnectError):
        cause: BaseException | None = exc
        for _ in range(8):  # the asyncio transport wraps the refusal in "All connection attempts failed"
            if cause is None:
                break
            if isinstance(cause, ConnectionRefusedError):
                return "connection refused"
            cause = cause.__cause__ or cause.__context__
        lowered = text.lower()
        if "refused" in lowered:
            return "connection refused"
        if "name or service not known" in lowered or "nodename nor servname" in lowered:
            return "unknown host name"
    if isinstance(exc, httpx.TimeoutException):
        return f"{type(exc).__name__.replace('Timeout', '').lower() or 'request'} timeout"
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# A pooled keep-alive connection the server has just closed fails with one of these: a GET
# is safe to repeat once on a fresh connection.
_STALE_CONNECTION = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


def _get_sync(client: httpx.Client, url: str) -> httpx.Response:
    try:
        return client.get(url)
    except _STALE_CONNECTION:
        return client.get(url)


async def _get_async(client: httpx.AsyncClient, url: str, timeout: httpx.Timeout) -> httpx.Response:
    try:
        return await client.get(url, timeout=timeout)
    except _STALE_CONNECTION:
        return await client.get(url, timeout=timeout)


def _model_ids(response: httpx.Response) -> list[str] | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return None
    return [str(item.get("id")) for item in data if isinstance(item, dict) and item.get("id") is not None]
