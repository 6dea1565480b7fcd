"""Text to and from Slack: mrkdwn escaping, splitting long replies, reading user messages.

Everything the Slack channel posts goes through `render` (or `escape`), so neither a user
nor the model can make the bot write `<!channel>`, `<@U123>` or a disguised link: Slack
only treats `<...>` as a control sequence, and `&`, `<`, `>` are the three characters it
asks apps to escape.
"""

from __future__ import annotations

import re

from bot.text import clean_user_text

# A section block's text is capped at 3,000 characters and Slack advises keeping a message's
# text under 4,000; one limit below both keeps every chunk whole wherever it is shown.
MESSAGE_LIMIT = 3000

_FENCE = "```"
_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
_BOLD = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_ENTITY_TAIL = re.compile(r"&[a-z]{0,4}$")


def escape(text: str) -> str:
    """Slack's three control characters, escaped as its docs ask."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_mrkdwn(text: str) -> str:
    """Markdown the model likes (`**bold**`, `# headings`) as Slack mrkdwn; code blocks untouched."""
    parts = text.split(_FENCE)
    for i in range(0, len(parts), 2):  # even parts are outside code fences
        part = _HEADING.sub(lambda m: f"*{m.group(1).strip('*')}*", parts[i])
        parts[i] = _BOLD.sub(r"*\1*", part)
    return _FENCE.join(parts)


def render(text: str) -> str:
    """Model or user text, safe to post as mrkdwn."""
    return escape(to_mrkdwn(text))


def _cut(text: str, limit: int) -> int:
    """Where to end the first chunk: a paragraph, line or word boundary, never inside an entity."""
    window = text[:limit]
    for separator in ("\n\n", "\n", " "):
        at = window.rfind(separator)
        if at >= limit // 2:
            return at + len(separator)
    tail = _ENTITY_TAIL.search(window)  # "&am" + "p;" would show as garbage
    return tail.start() if tail and tail.start() > 0 else limit


def split_message(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Already-rendered text in chunks of at most `limit` characters; code fences stay balanced."""
    limit = max(limit, 32)
    chunks: list[str] = []
    rest = text
    while len(rest) > limit:
        room = limit - len(_FENCE) - 1  # room to close a code block cut in two
        end = _cut(rest, room)
        chunk, rest = rest[:end].rstrip(), rest[end:].lstrip("\n")
        if chunk.count(_FENCE) % 2:
            chunk += "\n" + _FENCE
            rest = _FENCE + "\n" + rest
        if chunk.strip():
            chunks.append(chunk)
    if rest.strip() or not chunks:
        chunks.append(rest)
    return chunks


# Reading what users write ----------------------------------------------------------------------
_ENTITY = re.compile(r"<([^<>]*)>")


def _plain_entity(match: re.Match) -> str:
    inner = match.group(1)
    target, _, label = inner.partition("|")
    if target.startswith("@"):
        return "@" + (label or target[1:])
    if target.startswith("#"):
        return "#" + (label or target[1:])
    if target.startswith("!"):
        special = target[1:].split("^")[0]
        return label or ("@" + special if special in ("here", "channel", "everyone") else "")
    if label and label != target:
        return f"{label} ({target})"
    return target


def from_slack(text: str, bot_user_id: str | None = None) -> str:
    """A user's Slack message as plain text: leading bot mention stripped, entities unwrapped."""
    text = text or ""
    if bot_user_id:
        text = re.sub(rf"^\s*<@{re.escape(bot_user_id)}(?:\|[^>]*)?>[\s,:]*", "", text)
    text = _ENTITY.sub(_plain_entity, text)
    return clean_user_text(text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")).strip()
