"""The OpenAI-compatible API (/v1), driven by the official `openai` client over real HTTP.

The main server runs the real in-process engine on the tiny checkpoint; failure paths that
need an engine in a particular state (overloaded, loading, slow) use a controllable stub.
"""

from __future__ import annotations

import asyncio
import base64
import io
import math
import sqlite3
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from PIL import Image, ImageDraw

from bot.apikeys import KEY_PREFIX, ApiKeys, key_digest
from bot.store import Store
from engine.base import (
    EngineError,
    EngineOverloaded,
    EngineTimeout,
    GenerationStream,
    confidence_from_logprobs,
)
from engine.loading import LoadOptions
from engine.stub import StubEngine, last_user_text
from engine.transformers_engine import TransformersEngine
from tests.live_server import live_server
from tests.live_server import wait_for as wait_until


def png_data_url(width=320, height=240) -> str:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, 200, 80), fill="red")
    draw.text((30, 120), "Payment failed - CARD_DECLINED (E-4012)", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def new_key(data_dir, name: str) -> str:
    store = Store(data_dir)
    try:
        return ApiKeys(store).create(name, actor="test")[1]
    finally:
        store.close()


# The real engine ---------------------------------------------------------------------------
class RecordingEngine(TransformersEngine):
    """The real engine, keeping every Generation it hands out (to compare with the API's answer)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.generations = []

    def _finish(self, row, finished) -> None:
        stream = row.job.stream
        push = stream.push_result

        def record(generation):
            self.generations.append(generation)
            push(generation)

        stream.push_result = record
        TransformersEngine._finish(row, finished)


@pytest.fixture(scope="module")
def real(tmp_path_factory, tiny_model_dir):
    data = tmp_path_factory.mktemp("openai-api")
    key = new_key(data, "batch-jobs")
    engine = RecordingEngine(LoadOptions(model=str(tiny_model_dir)), batch_window_ms=20.0, max_batch_size=8)
    with live_server(data, engine=engine, widget_rate_per_ip=10_000) as (base, app):
        yield SimpleNamespace(
            base=base, app=app, engine=engine, key=key, data=data, model=engine.model_name,
            client=OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120),
        )


def generation_for(engine: RecordingEngine, text: str):
    matches = [g for g in engine.generations if g.text == text]
    assert matches, "the engine did not produce this answer"
    return matches[-1]


def test_models_list_shows_the_served_model(real):
    models = real.client.models.list()
    assert [m.id for m in models.data] == [real.model]
    assert models.data[0].owned_by == "snapdesk" and models.data[0].object == "model"
    assert isinstance(models.data[0].created, int)
    assert real.client.models.retrieve(real.model).id == real.model
    with pytest.raises(openai.NotFoundError):
        real.client.models.retrieve("gpt-4o")


def test_non_streaming_completion_reports_usage_and_the_engines_logprobs(real):
    before = len(real.engine.generations)
    completion = real.client.chat.completions.create(
        model=real.model,
        messages=[{"role": "system", "content": "You are a support assistant."},
                  {"role": "user", "content": "Why was I charged 88?"}],
        max_tokens=24, temperature=0, logprobs=True,
    )
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == real.model and abs(completion.created - time.time()) < 120
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if choice.finish_reason == "length":
        assert usage.completion_tokens == 24

    generation = generation_for(real.engine, choice.message.content)
    assert len(real.engine.generations) == before + 1
    content = choice.logprobs.content
    assert len(content) == usage.completion_tokens == generation.completion_tokens
    assert [entry.logprob for entry in content] == list(generation.token_logprobs)
    mean = math.fsum(entry.logprob for entry in content) / len(content)
    assert math.exp(mean) == pytest.approx(generation.confidence, rel=1e-12)
    assert confidence_from_logprobs([entry.logprob for entry in content]) == generation.confidence
    assert usage.prompt_tokens == generation.prompt_tokens
    assert all(entry.top_logprobs == [] for entry in content)
    # The tokens' bytes, special tokens left out, spell exactly the answer.
    tokenizer = real.engine.loaded.processor.tokenizer
    special = set(tokenizer.added_tokens_decoder)
    spelled = b"".join(bytes(entry.bytes) for entry, token_id in zip(content, generation.token_ids)
                       if token_id not in special)
    assert spelled.decode("utf-8", errors="replace") == choice.message.content  # random weights: stray bytes
    if choice.finish_reason == "stop":
        assert content[-1].token == "<|im_end|>"


def test_streaming_chunks_join_to_the_greedy_answer(real):
    request = dict(model=real.model, messages=[{"role": "user", "content": "Where is my parcel?"}],
                   max_completion_tokens=32, temperature=0)
    whole = real.client.chat.completions.create(**request)

    async def stream():
        client = AsyncOpenAI(base_url=f"{real.base}/v1", api_key=real.key, max_retries=0, timeout=120)
        chunks = [chunk async for chunk in await client.chat.completions.create(
            **request, stream=True, stream_options={"include_usage": True}, logprobs=True)]
        await client.close()
        return chunks

    chunks = asyncio.run(stream())
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    logprobs = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(logprobs) == whole.usage.completion_tokens


def test_a_screenshot_as_data_url_reaches_the_model(real):
    text_only = real.client.chat.completions.create(
        model=real.model, max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": [{"type": "text", "text": "What does this error mean?"}]}],
    )
    with_image = real.client.chat.completions.create(
        model=real.model, max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_data_url(), "detail": "high"}},
            {"type": "text", "text": "What does this error mean?"},
        ]}],
    )
    generation = generation_for(real.engine, with_image.choices[0].message.content)
    assert generation.image_tokens > 0
    assert with_image.usage.prompt_tokens == text_only.usage.prompt_tokens + generation.image_tokens + 2


def test_wrong_missing_and_revoked_keys_are_refused(real):
    wrong = OpenAI(base_url=f"{real.base}/v1", api_key=KEY_PREFIX + "x" * 32, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.chat.completions.create(model=real.model, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()

    missing = httpx.post(f"{real.base}/v1/chat/completions", json={"model": real.model, "messages": []})
    assert missing.status_code == 401
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert missing.json()["error"]["code"] == "invalid_api_key"

    key = new_key(real.data, "moderation")
    client = OpenAI(base_url=f"{real.base}/v1", api_key=key, max_retries=0)
    assert client.models.list().data[0].id == real.model
    store = Store(real.data)
    ApiKeys(store).revoke("moderation", actor="test")
    store.close()
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        client.models.list()
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=real.model, messages=[{"role": "user", "content": "hi"}])


class CountingHandler(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):  # noqa: N802 (the http.server API)
        CountingHandler.hits += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_an_http_image_url_is_refused_without_fetching_it(real):
    server = ThreadingHTTPServer(("127.0.0.1", 0), CountingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for url in (f"http://127.0.0.1:{server.server_port}/bill.png", f"https://127.0.0.1:{server.server_port}/x"):
            with pytest.raises(openai.BadRequestError) as refused:
                real.client.chat.completions.create(model=real.model, messages=[{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what is this?"}]}])
            assert "data URL" in refused.value.message
            assert refused.value.param == "messages[0].content[0].image_url.url"
    finally:
        server.shutdown()
        server.server_close()
    assert CountingHandler.hits == 0


def test_n_above_one_is_refused(real):
    with pytest.raises(openai.BadRequestError) as refused:
        real.client.chat.completions.create(model=real.model, n=2, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.param == "n"


NOT_AN_IMAGE = "data:image/png;base64," + base64.b64encode(b"%PDF-1.7 not a screenshot").decode()


@pytest.mark.parametrize("changes, param, code", [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": NOT_AN_IMAGE}}]}]},
     "messages[0].content[0].image_url", "unsupported_format"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]},
     "messages[0].content[0].image_url.url", None),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]},
     "messages[0].content[0].image_url.url", "image_url_not_supported"),
    ({"messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]}, "messages[0].role", None),
    ({"messages": []}, "messages", None),
    ({"max_tokens": 100_000}, "max_tokens", None),
    ({"max_completion_tokens": 0}, "max_completion_tokens", None),
    ({"temperature": 3}, "temperature", None),
    ({"top_p": 0}, "top_p", None),
    ({"min_tokens": 50, "max_tokens": 10}, "min_tokens", None),
    ({"stop": ["\n"]}, "stop", "unsupported_parameter"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_parameter"),
    ({"logprobs": True, "top_logprobs": 3}, "top_logprobs", "unsupported_parameter"),
    ({"messages": [{"role": "user", "content": "x " * 20_000}]}, "messages", "context_length_exceeded"),
])
def test_invalid_requests_get_400_in_openais_shape(real, changes, param, code):
    body = {"model": real.model, "messages": [{"role": "user", "content": "hi"}], **changes}
    response = httpx.post(f"{real.base}/v1/chat/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {real.key}"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["code"] == code
    assert error["message"]


def test_a_refused_image_says_why(real):
    with pytest.raises(openai.BadRequestError) as refused:
        real.client.chat.completions.create(model=real.model, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": NOT_AN_IMAGE}}]}])
    assert "PNG, JPEG, WebP, GIF or BMP" in refused.value.message


def test_unknown_model_and_bad_json(real):
    with pytest.raises(openai.NotFoundError) as missing:
        real.client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found" and real.model in missing.value.message
    broken = httpx.post(f"{real.base}/v1/chat/completions", content=b"{not json",
                        headers={"Authorization": f"Bearer {real.key}", "Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"


def test_the_api_and_the_bot_share_one_engine_batch(real):
    """Both wait behind a busy worker, then go through one batched generate call."""
    worker = real.engine.worker
    observed = worker.on_batch
    sizes: list[int] = []
    release = threading.Event()
    blocker = worker.call(lambda: release.wait(30))  # keeps the model's thread busy meanwhile

    def record(size):
        sizes.append(size)
        if observed is not None:
            observed(size)

    worker.on_batch = record
    try:
        token = httpx.post(f"{real.base}/widget/api/session", json={}).json()["token"]
        widget = {"Authorization": f"Bearer {token}"}
        sent = httpx.post(f"{real.base}/widget/api/messages", headers=widget,
                          data={"client_message_id": "shared-engine-01", "text": "Why was I charged?"})
        assert sent.status_code == 202
        results = {}

        def api_call():
            results["api"] = real.client.chat.completions.create(
                model=real.model, messages=[{"role": "user", "content": "Where is my parcel?"}],
                max_tokens=8, temperature=0)

        caller = threading.Thread(target=api_call)
        caller.start()
        wait_until(lambda: real.engine.queue_depth >= 2, what="the bot and the API request to queue")
    finally:
        release.set()
        blocker.result(30)
    caller.join(120)
    assert results["api"].choices[0].message.content is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        messages = httpx.get(f"{real.base}/widget/api/conversation", headers=widget).json()["messages"]
        if any(m["role"] != "user" for m in messages):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the bot did not answer")
    worker.on_batch = observed
    assert 2 in sizes, f"the bot's and the API's requests were not batched together: {sizes}"


# A controllable stub engine ------------------------------------------------------------------
class ControlledEngine(StubEngine):
    """Overloaded, loading or slow on demand; `hold` makes streams wait before finishing."""

    def __init__(self) -> None:
        super().__init__(reply="Your card was declined: try another card.", script=self.answer)
        self.overloaded = False
        self.loading = False
        self.hold: threading.Event | None = None
        self.cancelled = threading.Event()

    @staticmethod
    def answer(request):
        text = last_user_text(request)
        if "TIMEOUT" in text:
            return EngineTimeout("generation took longer than 1 s")
        if "BROKEN" in text:
            return EngineError("generation failed (RuntimeError)")
        return "Your card was declined: try another card.", 0.8

    @property
    def ready(self) -> bool:
        return self._ready and not self.loading

    def stream(self, request, timeout=None):
        if self.overloaded:
            raise EngineOverloaded("the engine queue is full (1 requests waiting)")
        if self.hold is None:
            return super().stream(request, timeout)
        hold, cancelled = self.hold, self.cancelled
        stream = GenerationStream(cancel=cancelled.set, timeout=timeout)
        generation = self._answer(request)
        stream.push_delta("Your card")

        def finish():
            while not (hold.is_set() or cancelled.is_set()):
                time.sleep(0.01)
            stream.push_delta(generation.text[len("Your card"):])
            stream.push_result(generation)

        threading.Thread(target=finish, daemon=True).start()
        return stream


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    data = tmp_path_factory.mktemp("openai-api-stub")
    key = new_key(data, "pipeline")
    engine = ControlledEngine()
    with live_server(data, engine=engine, queue_size=2) as (base, app):  # API share: 1 request at a time
        yield SimpleNamespace(base=base, app=app, engine=engine, key=key,
                              client=OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30))


def ask(stub, text="My card was declined", **extra):
    return stub.client.chat.completions.create(
        model="stub", messages=[{"role": "user", "content": text}], **extra)


def test_a_full_engine_queue_answers_429_with_retry_after(stub):
    stub.engine.overloaded = True
    try:
        with pytest.raises(openai.RateLimitError) as limited:
            ask(stub)
        assert int(limited.value.response.headers["retry-after"]) >= 1
        assert limited.value.code == "rate_limit_exceeded"
        with pytest.raises(openai.RateLimitError):
            ask(stub, stream=True)
    finally:
        stub.engine.overloaded = False
    assert ask(stub).choices[0].message.content == "Your card was declined: try another card."


def test_each_api_key_has_its_own_rate_limit(tmp_path):
    first, second = new_key(tmp_path, "crm"), new_key(tmp_path, "analytics")
    with live_server(tmp_path, engine=ControlledEngine(), api_rate_per_key=3) as (base, _):
        clients = [OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30) for key in (first, second)]
        for _ in range(3):
            clients[0].models.list()
        with pytest.raises(openai.RateLimitError) as limited:
            clients[0].chat.completions.create(model="stub", messages=[{"role": "user", "content": "hi"}])
        assert limited.value.code == "rate_limit_exceeded" and "at most 3 a minute" in str(limited.value)
        assert int(limited.value.response.headers["retry-after"]) >= 1
        assert clients[1].models.list().data, "another key is not limited by the first one's use"


def test_503_while_the_model_loads_and_504_on_engine_timeout(stub):
    stub.engine.loading = True
    try:
        loading = httpx.post(f"{stub.base}/v1/chat/completions", headers={"Authorization": f"Bearer {stub.key}"},
                             json={"model": "stub", "messages": [{"role": "user", "content": "hi"}]})
    finally:
        stub.engine.loading = False
    assert loading.status_code == 503 and loading.json()["error"]["code"] == "model_loading"
    assert loading.headers["retry-after"]
    with pytest.raises(openai.InternalServerError) as timed_out:
        ask(stub, "TIMEOUT please")
    assert timed_out.value.status_code == 504 and timed_out.value.code == "timeout"
    with pytest.raises(openai.InternalServerError) as broken:
        ask(stub, "BROKEN please", stream=True)
    assert broken.value.status_code == 500


def test_api_requests_keep_to_their_share_of_the_queue_and_leave_it_when_done(stub):
    share = lambda: stub.app.state.server.api_share.active  # noqa: E731
    stub.engine.hold = threading.Event()
    stub.engine.cancelled = threading.Event()
    try:
        stream = ask(stub, stream=True)
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
        with pytest.raises(openai.RateLimitError, match="kept for the support bot"):
            ask(stub)
        stub.engine.hold.set()
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        assert text == "Your card was declined: try another card."
        wait_until(lambda: share() == 0, what="the API share to be released")
        assert ask(stub).choices[0].finish_reason == "stop"

        # A caller that leaves mid-stream cancels its generation and frees its place.
        stub.engine.hold = threading.Event()
        with httpx.stream("POST", f"{stub.base}/v1/chat/completions", headers={"Authorization": f"Bearer {stub.key}"},
                          json={"model": "stub", "stream": True,
                                "messages": [{"role": "user", "content": "hi"}]}) as response:
            assert response.status_code == 200
            assert next(response.iter_lines()).startswith("data: ")
        wait_until(stub.engine.cancelled.is_set, what="the generation to be cancelled")
        wait_until(lambda: share() == 0, what="the API share to be released")
    finally:
        stub.engine.hold = None


def test_roles_parts_and_extra_sampling_settings_reach_the_engine(stub):
    answer = stub.client.chat.completions.create(
        model="stub", max_completion_tokens=40, temperature=0.7, top_p=0.9,
        extra_body={"top_k": 20, "min_tokens": 5, "repetition_penalty": 1.05},
        messages=[{"role": "developer", "content": "Answer in one line."},
                  {"role": "user", "content": [{"type": "text", "text": "Why was I "}, {"type": "text", "text": "charged?"}]},
                  {"role": "assistant", "content": "An automatic renewal of 88."},
                  {"role": "user", "content": "How do I turn it off?"}],
    )
    assert answer.choices[0].message.content
    request = stub.engine.requests[-1]
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "user"]
    assert [p.text for p in request.messages[1].parts] == ["Why was I ", "charged?"]
    assert request.max_new_tokens == 40 and request.min_new_tokens == 5
    sampling = request.sampling
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.repetition_penalty) == (0.7, 0.9, 20, 1.05)
    ask(stub)
    assert stub.engine.requests[-1].sampling.temperature == 1.0  # omitted: OpenAI's default


def test_stream_wire_format_ends_with_done(stub):
    with httpx.stream("POST", f"{stub.base}/v1/chat/completions", headers={"Authorization": f"Bearer {stub.key}"},
                      json={"model": "stub", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert '"usage"' not in "".join(lines)  # only with stream_options.include_usage


# API keys: the store and the command line ------------------------------------------------------
def test_keys_are_stored_hashed_and_names_can_be_reused_after_revoking(tmp_path):
    store = Store(tmp_path)
    keys = ApiKeys(store)
    record, secret = keys.create("catalog", actor="admin")
    assert secret.startswith(KEY_PREFIX) and len(secret) == len(KEY_PREFIX) + 32
    row = store._one("select * from api_keys where id = ?", [record.id])
    assert row["key_hash"] == key_digest(secret) and secret not in str(row)
    assert keys.authenticate(secret).name == "catalog"
    first_use = keys.authenticate(secret).last_used_at
    assert first_use is not None and keys.authenticate(secret).last_used_at == first_use  # not rewritten each time
    assert keys.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert keys.authenticate("not-a-key") is None
    from bot.apikeys import ApiKeyError

    with pytest.raises(ApiKeyError):
        keys.create("catalog")
    keys.revoke("catalog", actor="admin")
    assert not keys.authenticate(secret).active
    _, again = keys.create("catalog", actor="admin")
    assert keys.authenticate(again).active and not keys.authenticate(secret).active
    actions = [(r["actor"], r["action"], r["target"]) for r in store._all("select * from audit_log order by id")]
    assert actions == [("admin", "apikey_create", "apikey:catalog"), ("admin", "apikey_revoke", "apikey:catalog"),
                       ("admin", "apikey_create", "apikey:catalog")]
    store.close()


def snapdesk(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, timeout=120)


def test_apikey_command_creates_lists_and_revokes(tmp_path):
    created = snapdesk("apikey", "create", "catalog-writer", "--data", str(tmp_path))
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith(KEY_PREFIX) and len(key) == len(KEY_PREFIX) + 32
    duplicate = snapdesk("apikey", "create", "catalog-writer", "--data", str(tmp_path))
    assert duplicate.returncode == 2 and "already" in duplicate.stderr

    with live_server(tmp_path, engine=StubEngine()) as (base, _):
        client = OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        answer = client.chat.completions.create(model="stub", messages=[{"role": "user", "content": "hello"}])
        assert answer.choices[0].message.content

        listed = snapdesk("apikey", "list", "--data", str(tmp_path))
        assert listed.returncode == 0 and "catalog-writer" in listed.stdout and "active" in listed.stdout
        assert key not in listed.stdout and key[len(KEY_PREFIX):] not in listed.stdout
        assert "last used never" not in listed.stdout  # the request above was recorded

        revoked = snapdesk("apikey", "revoke", "catalog-writer", "--data", str(tmp_path))
        assert revoked.returncode == 0, revoked.stderr
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="stub", messages=[{"role": "user", "content": "hello"}])
    assert "revoked" in snapdesk("apikey", "list", "--data", str(tmp_path)).stdout
    assert snapdesk("apikey", "revoke", "nobody", "--data", str(tmp_path)).returncode == 2
    with sqlite3.connect(tmp_path / "snapdesk.db") as db:
        actions = db.execute("select action, target from audit_log where action like 'apikey%' order by id").fetchall()
    assert actions == [("apikey_create", "apikey:catalog-writer"), ("apikey_revoke", "apikey:catalog-writer")]
    assert key.encode() not in (tmp_path / "snapdesk.db").read_bytes()
