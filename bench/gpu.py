"""GPU figures: Qwen3-VL with the 8B configuration and random bf16 weights, through the real engine.

How fast the model answers depends on its shapes, not on its weight values, so no download
is needed: the checkpoint is written here with the published Qwen3-VL-8B-Instruct dimensions
(the same transformers classes as the real model) and loaded by the engine's own loader, as
the server loads the 8B model. The tokenizer and processor are the tiny checkpoint's: a
screenshot costs exactly the visual tokens it costs the 8B model; text takes somewhat more
tokens than with Qwen's own tokenizer. Random weights seldom end an answer, so answers are
held to one length: the figures are decoding speed at that length.

Figures: time to the first token for one 1080p screenshot, single-stream decoding speed, and
aggregate tokens per second at 1, 8 and 32 concurrent conversations, through the engine as
the server builds it (`bot.engine_setup.make_engine`, so SNAPDESK_MAX_BATCH_SIZE and friends
apply) and through raw `model.generate` with every conversation in one batch.

Without a CUDA GPU (or with `--small`) the same steps run on a small configuration in
seconds: that proves the script works, its figures say nothing about a GPU.

    python -m bench.gpu [--small] [--tokens N] [--repeats N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from .figures import Figure, print_figures
from .support_inputs import QUESTIONS, encoded, screenshot

# Qwen/Qwen3-VL-8B-Instruct's config.json (text and vision parts).
TEXT_8B = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 262144,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 5_000_000.0,
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
    },
    "attention_bias": False,
    "tie_word_embeddings": False,
}
VISION_8B = {
    "depth": 27,
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_heads": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "out_hidden_size": 4096,
    "num_position_embeddings": 2304,
    "deepstack_visual_indexes": [8, 16, 24],
}
# The same structure (grouped-query attention, interleaved 3-D rope, three deepstack layers),
# small enough to run on a CPU within seconds.
TEXT_SMALL = {
    **TEXT_8B,
    "vocab_size": 4096,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 32768,
    "rope_parameters": {**TEXT_8B["rope_parameters"], "mrope_section": [4, 2, 2]},
}
VISION_SMALL = {
    **VISION_8B,
    "depth": 3,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
    "num_position_embeddings": 256,
    "deepstack_visual_indexes": [0, 1, 2],
}
CONCURRENCY = (1, 8, 32)


def build_checkpoint(directory: str | Path, small: bool, device: str) -> Path:
    """Write a random-weight Qwen3-VL checkpoint (8B or small shapes) to `directory`."""
    import torch
    from transformers import AutoProcessor, GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from engine.tiny import MARKER_FILE, build_tiny_checkpoint

    out = build_tiny_checkpoint(directory)  # tokenizer, processor, chat template, generation config
    for stale in (*out.glob("*.safetensors"), *out.glob("*.safetensors.index.json"), out / MARKER_FILE):
        stale.unlink(missing_ok=True)
    tokenizer = AutoProcessor.from_pretrained(out).tokenizer
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in (
        "<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
    )}
    config = Qwen3VLConfig(
        text_config={
            **(TEXT_SMALL if small else TEXT_8B),
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config=VISION_SMALL if small else VISION_8B,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: 8B parameters in seconds on a GPU
        model = Qwen3VLForConditionalGeneration._from_config(config, dtype=dtype).eval()
    model.generation_config = GenerationConfig.from_pretrained(out)
    model.save_pretrained(out)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


class GpuBench:
    def __init__(self, engine, tokens: int, repeats: int, warm_up: bool = True) -> None:
        from engine.images import prepare_image

        self.engine = engine
        self.tokens = tokens
        self.repeats = repeats
        self.warm_up = warm_up  # a first run at each shape (CUDA kernels, allocator) is not measured
        self.full_hd = prepare_image(encoded(screenshot(1920, 1080, "Checkout"))).image
        self.small_shot = prepare_image(encoded(screenshot(640, 480, "Order 1042"))).image

    def request(self, question: str, image=None, tokens: int | None = None):
        from engine.base import ChatMessage, GenerationRequest

        parts = (image, question) if image is not None else (question,)
        tokens = tokens or self.tokens
        return GenerationRequest((ChatMessage.of("user", *parts),), max_new_tokens=tokens, min_new_tokens=tokens)

    def conversations(self, count: int) -> list:
        """`count` different support questions, every other one with a 640x480 screenshot."""
        return [
            self.request(f"{QUESTIONS[i % len(QUESTIONS)]} (conversation {i})", self.small_shot if i % 2 == 0 else None)
            for i in range(count)
        ]

    def first_token(self) -> tuple[float, int, int]:
        """Median ms to the first token of one 1080p screenshot, its prompt and visual tokens."""
        request = self.request("What does this error mean?", self.full_hd, tokens=2)
        if self.warm_up:
            asyncio.run(self.engine.generate(request))
        runs = [asyncio.run(self.engine.generate(request)) for _ in range(self.repeats)]
        return (statistics.median(g.timings.first_token_ms for g in runs), runs[0].prompt_tokens,
                runs[0].image_tokens)

    def single_stream(self) -> float:
        """Decoding tokens per second of one conversation alone (after its first token)."""
        request = self.request(QUESTIONS[0])
        rates = []
        for _ in range(self.repeats):
            g = asyncio.run(self.engine.generate(request))
            rates.append((g.completion_tokens - 1) / max((g.timings.total_ms - g.timings.first_token_ms) / 1000, 1e-9))
        return statistics.median(rates)

    def through_engine(self, count: int) -> float:
        """Aggregate tokens per second of `count` conversations sent at once to the engine."""
        requests = self.conversations(count)

        async def all_at_once() -> list:
            return await asyncio.gather(*(self.engine.generate(r) for r in requests))

        rates = []
        for _ in range(self.repeats):
            started = time.perf_counter()
            generations = asyncio.run(all_at_once())
            rates.append(sum(g.completion_tokens for g in generations) / (time.perf_counter() - started))
        return statistics.median(rates)

    def raw_generate(self, count: int) -> float:
        """The same conversations as one batch through processor + `model.generate`, by hand."""
        import torch

        engine = self.engine
        requests = self.conversations(count)
        model = engine.loaded.model

        def once() -> float:
            started = time.perf_counter()
            inputs = engine.build_inputs(requests)
            with torch.inference_mode():
                output = model.generate(**inputs, generation_config=engine.generation_config(requests))
            new_tokens = (output.shape[1] - inputs["input_ids"].shape[1]) * output.shape[0]
            return new_tokens / (time.perf_counter() - started)

        # On the engine's own thread, between batches: the model and its thread pool to itself.
        if self.warm_up:
            engine.worker.call(once).result()
        return statistics.median(engine.worker.call(once).result() for _ in range(self.repeats))

    def figures(self, label: str) -> list[Figure]:
        first_ms, prompt_tokens, visual = self.first_token()
        figures = [
            Figure("gpu_first_token_ms_1080p", first_ms, "",
                   f"median ms from request to first token, one 1920x1080 screenshot and a question, {label}"),
            Figure("gpu_prompt_tokens_1080p", prompt_tokens, "", "prompt tokens of that request"),
            Figure("gpu_visual_tokens_1080p", visual, "", "visual tokens of that screenshot (default budget)"),
            Figure("gpu_single_stream_tokens_per_s", self.single_stream(), "",
                   f"decoding tokens per second of one conversation alone, {label}"),
        ]
        for count in CONCURRENCY:
            if self.warm_up:
                self.through_engine(count)
            engine_rate = self.through_engine(count)
            raw_rate = self.raw_generate(count)
            figures += [
                Figure(f"gpu_engine_tokens_per_s_{count}", engine_rate, "",
                       f"aggregate tokens per second, {count} conversations at once through the engine, {label}"),
                Figure(f"gpu_raw_tokens_per_s_{count}", raw_rate, "",
                       f"the same {count} conversations as one batch of processor + model.generate, {label}"),
                Figure(f"gpu_engine_vs_raw_{count}", engine_rate / raw_rate, "",
                       f"engine / raw generate, {count} conversations"),
            ]
        figures.append(Figure("gpu_answer_tokens", self.tokens, "", "tokens in every measured answer"))
        return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="the small configuration (automatic without CUDA)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per answer (128; small: 8)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per figure, median kept (2; small: 1)")
    args = parser.parse_args(argv)

    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(level=logging.WARNING)
    from bot.engine_setup import make_engine
    from bot.settings import Settings

    on_gpu = torch.cuda.is_available()
    small = args.small or not on_gpu
    device = "cuda" if on_gpu else "cpu"
    tokens = args.tokens or (8 if small else 128)
    repeats = args.repeats or (1 if small else 2)
    label = (f"small configuration on {'GPU' if on_gpu else 'CPU'} (not a GPU figure)" if small
             else f"Qwen3-VL-8B shapes, bf16, {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        checkpoint = build_checkpoint(tmp, small, device)
        engine = make_engine(Settings(engine="transformers", model=str(checkpoint)))
        engine.start()
        loaded_s = time.perf_counter() - started
        try:
            figures = GpuBench(engine, tokens, repeats, warm_up=not small).figures(label)
        finally:
            engine.close()
    params = sum(p.numel() for p in engine.loaded.model.parameters())
    figures += [
        Figure("gpu_parameters_b", round(params / 1e9, 3), "", f"parameters (billions), {label}"),
        Figure("gpu_small_configuration", int(small), "", "1: the small configuration ran, the figures prove only that it works"),
        Figure("gpu_build_and_load_s", loaded_s, "", "seconds to write the random checkpoint and load it through the engine"),
    ]
    print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
