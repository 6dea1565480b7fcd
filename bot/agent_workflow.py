"""What people do to a conversation: the user asks for a person, agents claim, transfer,
reply, add notes, resolve or hand back, the user starts over or rates the help.

Every change of owner is one compare-and-set transaction on the database thread: it reads
the conversation, checks who may make the change, moves `owner_seq` on and stores the
status line the user will see; the line is delivered after the commit, under the
conversation's send lock, so a bot answer decided meanwhile is either sent before the
person arrives or kept as the person's draft, never both.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from .context import template_values
from .delivery import Delivery
from .manager_core import ManagerCore
from .messages import Outbound
from .status_lines import status_line
from .store import BOT, CLAIMED, HUMAN_OWNED, RESOLVED, WAITING, iso
from .templates import TemplateError
from .turns import Turns, handover_message

log = logging.getLogger(__name__)


class NoSuchConversation(LookupError):
    pass


class NotOwner(Exception):
    """Another agent holds the conversation; only they (or an admin) may change it."""

    def __init__(self, holder: str, shown: str) -> None:
        self.holder = holder
        super().__init__(f"{shown} has this conversation.")


class NotHandedOver(Exception):
    """The bot owns the conversation: there is nothing for a person to hand back or transfer."""


class AgentWorkflow:
    def __init__(self, core: ManagerCore, delivery: Delivery, turns: Turns) -> None:
        self.core = core
        self.store = core.store
        self.templates = core.templates
        self.delivery = delivery
        self.turns = turns
        self._background: set[asyncio.Task] = set()  # answers started by a hand back, kept until done

    def _status_message(self, conversation: dict, status: str, agent: str | None) -> tuple[int, Outbound]:
        if status == CLAIMED and conversation["status"] != CLAIMED:
            # The bot's replies not yet delivered (a platform that was down) would now arrive
            # after the person joined: they stay in the thread for the agent, unsent.
            self.store.withhold_bot_replies(conversation["id"])
        shown = self.store.display_name(agent) if agent else ""
        text = status_line(status, conversation["language"] or "en", shown)
        message_id = self.store.add_message(conversation["id"], "system", text, kind="status", author=agent,
                                            author_name=shown, status_change=status, **self.core.sending())
        return message_id, Outbound(text, kind="status", author=shown, message_id=message_id, status=status)

    def _check_holder(self, conversation: dict | None, actor: str, admin: bool) -> dict:
        if conversation is None:
            raise NoSuchConversation()
        holder = conversation["assigned_agent"]
        if conversation["status"] == CLAIMED and holder != actor and not admin:
            raise NotOwner(holder, self.store.display_name(holder))
        return conversation

    async def _transition(self, conversation_id: int,
                          apply: Callable[[], tuple[int, list[tuple[int, Outbound]]] | None]) -> bool:
        """Run one ownership change; deliver its status line and tell everyone who owns it now."""
        async with self.core.send_locks(conversation_id):
            result = await self.core.db(apply)
            if result is None:
                return False
            _, out = result
            if out:
                conversation = await self.core.db(self.store.conversation, conversation_id)
                await self.delivery.deliver_all(conversation, out)
            for message_id, _ in out:
                self.core.emit("message", conversation_id=conversation_id, message_id=message_id)
        await self.delivery.announce(conversation_id)
        return True

    async def request_human(self, conversation_id: int, reason: str = "user_request") -> bool:
        """The user asked for a person without writing (a "talk to a person" button, /human):
        the thread goes to the agents' queue with the template's hand-over message.
        False when a person already has it."""
        conversation = await self.core.db(self.store.conversation, conversation_id)
        if conversation is None:
            raise NoSuchConversation()
        try:
            rendered = await self.core.db(self.templates.render_for, conversation["channel"],
                                          conversation["language"] or "en", conversation=conversation,
                                          **template_values(conversation))
        except TemplateError:
            rendered = None
        text = handover_message(rendered, conversation["language"] or "en")

        def apply():
            with self.store.transaction():
                current = self.store.conversation(conversation_id)
                if current["status"] in HUMAN_OWNED:
                    return None
                if current["status"] == RESOLVED:  # asking again after a resolve opens a new episode
                    self.store.update_conversation(conversation_id, episode=current["episode"] + 1)
                self.store.set_owner(conversation_id, WAITING, None)
                self.store.add_escalation(conversation_id, self.store.last_user_message_id(conversation_id), reason,
                                          "user asked for a person", None, "")
                notice_id = self.store.add_message(conversation_id, "system", text, kind="handover",
                                                   **self.core.sending())
                return conversation_id, [(notice_id, Outbound(text, kind="handover", message_id=notice_id,
                                                              reason=reason))]
        if not await self._transition(conversation_id, apply):
            return False
        self.core.emit("handover", conversation_id=conversation_id, message_id=None, channel=conversation["channel"],
                       reason=reason, generation=None)
        return True

    async def ask_for_person(self, channel: str, conversation_key: str) -> bool:
        """`request_human` by the conversation's key on its channel (False: a person has it already)."""
        conversation = await self.core.db(self.store.conversation_by_key, channel, conversation_key)
        if conversation is None:
            raise NoSuchConversation()
        return await self.request_human(conversation["id"])

    async def claim(self, conversation_id: int, agent: str) -> bool:
        """Assign a waiting conversation to an agent; False if someone else has it."""
        def apply():
            with self.store.transaction():
                conversation = self.store.conversation(conversation_id)
                if conversation is None:
                    raise NoSuchConversation()
                if conversation["status"] != WAITING:
                    return None
                self.store.set_owner(conversation_id, CLAIMED, agent)
                escalation = self.store.open_escalation(conversation_id)
                if escalation:
                    self.store.update_escalation(escalation["id"], status="claimed", claimed_by=agent, claimed_at=iso())
                self.store.audit(agent, "claim", f"conversation:{conversation_id}")
                return conversation_id, [self._status_message(conversation, CLAIMED, agent)]
        return await self._transition(conversation_id, apply)

    async def transfer(self, conversation_id: int, actor: str, to_agent: str, admin: bool = False) -> None:
        """Give a conversation to another agent (the holder or an admin may)."""
        def apply():
            with self.store.transaction():
                conversation = self._check_holder(self.store.conversation(conversation_id), actor, admin)
                if conversation["status"] not in HUMAN_OWNED:
                    raise NotHandedOver()
                if conversation["status"] == CLAIMED and conversation["assigned_agent"] == to_agent:
                    return None
                self.store.set_owner(conversation_id, CLAIMED, to_agent)
                escalation = self.store.open_escalation(conversation_id)
                if escalation:
                    self.store.update_escalation(escalation["id"], status="claimed", claimed_by=to_agent,
                                                 claimed_at=iso())
                self.store.audit(actor, "transfer", f"conversation:{conversation_id}", to=to_agent)
                return conversation_id, [self._status_message(conversation, CLAIMED, to_agent)]
        await self._transition(conversation_id, apply)

    async def agent_reply(self, conversation_id: int, agent: str, text: str, admin: bool = False) -> int:
        """Store an agent's reply and deliver it on the user's channel.

        An agent who does not hold the conversation takes it first (unless someone else
        holds it: NotOwner; an admin may answer in another agent's conversation)."""
        def apply():
            with self.store.transaction():
                conversation = self._check_holder(self.store.conversation(conversation_id), agent, admin)
                out = []
                if conversation["status"] != CLAIMED:
                    self.store.set_owner(conversation_id, CLAIMED, agent)
                    escalation = self.store.open_escalation(conversation_id)
                    if escalation:
                        self.store.update_escalation(escalation["id"], status="claimed", claimed_by=agent,
                                                     claimed_at=iso())
                    out.append(self._status_message(conversation, CLAIMED, agent))
                shown = self.store.display_name(agent)
                message_id = self.store.add_message(conversation_id, "agent", text, author=agent, author_name=shown,
                                                    kind="agent", **self.core.sending())
                self.store.audit(agent, "reply", f"conversation:{conversation_id}")
                out.append((message_id, Outbound(text, kind="agent", author=shown, message_id=message_id)))
                return conversation_id, out
        async with self.core.send_locks(conversation_id):
            _, out = await self.core.db(apply)
            conversation = await self.core.db(self.store.conversation, conversation_id)
            await self.delivery.deliver_all(conversation, out)
        for message_id, _ in out:
            self.core.emit("message", conversation_id=conversation_id, message_id=message_id)
        if len(out) > 1:
            await self.delivery.announce(conversation_id)
        return out[-1][0]

    async def add_note(self, conversation_id: int, agent: str, text: str, admin: bool = False) -> int:
        """An internal note: visible to agents only, never delivered to the user."""
        def apply() -> int:
            with self.store.transaction():
                self._check_holder(self.store.conversation(conversation_id), agent, admin)
                note_id = self.store.add_message(conversation_id, "note", text, author=agent, kind="note", delivered=1)
                self.store.audit(agent, "note", f"conversation:{conversation_id}")
                return note_id
        note_id = await self.core.db(apply)
        self.core.emit("note", conversation_id=conversation_id, message_id=note_id)
        return note_id

    def _finish_human(self, conversation_id: int, actor: str, status: str, action: str, admin: bool,
                      line: bool = True):
        """The shared part of resolve, hand back and restart, inside the caller's transaction."""
        conversation = self._check_holder(self.store.conversation(conversation_id), actor, admin)
        if conversation["status"] == status:
            return None
        self.store.set_owner(conversation_id, status, None)
        escalation = self.store.open_escalation(conversation_id)
        if escalation:
            self.store.update_escalation(
                escalation["id"], status="resolved" if status == RESOLVED else "returned",
                resolved_by=actor, resolved_at=iso(),
            )
        self.store.audit(actor, action, f"conversation:{conversation_id}")
        return conversation_id, [self._status_message(conversation, status, None)] if line else []

    async def restart(self, channel: str, conversation_key: str) -> bool:
        """The user starts over (e.g. /reset): the next message opens a fresh bot episode."""
        conversation = await self.core.db(self.store.conversation_by_key, channel, conversation_key)
        if conversation is None:
            return False

        def apply():
            with self.store.transaction():
                return self._finish_human(conversation["id"], "user", RESOLVED, "restart", admin=True, line=False)
        await self._transition(conversation["id"], apply)
        return True

    async def resolve(self, conversation_id: int, agent: str, admin: bool = False) -> None:
        def apply():
            with self.store.transaction():
                return self._finish_human(conversation_id, agent, RESOLVED, "resolve", admin)
        await self._transition(conversation_id, apply)

    async def hand_back(self, conversation_id: int, agent: str, admin: bool = False) -> None:
        """The bot owns the conversation again; it tells the user so and answers the
        questions the user asked after the agent's last reply."""
        waiting: list[int] = []

        def apply():
            with self.store.transaction():
                conversation = self.store.conversation(conversation_id)
                if conversation is not None and conversation["status"] not in HUMAN_OWNED:
                    raise NotHandedOver()
                result = self._finish_human(conversation_id, agent, BOT, "hand_back", admin)
                waiting.extend(self.store.reopen_waiting_questions(conversation_id))
                return result
        await self._transition(conversation_id, apply)
        if waiting:
            self._spawn(self._answer_waiting(conversation_id, waiting[-1]))

    async def _answer_waiting(self, conversation_id: int, message_id: int) -> None:
        try:
            await self.turns.process(message_id, conversation_id)
        except Exception as exc:  # it stays pending: the periodic round tries again
            log.warning("message %d is still pending after hand back (%s)", message_id, type(exc).__name__)

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def release_claims(self, agent: str) -> list[int]:
        """A disabled account's conversations go back to the queue, and the consoles see it."""
        released = await self.core.db(self.store.release_claims, agent)
        for conversation_id in released:
            await self.delivery.announce(conversation_id)
        return released

    async def record_feedback(self, channel: str, conversation_key: str, helpful: bool, comment: str) -> bool:
        """The user's verdict after a resolve; False when there is nothing to rate (or it was rated)."""
        def apply() -> int | None:
            conversation = self.store.conversation_by_key(channel, conversation_key)
            if conversation is None or conversation["status"] != RESOLVED:
                return None
            if not self.store.add_feedback(conversation["id"], conversation["episode"], helpful, comment):
                return None
            return conversation["id"]
        conversation_id = await self.core.db(apply)
        if conversation_id is None:
            return False
        self.core.emit("feedback", conversation_id=conversation_id, helpful=helpful)
        return True

