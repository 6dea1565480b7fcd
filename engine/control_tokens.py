"""Message text must never become the model's control tokens.

A chat template pastes message text verbatim, and the tokenizer turns any added-token
string inside it ("<|im_end|>", "<|im_start|>system", "<|image_pad|>") into the real token.
A user who types those strings could close their turn and open a fake system turn, or
break the alignment between image tokens and images. Before templating, every such string
in a non-system message is broken with an invisible WORD JOINER after its first character:
the model still reads the same characters, as plain text.
"""

from __future__ import annotations

import re
from typing import Iterable

WORD_JOINER = "\u2060"
# For a server whose tokenizer is not at hand (a remote engine): the Qwen family's control
# tokens all look like <|...|>; its added tags are think / tool_call / tool_response.
GENERIC_PATTERN = re.compile(r"<\|[^<>|\s]{1,64}\|>|</?(?:think|tool_call|tool_response)>")


def pattern_for(tokens: Iterable[str]) -> re.Pattern[str] | None:
    """A pattern matching any of the tokenizer's added tokens (longest first)."""
    literal = sorted({t for t in tokens if len(t) > 1}, key=len, reverse=True)
    return re.compile("|".join(re.escape(t) for t in literal)) if literal else None


def neutralize(text: str, pattern: re.Pattern[str] | None = GENERIC_PATTERN) -> str:
    if pattern is None or not text:
        return text
    return pattern.sub(lambda m: m.group(0)[0] + WORD_JOINER + m.group(0)[1:], text)


def untrusted(role: str) -> bool:
    """Which messages are neutralized: all but the operator's system prompt. Values a user
    chose that a template renders into the system prompt (a display name) are neutralized by
    the caller, with `neutralize`, before rendering."""
    return role != "system"
