"""Console accounts: who may answer customers (agents) and who may shape the bot (operators).

Operators also read the agent console, without answering from it: real conversation turns are
what they make regression cases of (`User.can_read`).

Passwords are hashed with argon2id (19 MiB, 2 passes: OWASP's minimum) on a small pool of
threads of their own: each check takes tens of milliseconds of CPU, and run on the database
thread it made every other request wait behind a burst of sign-ins. The database thread only
reads the account before a check and writes the outcome after it.

Sessions live in the database as hashes of their cookie values, so a copied database opens
no session. Nothing is ever locked: repeated failures make further tries wait (see
`login_throttle`), and every answer to a failed sign-in is the same whether the account is
unknown, disabled, throttled or just given the wrong password, after the same work. Every
sign-in, failure and change to an account is written to the audit log (never a password).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .login_throttle import LoginThrottle, ThrottlePolicy
from .messages import utcnow
from .store import Store, iso
from .text import clean_user_text

if TYPE_CHECKING:
    from .settings import Settings

Role = Literal["agent", "operator", "admin"]
ROLES: tuple[Role, ...] = ("agent", "operator", "admin")
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024
MAX_DISPLAY_NAME_CHARS = 60
# The consoles a role may open to read only, besides its own: operators read conversations in
# the agent console (to add real turns to regression sets) but never claim or answer them.
READ_ONLY_CONSOLES: dict[Role, tuple[Role, ...]] = {"agent": ("operator",)}

HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
DUMMY_HASH = HASHER.hash("not a real password, only to spend the same time")


class AccountError(Exception):
    """A user-facing problem with an account operation."""


class NoSuchUser(AccountError):
    """The account named does not exist."""


class TooManyAttempts(AccountError):
    """Password tries for this name or address must wait `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many attempts. Wait {retry_after} seconds, then try again.")
        self.retry_after = retry_after


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: Role
    disabled: bool
    display_name: str = ""  # what end users see; the login name when none was set
    must_change_password: bool = False  # an admin reset it: no console until the user picks their own

    def __post_init__(self) -> None:
        if not self.display_name:
            object.__setattr__(self, "display_name", self.name)

    def can(self, role: Role) -> bool:
        """Admins can do everything; agents and operators only their own consoles."""
        return not self.disabled and (self.role == "admin" or self.role == role)

    def can_read(self, console: Role) -> bool:
        """Whether the account may open `console` and read what it shows: the consoles it may
        use (`can`), and those its role may only read (an operator in the agent console)."""
        return self.can(console) or (not self.disabled and self.role in READ_ONLY_CONSOLES.get(console, ()))

    @property
    def home(self) -> str:
        """The console this account lands on."""
        return "/agent" if self.role == "agent" else "/operator"


@dataclass(frozen=True)
class Session:
    user: User
    csrf_token: str
    expires_at: str


def _user(row: dict) -> User:
    return User(row["id"], row["name"], row["role"], bool(row["disabled"]), row.get("display_name") or "",
                bool(row.get("must_change_password")))


def clean_display_name(display_name: str) -> str:
    """One line of 1 to 60 characters, control characters removed, or AccountError."""
    cleaned = " ".join(clean_user_text(str(display_name)).split())
    if not cleaned or len(cleaned) > MAX_DISPLAY_NAME_CHARS:
        raise AccountError(f"A display name is 1 to {MAX_DISPLAY_NAME_CHARS} characters on one line.")
    return cleaned


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"The password must have at least {MIN_PASSWORD_CHARS} characters.")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AccountError(f"The password may have at most {MAX_PASSWORD_CHARS} characters.")


def hash_password(password: str) -> str:
    """The argon2id hash of an acceptable new password (AccountError otherwise), on this thread."""
    check_new_password(password)
    return HASHER.hash(password)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise AccountError(f"The role must be one of: {', '.join(ROLES)}.")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _verify(hashed: str, password: str) -> bool:
    try:
        return HASHER.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False


class PasswordPool:
    """argon2 on `workers` threads of its own (argon2-cffi lets go of the GIL while hashing),
    so neither the event loop nor the database thread waits for it, and at most `workers`
    hashes (~20 MiB each) run at once however many sign-ins arrive."""

    def __init__(self, workers: int = 2) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snapdesk-password")
        weakref.finalize(self, self._executor.shutdown, wait=False)

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(self._executor, HASHER.hash, password)

    async def verify(self, hashed: str | None, password: str) -> bool:
        """Whether `password` matches; with no hash, the same work against a dummy and False."""
        matched = await asyncio.get_running_loop().run_in_executor(
            self._executor, _verify, hashed or DUMMY_HASH, password)
        return matched and hashed is not None

    def close(self) -> None:
        self._executor.shutdown(wait=False)


async def _inline(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


class Accounts:
    """Console accounts. The plain methods run on the database thread (or in the command
    line); the `async` ones run on the event loop, hashing on the pool and reaching the
    database through `db` (the server's database-thread runner)."""

    def __init__(self, store: Store, idle_timeout: timedelta = timedelta(minutes=30),
                 absolute_timeout: timedelta = timedelta(hours=12), *,
                 db: Callable[..., Awaitable[Any]] | None = None, password_workers: int = 2,
                 throttle: LoginThrottle | None = None) -> None:
        self.store = store
        self.idle_timeout = idle_timeout
        self.absolute_timeout = absolute_timeout
        self.db = db or _inline
        self.passwords = PasswordPool(password_workers)
        self.throttle = throttle or LoginThrottle()

    @classmethod
    def for_settings(cls, store: Store, settings: "Settings",
                     db: Callable[..., Awaitable[Any]] | None = None) -> "Accounts":
        policy = ThrottlePolicy(settings.login_free_failures, settings.login_free_failures_per_ip,
                                settings.login_delay_s, max(settings.login_max_delay_s, settings.login_delay_s))
        return cls(store, idle_timeout=timedelta(minutes=settings.console_idle_minutes),
                   absolute_timeout=timedelta(hours=settings.console_session_hours), db=db,
                   password_workers=settings.password_hash_workers, throttle=LoginThrottle(policy))

    # Users ------------------------------------------------------------------------
    @staticmethod
    def _checked_new_user(name: str, role: str, password: str, display_name: str | None) -> tuple[str, str | None]:
        name = name.strip()
        if not name or len(name) > 64 or not all(c.isalnum() or c in "._-@" for c in name):
            raise AccountError("A user name is 1 to 64 letters, digits or . _ - @.")
        _check_role(role)
        check_new_password(password)
        shown = clean_display_name(display_name) if display_name is not None and display_name.strip() else None
        return name, shown

    def add_user(self, name: str, role: str, password: str, actor: str = "cli",
                 display_name: str | None = None) -> User:
        """Add an account, hashing on this thread (the command line; the server uses `create_user`)."""
        name, shown = self._checked_new_user(name, role, password, display_name)
        return self._insert_user(name, role, HASHER.hash(password), actor, shown)

    async def create_user(self, name: str, role: str, password: str, actor: str,
                          display_name: str | None = None) -> User:
        name, shown = self._checked_new_user(name, role, password, display_name)
        hashed = await self.passwords.hash(password)
        return await self.db(self._insert_user, name, role, hashed, actor, shown)

    def _insert_user(self, name: str, role: str, password_hash: str, actor: str, shown: str | None) -> User:
        with self.store.transaction():
            if self.store._one("select id from users where name = ?", [name]):
                raise AccountError(f"There is already a user called {name}.")
            user_id = self.store._insert(
                "users",
                {"name": name, "role": role, "password_hash": password_hash, "disabled": 0,
                 "failed_logins": 0, "created_at": iso(), "display_name": shown},
            )
            self.store.audit(actor, "user_add", f"user:{name}", role=role, display_name=shown)
        return User(user_id, name, role, False, shown or "")  # type: ignore[arg-type]

    def users(self) -> list[User]:
        return [_user(row) for row in self.store._all("select * from users order by name")]

    def user(self, name: str) -> User | None:
        row = self.store._one("select * from users where name = ?", [name])
        return _user(row) if row else None

    def _row(self, name: str) -> dict:
        row = self.store._one("select * from users where name = ?", [name])
        if row is None:
            raise NoSuchUser(f"There is no user called {name}.")
        return row

    def set_display_name(self, name: str, display_name: str, actor: str = "cli") -> User:
        """Set the name end users see for this account (cleaned: one line, 1-60 characters)."""
        shown = clean_display_name(display_name)
        with self.store.transaction():
            row = self._row(name)
            self.store.db.conn.execute("update users set display_name = ? where id = ?", [shown, row["id"]])
            self.store.audit(actor, "user_display_name", f"user:{name}", display_name=shown,
                             previous=row.get("display_name"))
        return _user({**row, "display_name": shown})

    def disable_user(self, name: str, actor: str = "cli") -> list[int]:
        """Block the account, end its sessions and put its claimed conversations back in the
        queue, all in one transaction; returns the ids of the conversations released."""
        with self.store.transaction():
            row = self._row(name)
            self.store.db.conn.execute("update users set disabled = 1 where id = ?", [row["id"]])
            self.store.db.conn.execute("delete from sessions where user_id = ?", [row["id"]])
            released = self.store.release_claims(name)
            self.store.audit(actor, "user_disable", f"user:{name}", released=released)
        return released

    def enable_user(self, name: str, actor: str = "cli") -> User:
        with self.store.transaction():
            row = self._row(name)
            self.store.db.conn.execute("update users set disabled = 0 where id = ?", [row["id"]])
            if row["disabled"]:
                self.store.audit(actor, "user_enable", f"user:{name}")
        return _user({**row, "disabled": 0})

    def set_role(self, name: str, role: str, actor: str = "cli") -> tuple[User, list[int]]:
        """Change the account's role; one that may no longer answer in the agent console gives
        its claimed conversations back to the queue. Returns the user and the ids released."""
        _check_role(role)
        with self.store.transaction():
            row = self._row(name)
            self.store.db.conn.execute("update users set role = ? where id = ?", [role, row["id"]])
            released = self.store.release_claims(name) if role == "operator" else []
            if role != row["role"]:
                self.store.audit(actor, "user_role", f"user:{name}", role=role, previous=row["role"],
                                 released=released)
        return _user({**row, "role": role}), released

    def set_password(self, name: str, password_hash: str, *, must_change: bool, actor: str,
                     keep_token: str | None = None) -> int:
        """Store a new password hash and end the account's sessions (all but `keep_token`, the
        session of a user changing their own). `must_change`: an admin's reset, the user picks
        their own at the next sign-in. Returns how many sessions ended."""
        with self.store.transaction():
            row = self._row(name)
            self.store.db.conn.execute(
                "update users set password_hash = ?, must_change_password = ? where id = ?",
                [password_hash, int(must_change), row["id"]])
            ended = self.store.db.conn.execute(
                "delete from sessions where user_id = ? and id != ?",
                [row["id"], _digest(keep_token) if keep_token else ""]).rowcount
            self.store.audit(actor, "user_password_reset" if must_change else "password_change", f"user:{name}",
                             sessions_ended=ended)
        return ended

    async def reset_password(self, name: str, password: str, actor: str) -> int:
        """An admin sets a temporary password: the user must choose their own at next sign-in."""
        check_new_password(password)
        hashed = await self.passwords.hash(password)
        return await self.db(self.set_password, name, hashed, must_change=True, actor=actor)

    async def change_password(self, name: str, current: str, new: str, client: str, keep_token: str) -> None:
        """A signed-in user's own change: the current password first (throttled like a sign-in)."""
        check_new_password(new)
        if new == current:
            raise AccountError("Choose a password different from the current one.")
        if await self._check(name, current, client, "password_change") is None:
            raise AccountError("The current password is wrong.")
        hashed = await self.passwords.hash(new)
        await self.db(self.set_password, name, hashed, must_change=False, actor=name, keep_token=keep_token)

    def end_sessions(self, name: str, actor: str = "cli") -> int:
        """Sign the account out everywhere; returns how many sessions ended."""
        with self.store.transaction():
            row = self._row(name)
            ended = self.store.db.conn.execute("delete from sessions where user_id = ?", [row["id"]]).rowcount
            self.store.audit(actor, "user_sign_out_everywhere", f"user:{name}", sessions_ended=ended)
        return ended

    # Signing in -------------------------------------------------------------------
    async def sign_in(self, name: str, password: str, client: str = "local") -> User | None:
        """The user when the password is right and the account usable; None otherwise, after
        the same work whatever the reason. TooManyAttempts while this name or address waits."""
        return await self._check(name, password, client, "login")

    async def _check(self, name: str, password: str, client: str, action: str) -> User | None:
        wait = self.throttle.begin(name, client)
        row = await self.db(self.store._one, "select * from users where name = ?", [name])
        matched = await self.passwords.verify(row["password_hash"] if row and not wait else None, password)
        if wait:
            await self.db(self.store.audit, "system", f"{action}_throttled", f"user:{name}", client=client,
                          wait_s=wait)
            raise TooManyAttempts(wait)
        if row is None or row["disabled"] or not matched:
            reason = "unknown" if row is None else "disabled" if row["disabled"] else "wrong_password"
            await self.db(self.store.audit, "system", f"{action}_failed", f"user:{name}", client=client,
                          reason=reason, failures=self.throttle.failures(name))
            return None
        self.throttle.succeeded(name, client)
        if action == "login":
            await self.db(self.store.audit, name, "login", f"user:{name}", client=client)
        if HASHER.check_needs_rehash(row["password_hash"]):
            rehashed = await self.passwords.hash(password)
            await self.db(self.store._update, "users", row["id"], {"password_hash": rehashed})
        return _user(row)

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
            "select s.*, u.name, u.role, u.disabled, u.display_name, u.must_change_password "
            "from sessions s join users u on u.id = s.user_id where s.id = ?",
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
        return Session(_user({**row, "id": row["user_id"]}), row["csrf_token"], row["expires_at"])

    def close_session(self, token: str) -> None:
        with self.store.transaction():
            self.store.db.conn.execute("delete from sessions where id = ?", [_digest(token)])


def same_token(expected: str, given: str | None) -> bool:
    """Constant-time comparison of secrets (CSRF tokens)."""
    return bool(given) and hmac.compare_digest(expected.encode("utf-8"), str(given).encode("utf-8"))
