"""Named read queries for the consoles and the web widget.

Route modules ask for what a person is shown (the queue, a search, the statistics, a
visitor's own history) by name; the SQL lives here, beside the store, where a schema change
finds all of it and tests/test_queries.py checks it against a real database. Nothing here
writes: every change goes through the conversation core, which audits it.

The functions take a `Store` and run on the database thread (`ConversationManager.db`).
`ChannelReads` offers the visitor-facing ones to a channel, which holds no store.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .context import attachment_ids
from .store import CLAIMED, WAITING, Store, StoredAttachment

if TYPE_CHECKING:
    from .conversation import ConversationManager

QUEUE_LIMIT = 200
SEARCH_LIMIT = 50
_FOUND = "m.id, m.conversation_id, m.role, m.text, m.created_at, c.channel, c.user_name"  # a search hit's columns
COMMENTS_LIMIT = 10
# Agents' notes and unsent drafts never reach the user; neither does a bot reply withheld
# because a person took over first (`delivered = -1`).
HIDDEN_ROLES = ("note", "draft")


# The agent console -----------------------------------------------------------------------
def queue(store: Store, channel: str | None = None, reason: str | None = None,
          limit: int = QUEUE_LIMIT) -> list[dict]:
    """Conversations a person has or should take, with the hand-over that put each there.

    Waiting ones come first, then claimed ones; within each, the longest-waiting first (by
    the time of the open hand-over, else the conversation's last change), so the queue reads
    as a to-do list. `channel` and `reason` narrow it the way the console's filters do.
    """
    where = ["c.status in (?, ?)"]
    params: list[Any] = [WAITING, CLAIMED]
    if channel:
        where.append("c.channel = ?")
        params.append(channel)
    if reason:
        where.append("e.reason = ?")
        params.append(reason)
    return store.select(
        f"""select c.id, c.channel, c.user_name, c.user_id, c.status, c.assigned_agent, c.episode, c.updated_at,
                  e.reason, e.detail, e.confidence, e.created_at as escalated_at
           from conversations c
           left join escalations e on e.id = (select id from escalations where conversation_id = c.id
                                               and status in ('open', 'claimed') order by id desc limit 1)
           where {' and '.join(where)}
           order by case c.status when 'waiting' then 0 else 1 end, coalesce(e.created_at, c.updated_at)
           limit ?""",
        [*params, limit],
    )


def episode_user_messages(store: Store, conversation_id: int, episode: int) -> list[dict]:
    """What the user wrote in the current episode, oldest first: the queue's preview (the
    newest text) and thumbnail (the first screenshot) come from these, not from older episodes."""
    return store.select(
        "select text, attachment_ids from messages where conversation_id = ? and episode = ? and role = 'user' "
        "order by id", [conversation_id, episode],
    )


def search_messages(store: Store, query: str, limit: int = SEARCH_LIMIT) -> list[dict]:
    """Messages of every conversation whose text holds `query` literally, and user messages
    whose screenshots' read text holds it (`screenshot`: the position of the first such
    screenshot in the message, `ocr_text`: its text; both None for a hit in the message's own
    text, which wins when both hold it), each message once, newest first.

    Three characters or more use the trigram full-text indexes as one quoted phrase (so the
    query's own quotes and operators are only text); shorter ones, such as a two-character
    Chinese word, fall back to LIKE with its wildcards escaped.
    """
    query = query.strip()
    if len(query) >= 3:
        term = '"' + query.replace('"', '""') + '"'
        text_hits = store.select(
            f"""select {_FOUND}, null as ocr_text, null as screenshot
               from messages_fts f join messages m on m.id = f.rowid join conversations c on c.id = m.conversation_id
               where messages_fts match ? order by m.id desc limit ?""",
            [term, limit],
        )
        screenshot_match = "a.id in (select rowid from attachments_fts where attachments_fts match ?)"
    else:
        term = "%" + re.sub(r"([%_\\])", r"\\\1", query) + "%"
        text_hits = store.select(
            f"""select {_FOUND}, null as ocr_text, null as screenshot
               from messages m join conversations c on c.id = m.conversation_id
               where m.text like ? escape '\\' order by m.id desc limit ?""",
            [term, limit],
        )
        screenshot_match = "a.ocr_text like ? escape '\\'"
    # Each message once, by its first matching screenshot (SQLite takes bare columns from min()'s row).
    screenshot_hits = store.select(
        f"""select {_FOUND}, a.ocr_text, min(j.key) as screenshot
           from messages m join json_each(m.attachment_ids) j join attachments a on a.id = j.value
                join conversations c on c.id = m.conversation_id
           where m.role = 'user' and {screenshot_match} group by m.id order by m.id desc limit ?""",
        [term, limit],
    )
    found = {row["id"]: row for row in screenshot_hits} | {row["id"]: row for row in text_hits}
    return [found[i] for i in sorted(found, reverse=True)[:limit]]


def attachment_path(store: Store, sha256: str) -> Path | None:
    """Where a stored screenshot's file is, by its hash (agents may see every screenshot)."""
    rows = store.select("select path from attachments where sha256 = ?", [sha256])
    return store.attachments_dir / rows[0]["path"] if rows else None


# The operator console --------------------------------------------------------------------
def configured_channels(store: Store) -> list[str]:
    """Channels an operator gave a template to, including ones not running on this server."""
    return [row["channel"] for row in store.select("select channel from channel_templates order by channel")]


def stored_template_names(store: Store) -> list[str]:
    """Templates with a version in the database, shipped or written in the console."""
    return [row["name"] for row in store.select("select distinct name from template_versions order by name")]


def template_version_body(store: Store, name: str, version: int) -> str | None:
    """The YAML of one version, published or not (what "restore" publishes again)."""
    rows = store.select("select body from template_versions where name = ? and version = ?", [name, version])
    return rows[0]["body"] if rows else None


def turn_latencies(store: Store, since: str) -> list[float]:
    """How long each bot turn took (ms) since `since`, smallest first, for percentiles."""
    return [row["latency_ms"] for row in store.select(
        "select latency_ms from messages where created_at >= ? and latency_ms is not null order by latency_ms",
        [since])]


def turn_confidences(store: Store, since: str) -> list[float]:
    """The model's confidence in each answer or hand-over since `since` (notices carry none)."""
    return [row["confidence"] for row in store.select(
        "select confidence from messages where created_at >= ? and confidence is not null "
        "and kind in ('answer', 'handover') order by id", [since])]


def feedback_counts(store: Store, since: str) -> dict[str, int]:
    """The users' verdicts after a resolve since `since`: {"helpful": n, "not_helpful": n}."""
    return store.select(
        "select coalesce(sum(helpful = 1), 0) as helpful, coalesce(sum(helpful = 0), 0) as not_helpful "
        "from feedback where created_at >= ?", [since])[0]


def feedback_comments(store: Store, since: str, limit: int = COMMENTS_LIMIT) -> list[dict]:
    """The newest verdicts that came with a comment (blank ones are left out)."""
    return store.select(
        "select conversation_id, episode, helpful, comment, created_at from feedback "
        "where created_at >= ? and coalesce(comment, '') != '' order by created_at desc, id desc limit ?",
        [since, limit])


# Console sessions ------------------------------------------------------------------------
def console_session(store: Store, session_digest: str) -> dict | None:
    """A console session with what decides whether its page may keep streaming: expiry,
    last activity, and its account's role and disabled flag (read without touching the
    session, so an open page alone does not keep it alive)."""
    rows = store.select(
        "select s.expires_at, s.last_seen_at, u.disabled, u.role from sessions s join users u on u.id = s.user_id "
        "where s.id = ?", [session_digest])
    return rows[0] if rows else None


# What a user may read of their own conversation -----------------------------------------
def visible_conversation(store: Store, channel: str, key: str) -> dict | None:
    """The user's conversation on `channel`, with what they may see of its owner (the
    agent's display name, never the login) and whether a rating is asked of them."""
    conversation = store.conversation_by_key(channel, key)
    if conversation is None:
        return None
    agent = conversation["assigned_agent"]
    return {
        **conversation,
        "agent_name": store.display_name(agent) if agent else None,
        "feedback_requested": conversation["status"] == "resolved"
        and not store.feedback_given(conversation["id"], conversation["episode"]),
    }


def visible_history(store: Store, channel: str, key: str) -> tuple[dict | None, list[dict],
                                                                   dict[int, StoredAttachment]]:
    """The user's conversation, its messages the user may see (oldest first) and their
    screenshots, read together."""
    conversation = visible_conversation(store, channel, key)
    if conversation is None:
        return None, [], {}
    rows = [row for row in store.messages(conversation["id"])
            if row["role"] not in HIDDEN_ROLES and row["delivered"] != -1]
    return conversation, rows, store.attachments({i for row in rows for i in attachment_ids(row)})


def message_with_attachments(store: Store, message_id: int) -> tuple[dict | None, dict[int, StoredAttachment]]:
    """One stored message and its screenshots (a user's own message, shown back to them)."""
    row = store.message(message_id)
    return row, store.attachments(set(attachment_ids(row))) if row else {}


def visible_attachment(store: Store, channel: str, key: str, sha256: str) -> StoredAttachment | None:
    """A screenshot by its hash, only if it belongs to this user's own conversation: a hash
    seen elsewhere opens nothing."""
    conversation = store.conversation_by_key(channel, key)
    if conversation is None:
        return None
    ids = {i for row in store.messages(conversation["id"]) for i in attachment_ids(row)}
    return next((a for a in store.attachments(ids).values() if a.sha256 == sha256), None)


class ChannelReads:
    """The user-facing reads for one channel, run on the conversation core's database
    thread, so a channel reads its users' conversations without holding the store."""

    def __init__(self, manager: ConversationManager, channel: str) -> None:
        self._store, self._db, self.channel = manager.store, manager.db, channel

    async def conversation(self, key: str) -> dict | None:
        return await self._db(visible_conversation, self._store, self.channel, key)

    async def history(self, key: str) -> tuple[dict | None, list[dict], dict[int, StoredAttachment]]:
        return await self._db(visible_history, self._store, self.channel, key)

    async def message(self, message_id: int) -> tuple[dict | None, dict[int, StoredAttachment]]:
        return await self._db(message_with_attachments, self._store, message_id)

    async def attachment(self, key: str, sha256: str) -> StoredAttachment | None:
        return await self._db(visible_attachment, self._store, self.channel, key, sha256)
