"""A message's screenshots, read and redacted before anyone sees them.

Reading a screenshot takes a second or two, too long to hold a platform's acknowledgement, so
an accepted message's screenshots first wait in a private staging directory (never served,
never attached to the message) and are listed in the same transaction that stores the
message. Finishing them reads each one, paints personal data out, stores only the redacted
image with what was read, and attaches it to the message: one compare-and-set, so two workers
(the message's own task and its turn) never attach twice. The staged file is removed after; a
crash in between leaves the staged list, which is finished at the next start.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from engine.images import PreparedImage
from engine.ocr import OcrReader, OcrUnavailable
from engine.screenshots import ScreenshotReading, fit_reading, read_screenshot
from engine.sensitive import KINDS

from .keyed_locks import KeyedLocks
from .manager_core import ManagerCore, target

log = logging.getLogger(__name__)

STAGING = "staging"
PRIVATE_FILE = 0o600

HIDDEN_NOTICE = {
    "en": "To protect you, I hid personal data in your screenshot (such as card numbers, e-mail addresses "
    "or phone numbers) before anyone sees it.",
    "zh": "为保护您的隐私，我已在截图中遮盖了个人信息（如银行卡号、邮箱或电话号码），其他人不会看到。",
}


def hidden_notice(language: str) -> str:
    return HIDDEN_NOTICE.get(language, HIDDEN_NOTICE["en"])


@dataclass(frozen=True)
class ReadingOptions:
    ocr: bool = True
    redact: bool = True
    kinds: tuple[str, ...] = KINDS


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class Screenshots:
    def __init__(self, core: ManagerCore, reader: OcrReader | None, options: ReadingOptions) -> None:
        self.core = core
        self.reader = reader
        self.options = options
        self.staging_dir = core.store.data_dir / STAGING
        self._finishing = KeyedLocks()
        # Staged files older than this manager are a crash's leftovers; newer ones may belong to a
        # message being stored right now (file first, then its row).
        self._started = time.time()

    @property
    def staged(self) -> bool:
        """Whether accepted screenshots wait to be read (OCR on) or are stored as they come."""
        return self.options.ocr and self.reader is not None

    # At intake (worker thread) ------------------------------------------------------------
    def stage(self, image: PreparedImage) -> str:
        """Write one decoded screenshot to the private staging directory; its file name."""
        self.staging_dir.mkdir(mode=0o700, exist_ok=True)
        name = f"{uuid.uuid4().hex}.png"
        descriptor = os.open(self.staging_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(image.encoded())
            handle.flush()
            os.fsync(handle.fileno())
        return name

    # Finishing -----------------------------------------------------------------------------
    async def finish(self, message_id: int) -> bool:
        """Read, redact and attach a message's staged screenshots; False when there were none."""
        async with self._finishing(message_id):
            staged = await self.core.db(self.core.store.staged_images, message_id)
            if not staged:
                return False
            attached, unreadable = [], 0
            for row in staged:
                path = self.staging_dir / row["file"]
                try:
                    reading = await self.read(await asyncio.to_thread(_load, path))
                except FileNotFoundError:
                    log.error("staged screenshot %s of message %d is missing", row["file"], message_id)
                    continue
                attached.append(await asyncio.to_thread(self._save, reading))
                unreadable += reading.unreadable
            conversation = await self.core.db(self._attach, message_id, attached, unreadable)
            for row in staged:
                (self.staging_dir / row["file"]).unlink(missing_ok=True)
            if conversation is None:
                return False
            # The consoles and the user's own pages show the message again, with its screenshots.
            self.core.emit("message", conversation_id=conversation["id"], message_id=message_id, screenshots=True)
            await self._tell_channel(conversation, message_id)
            return True

    async def _tell_channel(self, conversation: dict, message_id: int) -> None:
        ready = getattr(self.core.channels.get(conversation["channel"]), "send_screenshots_ready", None)
        if ready is not None:
            try:
                await ready(target(conversation), message_id)
            except Exception as exc:  # a courtesy refresh: never fail the message for it
                log.warning("screenshot refresh on %s failed: %s", conversation["channel"], type(exc).__name__)

    async def read(self, image: Image.Image) -> ScreenshotReading:
        """The reading of one screenshot; without its text when OCR is off, failed or timed out."""
        rows, started, outcome = None, time.perf_counter(), "read"
        if self.staged:
            try:
                rows = await self.reader.read(image)
            except OcrUnavailable as exc:
                log.warning("screenshot not read (%s): it is kept as sent and the turn goes on without its text", exc)
                outcome = exc.reason
        ocr_ms = (time.perf_counter() - started) * 1000
        reading = await asyncio.to_thread(self._reading, image, rows, ocr_ms)
        self.core.emit("screenshot_read", outcome=outcome, redacted=[r.kind for r in reading.redactions])
        return reading

    def _reading(self, image: Image.Image, rows, ocr_ms: float) -> ScreenshotReading:
        reading = read_screenshot(image, rows, self.options.kinds, redact=self.options.redact, ocr_ms=ocr_ms)
        return fit_reading(reading, self.core.options.image_limits.max_pixels)

    def _save(self, reading: ScreenshotReading) -> tuple[str, bytes, int, int, ScreenshotReading]:
        data = _png(reading.image)
        return hashlib.sha256(data).hexdigest(), data, reading.image.width, reading.image.height, reading

    def _attach(self, message_id: int, attached: list, unreadable: int) -> dict | None:
        """The conversation once attached; None when another worker attached them first."""
        store = self.core.store
        with store.transaction():
            ids = []
            for sha256, data, width, height, reading in attached:
                attachment_id = store.save_attachment(sha256, data, "image/png", width, height)
                # Recorded even when it could not be read, so agents see it was not checked.
                store.record_reading(attachment_id, reading.details(), reading.text, len(reading.redactions),
                                     reading.unreadable)
                ids.append(attachment_id)
            if not store.finish_staged(message_id, ids, unreadable):
                return None
            return store.conversation(store.message(message_id)["conversation_id"])

    async def finish_all(self) -> int:
        """At start: finish what a crash left staged, and remove staged files nothing lists that
        were written before this start (a message accepted meanwhile writes its file first)."""
        rows = await self.core.db(self.core.store.staged_images)
        listed = {row["file"] for row in rows}
        if self.staging_dir.is_dir():
            for path in self.staging_dir.iterdir():
                if path.name not in listed and _written_before(path, self._started):
                    path.unlink(missing_ok=True)
        finished = 0
        for message_id in dict.fromkeys(row["message_id"] for row in rows):
            finished += await self.finish(message_id)
        return finished


def _written_before(path: Path, moment: float) -> bool:
    try:
        return path.stat().st_mtime < moment
    except FileNotFoundError:
        return False


def _load(path: Path) -> Image.Image:
    with Image.open(path, formats=["PNG"]) as image:
        return image.convert("RGB")
