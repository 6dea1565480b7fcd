"""The in-process engine: batching, streaming, confidence, overload and timeouts."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
import torch
from PIL import Image, ImageDraw

from engine.base import (
    ChatMessage,
    EngineOverloaded,
    EngineTimeout,
    GenerationRequest,
)
from engine.loading import LoadOptions
from engine.transformers_engine import TransformersEngine


def screenshot(width: int, height: int, label: str) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 10, height // 10, width // 2, height // 3), fill=(220, 30, 30))
    draw.text((width // 8, height // 2), label, fill="black")
    return image


def mixed_requests(max_new_tokens: int = 24) -> list[GenerationRequest]:
    """Text-only and screenshot requests of different sizes and prompt lengths."""
    system = ChatMessage.of("system", "You are the support assistant of Acme. Answer briefly and politely. " * 3)
    return [
        GenerationRequest((ChatMessage.of("user", screenshot(1920, 1080, "Renewal 88"), "Why was I charged?"),),
                          max_new_tokens=max_new_tokens),
        GenerationRequest((ChatMessage.of("user", "hello"),), max_new_tokens=max_new_tokens),
        GenerationRequest((system, ChatMessage.of("user", screenshot(300, 200, "E-4012"), "What does this error mean?")),
                          max_new_tokens=max_new_tokens),
        GenerationRequest((system, ChatMessage.of("user", "Where is my parcel? I ordered it last week and it has not arrived.")),
                          max_new_tokens=max_new_tokens // 2),
        GenerationRequest(
            (ChatMessage.of("user", screenshot(640, 1400, "Account locked"), screenshot(500, 500, "2FA"), "我登不上了"),),
            max_new_tokens=max_new_tokens,
        ),
    ]


async def test_batched_greedy_matches_single_requests(engine):
    requests = mixed_requests()
    single = [await engine.generate(r) for r in requests]
    sizes: list[int] = []
    engine.worker.on_batch = sizes.append
    try:
        batched = await asyncio.gather(*(engine.generate(r) for r in requests))
    finally:
        engine.worker.on_batch = None
    assert max(sizes) == len(requests), f"requests were not batched together: {sizes}"
    for alone, together in zip(single, batched):
        assert together.token_ids == alone.token_ids
        assert together.text == alone.text
        assert together.prompt_tokens == alone.prompt_tokens
        assert together.image_tokens == alone.image_tokens
        assert together.token_logprobs == pytest.approx(alone.token_logprobs, abs=1e-4)
    assert single[3].completion_tokens <= 12  # its own, smaller max_new_tokens held inside the batch
    assert single[1].image_tokens == 0 and single[0].image_tokens > single[2].image_tokens > 0


async def test_stream_delivers_text_before_generation_ends(engine):
    request = GenerationRequest((ChatMessage.of("user", "hello there"),), max_new_tokens=96, min_new_tokens=96)
    submitted = time.perf_counter()
    stream = engine.stream(request)
    arrivals: list[tuple[float, str]] = []
    async for delta in stream:
        arrivals.append((time.perf_counter(), delta))
    generation = await stream.result()
    assert len(arrivals) > 1
    assert "".join(delta for _, delta in arrivals) == generation.text
    generation_ended = submitted + generation.timings.total_ms / 1000.0
    assert arrivals[0][0] < generation_ended, "the first chunk only arrived after generation had finished"
    assert generation.completion_tokens == 96 and generation.finish_reason == "length"


def teacher_forced_logprobs(model_dir, engine, request, token_ids) -> list[float]:
    """Recompute the generated tokens' log-probs with one forward pass of a separate model copy."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32)
    inputs = engine.build_inputs([request])
    prompt_length = inputs["input_ids"].shape[1]
    generated = torch.tensor([token_ids], dtype=inputs["input_ids"].dtype)
    inputs["input_ids"] = torch.cat([inputs["input_ids"], generated], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(generated)], dim=1)
    inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(generated)], dim=1)
    with torch.no_grad():
        logits = model(**inputs).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    positions = range(prompt_length - 1, prompt_length - 1 + len(token_ids))
    return [logprobs[p, t].item() for p, t in zip(positions, token_ids)]


@pytest.mark.parametrize("index", [0, 1])
async def test_confidence_is_geometric_mean_of_teacher_forced_token_probs(engine, tiny_model_dir, index):
    request = mixed_requests(max_new_tokens=20)[index]
    generation = await engine.generate(request)
    expected = teacher_forced_logprobs(tiny_model_dir, engine, request, list(generation.token_ids))
    assert generation.confidence == pytest.approx(math.exp(sum(expected) / len(expected)), abs=1e-4)
    assert generation.min_token_prob == pytest.approx(math.exp(min(expected)), abs=1e-4)
    assert 0.0 < generation.confidence <= 1.0


async def test_sampling_confidence_uses_the_unscaled_distribution(engine, tiny_model_dir):
    from engine.base import SamplingParams

    request = GenerationRequest(
        (ChatMessage.of("user", "Why was I charged?"),),
        max_new_tokens=16,
        sampling=SamplingParams(temperature=0.3, top_p=0.9, top_k=20),
    )
    generation = await engine.generate(request)
    expected = teacher_forced_logprobs(tiny_model_dir, engine, request, list(generation.token_ids))
    assert generation.token_logprobs == pytest.approx(expected, abs=1e-4)


@pytest.fixture
async def small_engine(tiny_model_dir):
    eng = TransformersEngine(
        LoadOptions(model=str(tiny_model_dir)), max_queue=1, max_batch_size=1, batch_window_ms=0.0
    )
    eng.start()
    yield eng
    eng.close()


async def test_full_queue_fails_fast_with_overload(small_engine):
    long_request = GenerationRequest((ChatMessage.of("user", "hello"),), max_new_tokens=400, min_new_tokens=400)
    running = small_engine.stream(long_request)
    await running.__aiter__().__anext__()  # the worker is now busy generating it
    waiting = small_engine.stream(long_request)  # fills the one queue slot
    with pytest.raises(EngineOverloaded):
        small_engine.stream(long_request)
    assert running._result is None, "overload must be reported while the engine is still busy"
    running.cancel()
    waiting.cancel()
    await asyncio.gather(running.result(), waiting.result(), return_exceptions=True)


async def test_timeout_cancels_only_that_request(small_engine):
    slow = GenerationRequest((ChatMessage.of("user", "hello"),), max_new_tokens=2000, min_new_tokens=2000)
    with pytest.raises(EngineTimeout):
        await small_engine.generate(slow, timeout=0.3)
    quick = await small_engine.generate(GenerationRequest((ChatMessage.of("user", "hi"),), max_new_tokens=4))
    assert quick.completion_tokens >= 1


async def test_each_request_keeps_its_own_token_limit(engine):
    short, long = await asyncio.gather(
        engine.generate(GenerationRequest((ChatMessage.of("user", "hi"),), max_new_tokens=3, min_new_tokens=3)),
        engine.generate(GenerationRequest((ChatMessage.of("user", "hi"),), max_new_tokens=30, min_new_tokens=3)),
    )
    assert short.completion_tokens == 3 and short.finish_reason == "length"
    assert long.completion_tokens > 3
