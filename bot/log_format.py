"""Log lines that say what happened, never lines a user wrote to look like ours.

Names, file names and other text chosen by users reach log messages (a Slack file's name, a
Telegram document's name, a name typed at the sign-in page). A newline in one would start a
forged line ("2026-12-07 INFO admin signed in"), an ANSI escape sequence could rewrite the
operator's terminal, a carriage return or a direction override could hide what the line says.
So every C0 and C1 control character, DEL, the Unicode line and paragraph separators and the
direction controls are written as visible escapes (\\n, \\r, \\t, \\x1b, \\u2028...) in the
formatted message. A traceback after the message keeps its own lines.

Snapdesk's own handler gets `EscapingFormatter`; uvicorn formats its lines with its own
formatters (colours, the access-log layout), so its loggers get `EscapeArguments`, which
escapes the message and its arguments before that formatter sees them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def _escape(match: re.Match[str]) -> str:
    character = match.group(0)
    code = ord(character)
    return _NAMED.get(character) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape_controls(text: str) -> str:
    """`text` on one line, every control character visible as an escape."""
    return _UNSAFE.sub(_escape, text)


class EscapingFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return escape_controls(super().formatMessage(record))


class _Shown:
    """An argument whose text (str or repr) is escaped when the message is formatted."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return escape_controls(str(self.value))

    def __repr__(self) -> str:
        return escape_controls(repr(self.value))

    def __format__(self, spec: str) -> str:
        return escape_controls(format(self.value, spec))


def _safe(value: Any) -> Any:
    if isinstance(value, str):
        return escape_controls(value)  # still a str: filters that look at str arguments keep working
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _Shown(value)


class EscapeArguments(logging.Filter):
    """For loggers formatted by someone else's formatter: escapes the record's message and
    arguments in place, keeping their shape (uvicorn's access formatter unpacks the arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = escape_controls(record.msg) if isinstance(record.msg, str) else _safe(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_safe(value) for value in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: _safe(value) for key, value in record.args.items()}
        return True


ESCAPE_ARGUMENTS = EscapeArguments("snapdesk-escape-controls")


def configure_logging(level: int, fmt: str) -> None:
    """Snapdesk's log: one stderr handler whose lines are escaped, and uvicorn's loggers escaped
    too (their filters outlive the handlers uvicorn installs when it starts)."""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if ESCAPE_ARGUMENTS not in logger.filters:
            logger.addFilter(ESCAPE_ARGUMENTS)
