"""Engine figures on the tiny checkpoint: overhead, batching, image intake, visual tokens.

Speed is reported as ratios measured in the same run (engine vs raw generate,
batched vs one after another), since absolute times on a shared machine are noise.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time

import torch
from PIL import Image

from engine.base import ChatMessage, GenerationRequest
from engine.images import prepare_image
from engine.loading import LoadOptions
from engine.tiny import build_tiny_checkpoint
from engine.transformers_engine import TransformersEngine

from .figures import Figure, median_seconds
from .support_inputs import QUESTIONS, encoded, screenshot

ANSWER_TOKENS = 128


def answer_request(question: str, image: Image.Image | None, natural: bool = False) -> GenerationRequest:
    """A support question; exactly ANSWER_TOKENS tokens, or up to that and ending at end-of-turn (`natural`)."""
    parts = (image, question) if image is not None else (question,)
    return GenerationRequest(
        (ChatMessage.of("user", *parts),), max_new_tokens=ANSWER_TOKENS,
        min_new_tokens=0 if natural else ANSWER_TOKENS,
    )


def engine_overhead(engine: TransformersEngine, repeats: int = 9) -> float:
    """One request through the engine / the same request done by hand with transformers.

    The hand-written baseline is what a script would do: processor(...) then
    model.generate(...), greedy, no streaming. The engine adds queueing, the batch window,
    streaming, per-token log-probs and the asyncio hand-off.
    """
    request = answer_request(QUESTIONS[0], prepare_image(encoded(screenshot(800, 600, "Statement"))).image)
    model = engine.loaded.model
    config = engine.worker.call(lambda: engine.generation_config([request])).result()

    def raw_generate() -> None:
        inputs = engine.build_inputs([request])
        with torch.inference_mode():
            model.generate(**inputs, generation_config=config)

    def raw() -> None:
        # On the engine's own thread: a second thread using torch gets its own CPU
        # thread pool, and the two pools slow each other down.
        engine.worker.call(raw_generate).result()

    def through_engine() -> None:
        asyncio.run(engine.generate(request))

    raw(), through_engine()  # warm up both paths
    raw_times, engine_times = [], []
    for _ in range(repeats):  # interleaved, so drift on the machine hits both alike
        raw_times.append(median_seconds(raw, 1))
        engine_times.append(median_seconds(through_engine, 1))
    return statistics.median(engine_times) / statistics.median(raw_times)


def batch_speedup(engine: TransformersEngine, natural: bool, repeats: int = 3) -> tuple[float, list[int]]:
    """Tokens per second of 8 concurrent requests / of the same 8 one after another, and their lengths.

    Forced to one length, every row of a batch finishes together: the best case for batching.
    With `natural` lengths a batch runs until its longest answer ends while the finished rows
    wait, which is what different questions do to a real batch.
    """
    image = prepare_image(encoded(screenshot(640, 480, "Order 1234"))).image
    requests = [answer_request(q, image if i % 2 == 0 else None, natural) for i, q in enumerate(QUESTIONS)]

    async def one_by_one() -> list:
        return [await engine.generate(request) for request in requests]

    async def concurrently() -> list:
        return await asyncio.gather(*(engine.generate(r) for r in requests))

    def tokens_per_s(run) -> float:
        started = time.perf_counter()
        generations = asyncio.run(run())
        return sum(g.completion_tokens for g in generations) / (time.perf_counter() - started)

    lengths = [g.completion_tokens for g in asyncio.run(concurrently())]  # also the warm-up
    sequential, batched = [], []
    for _ in range(repeats):  # interleaved, so drift on the machine hits both alike
        sequential.append(tokens_per_s(one_by_one))
        batched.append(tokens_per_s(concurrently))
    return statistics.median(batched) / statistics.median(sequential), lengths


def intake_ms_12mp(repeats: int = 9) -> float:
    data = encoded(screenshot(4000, 3000, "Statement of account"), "JPEG", quality=90)
    prepare_image(data)
    return median_seconds(lambda: prepare_image(data), repeats) * 1000.0


def visual_tokens_1080p(engine: TransformersEngine) -> int:
    image = prepare_image(encoded(screenshot(1920, 1080, "Payment failed"))).image
    request = answer_request("What does this error mean?", image)
    inputs = engine.worker.call(lambda: engine.build_inputs([request])).result()
    return int((inputs["input_ids"] == engine.loaded.model.config.image_token_id).sum())


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_checkpoint(tmp)
        engine = TransformersEngine(LoadOptions(model=str(model_dir)))  # default window and batch size
        engine.start()
        try:
            overhead = engine_overhead(engine)
            speedup, _ = batch_speedup(engine, natural=False)
            natural_speedup, lengths = batch_speedup(engine, natural=True)
            tokens = visual_tokens_1080p(engine)
        finally:
            engine.close()
    return [
        Figure("engine_overhead_ratio", overhead, "<= 1.20",
               f"one {ANSWER_TOKENS}-token answer: engine / processor + model.generate by hand"),
        Figure("batch_speedup_8", speedup, ">= 3.0",
               f"tokens/s, 8 concurrent requests vs the same 8 one after another, each exactly {ANSWER_TOKENS} tokens"),
        Figure("batch_speedup_8_natural", natural_speedup, "",
               f"the same with natural lengths: up to {ANSWER_TOKENS} tokens, ending at end-of-turn"),
        Figure("batch_natural_tokens_min", min(lengths), "", "shortest of those 8 natural answers, tokens"),
        Figure("batch_natural_tokens_mean", statistics.mean(lengths), "", "mean length of those 8 natural answers, tokens"),
        Figure("image_intake_ms_12mp", intake_ms_12mp(), "<= 250", "median ms to take a 4000x3000 JPEG through intake"),
        Figure("visual_tokens_1080p", tokens, "", "visual tokens of a 1920x1080 screenshot, default budget"),
    ]
