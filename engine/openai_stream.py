"""Reading what an OpenAI-compatible server sends back: the streamed answer of one attempt.

The answer comes as server-sent events, one chat-completion chunk each, with the
log-probability of every chosen token. How an attempt fails decides what happens next: a
failure before the first token may be tried again elsewhere (`RetryableFailure`); once text
was streamed it never is, so no text is ever delivered twice, and the failure reaches the
caller as an `EngineError` (`EngineTimeout` for a timeout).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator

import httpx

from .base import EngineError, EngineTimeout, GenerationStream
from .openai_payload import STRICT, Payload, names_a_sampling_field
from .openai_retries import RetryableFailure

if TYPE_CHECKING:
    from .openai_endpoints import Endpoint

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Answer:
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


async def try_endpoint(client: httpx.AsyncClient, endpoint: "Endpoint", payload: Payload, stream: GenerationStream, *,
                       read_timeout_s: float, extended_sampling: bool) -> Answer:
    """One attempt: the answer streamed from `endpoint`, each piece of text pushed to `stream`.

    Raises RetryableFailure when nothing was streamed yet, EngineError otherwise.
    """
    endpoint.requests += 1
    state = Answer()
    url = f"{endpoint.url}/chat/completions"
    headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
    try:
        async with client.stream("POST", url, content=payload.for_kind(endpoint.kind), headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                _raise_for_status(endpoint, response, extended_sampling)
            async for data in iter_sse_data(response.aiter_lines()):
                if data.strip() == "[DONE]":
                    state.done = True
                    break
                _take_chunk(endpoint, data, state, stream)
    except httpx.TimeoutException as exc:
        kind = "connect" if isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)) else "read"
        if state.got_token:
            raise EngineTimeout(
                f"{endpoint.url} sent nothing for {read_timeout_s:g} s in the middle of an answer"
            ) from None
        raise RetryableFailure(f"{endpoint.url}: {kind} timeout", mark_down=True, timeout=True) from None
    except httpx.HTTPError as exc:
        if state.got_token:
            raise EngineError(f"the connection to {endpoint.url} broke in the middle of an answer ({describe(exc)})") from None
        # Unreachable: skip the endpoint for a while. A connection that broke (a stale
        # keep-alive connection, a worker that died) is retried without that verdict.
        raise RetryableFailure(f"{endpoint.url}: {describe(exc)}", mark_down=isinstance(exc, httpx.ConnectError)) from None
    if state.finish_reason is None:
        # An answer ends with a finish reason. Without one it was cut short, even when the
        # stream says [DONE]: llama-cpp-python's server does that to a running answer when
        # another request arrives (its --interrupt_requests, on by default).
        if state.got_token:
            ended = "ended the answer without a finish reason" if state.done else "closed the stream"
            raise EngineError(f"{endpoint.url} {ended} in the middle of an answer")
        raise RetryableFailure(f"{endpoint.url} closed the stream before answering", mark_down=False)
    endpoint.failures = 0
    endpoint.down_until = 0.0
    return state


def _raise_for_status(endpoint: "Endpoint", response: httpx.Response, extended_sampling: bool) -> None:
    status = response.status_code
    detail = error_message(response.text)
    where = f"{endpoint.url} answered HTTP {status}"
    if status in (401, 403):
        raise EngineError(f"{where}: the API key was rejected (SNAPDESK_ENGINE_API_KEY)")
    if status == 429:
        raise RetryableFailure(f"{where} (overloaded)", mark_down=True, overloaded=True)
    if status in (502, 503, 504):
        raise RetryableFailure(f"{where}: {detail}", mark_down=True)
    if status >= 500:  # maybe this request, maybe the server: another replica may do better
        raise RetryableFailure(f"{where}: {detail}", mark_down=False, same_endpoint_ok=False)
    if status in (400, 422) and extended_sampling and endpoint.kind != STRICT and names_a_sampling_field(detail):
        endpoint.kind = STRICT
        log.warning(
            "%s refuses sampling fields beyond OpenAI's (%s): it gets OpenAI's fields only from now on, so its "
            "own defaults apply to top_k, min_p and the repetition penalty", endpoint.url, detail,
        )
        raise RetryableFailure(f"{where}: {detail}", mark_down=False)
    raise EngineError(f"{where}: {detail}")


def _take_chunk(endpoint: "Endpoint", data: str, state: Answer, stream: GenerationStream) -> None:
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


def error_message(response_text: str) -> str:
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


def describe(exc: BaseException) -> str:
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
