"""Which language a user writes in, so replies and hand-over notices match it.

Snapdesk serves English and Chinese; a message with Chinese characters is Chinese.
"""

from __future__ import annotations

import re

SUPPORTED = ("en", "zh")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def detect_language(text: str, default: str = "en") -> str:
    """'zh' when the text contains Chinese characters, 'en' when it has other letters, else `default`."""
    if _CJK.search(text or ""):
        return "zh"
    if re.search(r"[A-Za-z]", text or ""):
        return "en"
    return default if default in SUPPORTED else "en"
