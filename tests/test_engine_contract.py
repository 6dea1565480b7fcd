"""What every engine backend promises, checked on each of them.

`backend` is a started engine, one per parameter:
- "transformers": the in-process `TransformersEngine` on the tiny checkpoint;
- "openai": `OpenAICompatibleEngine` talking to a real OpenAI-compatible server on loopback,
  `transformers serve` running the same tiny checkpoint in a subprocess;
- "openai-snapdesk": `OpenAICompatibleEngine` talking to Snapdesk's own OpenAI-compatible
  API (`snapdesk serve`, bot/web/openai_api.py) on loopback, in-process engine behind it.
  It returns log-probs, so the remote confidence path is checked against a real server.
- "external": `OpenAICompatibleEngine` talking to the server named by SNAPDESK_TEST_ENGINE_URL
  (a vLLM, SGLang or llama.cpp server started by hand; see README, Development), with
  SNAPDESK_TEST_ENGINE_MODEL (default: the first model the server lists) and
  SNAPDESK_TEST_ENGINE_API_KEY. Skipped when the URL is not set. These variables belong to
  this test run only, not to Snapdesk's settings. When the served model is a checkpoint
  directory written by `snapdesk tiny-model`, the confidence checks load it here too.

Confidence is checked against an independent teacher-forced pass: a separate copy of the
model scores the answer's tokens in one forward pass (tests/test_engine.py), and the
backend's per-token log-probs, their geometric mean and their minimum must match it.

`transformers serve` (transformers 5.23) has no log-probs: `cli/serving/chat_completion.py`
lists `logprobs` in UNUSED_CHAT_COMPLETION_FIELDS, `BaseHandler._validate_request` only logs
"Ignoring unsupported fields" for it, and no chunk it sends carries `choices[].logprobs`.
Against it the remote engine must report the confidence as unknown (None); the numeric
checks are skipped there. It also refuses every field beyond OpenAI's (HTTP 422), so the
remote engine sends it OpenAI's fields only after the first refusal.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from engine.base import ChatMessage, EngineOverloaded, EngineTimeout, GenerationRequest
from engine.loading import LoadOptions, visual_tokens
from engine.openai_engine import OpenAICompatibleEngine
from engine.tiny import is_tiny_checkpoint
from engine.transformers_engine import TransformersEngine
from tests.live_server import free_port, live_server
from tests.test_engine import screenshot, teacher_forced_logprobs

BACKENDS = ["transformers", "openai", "openai-snapdesk", "external"]
GUARD_S = 60.0  # a failing backend fails the test instead of hanging it
NO_LOGPROBS = (
    "transformers serve 5.23 returns no log-probs: it lists `logprobs` in UNUSED_CHAT_COMPLETION_FIELDS "
    "(transformers/cli/serving/chat_completion.py) and only logs 'Ignoring unsupported fields', so the remote "
    "engine reports confidence None; the other remote backends check it"
)
NO_IMAGE_BUDGET = (
    "transformers serve takes no image budget: it scales screenshots with the checkpoint's own processor settings "
    "(the tiny checkpoint's are not Snapdesk's 256-1280 visual tokens), so the model sees another image"
)
# The tiny random checkpoint answers this with several tokens, then repeats itself.
QUESTION = "Why was I charged?"
LOOPING = "hello there"


def ask(*parts, max_new_tokens: int = 16, **options) -> GenerationRequest:
    return GenerationRequest((ChatMessage.of("user", *parts),), max_new_tokens=max_new_tokens, **options)


def _serve_command() -> list[str]:
    script = Path(sys.executable).with_name("transformers")
    if script.is_file():
        return [str(script), "serve"]
    return [sys.executable, "-c", "from transformers.cli.transformers import app; app()", "serve"]


@pytest.fixture(scope="session")
def transformers_server(tiny_model_dir, tmp_path_factory):
    """`transformers serve` on the tiny checkpoint, in a subprocess on a loopback port."""
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        pytest.skip("transformers serve needs its serving extras: pip install 'transformers[serving]' (openai)")
    home = tmp_path_factory.mktemp("hf-home")
    port = free_port()
    env = {
        **os.environ,
        "HF_HOME": str(home),  # nothing from (or into) the user's cache
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",  # the CLI would otherwise ask PyPI for a newer version
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "2",
    }
    log_path = home / "serve.log"
    command = [*_serve_command(), str(tiny_model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu",
               "--log-level", "warning"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"transformers serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield f"{base}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def snapdesk_server(tiny_model_dir, tmp_path_factory):
    """`snapdesk serve` with its OpenAI-compatible API, the tiny checkpoint in-process; (base URL, API key)."""
    from bot.apikeys import ApiKeys
    from bot.store import Store

    data = tmp_path_factory.mktemp("snapdesk-openai-api")
    store = Store(data)
    try:
        key = ApiKeys(store).create("engine-contract", actor="test")[1]
    finally:
        store.close()
    engine = TransformersEngine(LoadOptions(model=str(tiny_model_dir)), batch_window_ms=5.0)
    with live_server(data, engine=engine, model=str(tiny_model_dir)) as (base, _app):
        yield f"{base}/v1", key


@pytest.fixture(scope="session")
def external_server():
    """(base URLs, served model, API key) from SNAPDESK_TEST_ENGINE_*; skipped when no URL is set."""
    urls = [url.strip() for url in os.environ.get("SNAPDESK_TEST_ENGINE_URL", "").split(",") if url.strip()]
    if not urls:
        pytest.skip("SNAPDESK_TEST_ENGINE_URL is not set: no external inference server to check")
    key = os.environ.get("SNAPDESK_TEST_ENGINE_API_KEY") or None
    model = os.environ.get("SNAPDESK_TEST_ENGINE_MODEL", "").strip()
    if not model:
        base = urls[0].rstrip("/") if urls[0].rstrip("/").endswith("/v1") else urls[0].rstrip("/") + "/v1"
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        listed = httpx.get(f"{base}/models", headers=headers, timeout=10).json().get("data") or []
        if not listed:
            pytest.fail(f"{base}/models lists no model: set SNAPDESK_TEST_ENGINE_MODEL")
        model = str(listed[0]["id"])
    return urls, model, key


@pytest.fixture(scope="session")
def external_reference(external_server):
    """The in-process engine on the checkpoint the external server serves, and its directory."""
    model = Path(external_server[1]).expanduser()
    if not (model.is_dir() and is_tiny_checkpoint(model)):
        pytest.skip(f"the external server's model {external_server[1]!r} is not a checkpoint directory written by "
                    "`snapdesk tiny-model DIR`: serve one under its path to compare with the in-process engine")
    engine = TransformersEngine(LoadOptions(model=str(model)), batch_window_ms=5.0)
    engine.start()
    yield engine, model
    engine.close()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request, tiny_model_dir):
    """A started engine of each kind; all but the external one serve the same tiny checkpoint."""
    if request.param == "transformers":
        yield request.getfixturevalue("engine")  # the session's in-process engine (conftest)
        return
    if request.param == "openai":
        urls, model, key = [request.getfixturevalue("transformers_server")], str(tiny_model_dir), None
    elif request.param == "openai-snapdesk":
        url, key = request.getfixturevalue("snapdesk_server")
        urls, model = [url], str(tiny_model_dir)
    else:
        urls, model, key = request.getfixturevalue("external_server")
    remote = OpenAICompatibleEngine(urls=urls, model=model, api_key=key, request_timeout_s=GUARD_S)
    remote.start()
    yield remote
    remote.close()


@pytest.fixture
def reference(request, backend, engine, tiny_model_dir):
    """(in-process engine, checkpoint directory) for the checkpoint `backend` serves."""
    if request.node.callspec.params["backend"] == "external":
        return request.getfixturevalue("external_reference")
    return engine, tiny_model_dir


@pytest.fixture
def make_backend(backend, tiny_model_dir):
    """Builds and starts another engine of the same kind, e.g. with a smaller queue."""
    made = []

    def make(**options):
        if isinstance(backend, OpenAICompatibleEngine):
            engine = OpenAICompatibleEngine(urls=backend.urls, model=backend.model_name, api_key=backend.api_key,
                                            **options)
        else:
            engine = TransformersEngine(LoadOptions(model=str(tiny_model_dir)), max_batch_size=1, **options)
        engine.start()
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


async def generate(engine, request: GenerationRequest, **options):
    return await asyncio.wait_for(engine.generate(request, **options), GUARD_S)


async def test_is_started_and_named(backend):
    assert backend.ready
    assert backend.model_name


async def test_text_request(backend):
    generation = await generate(backend, ask(QUESTION))
    assert isinstance(generation.text, str) and generation.text.strip()
    assert generation.finish_reason in ("stop", "length")
    assert 1 <= generation.completion_tokens <= 16
    assert generation.prompt_tokens > 0
    timings = generation.timings
    assert 0 <= timings.queued_ms <= timings.first_token_ms <= timings.total_ms


async def test_image_request(backend):
    question = "What does this error mean?"
    with_image = await generate(backend, ask(screenshot(640, 480, "CARD_DECLINED (E-4012)"), question, max_new_tokens=8))
    text_only = await generate(backend, ask(question, max_new_tokens=8))
    assert with_image.completion_tokens >= 1 and with_image.finish_reason in ("stop", "length")
    # The screenshot reached the model: its visual tokens are part of the prompt.
    assert with_image.prompt_tokens > text_only.prompt_tokens
    assert with_image.image_tokens == backend.count_image_tokens(640, 480) and text_only.image_tokens == 0


async def test_stream_deltas_join_to_the_final_text(backend):
    stream = backend.stream(ask(QUESTION, max_new_tokens=24))
    deltas: list[str] = []
    async with asyncio.timeout(GUARD_S):
        async for delta in stream:
            deltas.append(delta)
        generation = await stream.result()
    assert deltas and all(deltas)
    assert "".join(deltas) == generation.text


@pytest.mark.parametrize("with_screenshot", [False, True], ids=["text", "screenshot"])
async def test_confidence_is_the_geometric_mean_of_teacher_forced_token_probs(backend, reference, with_screenshot):
    model, model_dir = reference
    request = ask(screenshot(300, 200, "E-4012"), QUESTION) if with_screenshot else ask(QUESTION)
    generation = await generate(backend, request)
    if not generation.token_logprobs:
        assert isinstance(backend, OpenAICompatibleEngine), "the in-process engine always has log-probs"
        assert generation.confidence is None and generation.min_token_prob is None
        pytest.skip(NO_LOGPROBS)
    token_ids = list(generation.token_ids)
    if not token_ids:  # a server that names tokens by their text: the in-process answer's, once it is the same answer
        local = await generate(model, request)
        assert (local.text, local.finish_reason) == (generation.text, generation.finish_reason)
        token_ids = list(local.token_ids)
    expected = await asyncio.to_thread(teacher_forced_logprobs, model_dir, model, request, token_ids)
    assert len(generation.token_logprobs) == len(expected) == generation.completion_tokens
    assert generation.token_logprobs == pytest.approx(expected, abs=1e-4)
    assert generation.confidence == pytest.approx(math.exp(math.fsum(expected) / len(expected)), abs=1e-4)
    assert generation.min_token_prob == pytest.approx(math.exp(min(expected)), abs=1e-4)
    assert 0 < generation.confidence <= 1


@pytest.mark.parametrize("limit", [1, 3, 6])
async def test_max_new_tokens_is_honoured(backend, limit):
    generation = await generate(backend, ask(LOOPING, max_new_tokens=limit))
    assert 1 <= generation.completion_tokens <= limit
    if generation.finish_reason == "length":
        assert generation.completion_tokens == limit


async def test_concurrent_requests_all_complete(backend):
    limits = [4, 7, 2, 5]
    results = await asyncio.wait_for(
        asyncio.gather(*(backend.generate(ask(QUESTION, max_new_tokens=n)) for n in limits)), GUARD_S
    )
    for limit, generation in zip(limits, results):
        assert 1 <= generation.completion_tokens <= limit


async def test_full_queue_raises_overloaded_at_once(make_backend):
    small = make_backend(max_queue=1)
    accepted = []
    with pytest.raises(EngineOverloaded):
        for _ in range(8):  # at most one running and one waiting fit
            accepted.append(small.stream(ask(LOOPING, max_new_tokens=32)))
    assert 1 <= len(accepted) <= 2
    for stream in accepted:  # what was accepted is still answered
        generation = await asyncio.wait_for(stream.result(), GUARD_S)
        assert generation.completion_tokens >= 1


async def test_timeout_raises_engine_timeout_and_the_backend_recovers(backend):
    slow = ask(screenshot(1920, 1080, "Renewal 88"), LOOPING, max_new_tokens=200)
    with pytest.raises(EngineTimeout):
        await generate(backend, slow, timeout=0.005)
    after = await generate(backend, ask(QUESTION, max_new_tokens=4))
    assert after.completion_tokens >= 1


async def test_token_counts(backend):
    short, longer = backend.count_text_tokens("Why was I charged?"), backend.count_text_tokens("Why was I charged? " * 10)
    assert 0 < short < longer
    assert backend.count_text_tokens("为什么扣我钱?") > 0
    assert backend.count_image_tokens(1920, 1080) == visual_tokens(1920, 1080, 256, 1280)


@pytest.mark.parametrize("with_screenshot", [False, True], ids=["text", "screenshot"])
async def test_remote_confidence_is_the_in_process_confidence(request, backend, reference, with_screenshot):
    """The same greedy request, in process and through a remote server: same tokens, counts and confidence."""
    if not isinstance(backend, OpenAICompatibleEngine):
        pytest.skip("the in-process engine is the reference")
    if with_screenshot and request.node.callspec.params["backend"] == "openai":
        pytest.skip(NO_IMAGE_BUDGET)
    model, _ = reference
    parts = (screenshot(300, 200, "E-4012"), QUESTION) if with_screenshot else (QUESTION,)
    request = ask(*parts, max_new_tokens=12)
    local, far = await generate(model, request), await generate(backend, request)
    assert (far.prompt_tokens, far.image_tokens) == (local.prompt_tokens, local.image_tokens)
    assert far.text == local.text and far.finish_reason == local.finish_reason
    assert far.completion_tokens == local.completion_tokens
    if not far.token_logprobs:
        pytest.skip(NO_LOGPROBS)
    assert far.token_logprobs == pytest.approx(local.token_logprobs, abs=1e-4)
    assert far.confidence == pytest.approx(local.confidence, abs=1e-4)
