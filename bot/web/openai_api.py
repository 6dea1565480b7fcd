"""The model Snapdesk holds, offered to internal tools through OpenAI's chat completions API.

Batch jobs and pipelines that already speak OpenAI's API (the official `openai` client, or
any HTTP client) call `POST /v1/chat/completions` and `GET /v1/models` with a bearer key
made by `snapdesk apikey create NAME`. Their requests go through the very engine the
support bot uses, so they share its batching queue; to keep the bot answering customers,
API requests may hold at most half of that queue at once (the rest gets 429 with
Retry-After, which the `openai` client retries by itself), and `max_tokens` is capped at
the bot's own answer length (`SNAPDESK_MAX_NEW_TOKENS`): a batch runs until its longest
answer ends, so one very long answer would hold every request batched with it.

A request is read here within bounds (body size and JSON nesting, before anything parses
it), checked against `openai_schema` (what a request may say), and its images go through the
same intake as screenshots from users (format from the magic bytes, size and pixel limits,
scaled to the pixel budget; a refused image is a 400 naming the reason). The answer, whole or
streamed, is shaped by `openai_responses`; every error is in OpenAI's shape (`openai_errors`).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import weakref
from typing import Any, AsyncIterator, Awaitable

from fastapi import APIRouter, Request, Security
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.base import (
    ChatMessage,
    EngineError,
    Generation,
    GenerationRequest,
    GenerationStream,
    ImagePart,
    Part,
    TextPart,
)
from engine.images import ImageRejected, prepare_image

from ..apikeys import ApiKey, ApiKeys
from .openai_errors import ApiError, engine_failure, invalid
from .openai_responses import Completion, finish_reason_of, logprobs_content, sse
from .openai_schema import ChatBody, chat_body, encoded_limit, openapi_schema, parse_request
from ..runtime import Runtime
from .api_share import Ticket
from .deps import RuntimeDep, ServerDep
from .ratelimit import RateLimiter

MAX_JSON_DEPTH = 64  # a chat request needs 4 (body, messages, a message, its parts)
RETRY_AFTER_LOADING_S = 10
DISCONNECT_POLL_S = 0.5
TEMPLATE_TOKENS_PER_MESSAGE = 6  # <|im_start|>role\n ... <|im_end|>\n
TEMPLATE_TOKENS_PER_IMAGE = 2  # <|vision_start|> ... <|vision_end|>
STARTED = int(time.time())

bearer = HTTPBearer(auto_error=False, description="An API key from `snapdesk apikey create NAME`.")
router = APIRouter(prefix="/v1", tags=["OpenAI-compatible API"])


# Authentication ---------------------------------------------------------------------------
async def authenticate(runtime: Runtime, limiter: RateLimiter,
                       credentials: HTTPAuthorizationCredentials | None) -> ApiKey:
    unauthorized = {"WWW-Authenticate": "Bearer"}
    if credentials is None or not credentials.credentials:
        raise ApiError(401, "Missing API key: send it as `Authorization: Bearer sdk-...` "
                       "(create one with `snapdesk apikey create NAME`).", code="invalid_api_key", headers=unauthorized)
    key = await runtime.manager.db(ApiKeys(runtime.store).authenticate, credentials.credentials)
    if key is None:
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key", headers=unauthorized)
    if not key.active:
        raise ApiError(401, "This API key has been revoked.", code="invalid_api_key", headers=unauthorized)
    wait = limiter.check(str(key.id))
    if wait is not None:
        seconds = max(1, math.ceil(wait))
        raise ApiError(429, f"Too many requests with this API key (at most {runtime.settings.api_rate_per_key} a "
                       f"minute). Retry in {seconds} s.", type="rate_limit_error", code="rate_limit_exceeded",
                       headers={"Retry-After": str(seconds)})
    return key


# Reading the request ----------------------------------------------------------------------
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
async def list_models(runtime: RuntimeDep, server: ServerDep,
                      credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> Response:
    try:
        await authenticate(runtime, server.api_limiter, credentials)
    except ApiError as exc:
        return exc.response()
    return JSONResponse({"object": "list", "data": [model_card(runtime)]})


@router.get("/models/{model:path}", summary="One served model (OpenAI-compatible)")
async def retrieve_model(model: str, runtime: RuntimeDep, server: ServerDep,
                         credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> Response:
    try:
        await authenticate(runtime, server.api_limiter, credentials)
        if model != runtime.engine.model_name:
            raise not_found(model, runtime)
    except ApiError as exc:
        return exc.response()
    return JSONResponse(model_card(runtime))


def not_found(model: str, runtime: Runtime) -> ApiError:
    return ApiError(404, f"The model `{model}` does not exist on this server; it serves `{runtime.engine.model_name}`.",
                    param="model", code="model_not_found")


def check_ready(runtime: Runtime) -> None:
    if runtime.load_error:
        raise ApiError(503, f"The model is not available: {runtime.load_error}", type="service_unavailable",
                       code="model_unavailable")
    if not runtime.ready.is_set() or not runtime.engine.ready:
        raise ApiError(503, "The model is still loading. Retry in a moment.", type="service_unavailable",
                       code="model_loading", headers={"Retry-After": str(RETRY_AFTER_LOADING_S)})


@router.post(
    "/chat/completions",
    summary="Chat completion with the served model (OpenAI-compatible, streaming or not)",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": openapi_schema()}}}},
)
async def chat_completions(request: Request, runtime: RuntimeDep, server: ServerDep,
                           credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> Response:
    settings = runtime.settings
    ticket: Ticket | None = None
    try:
        await authenticate(runtime, server.api_limiter, credentials)
        body = await read_json(request, max(2 * encoded_limit(settings.image_max_bytes), 8 << 20) + (1 << 20))
        chat_request = parse_request(body)
        if chat_request.model != runtime.engine.model_name:
            raise not_found(chat_request.model, runtime)
        chat = chat_body(chat_request, settings.max_new_tokens, settings.image_limits())
        check_ready(runtime)
        generation_request, _ = await build_request(chat, runtime)
        ticket = server.api_share.acquire()
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
        yield sse(completion.chunk({}, finish_reason_of(generation), logprobs,
                                   include_usage=usage_null))
        if chat.include_usage:
            yield sse(completion.usage_chunk(generation))
        yield sse("[DONE]")

    body = events()
    weakref.finalize(body, cleanup)  # also when the caller leaves before the body is iterated at all
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
