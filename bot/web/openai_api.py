"""The model Snapdesk holds, offered to internal tools through OpenAI's chat completions API.

Batch jobs and pipelines that already speak OpenAI's API (the official `openai` client, or
any HTTP client) call `POST /v1/chat/completions` and `GET /v1/models` with a bearer key
made by `snapdesk apikey create NAME`. Their requests go through the very engine the
support bot uses, so they share its batching queue; to keep the bot answering customers,
API requests may hold at most half of that queue at once (the rest gets 429 with
Retry-After, which the `openai` client retries by itself), and `max_tokens` is capped at
the bot's own answer length (`SNAPDESK_MAX_NEW_TOKENS`): a batch runs until its longest
answer ends, so one very long answer would hold every request batched with it.

What is supported, and how it maps onto the engine:
- `messages` with roles system (or developer), user and assistant; content a string or a
  list of `text` and `image_url` parts. Images must be inline data URLs
  (`data:image/png;base64,...`): this server never fetches a URL. They go through the same
  image intake as screenshots from users (format from the magic bytes, size and pixel
  limits, scaled to the pixel budget); a refused image is a 400 naming the reason.
- `max_completion_tokens` / `max_tokens`, `temperature` (omitted: 1.0 as in OpenAI's
  API; 0 is greedy decoding), `top_p`, and the extras `top_k`, `min_tokens`,
  `repetition_penalty`; `n` must be 1; `stream` with `stream_options.include_usage`.
- `logprobs: true`: one entry per generated token, the end-of-turn token included (so
  there are exactly `usage.completion_tokens` entries, and exp(mean logprob) is the
  confidence the bot computes). The log-probabilities are those of the model's own
  distribution (before temperature or top-p). `token` is the token's text: its raw bytes
  decoded as UTF-8, or escaped as `\\xNN` when the token is part of a character (its
  `bytes` then join with the next token's); when the engine has no tokenizer in this
  process (a remote backend), `token` is `token_id:<id>` and `bytes` is null.
  `top_logprobs` is always empty: the engine does not report alternatives.
- Not supported (400): tools and function calling, `stop`, `logit_bias`, frequency and
  presence penalties, `top_logprobs` > 0, JSON response formats, audio. `seed`, `user`,
  `store`, `metadata` and `image_url.detail` are accepted and ignored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable

from fastapi import APIRouter, Request, Security
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.base import (
    ChatMessage,
    EngineClosed,
    EngineError,
    EngineOverloaded,
    EngineTimeout,
    Generation,
    GenerationRequest,
    GenerationStream,
    ImagePart,
    Part,
    SamplingParams,
    TextPart,
)
from engine.images import ImageLimits, ImageRejected, prepare_image

from ..apikeys import ApiKey, ApiKeys
from .runtime import Runtime, RuntimeDep

log = logging.getLogger(__name__)

MAX_MESSAGES = 1000
MAX_TOP_K = 2**31 - 1  # beyond any vocabulary: the same as no top-k, and never an overflow in a backend
MAX_JSON_DEPTH = 64  # a chat request needs 4 (body, messages, a message, its parts)
MAX_IMAGES = 8  # images in one request
API_QUEUE_SHARE = 0.5  # of the engine queue that API requests may hold at once
RETRY_AFTER_BUSY_S = 1
RETRY_AFTER_LOADING_S = 10
DISCONNECT_POLL_S = 0.5
TEMPLATE_TOKENS_PER_MESSAGE = 6  # <|im_start|>role\n ... <|im_end|>\n
TEMPLATE_TOKENS_PER_IMAGE = 2  # <|vision_start|> ... <|vision_end|>
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop"}
STARTED = int(time.time())

bearer = HTTPBearer(auto_error=False, description="An API key from `snapdesk apikey create NAME`.")
router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])


# Errors -----------------------------------------------------------------------------------
class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def busy(message: str) -> ApiError:
    return ApiError(429, message, type="rate_limit_error", code="rate_limit_exceeded",
                    headers={"Retry-After": str(RETRY_AFTER_BUSY_S)})


def engine_failure(exc: EngineError) -> ApiError:
    if isinstance(exc, EngineOverloaded):
        return busy("The model is busy: its request queue is full. Retry in a moment.")
    if isinstance(exc, EngineTimeout):
        return ApiError(504, f"The model did not answer in time ({exc}).", type="timeout", code="timeout")
    if isinstance(exc, EngineClosed):
        return ApiError(503, "The model is shutting down.", type="service_unavailable", code="model_unavailable")
    return ApiError(500, f"The model could not answer ({type(exc).__name__}).", type="server_error", code=exc.code)


# Authentication ---------------------------------------------------------------------------
async def authenticate(runtime: Runtime, credentials: HTTPAuthorizationCredentials | None) -> ApiKey:
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "Missing API key: send it as `Authorization: Bearer sdk-...` "
                       "(create one with `snapdesk apikey create NAME`).", code="invalid_api_key", headers=unauthorized)
    key = await runtime.manager.db(ApiKeys(runtime.store).authenticate, credentials.credentials)
    if key is None:
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key", headers=unauthorized)
    if not key.active:
        raise ApiError(401, "This API key has been revoked.", code="invalid_api_key", headers=unauthorized)
    wait = runtime.api_limiter.check(str(key.id)) if runtime.api_limiter is not None else None
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        raise ApiError(429, f"Too many requests with this API key (at most {runtime.settings.api_rate_per_key} a "
                       f"minute). Retry in {seconds} s.", type="rate_limit_error", code="rate_limit_exceeded",
                       headers={"Retry-After": str(seconds)})
    return key


# Reading the request ----------------------------------------------------------------------
def encoded_limit(max_bytes: int) -> int:
    """Longest base64 text that can decode to at most `max_bytes` (plus line breaks)."""
    return 4 * math.ceil(max_bytes / 3) + 1024


# Strings (escapes included) are removed before brackets are counted: a "[" inside one is text.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


def nesting_exceeds(raw: bytes, limit: int) -> bool:
    """Whether valid JSON nests arrays and objects more than `limit` deep. Each pass removes the
    innermost pairs, so a document `limit` deep is gone after `limit` passes (in C, not per byte)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(_BRACKETS, _NOT_BRACKETS)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = brackets.replace(b"()", b"")
    return bool(brackets)


def too_deep() -> ApiError:
    return invalid(f"The JSON body is nested too deeply (at most {MAX_JSON_DEPTH} levels of arrays and objects).",
                   code="json_too_deep")


async def read_json(request: Request, limit: int) -> dict:
    """The request's JSON object: at most `limit` bytes and `MAX_JSON_DEPTH` levels, else 413 or 400."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"The request body is larger than {limit // (1024 * 1024)} MB.", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"The request body is larger than {limit // (1024 * 1024)} MB.",
                           code="request_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except RecursionError:
        raise too_deep() from None
    except (ValueError, UnicodeDecodeError):
        raise invalid("We could not parse the JSON body of your request.") from None
    if nesting_exceeds(raw, MAX_JSON_DEPTH):
        raise too_deep()
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    return body


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value) or value > high or value < low or (low_open and value == low):
        bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
        raise invalid(f"`{name}` must be a number {bound} and at most {high:g}.", param=name)
    return float(value)


def _integer(body: dict, name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        limit = f" and at most {high}" if high is not None else ""
        raise invalid(f"`{name}` must be an integer of at least {low}{limit}.", param=name)
    return value


def _unsupported(body: dict) -> None:
    """Refuse what would change the answer but cannot be honoured (never silently ignore it)."""
    checks = [
        ("tools", lambda v: bool(v)), ("functions", lambda v: bool(v)), ("function_call", lambda v: v not in ("none", "auto")),
        ("tool_choice", lambda v: v not in ("none", "auto")), ("stop", lambda v: bool(v)),
        ("logit_bias", lambda v: bool(v)), ("frequency_penalty", lambda v: v != 0),
        ("presence_penalty", lambda v: v != 0), ("audio", lambda v: bool(v)), ("prediction", lambda v: bool(v)),
        ("modalities", lambda v: v != ["text"]),
        ("response_format", lambda v: not (isinstance(v, dict) and v.get("type") == "text")),
    ]
    for name, used in checks:
        if body.get(name) is not None and used(body[name]):
            raise invalid(f"`{name}` is not supported by this server.", param=name, code="unsupported_parameter")


@dataclass
class PendingImage:
    data: bytes
    param: str


@dataclass
class ChatBody:
    """A validated chat completion request, images not yet through intake."""

    messages: list[tuple[str, list[str | PendingImage]]]
    max_tokens: int
    min_tokens: int
    sampling: SamplingParams
    stream: bool
    include_usage: bool
    logprobs: bool


def parse_data_url(url: Any, param: str, limits: ImageLimits) -> bytes:
    if not isinstance(url, str) or not url:
        raise invalid("`image_url.url` must be a data URL string (data:image/png;base64,...).", param=param)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        raise invalid("Image URLs are not fetched by this server: send the image inline as a base64 data URL "
                      "(data:image/png;base64,...).", param=param, code="image_url_not_supported")
    if scheme != "data":
        raise invalid("`image_url.url` must be a base64 data URL (data:image/png;base64,...).", param=param,
                      code="image_url_not_supported")
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise invalid("The data URL has no data (expected data:image/png;base64,...).", param=param)
    fields = [f.strip().lower() for f in header.split(";")]
    if "base64" not in fields[1:]:
        raise invalid("The data URL must be base64-encoded (data:image/png;base64,...).", param=param)
    if fields[0] and not fields[0].startswith("image/"):
        raise invalid(f"The data URL's media type must be an image, not {fields[0]}.", param=param)
    if len(payload) > encoded_limit(limits.max_bytes):
        raise invalid(ImageRejected("too_large", limits).message("en"), param=param, code="too_large")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise invalid("The data URL's image is not valid base64.", param=param) from None


def _unicode(text: str, param: str) -> str:
    """The text, if it is valid Unicode: JSON's "\\ud800" escapes can smuggle in lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid("The text contains an unpaired UTF-16 surrogate, which is not valid Unicode.",
                      param=param) from None
    return text


def _text_of(part: dict, param: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise invalid("A text part needs a `text` string.", param=f"{param}.text")
    return _unicode(text, f"{param}.text")


def parse_messages(raw: Any, limits: ImageLimits) -> list[tuple[str, list[str | PendingImage]]]:
    if not isinstance(raw, list) or not raw:
        raise invalid("`messages` must be a non-empty list.", param="messages")
    if len(raw) > MAX_MESSAGES:
        raise invalid(f"`messages` may hold at most {MAX_MESSAGES} messages.", param="messages")
    messages: list[tuple[str, list[str | PendingImage]]] = []
    images = 0
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid("Each message must be an object with `role` and `content`.", param=where)
        role = ROLES.get(message.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise invalid(f"The role {message.get('role')!r} is not supported: use system, user or assistant.",
                          param=f"{where}.role")
        if message.get("tool_calls") or message.get("function_call"):
            raise invalid("Tool and function calls are not supported by this server.", param=f"{where}.tool_calls",
                          code="unsupported_parameter")
        content = message.get("content")
        parts: list[str | PendingImage] = []
        if content is None and role == "assistant":
            pass
        elif isinstance(content, str):
            parts.append(_unicode(content, f"{where}.content"))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                param = f"{where}.content[{j}]"
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    parts.append(_text_of(part, param))
                elif kind == "image_url":
                    if role != "user":
                        raise invalid("Images are accepted in user messages only.", param=param)
                    images += 1
                    if images > MAX_IMAGES:
                        raise invalid(f"A request may carry at most {MAX_IMAGES} images.", param=param)
                    image_url = part.get("image_url")
                    url = image_url.get("url") if isinstance(image_url, dict) else image_url
                    parts.append(PendingImage(parse_data_url(url, f"{param}.image_url.url", limits), param))
                else:
                    raise invalid(f"The content part type {kind!r} is not supported: use text or image_url.",
                                  param=f"{param}.type")
        else:
            raise invalid("`content` must be a string or a list of content parts.", param=f"{where}.content")
        messages.append((role, parts))
    return messages


def parse_chat(body: dict, max_new_tokens: int, limits: ImageLimits) -> ChatBody:
    _unsupported(body)
    n = _integer(body, "n", 1)
    if n not in (None, 1):
        raise invalid("Only n=1 is supported: send one request per completion.", param="n")
    messages = parse_messages(body.get("messages"), limits)
    ceiling = max_new_tokens
    max_tokens = _integer(body, "max_completion_tokens", 1) or _integer(body, "max_tokens", 1)
    param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    if max_tokens is not None and max_tokens > ceiling:
        raise invalid(f"`{param}` is at most {ceiling} on this server (SNAPDESK_MAX_NEW_TOKENS).", param=param)
    max_tokens = max_tokens or ceiling
    min_tokens = _integer(body, "min_tokens", 0) or 0
    if min_tokens > max_tokens:
        raise invalid(f"`min_tokens` must not be more than {param} ({max_tokens}).", param="min_tokens")
    top_k = _integer(body, "top_k", -1, MAX_TOP_K)
    sampling = SamplingParams(
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        top_k=max(top_k or 0, 0),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, 0.0, 2.0, low_open=True),
    )
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise invalid("`stream` must be true or false.", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise invalid("`stream_options` must be an object.", param="stream_options")
    logprobs = body.get("logprobs") or False
    if not isinstance(logprobs, bool):
        raise invalid("`logprobs` must be true or false.", param="logprobs")
    if _integer(body, "top_logprobs", 0, 20):
        raise invalid("`top_logprobs` is not supported: the engine reports only the chosen token's log-probability "
                      "(use top_logprobs 0).", param="top_logprobs", code="unsupported_parameter")
    return ChatBody(messages, max_tokens, min_tokens, sampling, stream, bool(options.get("include_usage")), logprobs)


# Building the engine request --------------------------------------------------------------
async def build_request(chat: ChatBody, runtime: Runtime) -> tuple[GenerationRequest, int]:
    """Images through intake (in a thread), and the prompt's estimated token count."""
    limits = runtime.settings.image_limits()
    engine = runtime.engine
    messages, texts, prompt = [], [], 3  # the assistant header the generation prompt adds
    for role, raw_parts in chat.messages:
        parts: list[Part] = []
        prompt += TEMPLATE_TOKENS_PER_MESSAGE
        for part in raw_parts:
            if isinstance(part, str):
                parts.append(TextPart(part))
                texts.append(part)
                continue
            try:
                async with runtime.manager.image_decoding:  # shared with the bot: one memory bound
                    prepared = await asyncio.to_thread(prepare_image, part.data, limits)
            except ImageRejected as exc:
                raise invalid(exc.message("en"), param=f"{part.param}.image_url", code=exc.reason) from None
            parts.append(ImagePart(prepared.image))
            prompt += engine.count_image_tokens(prepared.width, prepared.height) + TEMPLATE_TOKENS_PER_IMAGE
        messages.append(ChatMessage(role, tuple(parts)))  # type: ignore[arg-type]
    if texts:
        prompt += await asyncio.to_thread(lambda: sum(engine.count_text_tokens(text) for text in texts))
    budget = runtime.settings.context_tokens
    if prompt > budget:
        raise invalid(f"The prompt is about {prompt} tokens; this server accepts at most {budget} "
                      "(SNAPDESK_CONTEXT_TOKENS). Shorten the messages or send smaller images.",
                      param="messages", code="context_length_exceeded")
    request = GenerationRequest(tuple(messages), max_new_tokens=chat.max_tokens, min_new_tokens=chat.min_tokens,
                                sampling=chat.sampling)
    return request, prompt


# Log-probabilities ------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """The byte <-> printable character table of byte-level BPE (GPT-2, Qwen)."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = visible[:]
    extra = 0
    for byte in range(256):
        if byte not in visible:
            visible.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(visible, map(chr, chars)))


BYTE_OF_CHAR = {char: byte for byte, char in _bytes_to_unicode().items()}


def engine_tokenizer(engine: Any) -> Any:
    loaded = getattr(engine, "loaded", None)
    processor = getattr(loaded, "processor", None)
    return getattr(processor, "tokenizer", None) or getattr(engine, "tokenizer", None)


def token_pieces(engine: Any, token_ids: tuple[int, ...]) -> list[tuple[str, list[int] | None]]:
    """(token text, UTF-8 bytes) of each generated token id."""
    tokenizer = engine_tokenizer(engine)
    if tokenizer is None:
        return [(f"token_id:{token_id}", None) for token_id in token_ids]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"
    added = {index: str(token) for index, token in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    pieces: list[tuple[str, list[int] | None]] = []
    for token_id, token in zip(token_ids, tokenizer.convert_ids_to_tokens(list(token_ids))):
        if token_id in added:
            raw = added[token_id].encode("utf-8")
        elif byte_level and token is not None and all(char in BYTE_OF_CHAR for char in token):
            raw = bytes(BYTE_OF_CHAR[char] for char in token)
        else:
            raw = tokenizer.decode([token_id]).encode("utf-8")
        pieces.append((raw.decode("utf-8", errors="backslashreplace"), list(raw)))
    return pieces


def logprobs_content(engine: Any, generation: Generation) -> list[dict]:
    return [
        {"token": token, "logprob": logprob, "bytes": raw, "top_logprobs": []}
        for (token, raw), logprob in zip(token_pieces(engine, generation.token_ids), generation.token_logprobs)
    ]


# Responses --------------------------------------------------------------------------------
def usage(generation: Generation) -> dict:
    return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens}


@dataclass
class Completion:
    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def body(self, generation: Generation, logprobs: list[dict] | None) -> dict:
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "system_fingerprint": None,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": generation.text, "refusal": None},
                "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                "finish_reason": FINISH_REASONS.get(generation.finish_reason, "stop"),
            }],
            "usage": usage(generation),
        }

    def chunk(self, delta: dict, finish_reason: str | None = None, logprobs: list[dict] | None = None,
              include_usage: bool = False) -> dict:
        chunk = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta,
                         "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                         "finish_reason": finish_reason}],
        }
        if include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, generation: Generation) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": [], "usage": usage(generation)}


def sse(data: dict | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"


# Sharing the engine with the bot ----------------------------------------------------------
class ApiShare:
    """How many API requests are queued or generating; refuses beyond their share of the queue."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.active = 0

    @classmethod
    def from_settings(cls, settings) -> "ApiShare":
        return cls(int(settings.queue_size * API_QUEUE_SHARE))

    def acquire(self) -> "Ticket":
        if self.active >= self.limit:
            raise busy(f"The model is busy: API requests may hold {self.limit} places in its queue and all are "
                       "taken (the rest is kept for the support bot). Retry in a moment.")
        self.active += 1
        return Ticket(self)


class Ticket:
    def __init__(self, share: ApiShare) -> None:
        self._share: ApiShare | None = share

    def release(self) -> None:
        if self._share is not None:
            self._share.active -= 1
            self._share = None


def api_share(request: Request, runtime: Runtime) -> ApiShare:
    return runtime.api_share


class ClientGone(Exception):
    """The caller closed the connection before the answer was ready."""


async def until_done(awaitable: Awaitable, request: Request) -> Any:
    """Await `awaitable`, giving up (ClientGone) when the caller disconnects meanwhile."""
    task = asyncio.ensure_future(awaitable)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# Routes -----------------------------------------------------------------------------------
def model_card(runtime: Runtime) -> dict:
    return {"id": runtime.engine.model_name, "object": "model", "created": STARTED, "owned_by": "snapdesk"}


@router.get("/models", summary="The served model (OpenAI-compatible)")
async def list_models(runtime: RuntimeDep,
                      credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> Response:
    try:
        await authenticate(runtime, credentials)
    except ApiError as exc:
        return exc.response()
    return JSONResponse({"object": "list", "data": [model_card(runtime)]})


@router.get("/models/{model:path}", summary="One served model (OpenAI-compatible)")
async def retrieve_model(model: str, runtime: RuntimeDep,
                         credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> Response:
    try:
        await authenticate(runtime, credentials)
        if model != runtime.engine.model_name:
            raise not_found(model, runtime)
    except ApiError as exc:
        return exc.response()
    return JSONResponse(model_card(runtime))


def not_found(model: Any, runtime: Runtime) -> ApiError:
    return ApiError(404, f"The model `{model}` does not exist on this server; it serves `{runtime.engine.model_name}`.",
                    param="model", code="model_not_found")


def check_ready(runtime: Runtime) -> None:
    if runtime.load_error:
        raise ApiError(503, f"The model is not available: {runtime.load_error}", type="service_unavailable",
                       code="model_unavailable")
    if not runtime.ready.is_set() or not runtime.engine.ready:
        raise ApiError(503, "The model is still loading. Retry in a moment.", type="service_unavailable",
                       code="model_loading", headers={"Retry-After": str(RETRY_AFTER_LOADING_S)})


CHAT_SCHEMA = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string", "description": "The id from GET /v1/models."},
        "messages": {"type": "array", "items": {"type": "object"},
                     "description": "system/user/assistant messages; content a string or text and image_url parts "
                                    "(images as data URLs only)."},
        "max_completion_tokens": {"type": "integer"}, "max_tokens": {"type": "integer"},
        "temperature": {"type": "number"}, "top_p": {"type": "number"}, "top_k": {"type": "integer"},
        "min_tokens": {"type": "integer"}, "repetition_penalty": {"type": "number"},
        "n": {"type": "integer", "enum": [1]}, "logprobs": {"type": "boolean"},
        "stream": {"type": "boolean"}, "stream_options": {"type": "object"},
    },
}


@router.post(
    "/chat/completions",
    summary="Chat completion with the served model (OpenAI-compatible, streaming or not)",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": CHAT_SCHEMA}}}},
)
async def chat_completions(request: Request, runtime: RuntimeDep,
                           credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> Response:
    settings = runtime.settings
    ticket: Ticket | None = None
    try:
        await authenticate(runtime, credentials)
        body = await read_json(request, max(2 * encoded_limit(settings.image_max_bytes), 8 << 20) + (1 << 20))
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise invalid("`model` is required: use the id from GET /v1/models.", param="model")
        if body["model"] != runtime.engine.model_name:
            raise not_found(body["model"], runtime)
        chat = parse_chat(body, settings.max_new_tokens, settings.image_limits())
        check_ready(runtime)
        generation_request, _ = await build_request(chat, runtime)
        ticket = api_share(request, runtime).acquire()
        try:
            stream = runtime.engine.stream(generation_request, timeout=settings.request_timeout_s)
        except EngineError as exc:
            raise engine_failure(exc) from None
        completion = Completion(runtime.engine.model_name)
        if chat.stream:
            response = await start_streaming(stream, chat, completion, runtime, request, ticket)
            ticket = None  # the stream releases it
            return response
        try:
            generation: Generation = await until_done(stream.result(), request)
        except EngineError as exc:
            raise engine_failure(exc) from None
        except (ClientGone, asyncio.CancelledError):
            stream.cancel()
            raise
        logprobs = logprobs_content(runtime.engine, generation) if chat.logprobs else None
        return JSONResponse(completion.body(generation, logprobs))
    except ApiError as exc:
        return exc.response()
    except ClientGone:
        return Response(status_code=499)
    finally:
        if ticket is not None:
            ticket.release()


async def start_streaming(stream: GenerationStream, chat: ChatBody, completion: Completion, runtime: Runtime,
                          request: Request, ticket: Ticket) -> Response:
    """Wait for the first text (so queueing errors still get their status code), then stream."""
    deltas = stream.__aiter__()
    finished = False

    def cleanup() -> None:
        if not finished:
            stream.cancel()
        ticket.release()

    try:
        first = await until_done(deltas.__anext__(), request)
    except StopAsyncIteration:
        first = None
    except EngineError as exc:
        finished = True
        cleanup()
        raise engine_failure(exc) from None
    except BaseException:
        cleanup()
        raise

    async def events() -> AsyncIterator[str]:
        nonlocal finished
        usage_null = chat.include_usage
        try:
            yield sse(completion.chunk({"role": "assistant", "content": ""}, include_usage=usage_null))
            if first is not None:
                yield sse(completion.chunk({"content": first}, include_usage=usage_null))
                async for delta in deltas:
                    yield sse(completion.chunk({"content": delta}, include_usage=usage_null))
            generation = await stream.result()
            finished = True
        except EngineError as exc:
            finished = True
            yield sse(engine_failure(exc).body())
            return
        finally:
            cleanup()
        logprobs = logprobs_content(runtime.engine, generation) if chat.logprobs else None
        yield sse(completion.chunk({}, FINISH_REASONS.get(generation.finish_reason, "stop"), logprobs,
                                   include_usage=usage_null))
        if chat.include_usage:
            yield sse(completion.usage_chunk(generation))
        yield sse("[DONE]")

    body = events()
    weakref.finalize(body, cleanup)  # also when the caller leaves before the body is iterated at all
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
