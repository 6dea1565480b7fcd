"""Cleaning what users type before it is stored, shown to agents or put in a prompt.

Control characters (NUL, bell, escape sequences, including the 8-bit C1 ones such as CSI)
and Unicode direction overrides can break logs and terminals or make text read differently
than it is (U+202E turns "txt.exe" into "exe.txt"); none of them belongs in a support
question. A lone UTF-16 surrogate (JSON allows "\\ud800") is not a character at all: it cannot
be stored or sent on as UTF-8, so it becomes U+FFFD, the replacement character.
"""

from __future__ import annotations

import re

_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_SURROGATES = re.compile(r"[\ud800-\udfff]")


def clean_user_text(text: str) -> str:
    """The text without control characters or direction overrides; newlines and tabs stay."""
    return _CONTROLS.sub("", _SURROGATES.sub("\ufffd", text.replace("\r\n", "\n")))
