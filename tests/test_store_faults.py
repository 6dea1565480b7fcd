"""Storage faults: another program holding the database lock, and an unusable data directory.

The lock is held the way an operator's `snapdesk purge`, `snapdesk user add` or a backup
tool holds it: a second SQLite connection inside `BEGIN IMMEDIATE`. Writes must wait and
complete once it is released, nothing accepted may be lost, and a lock held past the
bound must give a clear, retryable error with nothing half-stored. A data directory the
server cannot use must stop `snapdesk serve` (and the other commands) with one sentence
before any port is bound.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import bot.store as store_module
from bot.cli import build_parser
from bot.db_thread import DatabaseThread
from bot.store import DB_NAME, Store, StoreBusy
from engine.stub import StubEngine
from tests.live_server import free_port, live_server
from tests.test_conversation import inbound, make, png
from tests.test_web_api import send, session, wait_for_answer

HOLD_S = 1.5  # how long the other program keeps the lock in the "it waits" tests
SHORT_BOUND_S = 0.3  # the wait bound in the "held too long" tests
# ... and how long the lock is held there: well past the bound, even on a loaded machine
HELD_TOO_LONG_S = 4.0


class LockHolder:
    """A second connection that takes the write lock, records a marker row, and commits later."""

    def __init__(self, database: Path, seconds: float) -> None:
        self.database, self.seconds = database, seconds
        self.locked = threading.Event()
        self.committing = threading.Event()  # set just before COMMIT: nothing else can commit earlier
        self.marker_id: int | None = None
        self.error: BaseException | None = None
        self.before_commit = lambda: None
        self._thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        try:
            conn = sqlite3.connect(self.database, isolation_level=None, timeout=30)
            conn.execute("BEGIN IMMEDIATE")
            self.marker_id = conn.execute(
                "insert into audit_log (at, actor, action) values ('2024-01-01', 'backup-tool', 'hold')"
            ).lastrowid
            self.locked.set()
            time.sleep(self.seconds)
            self.before_commit()
            self.committing.set()
            conn.execute("COMMIT")
            conn.close()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
            self.locked.set()

    def __enter__(self) -> "LockHolder":
        self._thread.start()
        assert self.locked.wait(30), "the lock holder did not start"
        assert self.error is None, self.error
        return self

    def __exit__(self, *exc) -> None:
        self._thread.join(timeout=60)
        assert self.error is None, self.error


def rows(database: Path, sql: str, params=()) -> list[tuple]:
    """Read with a separate connection (WAL readers are never blocked by the lock holder)."""
    conn = sqlite3.connect(database, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# Waiting for another writer --------------------------------------------------------------
async def test_twenty_messages_wait_for_another_programs_lock_and_are_all_answered(tmp_path):
    manager, channel, _ = make(tmp_path)
    with LockHolder(tmp_path / DB_NAME, HOLD_S) as holder:
        async def one(i: int):
            outcome = await manager.handle(inbound(f"Why was I charged? ({i})", key=f"visitor-{i}"))
            return outcome, holder.committing.is_set()

        results = await asyncio.gather(*(one(i) for i in range(20)))
    manager.close()
    assert [outcome.kind for outcome, _ in results] == ["answered"] * 20
    assert all(after for _, after in results), "a write finished while another program held the lock"
    assert len(channel.sent) == 20
    database = tmp_path / DB_NAME
    assert rows(database, "select status, count(*) from messages where role = 'user' group by status") == [
        ("answered", 20)
    ]
    assert rows(database, "select count(*) from messages where role = 'bot'") == [(20,)]
    assert rows(database, "select action from audit_log where id = ?", [holder.marker_id]) == [("hold",)]


async def test_a_lock_held_past_the_bound_refuses_cleanly_and_a_retry_is_stored_once(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "LOCK_WAIT_S", SHORT_BOUND_S)
    manager, channel, _ = make(tmp_path)
    message = inbound("Why was I charged?", images=(png(),), mid="evt-locked")
    with LockHolder(tmp_path / DB_NAME, HELD_TOO_LONG_S):
        with pytest.raises(StoreBusy, match="stayed locked by another program"):
            await manager.accept(message)
        # Nothing half-stored: no message, no attachment row, no conversation.
        database = tmp_path / DB_NAME
        assert rows(database, "select count(*) from messages") == [(0,)]
        assert rows(database, "select count(*) from attachments") == [(0,)]
        assert rows(database, "select count(*) from conversations") == [(0,)]
    outcome = await manager.handle(message)  # the same event again, once the lock is gone
    assert outcome.kind == "answered"
    assert (await manager.handle(message)).kind == "duplicate"
    assert [kind for _, kind, _ in channel.sent] == ["answer"]
    assert rows(tmp_path / DB_NAME, "select count(*) from messages where role = 'user'") == [(1,)]
    manager.close()


async def test_a_batch_that_meets_a_locked_database_is_rolled_back_and_run_again(tmp_path):
    """SQLite can report "locked" at once instead of waiting; the whole batch is tried again."""
    store = Store(tmp_path)
    database = DatabaseThread(store)
    attempts = 0

    def job() -> int:
        nonlocal attempts
        attempts += 1
        store.audit("test", "attempt", str(attempts))
        if attempts == 1:
            raise sqlite3.OperationalError("database is locked")
        return attempts

    assert await database.run(job) == 2
    assert [row["target"] for row in store._all("select target from audit_log where action = 'attempt'")] == ["2"]
    assert await database.run(store.audit, "test", "after") is None  # the thread and its lock are free
    database.close()
    store.close()


async def test_the_bound_counts_from_each_request_not_from_each_batch(tmp_path):
    """Work queued behind a refused batch must not wait a whole bound once more."""
    store = Store(tmp_path, lock_wait_s=SHORT_BOUND_S)
    database = DatabaseThread(store, max_batch=1)  # ten batches, one after another
    with LockHolder(tmp_path / DB_NAME, HELD_TOO_LONG_S) as holder:
        async def one(i: int):
            try:
                await database.run(store.audit, "test", "write", str(i))
                return "stored", holder.committing.is_set()
            except StoreBusy:
                return "busy", holder.committing.is_set()

        results = await asyncio.gather(*(one(i) for i in range(10)))
    assert results == [("busy", False)] * 10  # all refused while the lock was still held
    assert store._all("select count(*) as n from audit_log where action = 'write'") == [{"n": 0}]
    await database.run(store.audit, "test", "write", "after")
    database.close()
    store.close()


# Through the widget API ------------------------------------------------------------------
def _post_all(base: str, visitors: list[dict], holder: LockHolder) -> list[tuple[int, bool]]:
    def post(index: int) -> tuple[int, bool]:
        response = send(base, visitors[index], f"locked-{index:04d}", text=f"Why was I charged? ({index})")
        return response.status_code, holder.committing.is_set()

    with ThreadPoolExecutor(len(visitors)) as pool:
        return list(pool.map(post, range(len(visitors))))


def test_widget_messages_posted_while_the_database_is_locked_are_acknowledged_and_answered(tmp_path):
    with live_server(tmp_path, engine=StubEngine(), widget_rate_per_ip=10_000) as (base, _):
        visitors = [session(base) for _ in range(8)]
        with LockHolder(tmp_path / DB_NAME, HOLD_S) as holder:
            results = _post_all(base, visitors, holder)
        assert [status for status, _ in results] == [202] * 8
        assert all(after for _, after in results), "a message was acknowledged before the lock was released"
        for headers in visitors:
            messages = wait_for_answer(base, headers)["messages"]
            assert [m["role"] for m in messages] == ["user", "bot"]


def test_widget_answers_503_with_retry_after_when_the_lock_outlasts_the_bound(tmp_path, monkeypatch):
    with live_server(tmp_path, engine=StubEngine(), widget_rate_per_ip=10_000, db_lock_wait_s=SHORT_BOUND_S) as (base, _):
        headers = session(base)
        with LockHolder(tmp_path / DB_NAME, 2.0):
            refused = send(base, headers, "outlasted-0001")
            assert refused.status_code == 503
            assert refused.json()["error"] == "busy" and "try again" in refused.json()["message"]
            assert int(refused.headers["Retry-After"]) >= 1
            assert rows(tmp_path / DB_NAME, "select count(*) from messages where platform_message_id like ?",
                        ["%:outlasted-0001"]) == [(0,)]
        retried = send(base, headers, "outlasted-0001")  # the widget's Retry sends the same id
        assert retried.status_code == 202 and retried.json()["duplicate"] is False
        messages = wait_for_answer(base, headers)["messages"]
        assert [m["role"] for m in messages] == ["user", "bot"]


# Commands --------------------------------------------------------------------------------
def _opened(pid: int, database: Path, timeout: float = 30.0) -> None:
    """Wait until process `pid` has the database open (Linux); elsewhere give it a moment."""
    fd_dir = Path(f"/proc/{pid}/fd")
    if not fd_dir.is_dir():
        time.sleep(1.0)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if any(os.readlink(fd) == str(database) for fd in fd_dir.iterdir()):
                return
        except OSError:
            pass
        time.sleep(0.02)


def _child_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "SNAPDESK_ENGINE": "stub"}


def test_a_command_run_while_the_server_holds_the_lock_waits_and_succeeds(tmp_path):
    Store(tmp_path).close()
    database = (tmp_path / DB_NAME).resolve()
    child = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "user", "add", "ops", "--role", "agent", "--password-stdin",
         "--data", str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(),
    )
    _opened(child.pid, database)  # the command has started and opened the database
    waiting: list[bool] = []
    with LockHolder(database, HOLD_S) as holder:
        holder.before_commit = lambda: waiting.append(child.poll() is None)
        child.stdin.write("correct horse battery\n")
        child.stdin.close()
    child.wait(timeout=60)
    out, err = child.stdout.read(), child.stderr.read()
    assert child.returncode == 0, err
    assert "added agent ops" in out
    assert waiting == [True], "the command did not wait for the lock"
    added = rows(database, "select id from audit_log where action = 'user_add'")
    assert len(added) == 1 and added[0][0] > holder.marker_id  # stored after the other program committed


def test_a_command_gives_a_clear_error_when_the_lock_outlasts_the_bound(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SNAPDESK_DB_LOCK_WAIT_S", str(SHORT_BOUND_S))
    Store(tmp_path).close()
    args = build_parser().parse_args(["purge", "--older-than", "0", "--data", str(tmp_path)])
    with LockHolder(tmp_path / DB_NAME, HELD_TOO_LONG_S):
        code = args.func(args)
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"The database {tmp_path / DB_NAME} stayed locked by another program" in err
    assert "try again" in err
    assert args.func(args) == 0  # and works once the lock is gone


# An unusable data directory at start -----------------------------------------------------
def serve_and_watch_port(data: Path, prefix: list[str] | None = None, cwd: Path | None = None,
                         env: dict | None = None) -> tuple[int, str, bool]:
    """Run `snapdesk serve`; returns (exit status, stderr, whether its port ever answered)."""
    port = free_port()
    child = subprocess.Popen(
        [*(prefix or []), sys.executable, "-m", "bot.cli", "serve", "--data", str(data), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or _child_env(), cwd=cwd,
    )
    bound = False
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            bound = True
            break
        except OSError:
            time.sleep(0.02)
    if child.poll() is None:
        child.kill()
    _, err = child.communicate(timeout=30)
    return child.returncode, err, bound


def _one_sentence(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("snapdesk: ") and lines[0].endswith(".") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("case", ["data_is_a_file", "parent_is_a_file", "database_is_garbage"])
def test_serve_refuses_an_unusable_data_directory_before_binding_its_port(tmp_path, case):
    if case == "data_is_a_file":
        data = tmp_path / "data"
        data.write_text("not a directory")
        expected = f"The data directory {data} is not writable (it is a file, not a directory)"
    elif case == "parent_is_a_file":
        (tmp_path / "srv").write_text("not a directory")
        data = tmp_path / "srv" / "data"
        expected = f"The data directory {data} is not writable ({tmp_path / 'srv'} is a file, not a directory)"
    else:
        data = tmp_path / "data"
        data.mkdir()
        (data / DB_NAME).write_bytes(os.urandom(4096))
        expected = f"The database {data / DB_NAME} is not a usable SQLite database (file is not a database)"
    code, err, bound = serve_and_watch_port(data)
    assert code == 1 and not bound
    sentence = _one_sentence(err)
    assert expected in sentence
    assert ("--data" in sentence) if case != "database_is_garbage" else ("move it aside" in sentence)
    for command in (["user", "list"], ["apikey", "list"], ["purge", "--older-than", "30"], ["chat"]):
        other = subprocess.run([sys.executable, "-m", "bot.cli", *command, "--data", str(data)],
                               capture_output=True, text=True, env=_child_env(), timeout=60, stdin=subprocess.DEVNULL)
        assert other.returncode == 1 and expected in _one_sentence(other.stderr), command


def _as_unprivileged() -> tuple[list[str], int]:
    """A command prefix that runs the child as `nobody`, and that uid."""
    if os.geteuid() != 0:
        return [], os.geteuid()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot run the child as an unprivileged user")
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot switch to uid 65534 here: {probe.stderr.decode(errors='replace').strip()}")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], 65534


def test_serve_refuses_a_read_only_data_directory_for_its_user():
    prefix, uid = _as_unprivileged()
    # Outside pytest's tmp_path: its parents are private to root, so `nobody` could not reach them.
    root = Path(tempfile.mkdtemp(prefix="snapdesk-readonly-"))
    try:
        root.chmod(0o755)
        data = root / "data"
        data.mkdir(mode=0o555)
        data.chmod(0o555)  # not the child's to write (as root, it also belongs to someone else)
        env = {**_child_env(), "HOME": str(root)}
        code, err, bound = serve_and_watch_port(data, prefix=prefix, cwd=root, env=env)
        assert code == 1 and not bound
        sentence = _one_sentence(err)
        assert f"The data directory {data} is not writable (Permission denied)" in sentence
        assert "write access" in sentence and "--data" in sentence

        # A writable directory whose database belongs to someone else.
        owned = root / "owned"
        Store(owned).close()
        if os.geteuid() == 0:
            for path in (owned, owned / "attachments"):
                os.chown(path, uid, -1)
        (owned / DB_NAME).chmod(0o444)
        code, err, bound = serve_and_watch_port(owned, prefix=prefix, cwd=root, env=env)
        assert code == 1 and not bound
        assert f"The database file {owned / DB_NAME} is not readable and writable" in _one_sentence(err)
    finally:
        for path in root.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)
