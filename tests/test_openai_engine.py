"""The remote engine's wire format and failure behaviour, against small OpenAI-compatible servers on loopback.

Each fake server speaks `/v1/chat/completions` the way vLLM does (server-sent events,
`choices[].logprobs.content`, a final usage chunk, `data: [DONE]`) and can be told to
fail: HTTP 500, hang, close the stream half-way, send no log-probs, or be down. It can
also be told to be llama.cpp (llama-cpp-python's server or llama-server), with that
server's rules: its own defaults for sampling fields a request leaves out, `top_k` at
least 0, and log-probs only when `top_logprobs` is given. Its usage chunk always says 42
prompt tokens, whatever the prompt.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import shutil
import threading
import time
from contextlib import suppress

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect
from PIL import Image

from bot.engine_setup import make_engine
from bot.settings import Settings
from engine.base import (
    ChatMessage,
    EngineClosed,
    EngineError,
    EngineOverloaded,
    EngineTimeout,
    GenerationRequest,
    ModelLoadError,
    SamplingParams,
)
from engine.loading import visual_tokens
from engine.openai_endpoints import normalize_base_url
from engine.openai_engine import OpenAICompatibleEngine
from engine.openai_stream import iter_sse_data
from tests.live_server import free_port

MODEL = "Qwen/Qwen3-VL-8B-Instruct"
REPLY = [("The ", -0.1), ("renewal ", -0.5), ("of ", -0.2), ("88", -1.0), ("", -0.05)]  # the last: end of turn
# What a server answers when it applies a repetition penalty Snapdesk did not ask for.
PENALIZED = [("The ", -0.1), ("fee ", -2.5), ("was ", -1.7), ("88", -1.9), ("", -0.3)]
SERVER_PROMPT_TOKENS = 42
OWNERS = {"vllm": "vllm", "llama-cpp-python": "me", "llama-server": "llamacpp", "strict": "Qwen"}
OPENAI_FIELDS = {"model", "messages", "stream", "stream_options", "logprobs", "top_logprobs", "max_tokens",
                 "temperature", "top_p"}
# llama-cpp-python's server defaults (llama_cpp/server/types.py) for fields a request leaves out.
LLAMA_CPP_DEFAULTS = {"repeat_penalty": 1.1, "min_p": 0.05, "top_k": 40, "top_p": 0.95, "temperature": 0.2}
GUARD_S = 15.0  # a test fails instead of hanging when the engine does not answer


class FakeServer:
    """A vLLM-shaped chat-completions server in a thread; `mode` says how it behaves."""

    def __init__(self, *, models: tuple[str, ...] = (MODEL,), api_key: str | None = None, mode: str = "ok",
                 port: int | None = None, kind: str = "vllm", defaults: dict | None = None) -> None:
        self.models = list(models)
        self.api_key = api_key
        self.mode = mode
        self.port = port or free_port()
        self.kind = kind
        self.llama_cpp = kind.startswith("llama")
        # What the server uses for a field a request leaves out (vLLM: the checkpoint's generation_config).
        self.defaults = dict(LLAMA_CPP_DEFAULTS if self.llama_cpp else {}, **(defaults or {}))
        self.requests: list[dict] = []
        self.applied: list[dict] = []  # per streamed request: the settings the server decoded with
        self.health_checks = 0
        self.active = 0
        self.max_active = 0
        self.disconnects = 0
        self.abandoned = 0
        self.release = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[dict]:
        return [r for r in self.requests if r["body"].get("stream")]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models(request: Request):
            self.health_checks += 1
            if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
            return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": OWNERS[self.kind]} for m in self.models]}

        @app.get("/health")
        async def health():
            return {}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            try:
                body = await request.json()
            except ClientDisconnect:  # a loaded machine: the client gave up before its body was read
                self.disconnects += 1
                return Response(status_code=499)
            self.requests.append({"headers": dict(request.headers), "body": body})
            if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
            if body.get("model") not in self.models:
                return JSONResponse({"object": "error", "message": f"The model `{body.get('model')}` does not exist.",
                                     "type": "NotFoundError", "code": 404}, status_code=404)
            if not body.get("stream"):  # a one-token probe
                return {"id": "x", "object": "chat.completion", "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "T"}, "finish_reason": "length"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
            if self.kind == "strict" and body.keys() - OPENAI_FIELDS:  # transformers serve's answer
                return JSONResponse({"detail": f"Unexpected fields in the request: {set(body.keys() - OPENAI_FIELDS)}"},
                                    status_code=422)
            if self.llama_cpp and not (isinstance(body.get("top_k", 0), int) and body.get("top_k", 0) >= 0):
                return JSONResponse({"detail": [{"type": "greater_than_equal", "loc": ["body", "top_k"],
                                                 "msg": "Input should be greater than or equal to 0"}]}, status_code=422)
            penalty = "repeat_penalty" if self.llama_cpp else "repetition_penalty"
            self.applied.append({name: body.get(name, default) for name, default in
                                 {penalty: 1.0, "min_p": 0.0, "top_k": -1, **self.defaults}.items()})
            if self.mode == "error500":
                return JSONResponse({"object": "error", "message": "CUDA error: an illegal memory access", "code": 500},
                                    status_code=500)
            if self.mode == "overloaded":
                return JSONResponse({"object": "error", "message": "too many requests", "code": 429}, status_code=429)
            if self.mode == "hang" or (self.mode == "hang_if_poisoned" and "POISON" in json.dumps(body)):
                await self._wait_for_release(request)
            return StreamingResponse(self._events(body, request), media_type="text/event-stream")

        return app

    async def _wait_for_release(self, request: Request, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while not self.release.is_set() and time.monotonic() < deadline:
            if await request.is_disconnected():
                self.disconnects += 1
                return
            await asyncio.sleep(0.02)

    def _chunk(self, body: dict, delta: dict, logprobs=None, finish_reason=None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return "data: " + json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                                      "model": body["model"], "choices": [choice], "usage": None}) + "\n\n"

    async def _events(self, body: dict, request: Request):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        finished = False
        try:
            if self.mode == "close_before_tokens":
                raise RuntimeError("the worker died")  # uvicorn drops the connection: no chunk at all
            yield self._chunk(body, {"role": "assistant", "content": ""})
            if self.mode == "slow":
                await asyncio.sleep(0.2)
            applied = self.applied[-1]
            penalized = applied.get("repeat_penalty", applied.get("repetition_penalty")) != 1.0
            reply = PENALIZED if penalized and body.get("temperature") == 0 else REPLY
            # llama-cpp-python passes `top_logprobs if logprobs else None` on: no log-probs without it.
            with_logprobs = body.get("logprobs") and (body.get("top_logprobs") is not None or not self.llama_cpp)
            tokens = reply[: body.get("max_tokens") or len(reply)]
            for i, (text, logprob) in enumerate(tokens):
                if self.mode == "error_event" and i == 2:
                    yield 'data: {"error": {"message": "the engine died", "type": "InternalServerError", "code": 500}}\n\n'
                    return
                if self.mode == "close_mid_stream" and i == 2:
                    raise RuntimeError("the worker died")
                if self.mode == "interrupted" and i == 2:  # llama-cpp-python's --interrupt_requests
                    yield "data: [DONE]\n\n"
                    return
                if self.mode == "hang_mid_stream" and i == 2:
                    await self._wait_for_release(request)
                    if self.disconnects:
                        return
                logprobs = None
                if self.mode != "no_logprobs" and with_logprobs:
                    logprobs = {"content": [{"token": text, "logprob": logprob, "bytes": list(text.encode()),
                                             "top_logprobs": []}]}
                finish = None
                if i == len(tokens) - 1:
                    finish = "stop" if len(tokens) == len(reply) else "length"
                yield self._chunk(body, {"content": text}, logprobs, finish)
            usage = {"prompt_tokens": SERVER_PROMPT_TOKENS, "completion_tokens": len(tokens),
                     "total_tokens": SERVER_PROMPT_TOKENS + len(tokens)}
            yield "data: " + json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0,
                                         "model": body["model"], "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            self.active -= 1
            if not finished and self.mode.startswith("hang"):
                self.abandoned += 1  # the client went away (or the server stopped) before the end

    def start(self) -> "FakeServer":
        self.release.clear()
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=self.port, log_level="critical",
                                lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None


@pytest.fixture
def servers():
    started: list[FakeServer] = []

    def make(**options) -> FakeServer:
        server = FakeServer(**options).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def engines():
    made: list[OpenAICompatibleEngine] = []

    def make(urls, **options) -> OpenAICompatibleEngine:
        options.setdefault("retry_backoff_s", 0.02)
        options.setdefault("request_timeout_s", 10.0)
        engine = OpenAICompatibleEngine(urls=list(urls), model=options.pop("model", MODEL), **options)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def refused_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused


def ask(*parts, max_new_tokens: int = 16, **options) -> GenerationRequest:
    return GenerationRequest((ChatMessage.of("user", *parts),), max_new_tokens=max_new_tokens, **options)


async def started(engine: OpenAICompatibleEngine) -> OpenAICompatibleEngine:
    await asyncio.to_thread(engine.start)
    return engine


async def generate(engine, request=None, **options):
    return await asyncio.wait_for(engine.generate(request or ask("Why was I charged?"), **options), GUARD_S)


# The request on the wire ---------------------------------------------------------------
async def test_request_body_headers_and_result(servers, engines):
    server = servers(api_key="sekrit")
    engine = await started(engines([server.url], api_key="sekrit"))
    screenshot = Image.new("RGB", (320, 200), (220, 30, 30))
    request = GenerationRequest(
        (ChatMessage.of("system", "You are the support assistant of Acme."),
         ChatMessage.of("user", screenshot, "Why was I charged?")),
        max_new_tokens=7,
    )
    generation = await generate(engine, request)

    (sent,) = server.chat_requests
    body, headers = sent["body"], sent["headers"]
    assert headers["authorization"] == "Bearer sekrit"
    assert body["model"] == MODEL
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["logprobs"] is True and body["top_logprobs"] == 0
    assert body["max_tokens"] == 7 and body["temperature"] == 0
    # Every setting the in-process engine decodes with, neutral ones included, in vLLM's names.
    assert (body["top_k"], body["min_p"], body["repetition_penalty"]) == (-1, 0.0, 1.0)
    assert not {"top_p", "min_tokens", "repeat_penalty"} & body.keys()
    system, user = body["messages"]
    assert system == {"role": "system", "content": "You are the support assistant of Acme."}
    image_part, text_part = user["content"]
    assert text_part == {"type": "text", "text": "Why was I charged?"}
    assert image_part["type"] == "image_url"
    prefix = "data:image/png;base64,"
    assert image_part["image_url"]["url"].startswith(prefix)
    decoded = Image.open(io.BytesIO(base64.b64decode(image_part["image_url"]["url"][len(prefix):])))
    assert decoded.format == "PNG" and decoded.size == (320, 200)
    assert decoded.convert("RGB").getpixel((5, 5)) == (220, 30, 30)

    assert generation.text == "The renewal of 88"
    assert generation.finish_reason == "stop"
    assert generation.token_logprobs == (-0.1, -0.5, -0.2, -1.0, -0.05)
    assert generation.confidence == pytest.approx(math.exp((-0.1 - 0.5 - 0.2 - 1.0 - 0.05) / 5))
    assert generation.completion_tokens == 5
    # No tokenizer of this model here: estimated, with the image's visual tokens, not the server's 42.
    assert generation.image_tokens == visual_tokens(320, 200, 256, 1280)
    assert generation.prompt_tokens > generation.image_tokens and generation.prompt_tokens != SERVER_PROMPT_TOKENS
    assert 0 <= generation.timings.queued_ms <= generation.timings.first_token_ms <= generation.timings.total_ms
    text_only = await generate(engine, ask("Why was I charged?"))
    assert text_only.prompt_tokens == SERVER_PROMPT_TOKENS and text_only.image_tokens == 0  # text: the server's count


async def test_sampling_settings_on_the_wire(servers, engines):
    server = servers()
    engine = await started(engines([server.url]))
    sampling = SamplingParams(temperature=0.7, top_p=0.9, top_k=0, repetition_penalty=1.05)
    await generate(engine, ask("hello", max_new_tokens=5, min_new_tokens=2, sampling=sampling))
    await generate(engine, ask("hello", sampling=SamplingParams(temperature=0.5, top_k=20)))
    first, second = (r["body"] for r in server.chat_requests)
    assert first["temperature"] == 0.7 and first["top_p"] == 0.9
    assert first["top_k"] == -1  # "no top-k", so the server does not apply the checkpoint's default
    assert first["min_p"] == 0.0
    assert first["min_tokens"] == 2 and first["repetition_penalty"] == 1.05 and first["max_tokens"] == 5
    assert second["top_k"] == 20 and second["repetition_penalty"] == 1.0 and "min_tokens" not in second
    assert "repeat_penalty" not in first  # llama.cpp's name: vLLM would log a warning on every request

    plain = await started(engines([server.url], extended_sampling=False))
    await generate(plain, ask("hello", max_new_tokens=5, min_new_tokens=2, sampling=sampling))
    body = server.chat_requests[-1]["body"]
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9
    assert body["logprobs"] is True and body["top_logprobs"] == 0  # OpenAI's own fields
    assert not {"top_k", "min_p", "min_tokens", "repetition_penalty", "repeat_penalty"} & body.keys()


async def test_a_neutral_repetition_penalty_is_sent_so_the_checkpoints_does_not_apply(servers, engines):
    """vLLM started without `--generation-config vllm` fills a missing field from the checkpoint's
    generation_config.json: a penalty there would change Snapdesk's greedy answers."""
    server = servers(defaults={"repetition_penalty": 1.05})
    engine = await started(engines([server.url]))
    generation = await generate(engine)
    assert server.applied[-1]["repetition_penalty"] == 1.0
    assert generation.text == "The renewal of 88"
    assert generation.token_logprobs == (-0.1, -0.5, -0.2, -1.0, -0.05)


@pytest.mark.parametrize("kind", ["llama-cpp-python", "llama-server"])
async def test_a_llama_cpp_server_decodes_as_in_process_and_returns_log_probs(servers, engines, kind):
    server = servers(kind=kind)
    engine = await started(engines([server.url]))
    assert engine.endpoints[0].kind == "llama.cpp"
    generation = await generate(engine)
    # Without top_logprobs the server returns no log-probs (confidence unknown); without
    # repeat_penalty it applies 1.1 and answers something else.
    assert generation.text == "The renewal of 88"
    assert generation.token_logprobs == (-0.1, -0.5, -0.2, -1.0, -0.05)
    assert generation.confidence == pytest.approx(math.exp((-0.1 - 0.5 - 0.2 - 1.0 - 0.05) / 5))
    body = server.chat_requests[-1]["body"]
    assert body["logprobs"] is True and body["top_logprobs"] == 0
    assert server.applied[-1] == {"repeat_penalty": 1.0, "min_p": 0.0, "top_k": 0, "top_p": 0.95, "temperature": 0}

    # Sampling without top-k: llama.cpp's "none" is 0 (it refuses -1 with a 422), min_p 0 as in process.
    sampled = await generate(engine, ask("hello", sampling=SamplingParams(temperature=0.7, top_p=0.9,
                                                                          repetition_penalty=1.05)))
    assert sampled.confidence is not None
    assert server.applied[-1] == {"repeat_penalty": 1.05, "min_p": 0.0, "top_k": 0, "top_p": 0.9, "temperature": 0.7}
    await generate(engine, ask("hello", sampling=SamplingParams(temperature=0.7, top_k=20)))
    assert server.applied[-1]["top_k"] == 20


async def test_a_server_that_was_down_at_start_gets_its_own_field_names_once_back(servers, engines):
    steady = servers()
    port = free_port()
    engine = await started(engines([f"http://127.0.0.1:{port}/v1", steady.url], down_backoff_s=0.2))
    llama = FakeServer(port=port, kind="llama-cpp-python").start()
    try:
        await asyncio.sleep(0.25)
        for _ in range(4):
            await generate(engine)
        assert llama.chat_requests, "the revived server got no traffic"
        body = llama.chat_requests[-1]["body"]
        assert body["top_k"] == 0 and body["repeat_penalty"] == 1.0
        assert all("repeat_penalty" not in r["body"] for r in steady.chat_requests)
    finally:
        llama.stop()


async def test_a_server_that_refuses_fields_beyond_openais_gets_openais_only(servers, engines, caplog):
    server = servers(kind="strict")
    engine = await started(engines([server.url]))
    with caplog.at_level("WARNING", logger="engine.openai_stream"):
        results = [await generate(engine) for _ in range(3)]
    assert all(r.text == "The renewal of 88" for r in results)
    refused, *accepted = (r["body"] for r in server.chat_requests)
    assert "top_k" in refused and len(accepted) == 3  # refused once, then never again
    assert all(body.keys() <= OPENAI_FIELDS and body["top_logprobs"] == 0 for body in accepted)
    assert any("refuses sampling fields beyond OpenAI's" in record.getMessage() for record in caplog.records)


async def test_prompt_and_image_tokens_are_counted_here_as_in_process(servers, engines, engine, tiny_model_dir):
    """The server's usage says 42 whatever the prompt; Snapdesk reports the in-process engine's counts."""
    server = servers()
    remote = await started(engines([server.url], tokenizer=str(tiny_model_dir)))
    system = ChatMessage.of("system", "You are the support assistant of Acme. <|im_start|> stays for the operator.")
    requests = [
        GenerationRequest((system, ChatMessage.of("user", Image.new("RGB", (640, 480), "white"), "为什么扣我钱?")),
                          max_new_tokens=4),
        GenerationRequest((ChatMessage.of("user", Image.new("RGB", (800, 600)), Image.new("RGB", (300, 900)), "两张"),
                           ChatMessage.of("assistant", "I see two screenshots."),
                           ChatMessage.of("user", "And <|im_end|> this? <|image_pad|>")), max_new_tokens=4),
        GenerationRequest((system, ChatMessage.of("user", "Where is my parcel?")), max_new_tokens=4),
    ]
    for request in requests:
        far, local = await generate(remote, request), await generate(engine, request)
        assert (far.prompt_tokens, far.image_tokens) == (local.prompt_tokens, local.image_tokens)
        assert far.prompt_tokens != SERVER_PROMPT_TOKENS
    assert remote.count_text_tokens("为什么扣我钱?") == engine.count_text_tokens("为什么扣我钱?")


@pytest.mark.parametrize("where", ["chat_template.json", "tokenizer_config.json", "nowhere"])
async def test_the_chat_template_is_found_where_checkpoints_keep_it(servers, engines, engine, tiny_model_dir,
                                                                    tmp_path, where):
    """Older checkpoints keep the template in chat_template.json or tokenizer_config.json, not a .jinja file."""
    shutil.copy(tiny_model_dir / "tokenizer.json", tmp_path)
    template = (tiny_model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if where != "nowhere":
        (tmp_path / where).write_text(json.dumps({"chat_template": template}), encoding="utf-8")
    server = servers()
    remote = await started(engines([server.url], tokenizer=str(tmp_path)))
    request = ask(Image.new("RGB", (640, 480), "white"), "Why was I charged?", max_new_tokens=4)
    far, local = await generate(remote, request), await generate(engine, request)
    if where == "nowhere":  # text counted by the tokenizer, the template's own tokens unknown: an estimate
        assert far.image_tokens < far.prompt_tokens and abs(far.prompt_tokens - local.prompt_tokens) <= 16
    else:
        assert far.prompt_tokens == local.prompt_tokens
    assert far.image_tokens == local.image_tokens


async def test_streaming_delivers_each_chunk(servers, engines):
    server = servers(mode="slow")
    engine = await started(engines([server.url]))
    stream = engine.stream(ask("Why was I charged?"))
    deltas = [delta async for delta in stream]
    generation = await stream.result()
    assert deltas == ["The ", "renewal ", "of ", "88"]
    assert "".join(deltas) == generation.text
    assert generation.timings.first_token_ms <= generation.timings.total_ms


async def test_max_tokens_and_length_finish(servers, engines):
    server = servers()
    engine = await started(engines([server.url]))
    generation = await generate(engine, ask("Why was I charged?", max_new_tokens=2))
    assert server.chat_requests[-1]["body"]["max_tokens"] == 2
    assert generation.finish_reason == "length" and generation.completion_tokens == 2
    assert generation.text == "The renewal "


async def test_no_logprobs_means_unknown_confidence(servers, engines):
    server = servers(mode="no_logprobs")
    engine = await started(engines([server.url]))
    generation = await generate(engine)
    assert generation.text == "The renewal of 88"
    assert generation.token_logprobs == ()
    assert generation.confidence is None and generation.min_token_prob is None
    assert generation.completion_tokens == 5  # from the usage chunk


# Several endpoints ----------------------------------------------------------------------
async def test_round_robin_over_two_healthy_endpoints(servers, engines):
    first, second = servers(), servers()
    engine = await started(engines([first.url, second.url]))
    for _ in range(4):
        await generate(engine)
    await asyncio.gather(*(generate(engine) for _ in range(4)))
    assert len(first.chat_requests) == 4 and len(second.chat_requests) == 4


async def test_endpoint_down_at_start_is_skipped(servers, engines):
    healthy = servers()
    engine = await started(engines([refused_url(), healthy.url], down_backoff_s=60))
    down = engine.endpoints[0]
    assert not down.available(time.monotonic()) and "connection refused" in down.last_error
    results = [await generate(engine) for _ in range(5)]
    assert all(r.text == "The renewal of 88" for r in results)
    assert len(healthy.chat_requests) == 5


async def test_endpoint_that_goes_down_is_skipped_for_its_backoff_then_checked_again(servers, engines):
    flaky, steady = servers(), servers()
    engine = await started(engines([flaky.url, steady.url], down_backoff_s=0.3, max_down_backoff_s=0.6))
    flaky.stop()  # connection refused from now on

    # The first request meets the refusal, is retried on the other endpoint and succeeds.
    results = [await generate(engine) for _ in range(4)]
    assert all(r.text == "The renewal of 88" for r in results)
    assert len(steady.chat_requests) == 4
    down = engine.endpoints[0]
    assert down.failures == 1 and not down.available(time.monotonic())

    # After the backoff a health check finds it still down: skipped again, for longer.
    await asyncio.sleep(0.35)
    await generate(engine)
    await generate(engine)
    assert down.failures == 2 and len(steady.chat_requests) == 6

    # Back up: once the backoff has passed, the health check lets requests reach it again.
    revived = FakeServer(port=flaky.port).start()
    try:
        await asyncio.sleep(0.65)
        for _ in range(4):
            await generate(engine)
        assert revived.health_checks >= 1
        assert len(revived.chat_requests) >= 1 and down.failures == 0
    finally:
        revived.stop()


async def test_server_error_on_one_replica_is_retried_on_another(servers, engines):
    broken, healthy = servers(mode="error500"), servers()
    engine = await started(engines([broken.url, healthy.url]))
    generation = await generate(engine)
    assert generation.text == "The renewal of 88"
    assert len(broken.chat_requests) == 1 and len(healthy.chat_requests) == 1


# Failures reach the caller as engine errors ---------------------------------------------------
async def test_http_500_raises_engine_error(servers, engines):
    server = servers(mode="error500")
    engine = await started(engines([server.url]))
    with pytest.raises(EngineError) as caught:
        await generate(engine)
    assert not isinstance(caught.value, EngineTimeout)
    assert "HTTP 500" in str(caught.value) and "illegal memory access" in str(caught.value)
    assert len(server.chat_requests) == 1  # not repeated on the same server


async def test_overloaded_servers_raise_engine_overloaded(servers, engines):
    server = servers(mode="overloaded")
    engine = await started(engines([server.url], retries=1))
    with pytest.raises(EngineOverloaded):
        await generate(engine)


async def test_server_that_hangs_past_the_request_timeout(servers, engines):
    server = servers(mode="hang")
    engine = await started(engines([server.url], request_timeout_s=0.5))
    started_at = time.monotonic()
    with pytest.raises(EngineTimeout):
        await generate(engine)
    assert time.monotonic() - started_at < GUARD_S
    with pytest.raises(EngineTimeout):  # the per-call timeout wins over the engine's
        await generate(engine, timeout=0.3)


async def test_read_timeout_between_chunks_mid_answer(servers, engines):
    server = servers(mode="hang_mid_stream")
    backup = servers()
    engine = await started(engines([server.url, backup.url], read_timeout_s=0.3))
    stream = engine.stream(ask("Why was I charged?"))
    deltas: list[str] = []
    with pytest.raises(EngineTimeout):
        async with asyncio.timeout(GUARD_S):
            async for delta in stream:
                deltas.append(delta)
    assert deltas == ["The ", "renewal "]
    assert backup.chat_requests == []  # text was streamed: never retried, never duplicated


async def test_read_timeout_before_any_token_is_retried(servers, engines):
    hanging, healthy = servers(mode="hang"), servers()
    engine = await started(engines([hanging.url, healthy.url], read_timeout_s=0.3))
    generation = await generate(engine)
    assert generation.text == "The renewal of 88"
    assert len(hanging.chat_requests) == 1 and len(healthy.chat_requests) == 1


async def test_stream_closed_mid_answer_is_an_error_and_not_retried(servers, engines):
    closing, healthy = servers(mode="close_mid_stream"), servers()
    engine = await started(engines([closing.url, healthy.url]))
    stream = engine.stream(ask("Why was I charged?"))
    deltas: list[str] = []
    with pytest.raises(EngineError) as caught:
        async with asyncio.timeout(GUARD_S):
            async for delta in stream:
                deltas.append(delta)
    assert "middle of an answer" in str(caught.value)
    assert deltas == ["The ", "renewal "]
    assert healthy.chat_requests == []


async def test_an_answer_cut_short_with_done_is_an_error_not_a_short_answer(servers, engines):
    """llama-cpp-python's server ends a running answer with `[DONE]` when another request arrives."""
    server = servers(mode="interrupted", kind="llama-cpp-python")
    engine = await started(engines([server.url]))
    stream = engine.stream(ask("Why was I charged?"))
    deltas: list[str] = []
    with pytest.raises(EngineError, match="without a finish reason in the middle of an answer"):
        async with asyncio.timeout(GUARD_S):
            async for delta in stream:
                deltas.append(delta)
    assert deltas == ["The ", "renewal "]


async def test_stream_closed_before_any_token_is_retried_elsewhere(servers, engines):
    closing, healthy = servers(mode="close_before_tokens"), servers()
    engine = await started(engines([closing.url, healthy.url]))
    stream = engine.stream(ask("Why was I charged?"))
    deltas = [delta async for delta in stream]
    generation = await stream.result()
    assert "".join(deltas) == generation.text == "The renewal of 88"
    assert len(closing.chat_requests) == 1 and len(healthy.chat_requests) == 1


async def test_error_event_in_the_stream(servers, engines):
    server = servers(mode="error_event")
    engine = await started(engines([server.url]))
    with pytest.raises(EngineError, match="the engine died"):
        await generate(engine)


async def test_all_endpoints_refusing_fails_fast(servers, engines):
    server = servers()
    engine = await started(engines([server.url]))
    server.stop()
    with pytest.raises(EngineError, match="connection refused"):
        await generate(engine)


# Admission ------------------------------------------------------------------------------------
async def test_full_queue_raises_overloaded_at_once_and_close_ends_the_rest(servers, engines):
    server = servers(mode="hang")
    engine = await started(engines([server.url], max_queue=2))
    waiting = [engine.stream(ask("hello")), engine.stream(ask("hello"))]
    with pytest.raises(EngineOverloaded):
        engine.stream(ask("hello"))
    assert engine.queue_depth == 2
    engine.close()
    for stream in waiting:
        with pytest.raises(EngineClosed):
            await asyncio.wait_for(stream.result(), GUARD_S)


async def test_in_flight_limit_queues_requests(servers, engines):
    server = servers(mode="slow")
    engine = await started(engines([server.url], max_queue=8, max_in_flight=2))
    results = await asyncio.wait_for(asyncio.gather(*(engine.generate(ask("hello")) for _ in range(5))), GUARD_S)
    assert server.max_active <= 2
    assert max(r.timings.queued_ms for r in results) > 0
    assert all(r.timings.queued_ms <= r.timings.first_token_ms for r in results)


async def test_cancelled_generation_stops_the_request(servers, engines):
    server = servers(mode="hang_mid_stream")
    engine = await started(engines([server.url], read_timeout_s=30))
    task = asyncio.ensure_future(engine.generate(ask("hello")))
    for _ in range(500):  # until the server is in the middle of the answer
        if server.active:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    for _ in range(200):
        if engine.queue_depth == 0 and server.abandoned:
            break
        await asyncio.sleep(0.02)
    assert engine.queue_depth == 0
    assert server.abandoned == 1 and server.active == 0  # the server stopped producing the unwanted answer


# Start-up ---------------------------------------------------------------------------------------
async def test_start_fails_clearly_when_no_endpoint_answers():
    urls = [refused_url(), refused_url()]
    engine = OpenAICompatibleEngine(urls=urls, model=MODEL, connect_timeout_s=1)
    with pytest.raises(ModelLoadError) as caught:
        await asyncio.to_thread(engine.start)
    message = str(caught.value)
    assert message.startswith("No inference server answered at")
    assert all(url in message for url in urls) and "connection refused" in message
    assert "SNAPDESK_ENGINE_URL" in message
    assert not engine.ready


async def test_start_fails_when_the_model_is_not_served(servers):
    server = servers(models=("Qwen/Qwen2.5-VL-7B-Instruct",))
    engine = OpenAICompatibleEngine(urls=[server.url], model=MODEL)
    with pytest.raises(ModelLoadError, match="does not serve the model 'Qwen/Qwen3-VL-8B-Instruct'") as caught:
        await asyncio.to_thread(engine.start)
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in str(caught.value) and "SNAPDESK_MODEL" in str(caught.value)


async def test_start_fails_when_the_key_is_rejected(servers):
    server = servers(api_key="right")
    engine = OpenAICompatibleEngine(urls=[server.url], model=MODEL, api_key="wrong")
    with pytest.raises(ModelLoadError, match="rejected the API key"):
        await asyncio.to_thread(engine.start)


async def test_start_needs_a_url():
    with pytest.raises(ModelLoadError, match="SNAPDESK_ENGINE_URL"):
        OpenAICompatibleEngine(urls=[], model=MODEL).start()
    with pytest.raises(ModelLoadError, match="not an http"):
        OpenAICompatibleEngine(urls=["gpu1:8000"], model=MODEL).start()


async def test_requests_before_start_are_refused(engines):
    engine = engines(["http://127.0.0.1:9/v1"])
    with pytest.raises(EngineError, match="not started"):
        engine.stream(ask("hello"))


# Pieces ------------------------------------------------------------------------------------------
def test_base_urls_are_normalized():
    assert normalize_base_url("http://gpu1:8000") == "http://gpu1:8000/v1"
    assert normalize_base_url(" http://gpu1:8000/v1/ ") == "http://gpu1:8000/v1"
    assert normalize_base_url("https://llm.example.com/proxy/v1") == "https://llm.example.com/proxy/v1"


async def test_sse_parsing():
    async def lines():
        for line in [": keep-alive", "", "data: {\"a\": 1}", "", "event: message", "data:{\"b\":", "data: 2}", "",
                     "data: [DONE]"]:
            yield line

    assert [data async for data in iter_sse_data(lines())] == ['{"a": 1}', '{"b":\n2}', "[DONE]"]


def test_token_counts():
    estimated = OpenAICompatibleEngine(urls=["http://127.0.0.1:9/v1"], model="org/not-cached-anywhere")
    assert estimated.count_text_tokens("hello") == 2
    assert estimated.count_text_tokens("为什么扣我钱") == 7
    assert estimated.count_image_tokens(1920, 1080) == visual_tokens(1920, 1080, 256, 1280)
    small = OpenAICompatibleEngine(urls=["http://x:1"], model="m", min_image_tokens=64, max_image_tokens=320)
    assert small.count_image_tokens(1920, 1080) == visual_tokens(1920, 1080, 64, 320)


def test_settings_build_the_remote_engine(tmp_path):
    settings = Settings(data_dir=tmp_path, engine="openai", engine_url="http://gpu1:8000/v1, http://gpu2:8000/v1",
                        engine_api_key="k", queue_size=7, image_max_tokens=640)
    engine = make_engine(settings)
    assert isinstance(engine, OpenAICompatibleEngine)
    assert engine.urls == ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]
    assert engine.api_key == "k" and engine.max_queue == 7 and engine.max_image_tokens == 640
    assert engine.model_name == settings.model
