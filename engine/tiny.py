"""A tiny random-weight Qwen3-VL checkpoint, built locally.

Tests and the demo need a model that loads through exactly the same code path as
`Qwen/Qwen3-VL-8B-Instruct` (config, processor, tokenizer, chat template, safetensors)
without downloading anything. This writes one from the real transformers classes with a
config small enough to build and run in seconds on a CPU. Its answers are noise.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

# Special tokens the Qwen3-VL processor and chat format rely on, in Qwen's order.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
BPE_VOCAB_SIZE = 480
PATCH_SIZE = 16
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MARKER_FILE = "snapdesk-tiny.json"


def _data_text(name: str) -> str:
    return resources.files("engine").joinpath("data").joinpath(name).read_text(encoding="utf-8")


def _train_tokenizer():
    """Byte-level BPE with Qwen's pre-tokenizer, trained on a few support sentences."""
    from tokenizers import Tokenizer, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    template = Qwen2Tokenizer()  # an empty Qwen2 tokenizer: gives the exact normalizer / pre-tokenizer
    backend: Tokenizer = template.backend_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    backend.train_from_iterator(_data_text("tiny_corpus.txt").splitlines() * 4, trainer=trainer)
    state = json.loads(backend.to_str())["model"]
    vocab = {tok: idx for tok, idx in state["vocab"].items() if tok not in SPECIAL_TOKENS}
    vocab = {tok: i for i, tok in enumerate(sorted(vocab, key=vocab.__getitem__))}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(SPECIAL_TOKENS),
    )
    tokenizer.model_max_length = 262144
    return tokenizer


def build_tiny_checkpoint(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny Qwen3-VL checkpoint to `directory` and return its path."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLImageProcessor,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    vocab_size = (len(tokenizer) + 63) // 64 * 64

    config = Qwen3VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "max_position_embeddings": 32768,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": [6, 5, 5],
                "mrope_interleaved": True,
            },
            "tie_word_embeddings": False,
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH_SIZE,
            "out_hidden_size": 64,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
    )
    model.save_pretrained(out)

    image_processor = Qwen2VLImageProcessor(
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        merge_size=MERGE_SIZE,
        size={"shortest_edge": 64 * 32 * 32, "longest_edge": 16384 * 32 * 32},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    video_processor = Qwen3VLVideoProcessor(
        patch_size=PATCH_SIZE, temporal_patch_size=TEMPORAL_PATCH_SIZE, merge_size=MERGE_SIZE
    )
    processor = Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=_data_text("chat_template.jinja"),
    )
    processor.save_pretrained(out)
    (out / MARKER_FILE).write_text(
        json.dumps({"random_weights": True, "parameters": sum(p.numel() for p in model.parameters())}),
        encoding="utf-8",
    )
    return out


def is_tiny_checkpoint(path: str | Path) -> bool:
    """True for a checkpoint written by `build_tiny_checkpoint` (answers are random)."""
    return (Path(path) / MARKER_FILE).is_file()
