"""Sending stored replies to the user's channel: exactly once, and in order.

Every reply is stored before it is sent, claimed by the one sender that may send it, and
marked delivered with that claim; a send that fails leaves it for the redelivery round.
Kept apart from the turns and the people's workflow, which both only hand their stored
replies here, so the one place that sends is the one place that has to be right about it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from .knowledge.retrieval import stored_sources
from .manager_core import ManagerCore, target
from .messages import Conversation, Outbound, utcnow

log = logging.getLogger(__name__)

SENT, SKIPPED, FAILED = "sent", "skipped", "failed"  # what one delivery attempt did


class Delivery:
    def __init__(self, core: ManagerCore) -> None:
        self.core = core
        # Conversations with a reply still undelivered (a failed send, or found by a redelivery
        # round): their next replies wait for those, so the user gets them in order.
        self._behind: set[int] = set()

    async def deliver_all(self, conversation: dict, items: list[tuple[int, Outbound]]) -> None:
        """Send new replies in order, after the conversation's older ones still undelivered.

        The user never gets a reply before an earlier one (an agent's line "joined" must not
        arrive after the bot's next answer): the first send that fails stops the rest, which
        wait, claims released, for the next redelivery round to send them in order.
        """
        if not items:
            return
        core = self.core
        cid = conversation["id"]
        to = target(conversation)
        backlog = await core.db(core.store.undelivered, cid, items[0][0]) if cid in self._behind else []
        for row in backlog:
            if await self._redeliver_one(row) == FAILED:
                break
        else:
            for position, (message_id, outbound) in enumerate(items):
                if await self._deliver(to, message_id, outbound) == FAILED:
                    items = items[position + 1:]
                    break
            else:
                self._behind.discard(cid)
                return
        self._behind.add(cid)
        for message_id, _ in items:  # left for the next round
            await core.db(core.store.release_delivery, message_id, core.sender)

    async def _deliver(self, to: Conversation, message_id: int, outbound: Outbound, claimed: bool = True) -> str:
        """Send one stored reply; at most one sender at a time, marked delivered with its claim.

        A reply stored by this manager is claimed in the transaction that stored it
        (`claimed`); a redelivery round first takes the claim, so a reply that is being
        sent is never sent again beside it, and one that was sent is never sent again.
        Returns SENT, SKIPPED (delivered or withheld meanwhile, or another sender has it)
        or FAILED (still to be sent).
        """
        core = self.core
        channel = core.channels.get(to.channel)
        if channel is None:
            log.warning("no channel %r registered; message %d stays undelivered", to.channel, message_id)
            if claimed:
                await core.db(core.store.release_delivery, message_id, core.sender)
            return FAILED
        if not claimed and not await core.db(core.store.claim_delivery, message_id, core.sender,
                                             core.options.delivery_lease_s):
            return SKIPPED
        try:
            await channel.send(to, outbound)
        except Exception as exc:
            log.warning("delivery of message %d on %s failed: %s", message_id, to.channel, type(exc).__name__)
            await core.db(core.store.release_delivery, message_id, core.sender)
            return FAILED
        await core.db(core.store.finish_delivery, message_id, core.sender)
        return SENT

    async def announce(self, conversation_id: int) -> None:
        """Tell the consoles and what shows the owner on the user's side (a header) who owns it now."""
        core = self.core
        conversation = await core.db(core.store.conversation, conversation_id)
        if conversation is None:
            return
        agent = conversation["assigned_agent"]
        core.emit("status", conversation_id=conversation_id, status=conversation["status"], agent=agent)
        channel = core.channels.get(conversation["channel"])
        send_status = getattr(channel, "send_status", None)
        if send_status is None:
            return
        shown = await core.db(core.store.display_name, agent) if agent else None
        try:
            await send_status(target(conversation), conversation["status"], shown)
        except Exception as exc:
            log.warning("status update on %s failed: %s", conversation["channel"], type(exc).__name__)

    async def redeliver(self, min_age_s: float = 0.0) -> int:
        """Send again the replies stored but not delivered (a platform that was down, a crash).

        Run at start and then every `SNAPDESK_RETRY_INTERVAL_S`: a reply never waits for a
        restart. A reply younger than `min_age_s` is left to its first delivery; one that
        another sender is sending is skipped (see `Store.claim_delivery`).
        """
        core = self.core
        redelivered = 0
        cutoff = utcnow() - timedelta(seconds=min_age_s)
        stopped: set[int] = set()  # conversations whose next reply failed: the later ones wait, in order
        for row in await core.db(core.store.undelivered):
            self._behind.add(row["conversation_id"])
            if row["conversation_id"] in stopped or datetime.fromisoformat(row["created_at"]) > cutoff:
                stopped.add(row["conversation_id"])
                continue
            async with core.send_locks(row["conversation_id"]):
                outcome = await self._redeliver_one(row)
            if outcome == SENT:
                redelivered += 1
            elif outcome == FAILED:
                stopped.add(row["conversation_id"])
        return redelivered

    async def _redeliver_one(self, row: dict) -> str:
        """Send one stored reply again, unless it was delivered or withheld meanwhile."""
        conversation, escalation = await self.core.db(self._redelivery_state, row)
        outbound = Outbound(row["text"], kind=row.get("kind") or "notice",
                            author=row.get("author_name") or row.get("author") or "",
                            message_id=row["id"], reply_to=row.get("reply_to"),
                            reason=escalation["reason"] if escalation else None,
                            confidence=escalation["confidence"] if escalation else None,
                            status=row.get("status_change"), sources=stored_sources(row.get("knowledge")))
        outcome = await self._deliver(target(conversation), row["id"], outbound, claimed=False)
        if outcome == SENT:
            self.core.emit("delivered", conversation_id=conversation["id"], message_id=row["id"])
        return outcome

    def _redelivery_state(self, row: dict) -> tuple[dict, dict | None]:
        """The reply's conversation and, for a hand-over notice, the hand-over it announces."""
        store = self.core.store
        conversation = store.conversation(row["conversation_id"])
        if row.get("kind") != "handover":
            return conversation, None
        escalations = store.escalations(row["conversation_id"])
        matching = [e for e in escalations if e["message_id"] == row.get("reply_to")]
        return conversation, (matching or escalations or [None])[-1]
