"""The conversation core: every channel's messages go through `ConversationManager`.

Promises kept here, whatever the channel:
- an inbound message is stored before anything acknowledges it, once (a redelivered
  event is recognised by channel + platform message id and not answered twice);
- it stays `pending` until its answer or hand-over is stored, so after a crash
  `recover()` finishes exactly the turns that were cut off;
- turns of one conversation run in order, conversations run in parallel, the model and
  the database never block the event loop;
- while a person owns the thread the bot stays silent.

Each workflow is its own part, over one shared `ManagerCore` (the database thread, the
per-conversation locks, the events): `intake`, `turns`, `delivery`, `agents` (what people
do to a conversation) and `maintenance`. The manager builds them and keeps the operations
its callers use; a caller that needs one part's narrower work reaches that part.
"""

from __future__ import annotations

from typing import Any, Callable

from engine.base import Engine
from engine.ocr import OcrReader

from .agent_workflow import AgentWorkflow, NoSuchConversation, NotHandedOver, NotOwner
from .delivery import Delivery
from .escalation import EscalationPolicy
from .intake import Accepted, Intake
from .knowledge.index import KnowledgeBase
from .maintenance import Maintenance
from .manager_core import ManagerCore, ManagerOptions
from .messages import ChannelRegistry, Inbound
from .screenshots import ReadingOptions, Screenshots
from .store import Store
from .template_versions import PublishedTemplates
from .turns import TurnOutcome, Turns

__all__ = ["Accepted", "ConversationManager", "ManagerOptions", "NoSuchConversation", "NotHandedOver", "NotOwner",
           "TurnOutcome"]


class ConversationManager:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        templates: PublishedTemplates,
        policy: EscalationPolicy,
        channels: ChannelRegistry,
        options: ManagerOptions = ManagerOptions(),
        reader: OcrReader | None = None,
        reading: ReadingOptions = ReadingOptions(),
        knowledge: KnowledgeBase | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.templates = templates
        self.policy = policy
        self.channels = channels
        self.options = options
        self.core = ManagerCore(store, templates, channels, options)
        self.delivery = Delivery(self.core)
        self.screenshots = Screenshots(self.core, reader, reading)
        self.intake = Intake(self.core, self.delivery, self.screenshots)
        self.knowledge = knowledge
        self.turns = Turns(self.core, engine, policy, self.delivery, self.screenshots, knowledge)
        self.agents = AgentWorkflow(self.core, self.delivery, self.turns)
        self.maintenance = Maintenance(self.core, self.intake, self.turns, self.delivery, self.screenshots)

    @property
    def listeners(self) -> list[Callable[[str, dict], None]]:
        """Called with (event, data) for every event: metrics and the live consoles listen here."""
        return self.core.listeners

    @property
    def image_decoding(self):
        """The bound on screenshots decoded at once, for whoever else decodes them (/v1)."""
        return self.intake.image_decoding

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a store call on the database thread; it returns once committed."""
        return await self.core.db(fn, *args, **kwargs)

    def close(self) -> None:
        self.core.close()

    async def handle(self, inbound: Inbound) -> TurnOutcome:
        """Store the message, then answer it (or hand over); returns what happened."""
        accepted = await self.intake.accept(inbound)
        if accepted.duplicate:
            return TurnOutcome("duplicate", accepted.message_id, accepted.conversation_id)
        return await self.process(accepted.message_id, accepted.conversation_id)

    # A message's trip -----------------------------------------------------------------
    async def accept(self, inbound: Inbound) -> Accepted:
        """Store the inbound message durably (idempotent); after this it may be acknowledged."""
        return await self.intake.accept(inbound)

    async def process(self, message_id: int, conversation_id: int | None = None) -> TurnOutcome:
        """Answer or hand over one stored user message, after the earlier ones of its thread.
        Its screenshots are read and redacted first, while earlier turns may still run."""
        if self.screenshots.staged:
            await self.screenshots.finish(message_id)
        return await self.turns.process(message_id, conversation_id)

    async def pending_events(self, channel: str) -> list[dict]:
        """A channel's raw events stored but not finished."""
        return await self.intake.pending_events(channel)

    # After a crash, and periodically ---------------------------------------------------
    async def recover(self) -> dict[str, int]:
        """Finish turns cut off by a crash, then deliver replies stored but not sent."""
        return await self.maintenance.recover()

    async def redeliver(self, min_age_s: float = 0.0) -> int:
        """Send again the replies stored but not delivered; returns how many were sent."""
        return await self.delivery.redeliver(min_age_s)

    async def retry_pending(self, min_age_s: float = 0.0) -> int:
        """Try again the turns still pending `min_age_s` after they arrived."""
        return await self.maintenance.retry_pending(min_age_s)

    async def maintain_forever(self, interval_s: float) -> None:
        """Every `interval_s`: retry pending turns, replay unfinished events, redeliver."""
        await self.maintenance.maintain_forever(interval_s)

    # What people do -------------------------------------------------------------------
    async def request_human(self, conversation_id: int, reason: str = "user_request") -> bool:
        """Hand the conversation to the agents' queue; False when a person already has it."""
        return await self.agents.request_human(conversation_id, reason)

    async def claim(self, conversation_id: int, agent: str) -> bool:
        """Assign a waiting conversation to an agent; False if someone else has it."""
        return await self.agents.claim(conversation_id, agent)

    async def transfer(self, conversation_id: int, actor: str, to_agent: str, admin: bool = False) -> None:
        """Give a conversation to another agent (the holder or an admin may)."""
        await self.agents.transfer(conversation_id, actor, to_agent, admin)

    async def agent_reply(self, conversation_id: int, agent: str, text: str, admin: bool = False) -> int:
        """Store an agent's reply and deliver it on the user's channel; returns its id."""
        return await self.agents.agent_reply(conversation_id, agent, text, admin)

    async def add_note(self, conversation_id: int, agent: str, text: str, admin: bool = False) -> int:
        """An internal note: visible to agents only, never delivered to the user."""
        return await self.agents.add_note(conversation_id, agent, text, admin)

    async def resolve(self, conversation_id: int, agent: str, admin: bool = False) -> None:
        await self.agents.resolve(conversation_id, agent, admin)

    async def hand_back(self, conversation_id: int, agent: str, admin: bool = False) -> None:
        """The bot owns the conversation again and answers the questions left waiting."""
        await self.agents.hand_back(conversation_id, agent, admin)
