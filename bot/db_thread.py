"""The thread that owns the database, committing concurrent work together.

Every stored message must survive a power cut, so each commit waits for the disk
(`synchronous=FULL`). One commit per write would make the disk the limit on how many
messages Snapdesk can take; instead the thread runs whatever work is waiting as one
transaction, each piece inside its own savepoint (a failing piece is rolled back alone),
and answers every caller only after the shared commit is on disk (group commit).

Another program may hold the database's write lock for a while (an operator's `snapdesk
purge`, a backup). The batch then waits: SQLite's busy timeout covers the start of the
transaction, and a batch that still meets "database is locked" (including the cases where
SQLite reports it at once instead of waiting) is rolled back as a whole and run again with
growing pauses. A caller that has waited `store.lock_wait_s` in all (counted from when it
handed its work over, so work queued behind a refused batch does not wait once more) gets
`StoreBusy`; nothing of its batch is stored, so trying again later is safe.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from functools import partial
from typing import Any, Callable

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential

from .store import Store, StoreBusy, is_busy

log = logging.getLogger(__name__)

_STOP = object()
LOCK_RETRY_FIRST_PAUSE_S = 0.02
LOCK_RETRY_MAX_PAUSE_S = 0.5
LOCK_NOTICE_AFTER_S = 1.0  # a wait for another program's lock this long is logged


class _RetryBatch(Exception):
    """A piece of the batch met a locked database: roll everything back and run it again."""


class DatabaseThread:
    def __init__(self, store: Store, max_batch: int = 16) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._locked_out = False  # another program's lock is being waited for (logged once)
        self._thread = threading.Thread(target=self._loop, name="snapdesk-db", daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` on the database thread; returns once it is committed."""
        if self._closed:
            raise RuntimeError("the database thread has been stopped")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((partial(fn, *args, **kwargs), future, loop, time.monotonic()))
        return await future

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            batch = [job]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                batch.append(job)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list) -> None:
        deadline = min(enqueued for *_, enqueued in batch) + self.store.lock_wait_s
        try:
            outcomes = waiting_out_a_lock(self.store, deadline, self._lock_met)(self._attempt, batch)
        except BaseException as exc:
            if _locked(exc):  # still locked when the bound ran out
                log.error("the database stayed locked by another program for %g s; %d requests refused",
                          self.store.lock_wait_s, len(batch))
                outcomes = [(False, StoreBusy(self.store.path, self.store.lock_wait_s)) for _ in batch]
            else:  # the commit itself failed (disk full, I/O error): nothing is stored
                log.error("database commit failed: %s", type(exc).__name__)
                outcomes = [(False, exc)] * len(batch)
        else:
            if self._locked_out:
                self._locked_out = False
                log.info("the database lock was released; the waiting work is stored")
        for (_, future, loop, _), (ok, value) in zip(batch, outcomes):
            try:
                loop.call_soon_threadsafe(_settle, future, ok, value)
            except RuntimeError:  # the caller's loop is closed
                pass

    def _lock_met(self) -> None:
        if not self._locked_out:
            self._locked_out = True
            log.warning("the database is locked by another program; writes wait up to %g s", self.store.lock_wait_s)

    def _attempt(self, batch: list) -> list[tuple[bool, Any]]:
        """Run the batch as one transaction, each piece in its own savepoint."""
        outcomes: list[tuple[bool, Any]] = []
        conn = self.store.db.conn
        with self.store.transaction():
            for index, (fn, *_) in enumerate(batch):
                savepoint = f"job_{index}"
                conn.execute(f"SAVEPOINT {savepoint}")
                try:
                    outcomes.append((True, fn()))
                    conn.execute(f"RELEASE {savepoint}")
                except BaseException as exc:  # this piece fails alone; the others still commit
                    if conn.in_transaction:
                        conn.execute(f"ROLLBACK TO {savepoint}")
                        conn.execute(f"RELEASE {savepoint}")
                    if is_busy(exc):  # locked, not wrong: the whole batch waits and runs again
                        raise _RetryBatch() from exc
                    outcomes.append((False, exc))
        return outcomes


def waiting_out_a_lock(store: Store, deadline: float, on_wait: Callable[[], None]) -> Retrying:
    """The policy for a batch that meets another program's write lock: tried again until
    `deadline`, after a pause that doubles from LOCK_RETRY_FIRST_PAUSE_S up to
    LOCK_RETRY_MAX_PAUSE_S (never past the deadline); `on_wait` is called before each pause.
    Each try lets SQLite wait for the lock itself, for what is left of the bound (the first
    try at most LOCK_NOTICE_AFTER_S, so that a long wait shows in the log), and the first try
    is always made, even with no time left. The last failure is raised."""

    def left() -> float:
        return max(0.0, deadline - time.monotonic())

    def before_try(state: RetryCallState) -> None:
        store.set_busy_timeout(left() if state.attempt_number > 1 else min(left(), LOCK_NOTICE_AFTER_S))

    pause = wait_exponential(multiplier=LOCK_RETRY_FIRST_PAUSE_S, max=LOCK_RETRY_MAX_PAUSE_S)
    return Retrying(
        retry=retry_if_exception(_locked),
        stop=lambda state: left() <= 0,
        wait=lambda state: min(pause(state), left()),
        before=before_try,
        before_sleep=lambda state: on_wait(),
        reraise=True,
    )


def _locked(exc: BaseException) -> bool:
    return is_busy(exc) or isinstance(exc, _RetryBatch)


def _settle(future: asyncio.Future, ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
