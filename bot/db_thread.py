"""The thread that owns the database, committing concurrent work together.

Every stored message must survive a power cut, so each commit waits for the disk
(`synchronous=FULL`). One commit per write would make the disk the limit on how many
messages Snapdesk can take; instead the thread runs whatever work is waiting as one
transaction, each piece inside its own savepoint (a failing piece is rolled back alone),
and answers every caller only after the shared commit is on disk (group commit).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from functools import partial
from typing import Any, Callable

from .store import Store

log = logging.getLogger(__name__)

_STOP = object()


class DatabaseThread:
    def __init__(self, store: Store, max_batch: int = 16) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="snapdesk-db", daemon=True)
        self._thread.start()
        self._closed = False

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` on the database thread; returns once it is committed."""
        if self._closed:
            raise RuntimeError("the database thread has been stopped")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((partial(fn, *args, **kwargs), future, loop))
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
        outcomes: list[tuple[bool, Any]] = []
        conn = self.store.db.conn
        try:
            with self.store.transaction():
                for index, (fn, _, _) in enumerate(batch):
                    savepoint = f"job_{index}"
                    conn.execute(f"SAVEPOINT {savepoint}")
                    try:
                        outcomes.append((True, fn()))
                        conn.execute(f"RELEASE {savepoint}")
                    except BaseException as exc:  # this piece fails alone; the others still commit
                        if conn.in_transaction:
                            conn.execute(f"ROLLBACK TO {savepoint}")
                            conn.execute(f"RELEASE {savepoint}")
                        outcomes.append((False, exc))
        except BaseException as exc:  # the commit itself failed (disk full, I/O error): nothing is stored
            log.error("database commit failed: %s", type(exc).__name__)
            outcomes = [(False, exc)] * len(batch)
        for (_, future, loop), (ok, value) in zip(batch, outcomes):
            try:
                loop.call_soon_threadsafe(_settle, future, ok, value)
            except RuntimeError:  # the caller's loop is closed
                pass


def _settle(future: asyncio.Future, ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
