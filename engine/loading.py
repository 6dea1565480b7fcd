"""Loading a Qwen3-VL checkpoint, with failures explained in one sentence.

An operator who mistypes a path or runs without network should learn what to do,
not read a transformers traceback. Device and dtype are chosen here: bf16 on a GPU,
float32 on a CPU, flash attention when it is installed and sdpa otherwise.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen3-VL-8B-Instruct"
QWEN3_VL_TYPES = ("qwen3_vl", "qwen3_vl_moe")
# Qwen3-VL: 16x16 patches merged 2x2, so one visual token covers 32x32 pixels.
PIXELS_PER_VISUAL_TOKEN = 32 * 32


def visual_tokens(width: int, height: int, min_tokens: int = 256, max_tokens: int = 1280) -> int:
    """Visual tokens Qwen3-VL spends on an image (its processor's smart_resize, 32 px per token)."""
    factor = 32
    height_bar = max(factor, round(height / factor) * factor)
    width_bar = max(factor, round(width / factor) * factor)
    if height_bar * width_bar > max_tokens * PIXELS_PER_VISUAL_TOKEN:
        beta = math.sqrt(height * width / (max_tokens * PIXELS_PER_VISUAL_TOKEN))
        height_bar = max(factor, math.floor(height / beta / factor) * factor)
        width_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif height_bar * width_bar < min_tokens * PIXELS_PER_VISUAL_TOKEN:
        beta = math.sqrt(min_tokens * PIXELS_PER_VISUAL_TOKEN / (height * width))
        height_bar = math.ceil(height * beta / factor) * factor
        width_bar = math.ceil(width * beta / factor) * factor
    return (height_bar // factor) * (width_bar // factor)


@dataclass(frozen=True)
class LoadOptions:
    model: str = DEFAULT_MODEL
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32
    attn_implementation: str = "auto"  # auto | sdpa | eager | flash_attention_2
    min_image_tokens: int = 256
    max_image_tokens: int = 1280


@dataclass
class LoadedModel:
    model: Any
    processor: Any
    name: str
    device: Any
    dtype: Any


def _looks_like_path(name: str) -> bool:
    """Hub ids look like 'org/name'; anything else is meant as a local directory."""
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or os.sep != "/" and os.sep in name


def _resolve_dtype(torch: Any, dtype: str, on_gpu: bool) -> Any:
    if dtype == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    try:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    except KeyError:
        raise ModelLoadError(f"Unknown dtype '{dtype}': use auto, bfloat16, float16 or float32.") from None


def _resolve_attention(torch: Any, choice: str, on_gpu: bool) -> str:
    if choice != "auto":
        return choice
    if on_gpu and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _load_config(name: str) -> Any:
    from transformers import AutoConfig

    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelLoadError(
                f"'{name}' is a directory but not a model checkpoint (it has no config.json): "
                "point SNAPDESK_MODEL at a Qwen3-VL checkpoint directory."
            )
    elif _looks_like_path(name):
        raise ModelLoadError(
            f"Model directory '{name}' does not exist: set SNAPDESK_MODEL (or --model) to a Qwen3-VL "
            f"checkpoint directory or a hub id such as {DEFAULT_MODEL}."
        )
    try:
        return AutoConfig.from_pretrained(str(local) if local.is_dir() else name)
    except OSError as exc:
        raise ModelLoadError(
            f"Could not get '{name}': it is not in the local Hugging Face cache and the model hub "
            f"could not be reached ({type(exc).__name__}); download it where there is network "
            f"(`hf download {name}`) and copy the cache here, or set SNAPDESK_MODEL to a local directory."
        ) from None
    except ValueError as exc:
        raise ModelLoadError(f"'{name}' is not a checkpoint transformers can read: {exc}") from None


def load_model(options: LoadOptions) -> LoadedModel:
    """Load model and processor; raises ModelLoadError with an actionable message."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.image_utils import SizeDict

    started = time.perf_counter()
    name = options.model
    config = _load_config(name)
    if getattr(config, "model_type", None) not in QWEN3_VL_TYPES:
        raise ModelLoadError(
            f"'{name}' is a {getattr(config, 'model_type', 'unknown')} checkpoint, not Qwen3-VL: "
            f"Snapdesk needs a Qwen3-VL model such as {DEFAULT_MODEL}."
        )
    device = options.device
    on_gpu = (device == "auto" and torch.cuda.is_available()) or device.startswith("cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"SNAPDESK_DEVICE is '{device}' but no CUDA GPU is available: use auto or cpu.")
    dtype = _resolve_dtype(torch, options.dtype, on_gpu)
    attention = _resolve_attention(torch, options.attn_implementation, on_gpu)
    device_map = "auto" if device == "auto" else device
    source = str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name
    log.info("loading %s (dtype %s, attention %s, device %s)", name, str(dtype).removeprefix("torch."), attention, device_map)
    try:
        processor = AutoProcessor.from_pretrained(source)
        model = AutoModelForImageTextToText.from_pretrained(
            source, dtype=dtype, device_map=device_map, attn_implementation=attention
        )
    except OSError as exc:
        raise ModelLoadError(
            f"Could not load the weights of '{name}' ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}); "
            "check that the checkpoint is complete."
        ) from None
    except ImportError as exc:
        raise ModelLoadError(f"A package needed to load '{name}' is missing: {exc}") from None
    model.eval()
    # transformers ignores max_pixels passed to from_pretrained; the budget lives in `size`.
    processor.image_processor.size = SizeDict(
        shortest_edge=options.min_image_tokens * PIXELS_PER_VISUAL_TOKEN,
        longest_edge=options.max_image_tokens * PIXELS_PER_VISUAL_TOKEN,
    )
    processor.tokenizer.padding_side = "left"
    log.info("loaded %s in %.1f s", name, time.perf_counter() - started)
    return LoadedModel(model=model, processor=processor, name=name, device=model.device, dtype=dtype)
