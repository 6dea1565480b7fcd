"""Everything Snapdesk keeps: one SQLite file (through sqlite-utils) plus image files.

A support tool must never lose a message: the database runs in WAL mode with
`synchronous=FULL` and a busy timeout, an inbound message is written before anyone
acknowledges it, and the schema only changes through numbered migrations applied at
start-up. Attachments are the re-encoded output of image intake, stored under their
sha256, never the uploaded bytes and never under a name a user chose.

The Store is synchronous; the conversation core calls it from one database thread.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import sqlite_utils

from .messages import utcnow

log = logging.getLogger(__name__)

DB_NAME = "snapdesk.db"
# How long a write waits for another connection's write lock (an operator's `snapdesk purge`
# or `user add`, a backup tool) before it gives up with StoreBusy. It is SQLite's busy
# timeout for every statement, and the bound of the database thread's retries.
LOCK_WAIT_S = 10.0
SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_CORRUPT, SQLITE_NOTADB = 5, 6, 8, 11, 26
_DATA_DIR_HINT = "pass --data (or set SNAPDESK_DATA_DIR) to a directory Snapdesk may create and write to"

# Conversation status: who owns the thread.
BOT, WAITING, CLAIMED, RESOLVED = "bot", "waiting", "claimed", "resolved"
HUMAN_OWNED = (WAITING, CLAIMED)
# User message status: pending until its answer or hand-over is stored.
PENDING, ANSWERED, HANDED_OVER, FOR_AGENT = "pending", "answered", "handed_over", "for_agent"


def iso(moment: datetime | None = None) -> str:
    return (moment or utcnow()).astimezone(timezone.utc).isoformat(timespec="microseconds")


class StoreError(Exception):
    """The data directory or database cannot be used; the message says why."""


class StoreBusy(StoreError):
    """Another connection held the database's write lock for longer than the wait bound.

    Nothing of the failed work is stored (its transaction was rolled back); trying again
    once the other program has finished is safe.
    """

    def __init__(self, path: Path | str, waited_s: float) -> None:
        self.path, self.waited_s = Path(path), waited_s
        super().__init__(
            f"The database {path} stayed locked by another program for {waited_s:g} s "
            "(a running `snapdesk purge`, a backup, or a second server on the same data directory): "
            "try again once it has finished."
        )


def is_busy(exc: BaseException) -> bool:
    """True for SQLite's "database is locked / busy" errors (and StoreBusy): worth retrying."""
    if isinstance(exc, StoreBusy):
        return True
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)
    text = str(exc).lower()
    return "locked" in text or "busy" in text


PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def check_data_dir(data_dir: str | Path) -> None:
    """Create the data directory (and attachments/) if needed and prove they are writable.

    Raises StoreError with one sentence naming the path and what to do; called before a
    server binds its port or a command touches the database.
    """
    data_dir = Path(data_dir)

    def unwritable(reason: str) -> StoreError:
        return StoreError(
            f"The data directory {data_dir} is not writable ({reason}): give the user running Snapdesk "
            f"({_user_name()}) write access to it, or {_DATA_DIR_HINT}."
        )

    try:
        if data_dir.exists() and not data_dir.is_dir():
            raise StoreError(
                f"The data directory {data_dir} is not writable (it is a file, not a directory): {_DATA_DIR_HINT}."
            )
        for ancestor in data_dir.absolute().parents:
            if ancestor.exists():
                if not ancestor.is_dir():
                    raise StoreError(
                        f"The data directory {data_dir} is not writable ({ancestor} is a file, not a directory): "
                        f"{_DATA_DIR_HINT}."
                    )
                break
    except OSError as exc:  # e.g. a parent this user may not even look into
        raise unwritable(exc.strerror or str(exc)) from None
    for directory in (data_dir, data_dir / "attachments"):
        try:
            directory.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
            _keep_private(directory, PRIVATE_DIR)
            probe = directory / f".write-test.{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            where = "" if directory == data_dir else f"{directory}: "
            raise unwritable(f"{where}{exc.strerror or exc}") from None
    database = data_dir / DB_NAME
    if database.is_dir():
        raise StoreError(
            f"The database {database} is a directory, not a database file: move it aside, or {_DATA_DIR_HINT}."
        )
    for path in (database, database.with_name(DB_NAME + "-wal"), database.with_name(DB_NAME + "-shm")):
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(
                f"The database file {path} is not readable and writable by the user running Snapdesk "
                f"({_user_name()}): give that user access to it, or run Snapdesk as the file's owner."
            )
        if path.exists():
            _keep_private(path, PRIVATE_FILE)
    try:  # SQLite gives its -wal and -shm files the database file's mode: create it owner-only
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))
    except OSError as exc:
        raise unwritable(exc.strerror or str(exc)) from None


def _keep_private(path: Path, mode: int) -> None:
    """Conversations, screenshots and password hashes are nobody else's business: take group
    and world access away from what Snapdesk owns (a directory the user shares on purpose
    but does not own is left as it is)."""
    try:
        info = path.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            os.chmod(path, info.st_mode & 0o7700 | mode)
    except OSError:
        pass


def _user_name() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError, AttributeError):
        return f"uid {os.geteuid()}" if hasattr(os, "geteuid") else "this user"


def _database_error(path: Path, exc: sqlite3.Error, lock_wait_s: float) -> StoreError:
    if is_busy(exc):
        return StoreBusy(path, lock_wait_s)
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code in (SQLITE_NOTADB, SQLITE_CORRUPT):
        return StoreError(
            f"The database {path} is not a usable SQLite database ({exc}): move it aside to start with an empty "
            "one, or restore it from a backup."
        )
    if code == SQLITE_READONLY:
        return StoreError(
            f"The database {path} is read-only for the user running Snapdesk ({exc}): give that user write access "
            "to it and to its directory."
        )
    return StoreError(f"The database {path} cannot be opened ({exc}): check the file and its directory, or {_DATA_DIR_HINT}.")


def _m1_initial(db: sqlite_utils.Database) -> None:
    db["conversations"].create(
        {
            "id": int, "channel": str, "external_key": str, "user_id": str, "user_name": str,
            "status": str, "assigned_agent": str, "language": str, "episode": int,
            "template_name": str, "created_at": str, "updated_at": str, "last_message_at": str,
        },
        pk="id",
        not_null={"channel", "external_key", "status"},
        defaults={"status": BOT, "episode": 1, "language": "en"},
    )
    db["conversations"].create_index(["channel", "external_key"], unique=True)
    db["conversations"].create_index(["status", "last_message_at"])
    db["attachments"].create(
        {
            "id": int, "sha256": str, "mime": str, "width": int, "height": int, "bytes": int,
            "path": str, "description": str, "created_at": str,
        },
        pk="id",
    )
    db["attachments"].create_index(["sha256"], unique=True)
    db["messages"].create(
        {
            "id": int, "conversation_id": int, "episode": int, "role": str, "text": str,
            "attachment_ids": str, "refused_images": str, "status": str, "channel": str,
            "platform_message_id": str, "reply_to": int, "author": str,
            "confidence": float, "min_token_prob": float, "template_name": str, "template_version": int,
            "latency_ms": float, "first_token_ms": float, "prompt_tokens": int, "completion_tokens": int,
            "delivered": int, "created_at": str,
        },
        pk="id",
        foreign_keys=[("conversation_id", "conversations", "id")],
        not_null={"conversation_id", "role"},
        defaults={"text": "", "attachment_ids": "[]", "delivered": 0},
    )
    db["messages"].create_index(["channel", "platform_message_id"], unique=True)
    db["messages"].create_index(["conversation_id", "id"])
    db["messages"].create_index(["status"])
    db["escalations"].create(
        {
            "id": int, "conversation_id": int, "message_id": int, "reason": str, "detail": str,
            "confidence": float, "draft_answer": str, "status": str, "created_at": str,
            "claimed_by": str, "claimed_at": str, "resolved_by": str, "resolved_at": str,
        },
        pk="id",
        foreign_keys=[("conversation_id", "conversations", "id")],
        defaults={"status": "open"},
    )
    db["escalations"].create_index(["conversation_id"])
    db["template_versions"].create(
        {
            "id": int, "name": str, "version": int, "body": str, "author": str,
            "created_at": str, "published_at": str,
        },
        pk="id",
    )
    db["template_versions"].create_index(["name", "version"], unique=True)
    db["channel_templates"].create({"channel": str, "template_name": str}, pk="channel")
    db["users"].create(
        {"id": int, "name": str, "role": str, "password_hash": str, "disabled": int, "created_at": str},
        pk="id",
        defaults={"disabled": 0},
    )
    db["users"].create_index(["name"], unique=True)
    db["audit_log"].create(
        {"id": int, "at": str, "actor": str, "action": str, "target": str, "detail": str}, pk="id"
    )


def _m2_message_kind(db: sqlite_utils.Database) -> None:
    """What a bot-side message is for the user: answer, handover, notice or agent."""
    db["messages"].add_column("kind", str)


def _m3_platform_events(db: sqlite_utils.Database) -> None:
    """Raw platform events, stored before they are acknowledged and processed afterwards."""
    db["platform_events"].create(
        {"id": int, "channel": str, "event_key": str, "payload": str, "received_at": str, "processed_at": str},
        pk="id",
        not_null={"channel", "event_key", "payload"},
    )
    db["platform_events"].create_index(["channel", "event_key"], unique=True)
    db["platform_events"].create_index(["channel", "processed_at"])


def _m4_console_sessions(db: sqlite_utils.Database) -> None:
    """Login lockout counters and server-side console sessions."""
    db["users"].add_column("failed_logins", int)
    db["users"].add_column("locked_until", str)
    db["sessions"].create(
        {"id": str, "user_id": int, "csrf_token": str, "created_at": str, "last_seen_at": str, "expires_at": str},
        pk="id",
        foreign_keys=[("user_id", "users", "id")],
    )
    db["sessions"].create_index(["user_id"])


def _m5_message_search(db: sqlite_utils.Database) -> None:
    """Full-text search over message text for the agent console (kept current by triggers)."""
    db["messages"].enable_fts(["text"], create_triggers=True, tokenize="trigram")


def _m6_api_keys(db: sqlite_utils.Database) -> None:
    """Keys for the OpenAI-compatible API, stored as sha256 hashes (one live key per name)."""
    db["api_keys"].create(
        {"id": int, "name": str, "key_hash": str, "created_at": str, "last_used_at": str, "revoked_at": str},
        pk="id",
        not_null={"name", "key_hash", "created_at"},
    )
    db["api_keys"].create_index(["key_hash"], unique=True)
    db.execute("create unique index idx_api_keys_live_name on api_keys (name) where revoked_at is null")


# Numbered migrations: append, never edit one that has shipped.
def _m7_undelivered_index(db: sqlite_utils.Database) -> None:
    """Replies not yet delivered are looked up every retry interval: only they are indexed."""
    db.execute("create index if not exists idx_messages_undelivered on messages(id) where delivered = 0")


def _m8_ownership(db: sqlite_utils.Database) -> None:
    """Ownership as a state machine with a transition counter, delivery claims, per-turn
    figures, agents' display names and the users' verdict after a resolve."""
    db["conversations"].add_column("owner_seq", int, not_null_default=0)
    db["messages"].add_column("image_tokens", int)
    db["messages"].add_column("author_name", str)  # what the user sees: an agent's display name
    db["messages"].add_column("status_change", str)  # kind "status": the ownership it announces
    db["messages"].add_column("delivering_by", str)  # the manager sending it right now, if any
    db["messages"].add_column("delivering_at", str)
    db["users"].add_column("display_name", str)
    db["feedback"].create(
        {"id": int, "conversation_id": int, "episode": int, "helpful": int, "comment": str, "created_at": str},
        pk="id",
        foreign_keys=[("conversation_id", "conversations", "id")],
    )
    db["feedback"].create_index(["conversation_id", "episode"], unique=True)


def _m9_password_change(db: sqlite_utils.Database) -> None:
    """An admin's password reset makes the user choose their own at the next sign-in."""
    db["users"].add_column("must_change_password", int, not_null_default=0)


def _m10_screenshot_reading(db: sqlite_utils.Database) -> None:
    """What Snapdesk read in each screenshot (text with personal data masked, evidence, what was
    painted over), searchable; and the private staging list of screenshots not yet redacted."""
    db["attachments"].add_column("reading", str)  # JSON: lines, evidence, redactions, readability
    db["attachments"].add_column("ocr_text", str)
    db["attachments"].add_column("redactions", int, not_null_default=0)
    db["attachments"].add_column("unreadable", int, not_null_default=0)
    db["attachments"].enable_fts(["ocr_text"], create_triggers=True, tokenize="trigram")
    db["staged_images"].create(
        {"id": int, "message_id": int, "position": int, "file": str, "created_at": str},
        pk="id",
        not_null={"message_id", "position", "file"},
        foreign_keys=[("message_id", "messages", "id")],
    )
    db["staged_images"].create_index(["message_id", "position"], unique=True)


def _m11_knowledge(db: sqlite_utils.Database) -> None:
    """Help-centre articles, their passages, and a BM25 index of the passages for answers to cite.
    The index holds the passages' text already cut into words (Chinese segmented, codes whole:
    see bot/knowledge/terms.py), so it has its own content rather than pointing at kb_chunks."""
    db["kb_articles"].create(
        {
            "id": int, "source": str, "origin": str, "title": str, "url": str, "language": str,
            "content_hash": str, "imported_at": str, "updated_at": str,
        },
        pk="id",
        not_null={"source", "origin", "title", "url", "content_hash"},
        defaults={"origin": "", "url": ""},
    )
    db["kb_articles"].create_index(["source"], unique=True)
    db["kb_articles"].create_index(["origin"])
    db["kb_chunks"].create(
        {"id": int, "article_id": int, "position": int, "section": str, "text": str},
        pk="id",
        foreign_keys=[("article_id", "kb_articles", "id")],
        not_null={"article_id", "position", "section", "text"},
    )
    db["kb_chunks"].create_index(["article_id", "position"], unique=True)
    db.execute(
        "create virtual table kb_chunks_fts using fts5("
        "title, section, body, codes, tokenize = 'porter unicode61 remove_diacritics 2')"
    )


def _m12_turn_knowledge(db: sqlite_utils.Database) -> None:
    """What a bot turn was given from the help centre and what its answer cited (JSON)."""
    db["messages"].add_column("knowledge", str)


def _m13_regression(db: sqlite_utils.Database) -> None:
    """Operators' own regression cases (the shipped templates' cases are files in prompts/cases/),
    and the runs of a set against a draft and the live version: kept, so that a run can be
    watched, cancelled and compared after the page that started it is closed. A case's
    screenshots are files in data/cases/ (already redacted), named by their SHA-256, so purging
    old conversations never takes a case's screenshots with it."""
    db["eval_cases"].create(
        {
            "id": int, "template": str, "text": str, "language": str, "channel": str, "expect": str,
            "expect_reason": str, "must_contain": str, "must_not_contain": str, "cite": str, "notes": str,
            "screenshots": str, "source_message_id": int, "created_by": str, "created_at": str,
        },
        pk="id",
        not_null={"template", "text", "expect", "created_at"},
        defaults={"text": "", "language": "", "channel": "widget", "must_contain": "[]", "must_not_contain": "[]",
                  "cite": "[]", "notes": "", "screenshots": "[]", "created_by": ""},
    )
    db["eval_cases"].create_index(["template"])
    db["eval_runs"].create(
        {
            "id": int, "template": str, "draft_yaml": str, "draft_label": str, "live_version": int, "status": str,
            "total": int, "done": int, "started_by": str, "started_at": str, "finished_at": str, "summary": str,
            "error": str,
        },
        pk="id",
        not_null={"template", "status", "started_at"},
        defaults={"total": 0, "done": 0, "started_by": "", "draft_label": ""},
    )
    db["eval_runs"].create_index(["template", "id"])
    db["eval_results"].create(
        {"id": int, "run_id": int, "case_key": str, "arm": str, "result": str},
        pk="id",
        not_null={"run_id", "case_key", "arm", "result"},
        foreign_keys=[("run_id", "eval_runs", "id")],
    )
    db["eval_results"].create_index(["run_id", "case_key", "arm"], unique=True)


def _m14_rollouts(db: sqlite_utils.Database) -> None:
    """A template version answering a share of one channel's new conversations before it goes to
    everyone (bot/rollouts.py), and the side each of those conversations drew. A channel has at
    most one active rollout (a partial unique index: two operators starting one at once cannot
    both win), and a conversation draws once (its id is the key), so it never changes versions."""
    db["template_rollouts"].create(
        {
            "id": int, "template": str, "version": int, "channel": str, "percent": float, "status": str,
            "started_by": str, "started_at": str, "updated_at": str, "ended_by": str, "ended_at": str,
        },
        pk="id",
        not_null={"template", "version", "channel", "percent", "status", "started_at", "updated_at"},
    )
    db.execute("create unique index idx_template_rollouts_active on template_rollouts (channel) "
               "where status = 'active'")
    db["rollout_arms"].create(
        {"conversation_id": int, "rollout_id": int, "arm": str, "assigned_at": str},
        pk="conversation_id",
        not_null={"rollout_id", "arm", "assigned_at"},
        foreign_keys=[("conversation_id", "conversations", "id"), ("rollout_id", "template_rollouts", "id")],
    )
    db["rollout_arms"].create_index(["rollout_id", "arm"])


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _m1_initial, _m2_message_kind, _m3_platform_events, _m4_console_sessions, _m5_message_search,
    _m6_api_keys, _m7_undelivered_index, _m8_ownership, _m9_password_change, _m10_screenshot_reading,
    _m11_knowledge, _m12_turn_knowledge, _m13_regression, _m14_rollouts,
]


@dataclass(frozen=True)
class StoredAttachment:
    id: int
    sha256: str
    path: Path
    width: int
    height: int
    description: str | None = None
    reading: dict | None = None  # what the screenshot reading found (None: not read)


class Store:
    def __init__(self, data_dir: str | Path, lock_wait_s: float | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.attachments_dir = self.data_dir / "attachments"
        self.lock_wait_s = LOCK_WAIT_S if lock_wait_s is None else lock_wait_s
        check_data_dir(self.data_dir)
        self.path = self.data_dir / DB_NAME
        self._lock = threading.RLock()
        conn = None
        try:
            conn = sqlite3.connect(self.path, check_same_thread=False, timeout=self.lock_wait_s)
            self.db = sqlite_utils.Database(conn)
            self._busy_timeout_ms = -1
            self.set_busy_timeout(self.lock_wait_s)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise _database_error(self.path, exc, self.lock_wait_s) from None
        except StoreError:
            if conn is not None:
                conn.close()
            raise

    # Schema ---------------------------------------------------------------------
    def _migrate(self) -> None:
        with self._lock:
            if "schema_migrations" not in self.db.table_names():
                self.db["schema_migrations"].create({"version": int, "applied_at": str}, pk="version")
            applied = {row["version"] for row in self.db["schema_migrations"].rows}
            for number, migration in enumerate(MIGRATIONS, start=1):
                if number in applied:
                    continue
                with self.transaction():
                    migration(self.db)
                    self.db["schema_migrations"].insert({"version": number, "applied_at": iso()})
                log.info("applied database migration %d (%s)", number, migration.__name__)

    @property
    def schema_version(self) -> int:
        return max((row["version"] for row in self.db["schema_migrations"].rows), default=0)

    def transaction(self):
        """A write transaction: `with store.transaction(): ...` commits or rolls back."""
        return _Transaction(self)

    def set_busy_timeout(self, seconds: float) -> None:
        """How long the next statements wait for another connection's lock (SQLite's busy timeout)."""
        milliseconds = int(seconds * 1000)
        if milliseconds != self._busy_timeout_ms:
            self.db.conn.execute(f"PRAGMA busy_timeout={milliseconds}")
            self._busy_timeout_ms = milliseconds

    def close(self) -> None:
        self.db.conn.close()

    # Plain SQL for the per-message paths: table look-ups through sqlite-utils inspect the
    # schema on every call, which would cost more than the writes themselves.
    def _all(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        cursor = self.db.conn.execute(sql, list(params))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def _one(self, sql: str, params: Iterable[Any] = ()) -> dict | None:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    def _insert(self, table: str, record: dict[str, Any]) -> int:
        columns = ", ".join(record)
        marks = ", ".join("?" * len(record))
        with self.transaction():
            return self.db.conn.execute(f"insert into {table} ({columns}) values ({marks})", list(record.values())).lastrowid

    def _update(self, table: str, row_id: int, fields: dict[str, Any]) -> None:
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self.transaction():
            self.db.conn.execute(f"update {table} set {assignments} where id = ?", [*fields.values(), row_id])

    # Conversations --------------------------------------------------------------
    def conversation(self, conversation_id: int) -> dict | None:
        return self._one("select * from conversations where id = ?", [conversation_id])

    def conversation_by_key(self, channel: str, external_key: str) -> dict | None:
        return self._one("select * from conversations where channel = ? and external_key = ?", [channel, external_key])

    def _ensure_conversation(self, channel: str, external_key: str, user_id: str, user_name: str, now: str) -> dict:
        existing = self.conversation_by_key(channel, external_key)
        if existing is not None:
            return existing
        self._insert(
            "conversations",
            {
                "channel": channel, "external_key": external_key, "user_id": user_id, "user_name": user_name,
                "status": BOT, "episode": 1, "language": "en", "created_at": now, "updated_at": now,
                "last_message_at": now,
            },
        )
        return self.conversation_by_key(channel, external_key)  # type: ignore[return-value]

    def update_conversation(self, conversation_id: int, **fields: Any) -> None:
        fields["updated_at"] = iso()
        self._update("conversations", conversation_id, fields)

    # Ownership ------------------------------------------------------------------
    def set_owner(self, conversation_id: int, status: str, agent: str | None, **fields: Any) -> None:
        """One ownership transition: the new owner, and `owner_seq` moves on.

        Callers compare the conversation's status and `owner_seq` with what they expect
        inside the same transaction first; a bot turn that started under an older
        `owner_seq` can then never store an answer over a person's head.
        """
        with self.transaction():
            self.db.conn.execute(
                "update conversations set status = ?, assigned_agent = ?, owner_seq = owner_seq + 1, updated_at = ?"
                + "".join(f", {name} = ?" for name in fields) + " where id = ?",
                [status, agent, iso(), *fields.values(), conversation_id],
            )

    def claimed_by(self, agent: str) -> list[int]:
        rows = self._all("select id from conversations where status = ? and assigned_agent = ?", [CLAIMED, agent])
        return [row["id"] for row in rows]

    def release_claims(self, agent: str) -> list[int]:
        """An agent who can no longer work (a disabled account): their claims go back to the queue."""
        with self.transaction():
            released = self.claimed_by(agent)
            for conversation_id in released:
                self.set_owner(conversation_id, WAITING, None)
                escalation = self.open_escalation(conversation_id)
                if escalation:
                    self.update_escalation(escalation["id"], status="open", claimed_by=None, claimed_at=None)
                self.audit("system", "release_claim", f"conversation:{conversation_id}", agent=agent)
            return released

    def display_name(self, login: str) -> str:
        """What users see of an agent: the display name an admin set, else the login name."""
        row = self._one("select display_name from users where name = ?", [login])
        return (row or {}).get("display_name") or login

    def add_feedback(self, conversation_id: int, episode: int, helpful: bool, comment: str) -> bool:
        """The user's verdict on a resolved episode, once; False when it was already given."""
        with self.transaction():
            if self._one("select id from feedback where conversation_id = ? and episode = ?", [conversation_id, episode]):
                return False
            self._insert("feedback", {"conversation_id": conversation_id, "episode": episode, "helpful": int(helpful),
                                      "comment": comment, "created_at": iso()})
            return True

    def feedback_given(self, conversation_id: int, episode: int) -> bool:
        return self._one("select id from feedback where conversation_id = ? and episode = ?",
                         [conversation_id, episode]) is not None

    # Attachments ----------------------------------------------------------------
    def save_attachment(self, sha256: str, data: bytes, mime: str, width: int, height: int) -> int:
        """Store re-encoded image bytes under their hash (once); return the attachment id."""
        relative = Path(sha256[:2]) / f"{sha256}.png"
        target = self.attachments_dir / relative
        if not target.exists():
            target.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
            temporary = target.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        rows = list(self.db["attachments"].rows_where("sha256 = ?", [sha256]))
        if rows:
            return rows[0]["id"]
        return self.db["attachments"].insert(
            {
                "sha256": sha256, "mime": mime, "width": width, "height": height, "bytes": len(data),
                "path": str(relative), "created_at": iso(),
            }
        ).last_pk

    def attachments(self, attachment_ids: Iterable[int]) -> dict[int, StoredAttachment]:
        ids = list(attachment_ids)
        if not ids:
            return {}
        rows = self._all(f"select * from attachments where id in ({','.join('?' * len(ids))})", ids)
        return {
            row["id"]: StoredAttachment(
                row["id"], row["sha256"], self.attachments_dir / row["path"], row["width"], row["height"],
                row["description"], json.loads(row["reading"]) if row.get("reading") else None,
            )
            for row in rows
        }

    def record_reading(self, attachment_id: int, reading: dict, text: str, redactions: int, unreadable: bool) -> None:
        """What was read in a screenshot; kept from the first reading that read it (the same pixels
        read the same), so a reading that failed is replaced by a later one that did not."""
        self.db.execute(
            "update attachments set reading = ?, ocr_text = ?, redactions = ?, unreadable = ? "
            "where id = ? and (reading is null or json_extract(reading, '$.ocr') = 0)",
            [json.dumps(reading, ensure_ascii=False), text, redactions, int(unreadable), attachment_id],
        )

    # Screenshots waiting for redaction (files in the private staging directory) ----------
    def stage_images(self, message_id: int, files: list[str]) -> None:
        for position, name in enumerate(files):
            self._insert("staged_images", {"message_id": message_id, "position": position, "file": name,
                                           "created_at": iso()})

    def staged_images(self, message_id: int | None = None) -> list[dict]:
        if message_id is None:
            return self._all("select * from staged_images order by message_id, position")
        return self._all("select * from staged_images where message_id = ? order by position", [message_id])

    def finish_staged(self, message_id: int, attachment_ids: list[int], unreadable: int) -> bool:
        """Swap a message's staged screenshots for their redacted attachments, once: False when
        another worker already did (compare-and-set on the staging rows)."""
        with self.transaction():
            if not self.db.execute("delete from staged_images where message_id = ?", [message_id]).rowcount:
                return False
            row = self._one("select attachment_ids, refused_images from messages where id = ?", [message_id])
            ids = json.loads(row["attachment_ids"] or "[]") + attachment_ids
            refused = json.loads(row["refused_images"] or "[]") + ["unreadable"] * unreadable
            self.db.execute("update messages set attachment_ids = ?, refused_images = ? where id = ?",
                            [json.dumps(ids), json.dumps(refused), message_id])
            return True

    def describe_attachments(self, attachment_ids: Iterable[int], description: str) -> None:
        """Record a one-line description once per screenshot (the first one wins)."""
        for attachment_id in attachment_ids:
            self.db.execute(
                "update attachments set description = ? where id = ? and description is null",
                [description, attachment_id],
            )

    # Messages -------------------------------------------------------------------
    def find_inbound(self, channel: str, platform_message_id: str) -> dict | None:
        return self._one(
            "select * from messages where channel = ? and platform_message_id = ?", [channel, platform_message_id]
        )

    def add_inbound(
        self,
        *,
        channel: str,
        external_key: str,
        platform_message_id: str,
        user_id: str,
        user_name: str,
        text: str,
        attachment_ids: list[int],
        refused_images: list[str],
        received_at: datetime,
        language: str,
    ) -> tuple[dict, bool]:
        """Store a user message idempotently. Returns (message row, created)."""
        with self.transaction():
            existing = self.find_inbound(channel, platform_message_id)
            if existing is not None:
                return existing, False
            now = iso(received_at)
            conversation = self._ensure_conversation(channel, external_key, user_id, user_name, now)
            updates: dict[str, Any] = {"last_message_at": now, "language": language}
            if user_name and user_name != conversation.get("user_name"):
                updates["user_name"] = user_name
            status = conversation["status"]
            episode = conversation["episode"]
            if status == RESOLVED:  # a new message after resolution starts a fresh bot episode
                episode += 1
                status = BOT
                updates.update(episode=episode)
                self.set_owner(conversation["id"], BOT, None)
            self.update_conversation(conversation["id"], **updates)
            message_id = self._insert(
                "messages",
                {
                    "conversation_id": conversation["id"], "episode": episode, "role": "user", "text": text,
                    "attachment_ids": json.dumps(attachment_ids), "refused_images": json.dumps(refused_images),
                    "status": FOR_AGENT if status in HUMAN_OWNED else PENDING, "channel": channel,
                    "platform_message_id": platform_message_id, "delivered": 1, "created_at": now,
                },
            )
            return self.message(message_id), True  # type: ignore[return-value]

    def message(self, message_id: int) -> dict | None:
        return self._one("select * from messages where id = ?", [message_id])

    def add_message(self, conversation_id: int, role: str, text: str, **fields: Any) -> int:
        conversation = self.conversation(conversation_id)
        record = {
            "conversation_id": conversation_id, "episode": conversation["episode"] if conversation else 1,
            "role": role, "text": text, "created_at": iso(), "delivered": 0, **fields,
        }
        if "attachment_ids" in record and not isinstance(record["attachment_ids"], str):
            record["attachment_ids"] = json.dumps(record["attachment_ids"])
        return self._insert("messages", record)

    def set_message_status(self, message_id: int, status: str) -> None:
        self._update("messages", message_id, {"status": status})

    def mark_delivered(self, message_id: int) -> None:
        self._update("messages", message_id, {"delivered": 1})

    # Deliveries: a reply is sent by one sender at a time, and marked delivered together
    # with the end of that sender's claim, so a redelivery round never sends it again.
    def claim_delivery(self, message_id: int, sender: str, stale_after_s: float) -> bool:
        """Take the right to send a stored reply; False when it is delivered or someone else is sending it."""
        stale = iso(utcnow() - timedelta(seconds=stale_after_s))
        with self.transaction():
            cursor = self.db.conn.execute(
                "update messages set delivering_by = ?, delivering_at = ? where id = ? and delivered = 0 "
                "and (delivering_by is null or delivering_at < ?)",
                [sender, iso(), message_id, stale],
            )
            return cursor.rowcount == 1

    def finish_delivery(self, message_id: int, sender: str) -> None:
        with self.transaction():
            self.db.conn.execute(
                "update messages set delivered = 1, delivering_by = null where id = ? and delivering_by = ?",
                [message_id, sender],
            )

    def release_delivery(self, message_id: int, sender: str) -> None:
        with self.transaction():
            self.db.conn.execute(
                "update messages set delivering_by = null where id = ? and delivering_by = ? and delivered = 0",
                [message_id, sender],
            )

    def withhold_bot_replies(self, conversation_id: int) -> int:
        """Mark the bot's undelivered answers and hand-over notices as never to be sent
        (`delivered = -1`): a person has the conversation now."""
        with self.transaction():
            return self.db.conn.execute(
                "update messages set delivered = -1, delivering_by = null where conversation_id = ? and delivered = 0 "
                "and kind in ('answer', 'handover')", [conversation_id],
            ).rowcount

    def release_foreign_deliveries(self, sender: str) -> int:
        """At start: sends claimed by an earlier process (cut off by a crash) may be tried again."""
        with self.transaction():
            return self.db.conn.execute(
                "update messages set delivering_by = null where delivered = 0 and delivering_by is not null "
                "and delivering_by != ?", [sender],
            ).rowcount

    def undelivered(self, conversation_id: int | None = None, before_id: int | None = None) -> list[dict]:
        """Replies stored but not yet confirmed delivered (e.g. a crash in between), oldest
        first: all of them, or one conversation's older than `before_id`."""
        where, params = "delivered = 0 and role in ('bot', 'agent', 'system')", []
        if conversation_id is not None:
            where += " and conversation_id = ? and id < ?"
            params += [conversation_id, before_id if before_id is not None else 2**62]
        return self._all(f"select * from messages where {where} order by id", params)

    def pending_inbound(self) -> list[dict]:
        return self._all("select * from messages where role = 'user' and status = ? order by id", [PENDING])

    def pending_up_to(self, conversation_id: int, message_id: int) -> list[dict]:
        """A conversation's unanswered user messages up to `message_id`, oldest first."""
        return self._all(
            "select * from messages where conversation_id = ? and role = 'user' and status = ? and id <= ? order by id",
            [conversation_id, PENDING, message_id],
        )

    def has_reply(self, message_id: int, kind: str) -> bool:
        return self._one("select id from messages where reply_to = ? and kind = ? limit 1", [message_id, kind]) is not None

    def last_user_message_id(self, conversation_id: int) -> int:
        """The newest user message of a conversation (0 when there is none)."""
        row = self._one("select coalesce(max(id), 0) as id from messages where conversation_id = ? and role = 'user'",
                        [conversation_id])
        return row["id"]

    def reopen_waiting_questions(self, conversation_id: int) -> list[int]:
        """User messages a person never answered (sent after the last agent reply): pending
        again, for the bot. Returns their ids, oldest first."""
        last_agent = self._one(
            "select coalesce(max(id), 0) as id from messages where conversation_id = ? and role = 'agent'",
            [conversation_id],
        )["id"]
        rows = self._all(
            "select id from messages where conversation_id = ? and role = 'user' and status = ? and id > ? order by id",
            [conversation_id, FOR_AGENT, last_agent],
        )
        with self.transaction():
            for row in rows:
                self.set_message_status(row["id"], PENDING)
        return [row["id"] for row in rows]

    def history(self, conversation_id: int, episode: int, before_id: int | None = None) -> list[dict]:
        """Messages of one bot episode, oldest first (notes and unsent drafts excluded)."""
        where = "conversation_id = ? and episode = ? and role not in ('note', 'draft')"
        params: list[Any] = [conversation_id, episode]
        if before_id is not None:
            where += " and id < ?"
            params.append(before_id)
        return self._all(f"select * from messages where {where} order by id", params)

    def messages(self, conversation_id: int) -> list[dict]:
        return list(self.db["messages"].rows_where("conversation_id = ?", [conversation_id], order_by="id"))

    # Platform events (inbox) -------------------------------------------------------
    def add_platform_event(self, channel: str, event_key: str, payload: dict) -> bool:
        """Store a raw platform event once; False when it was already stored (a retry)."""
        with self.transaction():
            if self._one("select id from platform_events where channel = ? and event_key = ?", [channel, event_key]):
                return False
            self._insert(
                "platform_events",
                {"channel": channel, "event_key": event_key, "payload": json.dumps(payload), "received_at": iso()},
            )
            return True

    def finish_platform_event(self, channel: str, event_key: str) -> None:
        with self.transaction():
            self.db.conn.execute(
                "update platform_events set processed_at = ? where channel = ? and event_key = ?",
                [iso(), channel, event_key],
            )

    def pending_platform_events(self, channel: str) -> list[dict]:
        """Stored events not yet turned into messages (e.g. cut off by a crash), oldest first."""
        rows = self._all(
            "select * from platform_events where channel = ? and processed_at is null order by id", [channel]
        )
        for row in rows:
            row["payload"] = json.loads(row["payload"])
        return rows

    # Escalations ----------------------------------------------------------------
    def add_escalation(self, conversation_id: int, message_id: int, reason: str, detail: str,
                       confidence: float | None, draft_answer: str) -> int:
        return self._insert(
            "escalations",
            {
                "conversation_id": conversation_id, "message_id": message_id, "reason": reason, "detail": detail,
                "confidence": confidence, "draft_answer": draft_answer, "status": "open", "created_at": iso(),
            },
        )

    def open_escalation(self, conversation_id: int) -> dict | None:
        rows = list(
            self.db["escalations"].rows_where(
                "conversation_id = ? and status in ('open', 'claimed')", [conversation_id], order_by="id desc", limit=1
            )
        )
        return rows[0] if rows else None

    def escalations(self, conversation_id: int) -> list[dict]:
        return list(self.db["escalations"].rows_where("conversation_id = ?", [conversation_id], order_by="id"))

    def update_escalation(self, escalation_id: int, **fields: Any) -> None:
        self._update("escalations", escalation_id, fields)

    # Templates ------------------------------------------------------------------
    def template_versions(self, name: str) -> list[dict]:
        return list(self.db["template_versions"].rows_where("name = ?", [name], order_by="version"))

    def add_template_version(self, name: str, body: str, author: str = "", publish: bool = False) -> int:
        with self.transaction():
            current = self.db.execute(
                "select coalesce(max(version), 0) from template_versions where name = ?", [name]
            ).fetchone()[0]
            version = current + 1
            self.db["template_versions"].insert(
                {
                    "name": name, "version": version, "body": body, "author": author, "created_at": iso(),
                    "published_at": iso() if publish else None,
                }
            )
            return version

    def publish_template_version(self, name: str, version: int) -> None:
        with self.transaction():
            self.db.execute(
                "update template_versions set published_at = ? where name = ? and version = ?", [iso(), name, version]
            )

    def published_template_versions(self, name: str) -> list[dict]:
        """Published versions, most recently published first (the first is the live one)."""
        return self._all(
            "select * from template_versions where name = ? and published_at is not null "
            "order by published_at desc, version desc",
            [name],
        )

    def channel_template(self, channel: str) -> str | None:
        row = self._one("select template_name from channel_templates where channel = ?", [channel])
        return row["template_name"] if row else None

    def set_channel_template(self, channel: str, template_name: str) -> None:
        with self.transaction():
            self.db["channel_templates"].upsert({"channel": channel, "template_name": template_name}, pk="channel")

    # Audit ----------------------------------------------------------------------
    def audit(self, actor: str, action: str, target: str = "", **detail: Any) -> None:
        self._insert(
            "audit_log", {"at": iso(), "actor": actor, "action": action, "target": target, "detail": json.dumps(detail)}
        )

    # Retention ------------------------------------------------------------------
    def purge(self, older_than_days: float, now: datetime | None = None) -> dict[str, int]:
        """Delete conversations whose last message is older than the cutoff, with their
        messages, escalations, rollout arms and the attachment files no remaining message uses,
        and the finished regression runs started before it."""
        cutoff = iso((now or utcnow()) - timedelta(days=older_than_days))
        removed = {"conversations": 0, "messages": 0, "escalations": 0, "attachments": 0, "platform_events": 0,
                   "regression_runs": 0}
        with self.transaction():
            # Finished regression runs hold model replies to the cases: they age like conversations.
            # The cases themselves (the team's chosen examples) stay until an operator removes them.
            old_runs = "select id from eval_runs where started_at < ? and status != 'running'"
            self.db.execute(f"delete from eval_results where run_id in ({old_runs})", [cutoff])
            removed["regression_runs"] = self.db.execute(
                "delete from eval_runs where started_at < ? and status != 'running'", [cutoff]).rowcount
            # Raw platform events carry message text too; unfinished ones are kept for recovery.
            removed["platform_events"] = self.db.execute(
                "delete from platform_events where received_at < ? and processed_at is not null", [cutoff]
            ).rowcount
            self.db.execute("delete from sessions where expires_at < ?", [iso(now or utcnow())])
            ids = [row["id"] for row in self.db["conversations"].rows_where("last_message_at < ?", [cutoff], select="id")]
            for conversation_id in ids:
                self.db.execute("delete from staged_images where message_id in "
                                "(select id from messages where conversation_id = ?)", [conversation_id])
                self.db.execute("delete from rollout_arms where conversation_id = ?", [conversation_id])
                removed["messages"] += self.db.execute(
                    "delete from messages where conversation_id = ?", [conversation_id]
                ).rowcount
                removed["escalations"] += self.db.execute(
                    "delete from escalations where conversation_id = ?", [conversation_id]
                ).rowcount
                self.db.execute("delete from conversations where id = ?", [conversation_id])
            removed["conversations"] = len(ids)
            used: set[int] = set()
            for row in self.db["messages"].rows_where("attachment_ids != '[]'", select="attachment_ids"):
                used.update(json.loads(row["attachment_ids"]))
            orphans = [
                row for row in self.db["attachments"].rows_where(select="id, path") if row["id"] not in used
            ]
            for row in orphans:
                self.db.execute("delete from attachments where id = ?", [row["id"]])
        for row in orphans:  # files go after the commit: a crash leaves a file, never a dangling row
            try:
                (self.attachments_dir / row["path"]).unlink()
            except FileNotFoundError:
                pass
        removed["attachments"] = len(orphans)
        return removed

    # Named reads ------------------------------------------------------------------
    def select(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        """The rows of one read-only statement, for the named queries of `bot.queries`: the
        consoles' and channels' reads live there, tested, instead of as SQL in route modules.
        A statement that would change something is refused."""
        if not sql.lstrip().lower().startswith("select"):
            raise ValueError("Store.select runs select statements only.")
        return self._all(sql, params)


class _Transaction:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._outer = False

    def __enter__(self) -> Store:
        self.store._lock.acquire()
        conn = self.store.db.conn
        self._outer = not conn.in_transaction
        if self._outer:
            try:
                conn.execute("BEGIN IMMEDIATE")  # waits up to lock_wait_s for another writer
            except BaseException as exc:
                self.store._lock.release()
                if is_busy(exc):
                    raise StoreBusy(self.store.path, self.store.lock_wait_s) from exc
                raise
        return self.store

    def __exit__(self, exc_type, exc, tb) -> None:
        conn = self.store.db.conn
        try:
            if self._outer:
                if exc_type is None:
                    try:
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:  # a failed COMMIT leaves the transaction open
                            conn.execute("ROLLBACK")
                        raise
                elif conn.in_transaction:
                    conn.execute("ROLLBACK")
        finally:
            self.store._lock.release()
