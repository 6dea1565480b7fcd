"""How the database thread waits for another program's write lock (`waiting_out_a_lock`).

The policy is checked on its own with its pauses recorded (their lengths, the busy timeout
SQLite gets for each try, where it gives up), then through the thread for what the operator
reads in the log. The lock held by a real second connection is `test_store_faults.py`'s.
"""

from __future__ import annotations

import logging
import sqlite3
import time

import pytest

from bot.db_thread import (
    LOCK_NOTICE_AFTER_S,
    LOCK_RETRY_FIRST_PAUSE_S,
    LOCK_RETRY_MAX_PAUSE_S,
    DatabaseThread,
    _RetryBatch,
    waiting_out_a_lock,
)
from bot.store import Store, StoreBusy


class BusyTimeouts:
    """The part of the Store the policy touches: the busy timeout of each try."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def set_busy_timeout(self, seconds: float) -> None:
        self.seconds.append(seconds)


def locked(tries: int, error: BaseException | None = None):
    """A batch that meets the lock on its first `tries` tries, then is stored."""
    calls: list[float] = []

    def attempt() -> str:
        calls.append(time.monotonic())
        if len(calls) <= tries:
            raise error or sqlite3.OperationalError("database is locked")
        return "stored"

    return attempt, calls


def test_the_pause_doubles_up_to_its_longest_and_only_the_first_try_waits_briefly():
    store, pauses, waits = BusyTimeouts(), [], []
    policy = waiting_out_a_lock(store, time.monotonic() + 60, lambda: waits.append(len(pauses)))
    attempt, calls = locked(7)
    assert policy.copy(sleep=pauses.append)(attempt) == "stored"
    assert pauses == [LOCK_RETRY_FIRST_PAUSE_S * 2 ** n for n in range(5)] + [LOCK_RETRY_MAX_PAUSE_S] * 2
    assert pauses[:5] == [0.02, 0.04, 0.08, 0.16, 0.32] and len(calls) == 8
    assert waits == list(range(7))  # told before each pause
    assert store.seconds[0] == LOCK_NOTICE_AFTER_S  # short, so that a long wait shows in the log
    assert all(59 < seconds <= 60 for seconds in store.seconds[1:]) and len(store.seconds) == 8


def test_one_try_is_made_even_with_no_time_left():
    store, pauses = BusyTimeouts(), []
    attempt, calls = locked(1)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        waiting_out_a_lock(store, time.monotonic() - 1, lambda: None).copy(sleep=pauses.append)(attempt)
    assert len(calls) == 1 and store.seconds == [0.0] and pauses == []


def test_tries_go_on_until_the_deadline_and_no_pause_passes_it():
    store, pauses = BusyTimeouts(), []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        time.sleep(seconds)

    attempt, calls = locked(1000, _RetryBatch())  # a piece of the batch met the lock
    deadline = time.monotonic() + 0.3
    with pytest.raises(_RetryBatch):
        waiting_out_a_lock(store, deadline, lambda: None).copy(sleep=sleep)(attempt)
    assert time.monotonic() >= deadline and len(calls) == len(pauses) + 1
    assert pauses[:2] == [0.02, 0.04] and sum(pauses) <= 0.3  # the last one is cut short at the deadline
    assert all(pause <= LOCK_RETRY_FIRST_PAUSE_S * 2 ** n for n, pause in enumerate(pauses))
    assert 0.2 < store.seconds[0] <= 0.3 and store.seconds == sorted(store.seconds, reverse=True)


def test_an_error_that_is_not_the_lock_is_raised_after_one_try():
    store = BusyTimeouts()
    attempt, calls = locked(1, sqlite3.OperationalError("disk I/O error"))
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        waiting_out_a_lock(store, time.monotonic() + 60, lambda: None)(attempt)
    assert len(calls) == 1


async def test_a_lock_is_logged_once_when_met_once_when_given_up_and_once_when_released(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="bot.db_thread")
    store = Store(tmp_path, lock_wait_s=0.2)
    database = DatabaseThread(store)
    tries = 0

    def job() -> int:
        nonlocal tries
        tries += 1
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(StoreBusy):
        await database.run(job)
    assert tries > 2  # tried again until the bound ran out
    with pytest.raises(StoreBusy):
        await database.run(job)
    assert await database.run(store.audit, "test", "after") is None
    database.close()
    store.close()
    assert [r.getMessage() for r in caplog.records if r.name == "bot.db_thread"] == [
        "the database is locked by another program; writes wait up to 0.2 s",
        "the database stayed locked by another program for 0.2 s; 1 requests refused",
        "the database stayed locked by another program for 0.2 s; 1 requests refused",
        "the database lock was released; the waiting work is stored",
    ]
