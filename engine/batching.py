"""The worker thread that owns the model and groups waiting requests into batches.

A GPU (and even a CPU) decodes eight sequences in little more time than one, so
requests that arrive within a few milliseconds of each other are run as one batch.
The queue in front of it is bounded: when it is full a request is refused at once
(`EngineOverloaded`) instead of waiting without end.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

from .base import EngineCancelled, EngineClosed, EngineError, EngineOverloaded, GenerationRequest, GenerationStream

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """One request waiting for, or going through, the model."""

    request: GenerationRequest
    stream: GenerationStream
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    def fail(self, error: BaseException) -> None:
        self.stream.push_error(error)


@dataclass(eq=False)
class _Call:
    """A function to run on the worker thread, between batches (exclusive use of the model)."""

    fn: Callable[[], Any]
    future: Future


_STOP = object()


class BatchWorker:
    """Runs `run_batch(jobs)` on one thread, for batches of compatible jobs.

    `batch_key(request)` says which requests may share a `generate` call (same decoding
    settings); a job whose key differs from the batch being assembled waits for the next one.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Job]], None],
        batch_key: Callable[[GenerationRequest], Hashable],
        *,
        max_queue: int = 64,
        max_batch_size: int = 8,
        batch_window_ms: float = 2.0,
        name: str = "snapdesk-engine",
    ) -> None:
        self._run_batch = run_batch
        self._batch_key = batch_key
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._held: deque[Job] = deque()
        self.max_batch_size = max(1, max_batch_size)
        self.batch_window = max(0.0, batch_window_ms) / 1000.0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._closed = False
        self._batch_started: float | None = None
        self.on_batch: Callable[[int], None] | None = None

    def start(self) -> None:
        self._thread.start()

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting the batch being generated)."""
        return self._queue.qsize() + len(self._held)

    @property
    def busy_for_s(self) -> float:
        """How long the batch being generated has been running (0 when idle)."""
        started = self._batch_started
        return 0.0 if started is None else time.perf_counter() - started

    def submit(self, job: Job) -> None:
        if self._closed:
            raise EngineClosed("the engine has been stopped")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise EngineOverloaded(
                f"the engine queue is full ({self._queue.maxsize} requests waiting)"
            ) from None

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run `fn` on the worker thread, between batches, and return its future.

        For work that needs the model to itself (measurements, one-off forward passes):
        the model's thread-local state (e.g. the CPU thread pool) is the one requests use.
        """
        future: Future = Future()
        if self._closed:
            future.set_exception(EngineClosed("the engine has been stopped"))
            return future
        self._queue.put(_Call(fn, future))
        return future

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        while True:  # make room for the stop marker without blocking
            try:
                self._queue.put_nowait(_STOP)
                break
            except queue.Full:
                self._fail_one_waiting()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._drain(EngineClosed("the engine has been stopped"))

    def _fail_one_waiting(self) -> None:
        try:
            job = self._queue.get_nowait()
        except queue.Empty:
            return
        if isinstance(job, Job):
            job.fail(EngineClosed("the engine has been stopped"))

    def _drain(self, error: EngineError) -> None:
        while self._held:
            held = self._held.popleft()
            if isinstance(held, _Call):
                held.future.set_exception(error)
            else:
                held.fail(error)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(job, Job):
                job.fail(error)
            elif isinstance(job, _Call):
                job.future.set_exception(error)

    def _next_batch(self) -> list[Job] | None:
        """Block for a first job, then gather compatible ones for up to the batch window."""
        first = self._held.popleft() if self._held else self._queue.get()
        while isinstance(first, _Call):
            self._run_call(first)
            first = self._held.popleft() if self._held else self._queue.get()
        if first is _STOP:
            return None
        batch = [first]
        key = self._batch_key(first.request)
        for _ in range(len(self._held)):
            if len(batch) >= self.max_batch_size:
                break
            job = self._held.popleft()
            if isinstance(job, Job) and self._batch_key(job.request) == key:
                batch.append(job)
            else:
                self._held.append(job)
        deadline = time.perf_counter() + self.batch_window
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                self._queue.put(_STOP)  # handled after this batch
                break
            if isinstance(job, Job) and self._batch_key(job.request) == key:
                batch.append(job)
            else:
                self._held.append(job)
        return batch

    @staticmethod
    def _run_call(call: _Call) -> None:
        if not call.future.set_running_or_notify_cancel():
            return
        try:
            call.future.set_result(call.fn())
        except BaseException as exc:
            call.future.set_exception(exc)

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = []
            for job in batch:
                if job.cancelled:
                    job.fail(EngineCancelled("the request was cancelled before it started"))
                else:
                    live.append(job)
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            self._batch_started = time.perf_counter()
            try:
                self._run_batch(live)
            except BaseException as exc:  # never let the worker die: fail the batch instead
                log.exception("engine batch failed")
                for job in live:
                    job.fail(exc if isinstance(exc, EngineError) else EngineError(str(exc) or type(exc).__name__))
            finally:
                self._batch_started = None
