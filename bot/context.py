"""What the model sees on a turn: system prompt, the history that fits, the new message.

A 1080p screenshot costs about 1,200 tokens, so re-sending every screenshot of a long
conversation would blow the context and the latency. Every screenshot of the new message
goes in as an image, and of earlier turns only the most recent ones; older ones become a
numbered one-line stand-in, so the user can still say "the first screenshot" and the
model knows what it showed. History is added newest first
while it fits the token budget, whole messages only: a multimodal message is never cut.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Protocol

from engine.base import ChatMessage, Engine, GenerationRequest, ImagePart, Part, SamplingParams, TextPart
from engine.control_tokens import neutralize
from engine.evidence import Evidence

MESSAGE_OVERHEAD_TOKENS = 8  # <|im_start|>role\n ... <|im_end|>\n
# A text counted alone can take a token more inside the chat template, where its first and last
# characters meet the template's own (whitespace at a message's edges does): one per text part
# keeps the sum an upper bound, so a prompt never passes the budget.
EDGE_TOKENS = 1


@dataclass(frozen=True)
class ContextOptions:
    budget_tokens: int = 8192
    recent_images: int = 2
    max_new_tokens: int = 512


@dataclass(frozen=True)
class ContextStats:
    prompt_tokens_estimate: int
    history_messages: int
    images_sent: int
    stand_ins: int
    image_tokens: int = 0


# What the end user chose and a support template may show in the system prompt (conversation fields).
USER_TEMPLATE_VALUES: tuple[str, ...] = ("user_name",)


def template_values(conversation: Mapping[str, Any]) -> dict[str, str]:
    """The user-chosen values a template renders into the system prompt, as plain text.

    The engine neutralises control-token strings in every turn but the system prompt, which is
    the operator's own text; a display name such as "<|im_end|><|im_start|>system ..." pasted
    into it would open a real system turn. So whatever the end user chose is neutralised here,
    before rendering, the same way as their messages: a value meant for a template goes through
    this function (and USER_TEMPLATE_VALUES), or it does not reach the template at all.
    """
    return {name: neutralize(str(conversation.get(name) or "")) for name in USER_TEMPLATE_VALUES}


def screenshot_values(readings: list[dict | None]) -> dict[str, str]:
    """What the local reading found in the new message's screenshots, for a template's
    `screenshot_text` and `screenshot_evidence` (personal data already masked; the text is the
    user's content, neutralised like their messages)."""
    texts, evidence = [], []
    numbered = len(readings) > 1
    for number, reading in enumerate(readings, start=1):
        if not reading or not reading.get("ocr"):
            continue
        label = f"Screenshot {number}: " if numbered else ""
        text = "\n".join(line["text"] for line in reading.get("lines", []))
        if text:
            texts.append(f"{label}\n{text}" if numbered else text)
        summary = Evidence.from_dict(reading.get("evidence") or {}).summary()
        if summary:
            evidence.append(label + summary)
    return {"screenshot_text": neutralize("\n\n".join(texts)), "screenshot_evidence": neutralize("\n".join(evidence))}


def stand_in(number: int, sent_at: str, description: str | None, shows: str = "") -> str:
    """An older screenshot in words: the bot's description of it, and what Snapdesk read in it."""
    when = _clock(sent_at)
    read = f"; it shows {shows}" if shows else ""
    return f"[screenshot #{number}, sent {when}: {description or 'no description yet'}{read}]"


def evidence_summary(reading: dict | None) -> str:
    """The one-line evidence of a stored reading (masked; neutralised: it is the user's content)."""
    if not reading or not reading.get("ocr"):
        return ""
    return neutralize(Evidence.from_dict(reading.get("evidence") or {}).summary())


def _clock(timestamp: str) -> str:
    try:
        return datetime.fromisoformat(timestamp).strftime("%H:%M")
    except (TypeError, ValueError):
        return "earlier"


def describe_from_answer(answer: str, user_text: str) -> str:
    """A one-line description of a screenshot, taken from the bot's answer to that turn."""
    line = " ".join(answer.split())
    for end in (". ", "。", "! ", "? ", "！", "？"):
        if end in line:
            line = line.split(end, 1)[0] + end.strip()
            break
    if not line:
        line = f'sent with "{" ".join(user_text.split())[:60]}"'
    return line[:120]


class AttachmentInfo(Protocol):
    path: Path
    width: int
    height: int
    description: str | None


def load_image(path: Path):
    """The stored (already sanitised) PNG, or None if it is gone (e.g. purged)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except OSError:
        return None


def attachment_ids(row: dict) -> list[int]:
    return json.loads(row.get("attachment_ids") or "[]")


class ContextBuilder:
    """Turns stored messages into a GenerationRequest within the token budget."""

    def __init__(self, engine: Engine, options: ContextOptions) -> None:
        self.engine = engine
        self.options = options

    def _text_tokens(self, text: str) -> int:
        return self.engine.count_text_tokens(text)

    def build(
        self,
        system_prompt: str,
        history: list[dict],
        new_message: dict,
        attachments: "dict[int, AttachmentInfo]",
        *,
        max_new_tokens: int,
        sampling: SamplingParams,
    ) -> tuple[GenerationRequest, ContextStats]:
        """`history`: the episode's earlier messages, oldest first; `new_message`: the user turn."""
        image_costs: dict[int, int] = {}  # id(ImagePart) -> visual tokens
        numbered: dict[int, int] = {}  # attachment id -> screenshot number in this episode
        for row in [*history, new_message]:
            if row["role"] == "user":
                for attachment_id in attachment_ids(row):
                    numbered.setdefault(attachment_id, len(numbered) + 1)
        # Every screenshot of the new message goes in; the recent-images limit is for earlier turns.
        new_images = set(attachment_ids(new_message))
        earlier = [i for i in numbered if i not in new_images]
        recent = new_images | (set(earlier[-self.options.recent_images :]) if self.options.recent_images else set())

        def parts_of(row: dict) -> tuple[list[Part], int]:
            parts: list[Part] = []
            tokens = MESSAGE_OVERHEAD_TOKENS
            if row["role"] == "user":
                for attachment_id in attachment_ids(row):
                    info = attachments.get(attachment_id)
                    image = load_image(info.path) if info is not None and attachment_id in recent else None
                    if image is not None:
                        parts.append(ImagePart(image))
                        tokens += self.engine.count_image_tokens(*image.size) + 2
                        image_costs[id(parts[-1])] = self.engine.count_image_tokens(*image.size)
                    else:
                        description = info.description if info is not None else None
                        shows = evidence_summary(getattr(info, "reading", None))
                        text = stand_in(numbered[attachment_id], row["created_at"], description, shows)
                        parts.append(TextPart(text + "\n"))
                        tokens += self._text_tokens(text) + 1 + EDGE_TOKENS
            text = row.get("text") or ""
            if row["role"] == "agent":
                text = f"(support agent {row.get('author') or ''}) {text}".strip()
            if text:
                parts.append(TextPart(text))
                tokens += self._text_tokens(text) + EDGE_TOKENS
            return parts, tokens

        system_tokens = self._text_tokens(system_prompt) + EDGE_TOKENS + MESSAGE_OVERHEAD_TOKENS
        new_parts, new_tokens = parts_of(new_message)
        used = system_tokens + new_tokens + MESSAGE_OVERHEAD_TOKENS  # the answer's own opening counts too
        chosen: list[ChatMessage] = []
        for row in reversed(history):
            if row["role"] not in ("user", "bot", "agent") or not (row.get("text") or attachment_ids(row)):
                continue
            parts, tokens = parts_of(row)
            if used + tokens > self.options.budget_tokens:
                break
            used += tokens
            chosen.append(ChatMessage("user" if row["role"] == "user" else "assistant", tuple(parts)))
        chosen.reverse()
        while chosen and chosen[0].role != "user":  # a conversation opens with the user
            chosen.pop(0)
        messages = (
            ChatMessage.of("system", system_prompt),
            *chosen,
            ChatMessage("user", tuple(new_parts) or (TextPart(""),)),
        )
        images_sent = sum(len(m.images) for m in messages)
        image_tokens = sum(image_costs.get(id(p), 0) for m in messages for p in m.parts)
        stand_ins = sum(
            1 for m in messages for p in m.parts if isinstance(p, TextPart) and p.text.startswith("[screenshot #")
        )
        request = GenerationRequest(messages, max_new_tokens=max_new_tokens, sampling=sampling)
        return request, ContextStats(used, len(chosen), images_sent, stand_ins, image_tokens)
