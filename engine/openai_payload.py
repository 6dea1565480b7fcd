"""What Snapdesk sends to an OpenAI-compatible server: the `/chat/completions` body.

Every sampling setting the in-process engine uses is sent explicitly, neutral values
included: a server fills a missing field from its own defaults (vLLM from the checkpoint's
generation_config, llama.cpp with repeat_penalty 1.1, min_p 0.05 and top_k 40), and the
answer would no longer be the in-process engine's. Servers disagree on the names and the
"off" values of those fields, so the body is serialized once (screenshots make it
megabytes) and the fields that differ are added per kind of server.
"""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .base import GenerationRequest, ImagePart
from .control_tokens import GENERIC_PATTERN, neutralize, untrusted

if TYPE_CHECKING:
    from PIL import Image

# Request fields that vLLM, SGLang and llama.cpp accept beyond the OpenAI schema.
EXTENDED_SAMPLING_FIELDS = ("top_k", "min_p", "min_tokens", "repetition_penalty", "repeat_penalty")
LLAMA_CPP = "llama.cpp"
STRICT = "openai-only"  # refused the fields beyond OpenAI's schema (transformers serve does)
SERVER_KINDS = ("", LLAMA_CPP, STRICT)  # "": vLLM, SGLang and the rest


def image_data_url(image: "Image.Image") -> str:
    """The image as a `data:image/png;base64,...` URL (lossless, so small text stays sharp)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_openai_messages(request: GenerationRequest, control: re.Pattern[str] = GENERIC_PATTERN) -> list[dict]:
    """The request's messages in the chat-completions shape, images as PNG data URLs.

    `control`: the control-token strings to neutralize in untrusted text. Encoding images
    costs milliseconds per screenshot: call it off the event loop.
    """
    messages = []
    for message in request.messages:
        def text(value: str) -> str:  # the server's template would turn control-token strings into tokens
            return neutralize(value, control) if untrusted(message.role) else value

        if all(not isinstance(part, ImagePart) for part in message.parts):
            content: Any = text("".join(part.text for part in message.parts))  # type: ignore[union-attr]
        else:
            content = [
                {"type": "image_url", "image_url": {"url": image_data_url(part.image)}}
                if isinstance(part, ImagePart)
                else {"type": "text", "text": text(part.text)}
                for part in message.parts
            ]
        messages.append({"role": message.role, "content": content})
    return messages


@dataclass(frozen=True)
class Payload:
    """A request body, serialized once, and the sampling fields whose names or values differ
    between kinds of server, added per kind."""

    common: bytes
    by_kind: dict[str, dict[str, Any]]

    def for_kind(self, kind: str) -> bytes:
        extra = self.by_kind.get(kind) or {}
        if not extra:
            return self.common
        return self.common[:-1] + b", " + json.dumps(extra, ensure_ascii=False)[1:].encode("utf-8")


def build_payload(request: GenerationRequest, model: str, control: re.Pattern[str], extended_sampling: bool) -> Payload:
    """The body for every kind of server (encodes images: call off the event loop).

    `extended_sampling`: send the fields beyond OpenAI's schema at all (servers that refuse
    unknown fields need False).
    """
    common = json.dumps(_common_body(request, model, control), ensure_ascii=False).encode("utf-8")
    return Payload(common, {kind: _sampling_fields(request, kind, extended_sampling) for kind in SERVER_KINDS})


def names_a_sampling_field(message: str) -> bool:
    """Whether a server's refusal names one of the fields beyond OpenAI's schema."""
    return any(re.search(rf"\b{name}\b", message) for name in EXTENDED_SAMPLING_FIELDS)


def _common_body(request: GenerationRequest, model: str, control: re.Pattern[str]) -> dict[str, Any]:
    sampling = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "messages": to_openai_messages(request, control),
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": True,
        "top_logprobs": 0,  # llama.cpp returns log-probs only when this is given too
        "max_tokens": request.max_new_tokens,
    }
    if sampling.greedy:
        body["temperature"] = 0
    else:
        body["temperature"] = sampling.temperature
        body["top_p"] = sampling.top_p
    return body


def _sampling_fields(request: GenerationRequest, kind: str, extended_sampling: bool) -> dict[str, Any]:
    """What the in-process engine uses, neutral values included, in the server kind's names."""
    if not extended_sampling or kind == STRICT:
        return {}
    sampling = request.sampling
    # "No top-k" is -1 on vLLM and SGLang (SGLang refuses 0) and 0 on llama.cpp (which
    # refuses -1). Left out, vLLM would apply the checkpoint's generation_config default
    # (Qwen ships top_k 20) and llama.cpp its own 40. Greedy decoding ignores it everywhere.
    no_top_k = 0 if kind == LLAMA_CPP else -1
    fields: dict[str, Any] = {
        "top_k": sampling.top_k if sampling.top_k > 0 and not sampling.greedy else no_top_k,
        "min_p": 0.0,
        "repetition_penalty": sampling.repetition_penalty,
    }
    if kind == LLAMA_CPP:
        fields["repeat_penalty"] = sampling.repetition_penalty  # llama.cpp's name (vLLM logs a warning for it)
    if request.min_new_tokens > 0:
        fields["min_tokens"] = request.min_new_tokens
    return fields
