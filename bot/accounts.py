"""Console accounts: who may answer customers (agents) and who may shape the bot (operators).

Passwords are hashed with argon2id (19 MiB, 2 passes: OWASP's minimum). Sessions live in
the database as hashes of their cookie values, so a copied database opens no session.
A run of wrong passwords locks the account for a while; the lock and every change to an
account are written to the audit log.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .messages import utcnow
from .store import Store, iso
from .text import clean_user_text

Role = Literal["agent", "operator", "admin"]
ROLES: tuple[Role, ...] = ("agent", "operator", "admin")
MIN_PASSWORD_CHARS = 10
MAX_DISPLAY_NAME_CHARS = 60
MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)

HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_DUMMY_HASH = HASHER.hash("not a real password, only to spend the same time")


class AccountError(Exception):
    """A user-facing problem with an account operation."""


class NoSuchUser(AccountError):
    """The account named does not exist."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: Role
    disabled: bool
    display_name: str = ""  # what end users see; the login name when none was set

    def __post_init__(self) -> None:
        if not self.display_name:
            object.__setattr__(self, "display_name", self.name)

    def can(self, role: Role) -> bool:
        """Admins can do everything; agents and operators only their own consoles."""
        return not self.disabled and (self.role == "admin" or self.role == role)


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    expires_at: str


def _user(row: dict) -> User:
    return User(row["id"], row["name"], row["role"], bool(row["disabled"]), row.get("display_name") or "")


def clean_display_name(display_name: str) -> str:
    """One line of 1 to 60 characters, control characters removed, or AccountError."""
    cleaned = " ".join(clean_user_text(str(display_name)).split())
    if not cleaned or len(cleaned) > MAX_DISPLAY_NAME_CHARS:
        raise AccountError(f"A display name is 1 to {MAX_DISPLAY_NAME_CHARS} characters on one line.")
    return cleaned


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Accounts:
    def __init__(self, store: Store, idle_timeout: timedelta = timedelta(minutes=30),
                 absolute_timeout: timedelta = timedelta(hours=12)) -> None:
        self.store = store
        self.idle_timeout = idle_timeout
        self.absolute_timeout = absolute_timeout

    # Users ------------------------------------------------------------------------
    def add_user(self, name: str, role: str, password: str, actor: str = "cli",
                 display_name: str | None = None) -> User:
        name = name.strip()
        if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@" for c in name):
            raise AccountError("A user name is 1 to 64 letters, digits or . _ - @.")
        if role not in ROLES:
            raise AccountError(f"The role must be one of: {', '.join(ROLES)}.")
        if len(password) < MIN_PASSWORD_CHARS:
            raise AccountError(f"The password must have at least {MIN_PASSWORD_CHARS} characters.")
        shown = clean_display_name(display_name) if display_name is not None and display_name.strip() else None
        with self.store.transaction():
            if self.store._one("select id from users where name = ?", [name]):
                raise AccountError(f"There is already a user called {name}.")
            user_id = self.store._insert(
                "users",
                {"name": name, "role": role, "password_hash": HASHER.hash(password), "disabled": 0,
                 "failed_logins": 0, "created_at": iso(), "display_name": shown},
            )
            self.store.audit(actor, "user_add", f"user:{name}", role=role, display_name=shown)
        return User(user_id, name, role, False, shown or "")  # type: ignore[arg-type]

    def users(self) -> list[User]:
        return [_user(row) for row in self.store._all("select * from users order by name")]

    def user(self, name: str) -> User | None:
        row = self.store._one("select * from users where name = ?", [name])
        return _user(row) if row else None

    def set_display_name(self, name: str, display_name: str, actor: str = "cli") -> User:
        """Set the name end users see for this account (cleaned: one line, 1-60 characters)."""
        shown = clean_display_name(display_name)
        with self.store.transaction():
            row = self.store._one("select * from users where name = ?", [name])
            if row is None:
                raise NoSuchUser(f"There is no user called {name}.")
            self.store.db.conn.execute("update users set display_name = ? where id = ?", [shown, row["id"]])
            self.store.audit(actor, "user_display_name", f"user:{name}", display_name=shown,
                             previous=row.get("display_name"))
        return _user({**row, "display_name": shown})

    def disable_user(self, name: str, actor: str = "cli") -> list[int]:
        """Block the account, end its sessions and put its claimed conversations back in the
        queue, all in one transaction; returns the ids of the conversations released."""
        with self.store.transaction():
            row = self.store._one("select id from users where name = ?", [name])
            if row is None:
                raise NoSuchUser(f"There is no user called {name}.")
            self.store.db.conn.execute("update users set disabled = 1 where id = ?", [row["id"]])
            self.store.db.conn.execute("delete from sessions where user_id = ?", [row["id"]])
            released = self.store.release_claims(name)
            self.store.audit(actor, "user_disable", f"user:{name}", released=released)
        return released

    # Logging in -------------------------------------------------------------------
    def authenticate(self, name: str, password: str, now: datetime | None = None) -> User | None:
        """The user when the password is right and the account usable; None otherwise."""
        now = now or utcnow()
        with self.store.transaction():
            row = self.store._one("select * from users where name = ?", [name])
            if row is None:
                _verify(_DUMMY_HASH, password)  # same cost as a real check: names cannot be probed
                return None
            if row["locked_until"] and row["locked_until"] > iso(now):
                return None
            if row["disabled"] or not _verify(row["password_hash"], password):
                failures = (row["failed_logins"] or 0) + 1
                locked = iso(now + LOCKOUT) if failures >= MAX_FAILURES else None
                self.store.db.conn.execute(
                    "update users set failed_logins = ?, locked_until = ? where id = ?",
                    [0 if locked else failures, locked, row["id"]],
                )
                if locked:
                    self.store.audit("system", "user_locked", f"user:{name}", failures=failures)
                return None
            self.store.db.conn.execute(
                "update users set failed_logins = 0, locked_until = null where id = ?", [row["id"]]
            )
            if HASHER.check_needs_rehash(row["password_hash"]):
                self.store.db.conn.execute(
                    "update users set password_hash = ? where id = ?", [HASHER.hash(password), row["id"]]
                )
            self.store.audit(name, "login", f"user:{name}")
            return _user(row)

    def is_locked(self, name: str, now: datetime | None = None) -> bool:
        row = self.store._one("select locked_until from users where name = ?", [name])
        return bool(row and row["locked_until"] and row["locked_until"] > iso(now or utcnow()))

    # Sessions ---------------------------------------------------------------------
    def open_session(self, user: User, now: datetime | None = None) -> tuple[str, Session]:
        """A fresh session (a new id at every login); returns (cookie value, session)."""
        now = now or utcnow()
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        expires = iso(now + self.absolute_timeout)
        self.store._insert(
            "sessions",
            {"id": _digest(token), "user_id": user.id, "csrf_token": csrf, "created_at": iso(now),
             "last_seen_at": iso(now), "expires_at": expires},
        )
        return token, Session(user, csrf, expires)

    def session(self, token: str, now: datetime | None = None) -> Session | None:
        """The live session for a cookie value, refreshing its idle timer; None if expired."""
        if not token:
            return None
        now = now or utcnow()
        row = self.store._one(
            "select s.*, u.name, u.role, u.disabled, u.display_name from sessions s join users u on u.id = s.user_id "
            "where s.id = ?",
            [_digest(token)],
        )
        if row is None:
            return None
        idle_deadline = iso(datetime.fromisoformat(row["last_seen_at"]) + self.idle_timeout)
        if row["disabled"] or row["expires_at"] <= iso(now) or idle_deadline <= iso(now):
            self.close_session(token)
            return None
        with self.store.transaction():
            self.store.db.conn.execute("update sessions set last_seen_at = ? where id = ?", [iso(now), row["id"]])
        return Session(User(row["user_id"], row["name"], row["role"], bool(row["disabled"]), row["display_name"] or ""),
                       row["csrf_token"], row["expires_at"])

    def close_session(self, token: str) -> None:
        with self.store.transaction():
            self.store.db.conn.execute("delete from sessions where id = ?", [_digest(token)])


def _verify(hashed: str, password: str) -> bool:
    try:
        return HASHER.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


def same_token(expected: str, given: str | None) -> bool:
    """Constant-time comparison of secrets (CSRF tokens)."""
    return bool(given) and hmac.compare_digest(expected.encode("utf-8"), str(given).encode("utf-8"))
