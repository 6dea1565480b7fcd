"""What every workflow of the conversation manager shares.

Intake, turns, delivery, the people's workflow and maintenance are separate classes, but
their promises hold only together: all of them reach the store through one database thread
(one group commit, never the event loop), take the same per-conversation locks (a person's
arrival never falls between an answer being decided and it being sent), claim the replies
they store under one sender id (so a reply is sent once), and report to the same listeners.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.images import ImageLimits

from .context import ContextOptions
from .db_thread import DatabaseThread
from .keyed_locks import KeyedLocks
from .messages import ChannelRegistry, Conversation
from .store import Store, iso
from .template_versions import PublishedTemplates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManagerOptions:
    context: ContextOptions = field(default_factory=ContextOptions)
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    image_decodes: int = 4  # screenshots decoded at once: each may need ~20 bytes per source pixel
    request_timeout_s: float | None = None
    busy_wait_s: float = 30.0
    engine_slots: int | None = None  # turns that may be in the engine at once (None: no limit)
    unknown_confidence_hands_over: bool = True
    kb_tokens: int = 1200  # prompt tokens a turn's help-centre passages may take (0: none)
    kb_passages: int = 4  # most passages in one prompt
    kb_min_score: float = 5.0  # below this a passage is not relevant (calibrated: bench/kb_bench.py)
    public_url: str = ""  # the server's public base URL: a cited article without an address links to /help/{id}
    delivery_lease_s: float = 300.0  # a send claimed longer ago than this (a hung sender) may be tried again


class ManagerCore:
    def __init__(self, store: Store, templates: PublishedTemplates, channels: ChannelRegistry,
                 options: ManagerOptions) -> None:
        self.store = store
        self.templates = templates
        self.channels = channels
        self.options = options
        self._database = DatabaseThread(store)
        # Turns of one conversation run one after another (the whole turn, generation included).
        self.turn_locks = KeyedLocks()
        # Storing a bot turn's outcome and sending it, a change of owner and its status line,
        # a redelivery: one at a time per conversation, so a person's arrival can never fall
        # between an answer being decided and it being sent.
        self.send_locks = KeyedLocks()
        # Called with (event, data) for "inbound", "answer", "handover", "message", "note" and
        # "status": metrics and the live consoles listen here.
        self.listeners: list[Callable[[str, dict], None]] = []
        self.sender = uuid.uuid4().hex  # claims the replies this manager is sending

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a store call on the database thread; it returns once committed."""
        return await self._database.run(fn, *args, **kwargs)

    def close(self) -> None:
        self._database.close()

    def emit(self, event: str, **data: Any) -> None:
        for listener in self.listeners:
            try:
                listener(event, data)
            except Exception as exc:  # a broken listener must not break a conversation
                log.warning("event listener failed on %s: %s", event, type(exc).__name__)

    def sending(self) -> dict[str, Any]:
        """Columns that mark a new reply as being sent by this manager (see `Delivery.deliver`)."""
        return {"delivering_by": self.sender, "delivering_at": iso()}


def target(conversation: dict) -> Conversation:
    """The channel's view of a stored conversation: where a reply goes."""
    return Conversation(
        conversation["id"], conversation["channel"], conversation["external_key"],
        conversation["user_id"] or "", conversation["language"] or "en",
    )
