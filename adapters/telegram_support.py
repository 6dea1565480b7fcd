"""Telegram channel helpers: the bot's own texts, message splitting, image sniffing,
flood limits and keeping the bot token out of the logs.

Nothing here talks to the network or the conversation core; `adapters.telegram` and
`adapters.telegram_channel` build on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import unicodedata
import warnings
from collections import deque
from datetime import timedelta
from typing import Any, Callable, Coroutine
from urllib.parse import quote

from telegram.error import RetryAfter
from telegram.ext import BaseRateLimiter

MESSAGE_LIMIT = 4096  # Telegram counts UTF-16 code units
DOWNLOAD_LIMIT = 20 * 1024 * 1024  # the Bot API serves files up to 20 MB


# The bot's own texts ---------------------------------------------------------------------
def language_of(language_code: str | None) -> str:
    """"zh" for a Chinese Telegram client (zh, zh-hans, zh-TW, ...), else "en"."""
    return "zh" if (language_code or "").lower().startswith("zh") else "en"


TEXTS: dict[str, dict[str, str]] = {
    "start": {
        "en": "Hello{name}! I'm the support assistant. Tell me what's wrong in your own words; you can also "
        "send a screenshot of the error, bill or order page. Send /human at any time to reach a person.",
        "zh": "您好{name}！我是客服助手。请直接描述您遇到的问题，也可以发送报错、账单或订单页面的截图。"
        "随时发送 /human 可以转人工客服。",
    },
    "help": {
        "en": "Here is how I can help:\n"
        "• Ask your question in a message and I answer right away.\n"
        "• Send a screenshot of an error, a bill or an order page, as a photo or as an image file "
        "(PNG, JPEG, GIF, WebP or BMP, up to {mb} MB), with a caption saying what you need. "
        "Several screenshots sent together are read as one message.\n"
        "• /human: talk to a person from our support team.\n"
        "• /reset: start over with a fresh conversation.",
        "zh": "我可以这样帮您：\n"
        "• 直接发消息提问，我会马上回答。\n"
        "• 发送报错、账单或订单页面的截图（以图片方式，或 PNG、JPEG、GIF、WebP、BMP 文件，最大 {mb} MB），"
        "并在说明中写明您的问题。一次发送的多张截图会作为同一条消息处理。\n"
        "• /human：转人工客服。\n"
        "• /reset：重新开始对话。",
    },
    "reset": {
        "en": "Done, we're starting over. What can I help you with?",
        "zh": "好的，我们重新开始。请问有什么可以帮您？",
    },
    "human_request": {
        "en": "I would like to talk to a human agent, please.",
        "zh": "我想找人工客服，谢谢。",
    },
    "already_with_human": {
        "en": "You're already in line for a person from our support team; they will reply here.",
        "zh": "您已在等待人工客服，工作人员会在这里回复您。",
    },
    "too_big": {
        "en": "That file is too big for me to download (limit {mb} MB). Please send a smaller screenshot, "
        "or send it as a photo instead of a file.",
        "zh": "这个文件太大，我无法下载（上限 {mb} MB）。请发送小一些的截图，或以图片而不是文件的方式发送。",
    },
    "download_failed": {
        "en": "I couldn't download that image from Telegram. Please send it again.",
        "zh": "无法从 Telegram 下载这张图片，请重新发送。",
    },
    "not_image": {
        "en": "{name} is not an image I can read. Please send a screenshot as a photo, or a PNG, JPEG, GIF, "
        "WebP or BMP file.",
        "zh": "{name}不是我能识别的图片。请以图片方式发送截图，或发送 PNG、JPEG、GIF、WebP 或 BMP 文件。",
    },
    "unsupported": {
        "en": "I can read text messages, photos and image files, but not this kind of message. "
        "Please type your question or send a screenshot.",
        "zh": "我能识别文字、图片和图片文件，但无法处理这类消息。请用文字描述问题或发送截图。",
    },
    "unknown_command": {
        "en": "I don't know that command. Send /help to see what I can do.",
        "zh": "我不认识这个命令。发送 /help 查看我能做什么。",
    },
    "agent": {"en": "{name} (support): {text}", "zh": "{name}（客服）：{text}"},
    "sources": {"en": "Sources:", "zh": "参考资料："},
}

COMMANDS: dict[str, list[tuple[str, str]]] = {
    "en": [
        ("start", "Start a conversation"),
        ("help", "What I can do and how to send screenshots"),
        ("human", "Talk to a person from our support team"),
        ("reset", "Start over with a fresh conversation"),
    ],
    "zh": [
        ("start", "开始对话"),
        ("help", "使用说明与如何发送截图"),
        ("human", "转人工客服"),
        ("reset", "重新开始对话"),
    ],
}


def text(key: str, language: str, **values: Any) -> str:
    templates = TEXTS[key]
    return templates.get(language, templates["en"]).format(**values)


def with_sources(body: str, sources, language: str) -> str:
    """An answer followed by its cited articles as plain lines with their URLs."""
    lines = [f"[{s['n']}] {s.get('title') or 'article'}" + (f" — {s['url']}" if s.get("url") else "") for s in sources]
    return f"{body}\n\n{text('sources', language)}\n" + "\n".join(lines) if lines else body


def megabytes(limit: int) -> str:
    return f"{round(limit / (1024 * 1024), 1):g}"


# Splitting long replies ------------------------------------------------------------------
def utf16_len(value: str) -> int:
    return len(value.encode("utf-16-le")) // 2


def _fitting_prefix(value: str, limit: int) -> int:
    """How many code points of `value` fit in `limit` UTF-16 code units."""
    units = 0
    for index, char in enumerate(value):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return index
    return len(value)


_JOINERS = {"\u200d", "\ufe0e", "\ufe0f"}


def _glued(value: str, index: int) -> bool:
    """True when a cut before `value[index]` would tear a character sequence apart."""
    char, before = value[index], value[index - 1]
    return (
        unicodedata.combining(char) != 0
        or char in _JOINERS
        or before == "\u200d"
        or 0x1F3FB <= ord(char) <= 0x1F3FF  # skin-tone modifiers
        or 0xE0020 <= ord(char) <= 0xE007F  # tag sequences (flags)
    )


def split_message(value: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Pieces of at most `limit` UTF-16 code units, cut at a paragraph, line or space
    where possible; a code point (so a surrogate pair) is never cut in two."""
    pieces: list[str] = []
    rest = value
    while utf16_len(rest) > limit:
        cut = _fitting_prefix(rest, limit)
        window = rest[:cut]
        for separator in ("\n\n", "\n", " "):
            at = window.rfind(separator)
            if at > cut // 4:
                pieces.append(rest[:at].rstrip())
                rest = rest[at + len(separator):].lstrip("\n")
                break
        else:
            hard = cut
            while hard > cut - 16 and hard > 1 and _glued(rest, hard):
                hard -= 1
            if hard <= cut - 16 or hard <= 1:
                hard = cut
            pieces.append(rest[:hard])
            rest = rest[hard:]
    pieces.append(rest)
    return [piece for piece in pieces if piece.strip()]


# Where a file may be fetched from ---------------------------------------------------------
_UNSAFE_PATH_CHARACTERS = frozenset("\\:%?#") | {chr(c) for c in (*range(0x20), *range(0x7f, 0xa0))}


def bot_api_file_path(file_path: str | None, base_file_url: str) -> str | None:
    """The relative Bot API path (e.g. "photos/file_1.jpg") of a getFile answer, or None.

    PTB turns a relative path into "<base file URL>/<path>", but leaves alone a path that names
    an existing local file, and then `download_*` reads that file from this machine's disk
    (meant for a Bot API server in local mode). An answer such as "/etc/passwd",
    "../snapdesk.db" or "C:\\secrets" is refused here, whatever PTB made of it.
    """
    if not file_path:
        return None
    prefix = f"{base_file_url}/"
    path = file_path[len(prefix):] if file_path.startswith(prefix) else file_path
    if path.startswith("/") or any(character in _UNSAFE_PATH_CHARACTERS for character in path):
        return None
    if any(segment in ("", ".", "..") for segment in path.split("/")):
        return None
    return path


def retry_after_seconds(exc: RetryAfter) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


# Flood limits ---------------------------------------------------------------------------
class _Window:
    """At most `rate` acquisitions in any `period` seconds (a sliding window)."""

    def __init__(self, rate: int, period: float) -> None:
        self.rate, self.period = rate, period
        self.times: deque[float] = deque()
        self.lock = asyncio.Lock()

    def idle(self, now: float) -> bool:
        return not self.times or now - self.times[-1] >= self.period

    async def acquire(self) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                while self.times and now - self.times[0] >= self.period:
                    self.times.popleft()
                if len(self.times) < self.rate:
                    self.times.append(now)
                    return
                await asyncio.sleep(self.period - (now - self.times[0]))


class FloodLimiter(BaseRateLimiter[int]):
    """Keeps the bot under Telegram's flood limits without extra packages.

    Telegram allows about 30 messages a second overall and 20 a minute into one group;
    every request aimed at a chat waits for room in those windows (chat actions in groups
    only count toward the overall one). When Telegram still answers 429, every request
    waits out `retry_after` before going on; the 429 itself is raised to the caller, who
    decides whether to try again (`TelegramChannel` does, a bounded number of times).
    """

    def __init__(self, overall_per_second: int = 30, group_per_minute: int = 20) -> None:
        self._overall = _Window(overall_per_second, 1.0)
        self._group_rate = group_per_minute
        self._groups: dict[int | str, _Window] = {}
        self._paused_until = 0.0

    async def initialize(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    def _group(self, chat_id: int | str) -> _Window:
        if len(self._groups) > 512:
            now = time.monotonic()
            for key in [k for k, w in self._groups.items() if k != chat_id and w.idle(now)]:
                del self._groups[key]
        window = self._groups.get(chat_id)
        if window is None:
            window = self._groups[chat_id] = _Window(self._group_rate, 60.0)
        return window

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, Any]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> Any:
        chat_id = data.get("chat_id")
        if chat_id is not None:
            while (wait := self._paused_until - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            await self._overall.acquire()
            try:
                group = int(chat_id) < 0
            except (TypeError, ValueError):
                group = True  # "@channelusername"
            if group and endpoint != "sendChatAction":
                await self._group(chat_id).acquire()
        try:
            return await callback(*args, **kwargs)
        except RetryAfter as exc:
            self._paused_until = max(self._paused_until, time.monotonic() + retry_after_seconds(exc))
            raise


def make_rate_limiter() -> BaseRateLimiter:
    """PTB's AIORateLimiter when its extra (aiolimiter) is installed, else `FloodLimiter`."""
    try:
        from telegram.ext import AIORateLimiter

        return AIORateLimiter(max_retries=0)  # retries happen in TelegramChannel
    except (ImportError, RuntimeError):
        return FloodLimiter()


# Keeping secrets out of the logs -----------------------------------------------------------
class RedactSecrets(logging.Filter):
    """Replaces the bot token and webhook secret in log records of the HTTP and Telegram
    libraries (they log request URLs, and file URLs carry the token)."""

    LOGGERS = (
        "httpx",
        "httpcore",
        "telegram",
        "telegram.Bot",
        "telegram.ext",
        "telegram.ext.ExtBot",
        "telegram.ext.AIORateLimiter",
        "telegram.request",
        "telegram.request.BaseRequest",
        "telegram.request.HTTPXRequest",
        "adapters.telegram",
        "adapters.telegram_channel",
        "adapters.telegram_retries",
        "adapters.telegram_support",
    )

    def __init__(self) -> None:
        super().__init__("snapdesk-telegram-redact")
        self.secrets: set[str] = set()

    def add(self, *secrets: str) -> None:
        for secret in secrets:
            if secret:  # as written, and as it appears in an encoded URL ("123:abc" -> "123%3Aabc")
                self.secrets.update({secret, quote(secret, safe=""), quote(secret)})

    def _clean(self, value: str) -> str:
        for secret in self.secrets:
            value = value.replace(secret, "<redacted>")
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging system's business
            return True
        # Frozen as text now: a library may change a logged object afterwards (PTB puts the
        # token into a File's path right after logging the getFile result).
        record.msg, record.args = self._clean(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        if record.stack_info:
            record.stack_info = self._clean(record.stack_info)
        return True


REDACT = RedactSecrets()


def install_redaction(*secrets: str) -> None:
    REDACT.add(*secrets)
    for name in RedactSecrets.LOGGERS:
        logger = logging.getLogger(name)
        if REDACT not in logger.filters:
            logger.addFilter(REDACT)
