"""Finishing what a crash or a failure left undone, at start and then periodically.

A message stays `pending` until its answer or hand-over is stored, a reply stays undelivered
until a send succeeds, a platform event stays unfinished until it became a message: so
whatever was cut off is found again in the store, and finished here without a restart,
never twice (each turn and send takes the same locks and claims as the first try).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from .delivery import Delivery
from .intake import Intake
from .manager_core import ManagerCore
from .messages import utcnow
from .screenshots import Screenshots
from .turns import Turns

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(self, core: ManagerCore, intake: Intake, turns: Turns, delivery: Delivery,
                 screenshots: Screenshots) -> None:
        self.core = core
        self.screenshots = screenshots
        self.intake = intake
        self.turns = turns
        self.delivery = delivery

    async def recover(self) -> dict[str, int]:
        """Finish turns cut off by a crash, then deliver replies stored but not sent.

        Each message on its own: one that keeps failing stays pending for the periodic round
        and never keeps the others (or the round itself) waiting.
        """
        core = self.core
        await core.db(core.store.release_foreign_deliveries, core.sender)
        try:  # screenshots a crash left waiting for redaction
            await self.screenshots.finish_all()
        except Exception as exc:
            log.warning("staged screenshots not finished after restart: %s", type(exc).__name__)
        pending = await core.db(core.store.pending_inbound)
        reprocessed = failed = 0
        for row in pending:
            try:
                await self.turns.process(row["id"], row["conversation_id"])
                reprocessed += 1
            except Exception as exc:
                failed += 1
                log.warning("message %d is still pending after restart (%s)", row["id"], type(exc).__name__)
        try:
            redelivered = await self.delivery.redeliver()
        except Exception as exc:
            log.warning("redelivery after restart failed: %s", type(exc).__name__)
            redelivered = 0
        return {"reprocessed": reprocessed, "failed": failed, "redelivered": redelivered}

    async def retry_pending(self, min_age_s: float = 0.0) -> int:
        """Turns still pending long after they arrived (every retry failed, e.g. on a database
        locked for minutes) are tried again without waiting for a restart. A conversation whose
        turn is running is left alone; a turn answered meanwhile is never answered twice."""
        core = self.core
        cutoff = utcnow() - timedelta(seconds=min_age_s)
        retried = 0
        for row in await core.db(core.store.pending_inbound):
            if core.turn_locks.busy(row["conversation_id"]) or datetime.fromisoformat(row["created_at"]) > cutoff:
                continue
            try:
                await self.turns.process(row["id"], row["conversation_id"])
                retried += 1
            except Exception as exc:
                log.warning("message %d is still pending (%s)", row["id"], type(exc).__name__)
        return retried

    async def maintenance_round(self, min_age_s: float) -> None:
        """Retry turns left pending, events left unfinished and replies left undelivered;
        a failure in one never stops the others."""
        for step in (self.retry_pending, self.intake.replay_events, self.delivery.redeliver):
            try:
                await step(min_age_s=min_age_s)
            except Exception as exc:  # the next round tries again
                log.warning("maintenance (%s) failed: %s", step.__name__, type(exc).__name__)

    async def maintain_forever(self, interval_s: float) -> None:
        """Every `interval_s`, whatever start-up recovery is doing: one maintenance round."""
        while True:
            await asyncio.sleep(interval_s)
            await self.maintenance_round(interval_s)
