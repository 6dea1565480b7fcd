"""Reading the text of a screenshot locally, with RapidOCR on ONNX Runtime.

The vision-language model reads screenshots too, but only on a big machine and never the same
way twice; this reading is deterministic, runs on any CPU, and gives what the model cannot:
where each character is, so personal data can be painted over exactly. The detection,
recognition and angle models ship inside the `rapidocr` wheel, so nothing is downloaded (other
model sizes would make it try: keep the defaults).

One RapidOCR pipeline per worker (a pipeline changes its own settings on every call, so two
threads must not share one); workers run off the event loop, at most `workers` at once; a
reading may take `timeout_s`, after waiting for a free worker. A reading that overruns keeps its worker until
it finishes (a thread cannot be stopped), so the waits after it time out too rather than pile up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from PIL import Image

from .text_rows import Box, TextRow, rows_from_fragments

log = logging.getLogger(__name__)

QUEUE_WAITS = 6  # a screenshot waits for a free worker at most this many time limits


class OcrUnavailable(Exception):
    """The reading failed, timed out, or OCR is off: the turn goes on without it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason  # "busy" | "timeout" | "failed"


@dataclass(frozen=True)
class Fragment:
    """One text box as RapidOCR returns it, with the boxes of its words (or characters)."""

    text: str
    box: Box
    score: float
    words: tuple[tuple[str, Box], ...] = ()


def _bounding(points: Sequence[Sequence[float]]) -> Box:
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


def fragments_from_output(output: Any) -> list[Fragment]:
    """RapidOCR's output object as plain fragments (no text found: an empty list)."""
    if output is None or getattr(output, "txts", None) is None:
        return []
    word_results = getattr(output, "word_results", None) or ()
    fragments = []
    for index, (text, score, quad) in enumerate(zip(output.txts, output.scores, output.boxes)):
        words: tuple[tuple[str, Box], ...] = ()
        if index < len(word_results) and word_results[index]:
            words = tuple((w[0], _bounding(w[2])) for w in word_results[index] if w and w[2] is not None)
        fragments.append(Fragment(str(text), _bounding(quad), float(score), words))
    return fragments


def _new_pipeline(threads: int):
    from rapidocr import RapidOCR  # imported here: onnxruntime is slow to import and not always needed

    logging.getLogger("RapidOCR").setLevel(logging.WARNING)
    return RapidOCR(params={
        "Global.log_level": "warning",
        "Global.return_word_box": True,
        "EngineConfig.onnxruntime.intra_op_num_threads": threads,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
    })


def _warm_up_image() -> Image.Image:
    from PIL import ImageDraw

    image = Image.new("RGB", (640, 360), "white")  # a small page: a tiny one makes the detector upscale it
    ImageDraw.Draw(image).text((20, 20), "Snapdesk 4012", fill="black")
    return image


class OcrReader:
    """Loaded once, warmed up on one image at start; `read` is safe from the event loop."""

    def __init__(self, workers: int = 1, timeout_s: float = 20.0, threads_per_worker: int | None = None) -> None:
        self.workers = max(1, workers)
        self.timeout_s = timeout_s
        self.threads = threads_per_worker or max(1, (os.cpu_count() or 2) // self.workers)
        self._pipelines: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(self.workers)
        self._executor: ThreadPoolExecutor | None = None
        self._loaded = False
        self._lock = threading.Lock()
        self.stats = {"read": 0, "failed": 0, "timeout": 0, "busy": 0}

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        """Build every worker's pipeline and read one image with each (seconds: run it in a thread)."""
        with self._lock:
            if self._loaded:
                return
            warm = _warm_up_image()
            for _ in range(self.workers):
                pipeline = _new_pipeline(self.threads)
                pipeline(warm)
                self._pipelines.put(pipeline)
            self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="snapdesk-ocr")
            self._loaded = True

    def read_sync(self, image: Image.Image) -> list[TextRow]:
        """Read one image in the calling thread (for the command line and benchmarks)."""
        if not self._loaded:
            self.load()
        return rows_from_fragments(self._run(image))

    def _run(self, image: Image.Image) -> list[Fragment]:
        pipeline = self._pipelines.get()
        try:
            return fragments_from_output(pipeline(image))
        finally:
            self._pipelines.put(pipeline)

    def _job(self, image: Image.Image) -> list[TextRow]:
        try:
            return rows_from_fragments(self._run(image))
        finally:
            self._slots.release()

    async def read(self, image: Image.Image) -> list[TextRow]:
        """The image's text rows; OcrUnavailable when it cannot be read within the time limit."""
        if not self._loaded:  # a screenshot that arrives while the reader warms up waits for it
            try:
                await asyncio.to_thread(self.load)
            except Exception as exc:
                self.stats["failed"] += 1
                raise OcrUnavailable("failed", f"the OCR models did not load: {exc!r}") from exc
        # A free worker, waited for in a thread so the event loop never blocks. A burst of
        # screenshots queues here: a screenshot not read is kept unredacted, so the queue may
        # take several readings' time before it gives up.
        queue_wait_s = QUEUE_WAITS * self.timeout_s
        acquiring = asyncio.get_running_loop().run_in_executor(None, self._slots.acquire, True, queue_wait_s)
        try:
            got = await asyncio.shield(acquiring)
        except asyncio.CancelledError:
            # The waiting thread may still get the worker after its caller gave up: hand it back then.
            acquiring.add_done_callback(self._release_if_acquired)
            raise
        if not got:
            self.stats["busy"] += 1
            raise OcrUnavailable("busy", f"no OCR worker free within {queue_wait_s:g} s")
        deadline = time.monotonic() + self.timeout_s
        try:
            assert self._executor is not None
            future = asyncio.get_running_loop().run_in_executor(self._executor, self._job, image)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda done: done.cancelled() or done.exception())  # an overrun's failure is not lost noise
        try:
            rows = await asyncio.wait_for(asyncio.shield(future), max(0.01, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            self.stats["timeout"] += 1
            raise OcrUnavailable("timeout", f"reading took over {self.timeout_s:g} s") from None
        except Exception as exc:
            self.stats["failed"] += 1
            raise OcrUnavailable("failed", repr(exc)) from exc
        self.stats["read"] += 1
        return rows

    def _release_if_acquired(self, acquiring) -> None:
        if not acquiring.cancelled() and acquiring.exception() is None and acquiring.result():
            self._slots.release()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
