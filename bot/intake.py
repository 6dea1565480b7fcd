"""Taking a channel's message in: stored durably, once, before anything acknowledges it.

A platform retries what it thinks was lost, so everything here is idempotent on what the
platform calls the message or event. Answering is not done here: a stored message waits as
`pending` for its turn, which is what lets a crash lose nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Awaitable, Callable

from engine.images import ImageRejected, prepare_image
from engine.screenshots import reading_limits

from .delivery import Delivery
from .language import detect_language
from .manager_core import ManagerCore
from .messages import Inbound, utcnow
from .screenshots import Screenshots
from .store import RESOLVED, iso
from .text import clean_user_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Accepted:
    message_id: int
    conversation_id: int
    duplicate: bool


class Intake:
    def __init__(self, core: ManagerCore, delivery: Delivery, screenshots: Screenshots) -> None:
        self.core = core
        self.delivery = delivery
        self.screenshots = screenshots
        self.image_decoding = asyncio.Semaphore(max(1, core.options.image_decodes))
        self._event_replayers: dict[str, Callable[[list[dict]], Awaitable[Any]]] = {}

    async def accept(self, inbound: Inbound) -> Accepted:
        """Store the inbound message durably (idempotent); after this it may be acknowledged."""
        core = self.core
        inbound = replace(inbound, text=clean_user_text(inbound.text), user_name=clean_user_text(inbound.user_name))
        prepared, refused = [], []
        if inbound.images:  # skip image work for a redelivered event
            existing = await core.db(core.store.find_inbound, inbound.channel, inbound.message_id)
            if existing is not None:
                return Accepted(existing["id"], existing["conversation_id"], duplicate=True)
            for data in inbound.images:
                try:
                    async with self.image_decoding:  # bounds memory under a burst of large images
                        prepared.append(await asyncio.to_thread(self._prepare, data))
                except ImageRejected as exc:
                    refused.append(exc.reason)
        language = detect_language(inbound.text)
        row, created, reopened = await core.db(self._store_inbound, inbound, prepared, refused, language)
        if created:
            core.emit("inbound", channel=inbound.channel, conversation_id=row["conversation_id"], message_id=row["id"])
        if reopened:  # a message after a resolve: the bot has the conversation again
            await self.delivery.announce(row["conversation_id"])
        return Accepted(row["id"], row["conversation_id"], duplicate=not created)

    def _prepare(self, data: bytes):
        limits = self.core.options.image_limits
        if self.screenshots.staged:  # read (at a size fit for small text) and redacted before it is stored
            return self.screenshots.stage(prepare_image(data, reading_limits(limits)))
        image = prepare_image(data, limits)
        image.encoded()  # encode here, off the database thread
        return image

    def _store_inbound(self, inbound: Inbound, prepared: list, refused: list[str], language: str):
        store = self.core.store
        with store.transaction():  # the message and its staged screenshots, or neither
            row, created, reopened = self._store_message(inbound, prepared, refused, language)
            staged = [p for p in prepared if isinstance(p, str)]
            if created and staged:
                store.stage_images(row["id"], staged)
        if not created:  # a redelivery that raced the first delivery: its staged files are not needed
            for name in staged:
                (self.screenshots.staging_dir / name).unlink(missing_ok=True)
        return row, created, reopened

    def _store_message(self, inbound: Inbound, prepared: list, refused: list[str], language: str):
        store = self.core.store
        attachment_ids = [store.save_attachment(p.sha256, p.encoded(), p.mime, p.width, p.height)
                          for p in prepared if not isinstance(p, str)]
        conversation = store.conversation_by_key(inbound.channel, inbound.conversation_key)
        if conversation and not inbound.text.strip() and conversation.get("language"):
            language = conversation["language"]  # an image alone keeps the conversation's language
        row, created = store.add_inbound(
            channel=inbound.channel,
            external_key=inbound.conversation_key,
            platform_message_id=inbound.message_id,
            user_id=inbound.user_id,
            user_name=inbound.user_name,
            text=inbound.text,
            attachment_ids=attachment_ids,
            refused_images=refused,
            received_at=inbound.received_at,
            language=language,
        )
        return row, created, created and conversation is not None and conversation["status"] == RESOLVED

    # What a channel asks about its conversations --------------------------------------
    async def conversation_language(self, channel: str, conversation_key: str) -> str | None:
        """The language a conversation speaks ("" when not known yet); None when there is none."""
        conversation = await self.core.db(self.core.store.conversation_by_key, channel, conversation_key)
        return None if conversation is None else conversation["language"] or ""

    async def knows_message(self, channel: str, platform_message_id: str) -> bool:
        """A platform message already stored (it may arrive as two events)."""
        return await self.core.db(self.core.store.find_inbound, channel, platform_message_id) is not None

    async def platform_message_id(self, message_id: int) -> str | None:
        row = await self.core.db(self.core.store.message, message_id)
        return (row or {}).get("platform_message_id") or None

    # Platform events ----------------------------------------------------------------
    async def record_event(self, channel: str, event_key: str, payload: dict) -> bool:
        """Store a raw platform event before acknowledging it; False for a retry of a stored one."""
        return await self.core.db(self.core.store.add_platform_event, channel, event_key, payload)

    async def finish_event(self, channel: str, event_key: str) -> None:
        await self.core.db(self.core.store.finish_platform_event, channel, event_key)

    async def pending_events(self, channel: str) -> list[dict]:
        return await self.core.db(self.core.store.pending_platform_events, channel)

    def on_pending_events(self, channel: str, replay: Callable[[list[dict]], Awaitable[Any]]) -> None:
        """A channel's way to finish its stored events that were acknowledged but not turned
        into messages (a failure after the acknowledgement): the periodic round calls it."""
        self._event_replayers[channel] = replay

    async def replay_events(self, min_age_s: float = 0.0) -> int:
        cutoff = iso(utcnow() - timedelta(seconds=min_age_s))
        replayed = 0
        for channel, replay in list(self._event_replayers.items()):
            rows = [row for row in await self.pending_events(channel) if row["received_at"] <= cutoff]
            if rows:
                log.info("%s: %d stored events were not finished; processing them again", channel, len(rows))
                await replay(rows)
                replayed += len(rows)
        return replayed
