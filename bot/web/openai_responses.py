"""What /v1 answers: chat completions and their stream chunks in OpenAI's shape, with usage
and per-token log-probabilities.

`logprobs.content` has one entry per generated token, the end-of-turn token included, so
that it has exactly `usage.completion_tokens` entries and exp(mean logprob) is the
confidence the bot computes. A token's `bytes` are its own raw bytes, which for byte-level
BPE may be part of a character (then `token` escapes them as `\\xNN` and the next token's
bytes complete them); without a tokenizer in this process (a remote backend) `token` is
`token_id:<id>` and `bytes` is null. The log-probabilities are those of the model's own
distribution (before temperature or top-p); `top_logprobs` is always empty, as the engine
does not report alternatives.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from engine.base import Generation

FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop"}


# Log-probabilities ------------------------------------------------------------------------
@cache
def byte_of_char() -> dict[str, int]:
    """Byte-level BPE (GPT-2, Qwen) spells each byte as a printable character; this undoes it.
    Imported here: a tokenizer in this process means transformers is loaded already."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def engine_tokenizer(engine: Any) -> Any:
    loaded = getattr(engine, "loaded", None)
    processor = getattr(loaded, "processor", None)
    return getattr(processor, "tokenizer", None) or getattr(engine, "tokenizer", None)


def token_pieces(engine: Any, token_ids: tuple[int, ...]) -> list[tuple[str, list[int] | None]]:
    """(token text, UTF-8 bytes) of each generated token id."""
    tokenizer = engine_tokenizer(engine)
    if tokenizer is None:
        return [(f"token_id:{token_id}", None) for token_id in token_ids]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = type(getattr(backend, "decoder", None)).__name__ == "ByteLevel"
    byte_of = byte_of_char() if byte_level else {}
    added = {index: str(token) for index, token in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    pieces: list[tuple[str, list[int] | None]] = []
    for token_id, token in zip(token_ids, tokenizer.convert_ids_to_tokens(list(token_ids))):
        if token_id in added:
            raw = added[token_id].encode("utf-8")
        elif byte_level and token is not None and all(char in byte_of for char in token):
            raw = bytes(byte_of[char] for char in token)
        else:
            raw = tokenizer.decode([token_id]).encode("utf-8")
        pieces.append((raw.decode("utf-8", errors="backslashreplace"), list(raw)))
    return pieces


def logprobs_content(engine: Any, generation: Generation) -> list[dict]:
    return [
        {"token": token, "logprob": logprob, "bytes": raw, "top_logprobs": []}
        for (token, raw), logprob in zip(token_pieces(engine, generation.token_ids), generation.token_logprobs)
    ]


# Responses --------------------------------------------------------------------------------
def usage(generation: Generation) -> dict:
    return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens}


def finish_reason_of(generation: Generation) -> str:
    return FINISH_REASONS.get(generation.finish_reason, "stop")


@dataclass
class Completion:
    """One answer's id, time and model, shared by its whole body or by every chunk of its stream."""

    model: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def body(self, generation: Generation, logprobs: list[dict] | None) -> dict:
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "system_fingerprint": None,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": generation.text, "refusal": None},
                "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                "finish_reason": finish_reason_of(generation),
            }],
            "usage": usage(generation),
        }

    def chunk(self, delta: dict, finish_reason: str | None = None, logprobs: list[dict] | None = None,
              include_usage: bool = False) -> dict:
        chunk = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta,
                         "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None},
                         "finish_reason": finish_reason}],
        }
        if include_usage:
            chunk["usage"] = None
        return chunk

    def usage_chunk(self, generation: Generation) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": [], "usage": usage(generation)}


def sse(data: dict | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"
