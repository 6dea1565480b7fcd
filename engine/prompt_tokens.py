"""Counting a request's prompt tokens on this machine, for a model that runs elsewhere.

A remote server's own count is not the one to report: llama.cpp's is wrong for Qwen3-VL
screenshots, and any server counts images with whatever budget it was started with. The
history budget also needs counts before anything is sent. With the model's tokenizer and
chat template on this machine (a checkpoint directory or the Hugging Face cache; nothing is
downloaded) the count is the in-process engine's, to the token: the chat template rendered
as transformers renders it, and each image's placeholder token replaced by the visual tokens
the image budget gives that image. Without them, the caller estimates.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .base import GenerationRequest
from .control_tokens import GENERIC_PATTERN, pattern_for

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<|image_pad|>"  # what Qwen3-VL's template writes for each image, before expansion


def _cached(name: str, filename: str) -> Path | None:
    """A file of a hub model from the local Hugging Face cache, never downloaded."""
    if name.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, filename)
    except Exception:  # an unusable cache is the same as no cache
        return None
    return Path(found) if isinstance(found, str) else None


def _model_file(name: str, filename: str) -> Path | None:
    path = Path(name).expanduser()
    if path.is_file():  # a tokenizer.json named directly: its siblings
        path = path.parent
    if path.is_dir():
        candidate = path / filename
        return candidate if candidate.is_file() else None
    return _cached(name, filename)


def _chat_template(name: str) -> str | None:
    """The checkpoint's chat template, from where transformers keeps it (processor first)."""
    jinja = _model_file(name, "chat_template.jinja")
    if jinja is not None:
        return jinja.read_text(encoding="utf-8")
    for filename in ("chat_template.json", "processor_config.json", "tokenizer_config.json"):
        found = _model_file(name, filename)
        if found is None:
            continue
        try:
            template = json.loads(found.read_text(encoding="utf-8")).get("chat_template")
        except (ValueError, AttributeError):
            continue
        if isinstance(template, list):  # named templates: the default one
            template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
        if isinstance(template, str) and template.strip():
            return template
    return None


@dataclass(frozen=True)
class LocalTokenizer:
    """The served model's tokenizer (and chat template, when found) on this machine."""

    tokenizer: Any  # tokenizers.Tokenizer
    control: re.Pattern[str]  # what is neutralized in untrusted text: the generic pattern and the added tokens
    chat_template: str | None
    render: Callable[..., Any] | None = None  # transformers' chat template renderer

    @property
    def exact(self) -> bool:
        """Whole prompts can be counted, not only texts."""
        return self.chat_template is not None and self.render is not None

    def count_text(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def count_prompt(self, request: GenerationRequest, image_tokens: Callable[[int, int], int]) -> int | None:
        """Tokens of the whole prompt, generation prompt included; None when the template cannot tell."""
        if self.chat_template is None or self.render is None:
            return None
        from .transformers_engine import to_chat_template_messages

        messages = to_chat_template_messages(request, self.control)  # neutralized as they are sent
        try:
            (text,), _ = self.render([messages], chat_template=self.chat_template, add_generation_prompt=True)
        except Exception as exc:  # a template this renderer cannot run: estimate instead
            log.debug("cannot render the chat template locally: %s", exc)
            return None
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        placeholder = self.tokenizer.token_to_id(IMAGE_PLACEHOLDER)
        images = request.images
        placeholders = sum(1 for token in ids if token == placeholder) if placeholder is not None else 0
        if placeholders != len(images):  # not a Qwen-VL template: the image expansion is unknown
            return None
        return len(ids) - placeholders + sum(image_tokens(*image.size) for image in images)


def load_local_tokenizer(name: str) -> LocalTokenizer | None:
    """`name`: a checkpoint directory, a tokenizer.json, or a hub id in the local cache."""
    try:
        from tokenizers import Tokenizer

        given = Path(name).expanduser()
        path = given if given.is_file() else _model_file(name, "tokenizer.json")
        if path is None:
            return None
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_padding()
        tokenizer.no_truncation()
        added = pattern_for(token.content for token in tokenizer.get_added_tokens_decoder().values())
        control = re.compile(f"{GENERIC_PATTERN.pattern}|{added.pattern}") if added is not None else GENERIC_PATTERN
        template, render = _chat_template(name), None
        if template is not None:
            try:  # imported here, at start, rather than by the first request (it takes a second or two)
                from transformers.utils.chat_template_utils import render_jinja_template as render
            except ImportError as exc:
                log.debug("no chat template renderer: %s", exc)
        return LocalTokenizer(tokenizer, control, template, render)
    except Exception as exc:  # counting falls back to an estimate
        log.debug("no local tokenizer for %s: %s", name, exc)
        return None

