"""API keys for the OpenAI-compatible endpoint (`/v1/...`).

Internal tools (batch product-description jobs, a moderation pipeline) reach the model
with a bearer key. A key is 32 random URL-safe characters after `sdk-` and is shown only
once, when it is created; the database keeps its sha256 (a fast hash is enough for a
high-entropy random secret: there is nothing to guess), so a copied database opens no
door. Keys are looked up by their hash, never compared in plain text. Creating and
revoking a key go to the audit log; `last_used_at` is refreshed at most once a minute,
so a busy batch job does not write to the database on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta

from .messages import utcnow
from .store import Store, iso

KEY_PREFIX = "sdk-"
KEY_RANDOM_BYTES = 24  # 32 URL-safe characters
MAX_KEY_CHARS = 200  # anything longer is not one of ours: refused before touching the database
LAST_USED_RESOLUTION = timedelta(minutes=1)


class ApiKeyError(Exception):
    """A user-facing problem with a key operation."""


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    created_at: str
    last_used_at: str | None
    revoked_at: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _key(row: dict) -> ApiKey:
    return ApiKey(row["id"], row["name"], row["created_at"], row["last_used_at"], row["revoked_at"])


def key_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def valid_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isalnum() or c in "._-@" for c in name)


class ApiKeys:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, name: str, actor: str = "cli") -> tuple[ApiKey, str]:
        """A new key for `name`; returns (key record, the secret to hand over once)."""
        name = name.strip()
        if not valid_name(name):
            raise ApiKeyError("A key name is 1 to 64 letters, digits or . _ - @.")
        secret = new_secret()
        now = iso()
        with self.store.transaction():
            if self.store._one("select id from api_keys where name = ? and revoked_at is null", [name]):
                raise ApiKeyError(f"There is already an active key called {name}: revoke it first or pick another name.")
            try:
                key_id = self.store._insert("api_keys", {"name": name, "key_hash": key_digest(secret), "created_at": now})
            except sqlite3.IntegrityError:  # another process created the same name at the same moment
                raise ApiKeyError(f"There is already an active key called {name}.") from None
            self.store.audit(actor, "apikey_create", f"apikey:{name}")
        return ApiKey(key_id, name, now, None, None), secret

    def keys(self) -> list[ApiKey]:
        """Every key, active and revoked, oldest first (never the secrets: they are not stored)."""
        return [_key(row) for row in self.store._all(
            "select id, name, created_at, last_used_at, revoked_at from api_keys order by created_at, id")]

    def revoke(self, name: str, actor: str = "cli") -> ApiKey:
        with self.store.transaction():
            row = self.store._one("select * from api_keys where name = ? and revoked_at is null", [name])
            if row is None:
                raise ApiKeyError(f"There is no active key called {name}.")
            now = iso()
            self.store.db.conn.execute("update api_keys set revoked_at = ? where id = ?", [now, row["id"]])
            self.store.audit(actor, "apikey_revoke", f"apikey:{name}")
        return _key({**row, "revoked_at": now})

    def authenticate(self, secret: str, now: datetime | None = None) -> ApiKey | None:
        """The key record when `secret` is a known key (revoked ones included: check `.active`)."""
        if not secret or len(secret) > MAX_KEY_CHARS or not secret.startswith(KEY_PREFIX):
            return None
        digest = key_digest(secret)
        row = self.store._one("select * from api_keys where key_hash = ?", [digest])
        if row is None or not hmac.compare_digest(row["key_hash"], digest):
            return None
        if row["revoked_at"] is None:
            moment = now or utcnow()
            last = row["last_used_at"]
            if last is None or datetime.fromisoformat(last) + LAST_USED_RESOLUTION <= moment:
                row["last_used_at"] = iso(moment)
                with self.store.transaction():
                    self.store.db.conn.execute(
                        "update api_keys set last_used_at = ? where id = ?", [row["last_used_at"], row["id"]]
                    )
        return _key(row)
