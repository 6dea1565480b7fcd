"""The conversation core: every channel's messages go through `ConversationManager`.

Promises kept here, whatever the channel:
- an inbound message is stored before anything acknowledges it, once (a redelivered
  event is recognised by channel + platform message id and not answered twice);
- it stays `pending` until its answer or hand-over is stored, so after a crash
  `recover()` finishes exactly the turns that were cut off;
- turns of one conversation run in order, conversations run in parallel, the model and
  the database never block the event loop;
- while a person owns the thread the bot stays silent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
import uuid
from typing import Any, Awaitable, Callable, Literal

from engine.base import Engine, EngineError, EngineOverloaded, Generation, SamplingParams
from engine.images import ImageLimits, ImageRejected, prepare_image

from .db_thread import DatabaseThread
from .context import ContextBuilder, ContextOptions, attachment_ids, describe_from_answer, template_values
from .escalation import Decision, EscalationPolicy, Reason
from .keyed_locks import KeyedLocks
from .language import detect_language
from .masking import mask_card_numbers
from .messages import ChannelRegistry, Conversation, Inbound, Outbound, utcnow
from .text import clean_user_text
from .store import (
    ANSWERED,
    BOT,
    CLAIMED,
    FOR_AGENT,
    HANDED_OVER,
    HUMAN_OWNED,
    PENDING,
    RESOLVED,
    WAITING,
    Store,
    iso,
)
from .status_lines import status_line
from .template_versions import PublishedTemplates
from .templates import TemplateError

log = logging.getLogger(__name__)

TURN_RETRY_PAUSES_S = (0.5, 2.0, 5.0)
# Pauses between tries while the engine queue is full (doubling up to the maximum).
BUSY_FIRST_PAUSE_S = 0.25
BUSY_MAX_PAUSE_S = 2.0
SENT, SKIPPED, FAILED = "sent", "skipped", "failed"  # what one delivery attempt did
OutcomeKind = Literal["answered", "handed_over", "for_agent", "duplicate", "already_done"]


@dataclass(frozen=True)
class ManagerOptions:
    context: ContextOptions = field(default_factory=ContextOptions)
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    image_decodes: int = 4  # screenshots decoded at once: each may need ~20 bytes per source pixel
    request_timeout_s: float | None = None
    busy_wait_s: float = 30.0
    engine_slots: int | None = None  # turns that may be in the engine at once (None: no limit)
    unknown_confidence_hands_over: bool = True
    delivery_lease_s: float = 300.0  # a send claimed longer ago than this (a hung sender) may be tried again


@dataclass(frozen=True)
class Accepted:
    message_id: int
    conversation_id: int
    duplicate: bool


@dataclass(frozen=True)
class TurnOutcome:
    kind: OutcomeKind
    message_id: int
    conversation_id: int
    reply: str = ""
    reason: str | None = None
    detail: str = ""
    confidence: float | None = None
    notices: tuple[str, ...] = ()


def _fallback_handover(language: str) -> str:
    return "正在为您转接人工客服，请稍候。" if language == "zh" else "I'm passing this to a member of our support team. A person will reply here."


class ConversationManager:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        templates: PublishedTemplates,
        policy: EscalationPolicy,
        channels: ChannelRegistry,
        options: ManagerOptions = ManagerOptions(),
    ) -> None:
        self.store = store
        self.engine = engine
        self.templates = templates
        self.policy = policy
        self.channels = channels
        self.options = options
        self._database = DatabaseThread(store)
        # Turns of one conversation run one after another (the whole turn, generation included).
        self._turn_locks = KeyedLocks()
        # Storing a bot turn's outcome and sending it, a change of owner and its status line,
        # a redelivery: one at a time per conversation, so a person's arrival can never fall
        # between an answer being decided and it being sent.
        self._send_locks = KeyedLocks()
        self.context = ContextBuilder(engine, options.context)
        # Called with (event, data) for "inbound", "answer", "handover", "message", "note" and
        # "status": metrics and the live consoles listen here.
        self.listeners: list[Callable[[str, dict], None]] = []
        self._sender = uuid.uuid4().hex  # claims the replies this manager is sending
        self._policies: dict[tuple[str, ...], EscalationPolicy] = {}
        self._background: set[asyncio.Task] = set()
        self._event_replayers: dict[str, Callable[[list[dict]], Awaitable[Any]]] = {}
        # Conversations with a reply still undelivered (a failed send, or found by a redelivery
        # round): their next replies wait for those, so the user gets them in order.
        self._behind: set[int] = set()
        self._slots = asyncio.Semaphore(options.engine_slots) if options.engine_slots else None
        self.image_decoding = asyncio.Semaphore(max(1, options.image_decodes))

    async def db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a store call on the database thread; it returns once committed."""
        return await self._database.run(fn, *args, **kwargs)

    def close(self) -> None:
        self._database.close()

    # Intake -----------------------------------------------------------------------
    async def handle(self, inbound: Inbound) -> TurnOutcome:
        """Store the message, then answer it (or hand over); returns what happened."""
        accepted = await self.accept(inbound)
        if accepted.duplicate:
            return TurnOutcome("duplicate", accepted.message_id, accepted.conversation_id)
        return await self.process(accepted.message_id, accepted.conversation_id)

    async def accept(self, inbound: Inbound) -> Accepted:
        """Store the inbound message durably (idempotent); after this it may be acknowledged."""
        inbound = replace(inbound, text=clean_user_text(inbound.text), user_name=clean_user_text(inbound.user_name))
        prepared, refused = [], []
        if inbound.images:  # skip image work for a redelivered event
            existing = await self.db(self.store.find_inbound, inbound.channel, inbound.message_id)
            if existing is not None:
                return Accepted(existing["id"], existing["conversation_id"], duplicate=True)
            for data in inbound.images:
                try:
                    async with self.image_decoding:  # bounds memory under a burst of large images
                        prepared.append(await asyncio.to_thread(self._prepare, data))
                except ImageRejected as exc:
                    refused.append(exc.reason)
        language = detect_language(inbound.text)
        row, created, reopened = await self.db(self._store_inbound, inbound, prepared, refused, language)
        if created:
            self._emit("inbound", channel=inbound.channel, conversation_id=row["conversation_id"], message_id=row["id"])
        if reopened:  # a message after a resolve: the bot has the conversation again
            await self.announce(row["conversation_id"])
        return Accepted(row["id"], row["conversation_id"], duplicate=not created)

    def _prepare(self, data: bytes):
        image = prepare_image(data, self.options.image_limits)
        image.encoded()  # encode here, off the database thread
        return image

    def _store_inbound(self, inbound: Inbound, prepared: list, refused: list[str], language: str):
        attachment_ids = [
            self.store.save_attachment(p.sha256, p.encoded(), p.mime, p.width, p.height) for p in prepared
        ]
        conversation = self.store.conversation_by_key(inbound.channel, inbound.conversation_key)
        if conversation and not inbound.text.strip() and conversation.get("language"):
            language = conversation["language"]  # an image alone keeps the conversation's language
        row, created = self.store.add_inbound(
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

    # Turns ------------------------------------------------------------------------
    async def process(self, message_id: int, conversation_id: int | None = None) -> TurnOutcome:
        """Answer or hand over one stored user message, after the earlier ones of its thread."""
        if conversation_id is None:
            conversation_id = (await self.db(self.store.message, message_id))["conversation_id"]
        async with self._turn_locks(conversation_id):
            pending = await self.db(self.store.pending_up_to, conversation_id, message_id)
            outcome = None
            for row in pending:
                result = await self._turn_with_retries(row)
                if row["id"] == message_id:
                    outcome = result
            if outcome is None:
                current = await self.db(self.store.message, message_id)
                kind: OutcomeKind = "for_agent" if current["status"] == FOR_AGENT else "already_done"
                outcome = TurnOutcome(kind, message_id, conversation_id)
            return outcome

    async def _turn_with_retries(self, row: dict) -> TurnOutcome:
        """A turn that fails on something transient (a locked or full disk, an I/O error) is
        tried again after a pause; one that keeps failing stays pending for the next start."""
        for attempt, pause in enumerate((*TURN_RETRY_PAUSES_S, None)):
            try:
                return await self._turn(row)
            except Exception as exc:
                if pause is None:
                    log.error("message %d could not be answered (%s); it stays pending until restart",
                              row["id"], type(exc).__name__)
                    raise
                log.warning("message %d failed (%s); trying again in %.1f s", row["id"], type(exc).__name__, pause)
                await asyncio.sleep(pause)
                # Re-read it: if the failure came after the answer was stored, it must not be answered twice.
                row = await self.db(self.store.message, row["id"])
        raise AssertionError("unreachable")

    def _turn_state(self, message: dict) -> tuple[dict, Any, list[dict], dict]:
        """Everything a turn reads, in one trip to the database thread."""
        conversation = self.store.conversation(message["conversation_id"])
        if conversation["status"] != BOT:
            self.store.set_message_status(message["id"], FOR_AGENT)
            return conversation, None, [], {}
        try:
            rendered: Any = self.templates.render_for(
                conversation["channel"], conversation["language"] or "en", **template_values(conversation)
            )
        except TemplateError as exc:
            log.error("no usable template for channel %s", conversation["channel"])
            rendered = exc
        history = self.store.history(conversation["id"], message["episode"], message["id"])
        images = self.store.attachments({i for row in [*history, message] for i in attachment_ids(row)})
        return conversation, rendered, history, images

    def _policy_for(self, rendered) -> EscalationPolicy:
        """The template's sensitive topics, or the deployment's policy when there is no template."""
        if rendered is None:
            return self.policy
        topics = tuple(rendered.template.escalation.sensitive_topics)
        policy = self._policies.get(topics)
        if policy is None:
            policy = self._policies[topics] = EscalationPolicy(topics)
        return policy

    async def _turn(self, message: dict) -> TurnOutcome:
        message_id = message["id"]
        if message["status"] != PENDING:
            return TurnOutcome("already_done", message_id, message["conversation_id"])
        conversation, rendered, history, stored_images = await self.db(self._turn_state, message)
        cid = conversation["id"]
        if conversation["status"] != BOT:
            self._emit("message", conversation_id=cid, message_id=message_id)
            return TurnOutcome("for_agent", message_id, cid)
        owner_seq = conversation["owner_seq"]
        language = conversation["language"] or "en"
        refused = json.loads(message.get("refused_images") or "[]")
        attachments = attachment_ids(message)
        notices = [ImageRejected(reason, self.options.image_limits).message(language) for reason in refused]
        if notices:  # the user learns at once that a screenshot could not be read
            async with self._send_locks(cid):
                await self._deliver_all(conversation, await self.db(self._store_notices, cid, message_id, notices))
        has_content = bool(message["text"].strip() or attachments)

        generation: Generation | None = None
        error: BaseException | None = None
        stats = None
        if isinstance(rendered, TemplateError):
            error, rendered = rendered, None
        policy = self._policy_for(rendered)
        earlier_answer = any(row["role"] == "bot" and row.get("kind") == "answer" for row in history)
        previous_low = False
        # Checks that need no model come first: a request for a person goes out at once.
        decision = policy.before_model(message["text"], unreadable_images=len(refused), answerable_text=has_content)
        if decision is None and not has_content and not refused:  # empty: nothing to answer or escalate
            decision = Decision(True, Reason.UNREADABLE_IMAGE, "empty message", "")
        if decision is None and rendered is not None:
            threshold = rendered.template.escalation.confidence_threshold
            previous_low = _last_bot_low_confidence(history, threshold)
            try:
                build = partial(
                    self.context.build,
                    rendered.system_prompt,
                    history,
                    message,
                    stored_images,
                    max_new_tokens=min(rendered.template.generation.max_new_tokens, self.options.context.max_new_tokens),
                    sampling=SamplingParams(
                        temperature=rendered.template.generation.temperature, top_p=rendered.template.generation.top_p
                    ),
                )
                # Reading screenshots from disk is slow work: off the event loop.
                request, stats = await asyncio.to_thread(build) if stored_images else build()
                generation = await self._generate(
                    request, conversation, message, rendered.template.escalation.decline_marker,
                    stream=rendered.template.stream,
                )
            except EngineError as exc:
                error = exc
            except Exception as exc:  # an engine bug must not lose the turn: hand over
                log.exception("generation failed")
                error = exc
        if decision is None:
            decision = policy.decide(
                user_text=message["text"],
                generation=generation,
                error=error if has_content else None,
                unreadable_images=len(refused),
                answerable_text=has_content,
                previous_turn_low_confidence=previous_low,
                earlier_answer=earlier_answer,
                text_checked=True,  # before_model found neither a request for a person nor a sensitive topic
                threshold=rendered.template.escalation.confidence_threshold if rendered else 0.55,
                decline_marker=rendered.template.escalation.decline_marker if rendered else "[[HANDOVER]]",
                unknown_confidence_hands_over=self.options.unknown_confidence_hands_over,
            )
        decision = replace(decision, answer=mask_card_numbers(decision.answer), detail=mask_card_numbers(decision.detail))
        handover_text = self._handover_text(rendered, language) if decision.handover else ""
        figures = _figures(generation, stats, rendered)
        async with self._send_locks(cid):
            stored, kept = await self.db(
                self._store_turn, conversation, owner_seq, message, decision, figures, handover_text
            )
            await self._deliver_all(conversation, stored)
        if not kept:  # a person took the conversation meanwhile: the answer is only their draft
            self._emit("message", conversation_id=cid, message_id=message_id)
            return TurnOutcome("for_agent", message_id, cid, reason=decision.reason.value if decision.reason else None)
        if decision.handover:
            await self.announce(cid)
        self._emit(
            "handover" if decision.handover else "answer",
            conversation_id=cid,
            message_id=message_id,
            channel=conversation["channel"],
            reason=decision.reason.value if decision.reason else None,
            generation=generation,
        )
        return TurnOutcome(
            "handed_over" if decision.handover else "answered",
            message_id,
            cid,
            reply=handover_text if decision.handover else decision.answer,
            reason=decision.reason.value if decision.reason else None,
            detail=decision.detail,
            confidence=generation.confidence if generation else None,
            notices=tuple(notices),
        )

    def _store_notices(self, conversation_id: int, message_id: int, notices: list[str]) -> list[tuple[int, Outbound]]:
        """The refused-image notices of a message, stored once (a retried turn finds them)."""
        with self.store.transaction():
            if self.store.has_reply(message_id, "notice"):
                return []
            out = []
            for notice in notices:
                notice_id = self.store.add_message(conversation_id, "system", notice, reply_to=message_id,
                                                   kind="notice", **self._sending())
                out.append((notice_id, Outbound(notice, kind="notice", message_id=notice_id, reply_to=message_id)))
            return out

    @staticmethod
    def _handover_text(rendered, language: str) -> str:
        if rendered is not None:
            try:
                return rendered.template.render_handover(language)
            except TemplateError:
                log.error("the hand-over message of template %s does not render", rendered.template.name)
        return _fallback_handover(language)

    async def _generate(self, request, conversation: dict, message: dict, marker: str,
                        stream: bool = False) -> Generation:
        """Generate while the user's channel shows that the bot is working.

        The user sees the answer only once the policy has decided on it. A template with
        `stream: true` shows the text as it is generated instead, on channels that can:
        such text may still be withdrawn by a hand-over. Text that could still turn into
        the decline marker is never shown.
        """
        channel = self.channels.get(conversation["channel"])
        send_delta = getattr(channel, "send_delta", None) if stream else None
        send_typing = getattr(channel, "send_typing", None)
        if send_typing is not None:
            try:
                await send_typing(_target(conversation), message["id"])
            except Exception as exc:  # a typing indicator is a courtesy: never fail the turn for it
                log.warning("typing indicator on %s failed: %s", conversation["channel"], type(exc).__name__)
        deadline = asyncio.get_running_loop().time() + self.options.busy_wait_s
        async with self._engine_slot(deadline):
            if send_delta is None:
                return await self._when_not_busy(
                    lambda: self.engine.generate(request, timeout=self.options.request_timeout_s), deadline
                )
            stream, deltas = await self._when_not_busy(lambda: self._open_stream(request), deadline)
            return await self._relay(stream, deltas, _target(conversation), message["id"], marker, send_delta)

    async def _relay(self, stream, deltas, target: Conversation, message_id: int, marker: str,
                     send_delta: Callable) -> Generation:
        held, released = "", False
        async for delta in deltas:
            if released:
                await send_delta(target, message_id, delta)
                continue
            held += delta
            head = held.lstrip()
            if marker and (marker.startswith(head) or head.startswith(marker)):
                continue  # might be (or is) the decline marker: never show it
            released = True
            await send_delta(target, message_id, held)
        return await stream.result()

    @asynccontextmanager
    async def _engine_slot(self, deadline: float):
        """One of the engine's queue places for this turn, first come first served.

        A burst larger than the engine queue waits here in arrival order (a full queue that
        turns kept polling would let late arrivals overtake early ones), and a turn that gets
        no place before `deadline` fails with `EngineOverloaded`: it goes to a person.
        """
        slots = self._slots
        if slots is None:
            yield
            return
        if slots.locked():
            self._emit("busy")
            try:
                await asyncio.wait_for(slots.acquire(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except (asyncio.TimeoutError, TimeoutError):
                raise EngineOverloaded(f"no room in the engine queue for {self.options.busy_wait_s:g} s") from None
        else:
            await slots.acquire()
        try:
            yield
        finally:
            slots.release()

    async def _open_stream(self, request) -> tuple[Any, Any]:
        """Start streaming and wait for the first text, where a busy engine says so."""
        stream = self.engine.stream(request, timeout=self.options.request_timeout_s)
        chunks = aiter(stream)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            return stream, _no_more()

        async def deltas():
            yield first
            async for delta in chunks:
                yield delta

        return stream, deltas()

    async def _when_not_busy(self, attempt: Callable[[], Any], deadline: float) -> Any:
        """Run `attempt` (a coroutine factory), waiting for room while the engine's queue is full.

        The queue can be full even for a turn holding a slot (other callers share the engine,
        such as /v1, or a remote server is busy): the turn tries again with growing pauses (the
        user keeps seeing the typing indicator) and gives up with `EngineOverloaded` at `deadline`.
        """
        loop = asyncio.get_running_loop()
        pause = BUSY_FIRST_PAUSE_S
        while True:
            try:
                return await attempt()
            except EngineOverloaded:
                left = deadline - loop.time()
                if left <= 0:
                    raise
                self._emit("busy")
                await asyncio.sleep(min(pause, left))
                pause = min(pause * 2, BUSY_MAX_PAUSE_S)

    def _sending(self) -> dict[str, Any]:
        """Columns that mark a new reply as being sent by this manager (see `_deliver`)."""
        return {"delivering_by": self._sender, "delivering_at": iso()}

    def _store_turn(self, conversation: dict, owner_seq: int, message: dict, decision: Decision,
                    figures: dict[str, Any], handover_text: str) -> tuple[list[tuple[int, Outbound]], bool]:
        """Persist a turn's outcome in one transaction: (what to deliver, kept).

        Compare-and-set: only if the conversation is still the bot's, in the ownership
        episode the turn started in. Otherwise a person took it meanwhile: the generation is
        kept as a draft for the agent, the message becomes theirs, and nothing is sent.
        """
        cid = conversation["id"]
        out: list[tuple[int, Outbound]] = []
        with self.store.transaction():
            current = self.store.conversation(cid)
            if current["status"] != BOT or current["owner_seq"] != owner_seq:
                if decision.answer:
                    self.store.add_message(cid, "draft", decision.answer, reply_to=message["id"], kind="draft",
                                           delivered=1, **figures)
                self.store.set_message_status(message["id"], FOR_AGENT)
                return [], False
            if decision.handover:
                reason = decision.reason.value if decision.reason else "engine_error"
                notice_id = self.store.add_message(
                    cid, "system", handover_text, reply_to=message["id"], kind="handover", **figures, **self._sending()
                )
                out.append(
                    (notice_id, Outbound(handover_text, kind="handover", message_id=notice_id, reply_to=message["id"],
                                         reason=reason, confidence=figures.get("confidence")))
                )
                self.store.add_escalation(cid, message["id"], reason, decision.detail, figures.get("confidence"),
                                          decision.answer)
                self.store.set_owner(cid, WAITING, None)
                self.store.set_message_status(message["id"], HANDED_OVER)
            else:
                reply_id = self.store.add_message(
                    cid, "bot", decision.answer, reply_to=message["id"], kind="answer", **figures, **self._sending()
                )
                out.append(
                    (reply_id, Outbound(decision.answer, kind="answer", message_id=reply_id, reply_to=message["id"]))
                )
                self.store.set_message_status(message["id"], ANSWERED)
            attachments = attachment_ids(message)
            if attachments:
                self.store.describe_attachments(
                    attachments, mask_card_numbers(describe_from_answer(decision.answer, message["text"]))
                )
        return out, True

    async def _deliver_all(self, conversation: dict, items: list[tuple[int, Outbound]]) -> None:
        """Send new replies in order, after the conversation's older ones still undelivered.

        The user never gets a reply before an earlier one (an agent's line "joined" must not
        arrive after the bot's next answer): the first send that fails stops the rest, which
        wait, claims released, for the next redelivery round to send them in order.
        """
        if not items:
            return
        cid = conversation["id"]
        target = _target(conversation)
        backlog = await self.db(self.store.undelivered, cid, items[0][0]) if cid in self._behind else []
        for row in backlog:
            if await self._redeliver_one(row) == FAILED:
                break
        else:
            for position, (message_id, outbound) in enumerate(items):
                if await self._deliver(target, message_id, outbound) == FAILED:
                    items = items[position + 1:]
                    break
            else:
                self._behind.discard(cid)
                return
        self._behind.add(cid)
        for message_id, _ in items:  # left for the next round
            await self.db(self.store.release_delivery, message_id, self._sender)

    async def _deliver(self, target: Conversation, message_id: int, outbound: Outbound,
                       claimed: bool = True) -> str:
        """Send one stored reply; at most one sender at a time, marked delivered with its claim.

        A reply stored by this manager is claimed in the transaction that stored it
        (`claimed`); a redelivery round first takes the claim, so a reply that is being
        sent is never sent again beside it, and one that was sent is never sent again.
        Returns SENT, SKIPPED (delivered or withheld meanwhile, or another sender has it)
        or FAILED (still to be sent).
        """
        channel = self.channels.get(target.channel)
        if channel is None:
            log.warning("no channel %r registered; message %d stays undelivered", target.channel, message_id)
            if claimed:
                await self.db(self.store.release_delivery, message_id, self._sender)
            return FAILED
        if not claimed and not await self.db(self.store.claim_delivery, message_id, self._sender,
                                             self.options.delivery_lease_s):
            return SKIPPED
        try:
            await channel.send(target, outbound)
        except Exception as exc:
            log.warning("delivery of message %d on %s failed: %s", message_id, target.channel, type(exc).__name__)
            await self.db(self.store.release_delivery, message_id, self._sender)
            return FAILED
        await self.db(self.store.finish_delivery, message_id, self._sender)
        return SENT

    async def announce(self, conversation_id: int) -> None:
        """Tell the consoles and what shows the owner on the user's side (a header) who owns it now."""
        conversation = await self.db(self.store.conversation, conversation_id)
        if conversation is None:
            return
        agent = conversation["assigned_agent"]
        self._emit("status", conversation_id=conversation_id, status=conversation["status"], agent=agent)
        channel = self.channels.get(conversation["channel"])
        send_status = getattr(channel, "send_status", None)
        if send_status is None:
            return
        shown = await self.db(self.store.display_name, agent) if agent else None
        try:
            await send_status(_target(conversation), conversation["status"], shown)
        except Exception as exc:
            log.warning("status update on %s failed: %s", conversation["channel"], type(exc).__name__)

    def _emit(self, event: str, **data: Any) -> None:
        for listener in self.listeners:
            try:
                listener(event, data)
            except Exception as exc:  # a broken listener must not break a conversation
                log.warning("event listener failed on %s: %s", event, type(exc).__name__)

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # Platform events ----------------------------------------------------------------
    async def record_event(self, channel: str, event_key: str, payload: dict) -> bool:
        """Store a raw platform event before acknowledging it; False for a retry of a stored one."""
        return await self.db(self.store.add_platform_event, channel, event_key, payload)

    async def finish_event(self, channel: str, event_key: str) -> None:
        await self.db(self.store.finish_platform_event, channel, event_key)

    async def pending_events(self, channel: str) -> list[dict]:
        return await self.db(self.store.pending_platform_events, channel)

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

    # Crash recovery -----------------------------------------------------------------
    async def recover(self) -> dict[str, int]:
        """Finish turns cut off by a crash, then deliver replies stored but not sent.

        Each message on its own: one that keeps failing stays pending for the periodic round
        and never keeps the others (or the round itself) waiting.
        """
        await self.db(self.store.release_foreign_deliveries, self._sender)
        pending = await self.db(self.store.pending_inbound)
        reprocessed = failed = 0
        for row in pending:
            try:
                await self.process(row["id"], row["conversation_id"])
                reprocessed += 1
            except Exception as exc:
                failed += 1
                log.warning("message %d is still pending after restart (%s)", row["id"], type(exc).__name__)
        try:
            redelivered = await self.redeliver()
        except Exception as exc:
            log.warning("redelivery after restart failed: %s", type(exc).__name__)
            redelivered = 0
        return {"reprocessed": reprocessed, "failed": failed, "redelivered": redelivered}

    async def redeliver(self, min_age_s: float = 0.0) -> int:
        """Send again the replies stored but not delivered (a platform that was down, a crash).

        Run at start and then every `SNAPDESK_RETRY_INTERVAL_S`: a reply never waits for a
        restart. A reply younger than `min_age_s` is left to its first delivery; one that
        another sender is sending is skipped (see `Store.claim_delivery`).
        """
        redelivered = 0
        cutoff = utcnow() - timedelta(seconds=min_age_s)
        stopped: set[int] = set()  # conversations whose next reply failed: the later ones wait, in order
        for row in await self.db(self.store.undelivered):
            self._behind.add(row["conversation_id"])
            if row["conversation_id"] in stopped or datetime.fromisoformat(row["created_at"]) > cutoff:
                stopped.add(row["conversation_id"])
                continue
            async with self._send_locks(row["conversation_id"]):
                outcome = await self._redeliver_one(row)
            if outcome == SENT:
                redelivered += 1
            elif outcome == FAILED:
                stopped.add(row["conversation_id"])
        return redelivered

    async def _redeliver_one(self, row: dict) -> str:
        """Send one stored reply again, unless it was delivered or withheld meanwhile."""
        conversation, escalation = await self.db(self._redelivery_state, row)
        outbound = Outbound(row["text"], kind=row.get("kind") or "notice",
                            author=row.get("author_name") or row.get("author") or "",
                            message_id=row["id"], reply_to=row.get("reply_to"),
                            reason=escalation["reason"] if escalation else None,
                            confidence=escalation["confidence"] if escalation else None,
                            status=row.get("status_change"))
        outcome = await self._deliver(_target(conversation), row["id"], outbound, claimed=False)
        if outcome == SENT:
            self._emit("delivered", conversation_id=conversation["id"], message_id=row["id"])
        return outcome

    def _redelivery_state(self, row: dict) -> tuple[dict, dict | None]:
        """The reply's conversation and, for a hand-over notice, the hand-over it announces."""
        conversation = self.store.conversation(row["conversation_id"])
        if row.get("kind") != "handover":
            return conversation, None
        escalations = self.store.escalations(row["conversation_id"])
        matching = [e for e in escalations if e["message_id"] == row.get("reply_to")]
        return conversation, (matching or escalations or [None])[-1]

    async def retry_pending(self, min_age_s: float = 0.0) -> int:
        """Turns still pending long after they arrived (every retry failed, e.g. on a database
        locked for minutes) are tried again without waiting for a restart. A conversation whose
        turn is running is left alone; a turn answered meanwhile is never answered twice."""
        cutoff = utcnow() - timedelta(seconds=min_age_s)
        retried = 0
        for row in await self.db(self.store.pending_inbound):
            if self._turn_locks.busy(row["conversation_id"]) or datetime.fromisoformat(row["created_at"]) > cutoff:
                continue
            try:
                await self.process(row["id"], row["conversation_id"])
                retried += 1
            except Exception as exc:
                log.warning("message %d is still pending (%s)", row["id"], type(exc).__name__)
        return retried

    async def maintenance_round(self, min_age_s: float) -> None:
        """Retry turns left pending, events left unfinished and replies left undelivered;
        a failure in one never stops the others."""
        for step in (self.retry_pending, self.replay_events, self.redeliver):
            try:
                await step(min_age_s=min_age_s)
            except Exception as exc:  # the next round tries again
                log.warning("maintenance (%s) failed: %s", step.__name__, type(exc).__name__)

    async def maintain_forever(self, interval_s: float) -> None:
        """Every `interval_s`, whatever start-up recovery is doing: one maintenance round."""
        while True:
            await asyncio.sleep(interval_s)
            await self.maintenance_round(interval_s)

    # Human side ---------------------------------------------------------------------
    # Every change of owner is one compare-and-set transaction on the database thread:
    # it reads the conversation, checks who may make the change, moves `owner_seq` on and
    # stores the status line the user will see; the line is delivered after the commit.

    def _status_message(self, conversation: dict, status: str, agent: str | None) -> tuple[int, Outbound]:
        if status == CLAIMED and conversation["status"] != CLAIMED:
            # The bot's replies not yet delivered (a platform that was down) would now arrive
            # after the person joined: they stay in the thread for the agent, unsent.
            self.store.withhold_bot_replies(conversation["id"])
        shown = self.store.display_name(agent) if agent else ""
        text = status_line(status, conversation["language"] or "en", shown)
        message_id = self.store.add_message(conversation["id"], "system", text, kind="status", author=agent,
                                            author_name=shown, status_change=status, **self._sending())
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
        async with self._send_locks(conversation_id):
            result = await self.db(apply)
            if result is None:
                return False
            _, out = result
            if out:
                conversation = await self.db(self.store.conversation, conversation_id)
                await self._deliver_all(conversation, out)
            for message_id, _ in out:
                self._emit("message", conversation_id=conversation_id, message_id=message_id)
        await self.announce(conversation_id)
        return True

    async def request_human(self, conversation_id: int, reason: str = "user_request") -> bool:
        """The user asked for a person without writing (a "talk to a person" button, /human):
        the thread goes to the agents' queue with the template's hand-over message.
        False when a person already has it."""
        conversation = await self.db(self.store.conversation, conversation_id)
        if conversation is None:
            raise NoSuchConversation()
        try:
            rendered = await self.db(self.templates.render_for, conversation["channel"],
                                     conversation["language"] or "en", **template_values(conversation))
        except TemplateError:
            rendered = None
        text = self._handover_text(rendered, conversation["language"] or "en")

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
                                                   **self._sending())
                return conversation_id, [(notice_id, Outbound(text, kind="handover", message_id=notice_id,
                                                              reason=reason))]
        if not await self._transition(conversation_id, apply):
            return False
        self._emit("handover", conversation_id=conversation_id, message_id=None, channel=conversation["channel"],
                   reason=reason, generation=None)
        return True

    async def ask_for_person(self, channel: str, conversation_key: str) -> bool:
        """`request_human` by the conversation's key on its channel (False: a person has it already)."""
        conversation = await self.db(self.store.conversation_by_key, channel, conversation_key)
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
                                                    kind="agent", **self._sending())
                self.store.audit(agent, "reply", f"conversation:{conversation_id}")
                out.append((message_id, Outbound(text, kind="agent", author=shown, message_id=message_id)))
                return conversation_id, out
        async with self._send_locks(conversation_id):
            _, out = await self.db(apply)
            conversation = await self.db(self.store.conversation, conversation_id)
            await self._deliver_all(conversation, out)
        for message_id, _ in out:
            self._emit("message", conversation_id=conversation_id, message_id=message_id)
        if len(out) > 1:
            await self.announce(conversation_id)
        return out[-1][0]

    async def add_note(self, conversation_id: int, agent: str, text: str, admin: bool = False) -> int:
        """An internal note: visible to agents only, never delivered to the user."""
        def apply() -> int:
            with self.store.transaction():
                self._check_holder(self.store.conversation(conversation_id), agent, admin)
                note_id = self.store.add_message(conversation_id, "note", text, author=agent, kind="note", delivered=1)
                self.store.audit(agent, "note", f"conversation:{conversation_id}")
                return note_id
        note_id = await self.db(apply)
        self._emit("note", conversation_id=conversation_id, message_id=note_id)
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

    async def conversation_language(self, channel: str, conversation_key: str) -> str | None:
        """The language a conversation speaks ("" when not known yet); None when there is none."""
        conversation = await self.db(self.store.conversation_by_key, channel, conversation_key)
        return None if conversation is None else conversation["language"] or ""

    async def knows_message(self, channel: str, platform_message_id: str) -> bool:
        """A platform message already stored (it may arrive as two events)."""
        return await self.db(self.store.find_inbound, channel, platform_message_id) is not None

    async def platform_message_id(self, message_id: int) -> str | None:
        row = await self.db(self.store.message, message_id)
        return (row or {}).get("platform_message_id") or None

    async def restart(self, channel: str, conversation_key: str) -> bool:
        """The user starts over (e.g. /reset): the next message opens a fresh bot episode."""
        conversation = await self.db(self.store.conversation_by_key, channel, conversation_key)
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
            await self.process(message_id, conversation_id)
        except Exception as exc:  # it stays pending: the periodic round tries again
            log.warning("message %d is still pending after hand back (%s)", message_id, type(exc).__name__)

    async def release_claims(self, agent: str) -> list[int]:
        """A disabled account's conversations go back to the queue, and the consoles see it."""
        released = await self.db(self.store.release_claims, agent)
        for conversation_id in released:
            await self.announce(conversation_id)
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
        conversation_id = await self.db(apply)
        if conversation_id is None:
            return False
        self._emit("feedback", conversation_id=conversation_id, helpful=helpful)
        return True


class NoSuchConversation(LookupError):
    pass


class NotOwner(Exception):
    """Another agent holds the conversation; only they (or an admin) may change it."""

    def __init__(self, holder: str, shown: str) -> None:
        self.holder = holder
        super().__init__(f"{shown} has this conversation.")


class NotHandedOver(Exception):
    """The bot owns the conversation: there is nothing for a person to hand back or transfer."""


def _figures(generation: Generation | None, stats, rendered) -> dict[str, Any]:
    """What a bot message keeps of its turn, for agents and operators."""
    figures: dict[str, Any] = {}
    if generation is not None:
        figures = {
            "confidence": generation.confidence,
            "min_token_prob": generation.min_token_prob,
            "latency_ms": generation.timings.total_ms,
            "first_token_ms": generation.timings.first_token_ms,
            "prompt_tokens": generation.prompt_tokens,
            "completion_tokens": generation.completion_tokens,
        }
    if stats is not None:
        figures["image_tokens"] = stats.image_tokens
    if rendered is not None:
        figures.update(template_name=rendered.template.name, template_version=rendered.version)
    return figures


async def _no_more():
    return
    yield


def _target(conversation: dict) -> Conversation:
    return Conversation(
        conversation["id"], conversation["channel"], conversation["external_key"],
        conversation["user_id"] or "", conversation["language"] or "en",
    )


def _last_bot_low_confidence(history: list[dict], threshold: float) -> bool:
    for row in reversed(history):
        if row["role"] == "bot":
            return row.get("confidence") is not None and row["confidence"] < threshold
        if row["role"] == "user":
            continue
        if row["role"] in ("agent", "system"):
            return False
    return False
