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
from typing import Any, Callable, Literal

from engine.base import Engine, EngineError, EngineOverloaded, Generation, SamplingParams
from engine.images import ImageLimits, ImageRejected, prepare_image

from .db_thread import DatabaseThread
from .context import ContextBuilder, ContextOptions, attachment_ids, describe_from_answer
from .escalation import Decision, EscalationPolicy, Reason
from .language import detect_language
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
from .template_versions import PublishedTemplates
from .templates import TemplateError

log = logging.getLogger(__name__)

TURN_RETRY_PAUSES_S = (0.5, 2.0, 5.0)
# Pauses between tries while the engine queue is full (doubling up to the maximum).
BUSY_FIRST_PAUSE_S = 0.25
BUSY_MAX_PAUSE_S = 2.0
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
        self._locks: dict[int, asyncio.Lock] = {}
        self._lock_users: dict[int, int] = {}
        self.context = ContextBuilder(engine, options.context)
        # Called with (event, data) for "inbound", "answer", "handover", "message", "note" and
        # "status": metrics and the live consoles listen here.
        self.listeners: list[Callable[[str, dict], None]] = []
        self._delivering: set[int] = set()  # replies being sent right now (not to be re-sent)
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
        row, created = await self.db(self._store_inbound, inbound, prepared, refused, language)
        if created:
            self._emit("inbound", channel=inbound.channel, conversation_id=row["conversation_id"], message_id=row["id"])
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
        return self.store.add_inbound(
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

    # Turns ------------------------------------------------------------------------
    async def process(self, message_id: int, conversation_id: int | None = None) -> TurnOutcome:
        """Answer or hand over one stored user message, after the earlier ones of its thread."""
        if conversation_id is None:
            conversation_id = (await self.db(self.store.message, message_id))["conversation_id"]
        async with self._conversation_lock(conversation_id):
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

    class _LockHandle:
        def __init__(self, manager: "ConversationManager", conversation_id: int) -> None:
            self.manager, self.conversation_id = manager, conversation_id

        async def __aenter__(self) -> None:
            m, cid = self.manager, self.conversation_id
            m._lock_users[cid] = m._lock_users.get(cid, 0) + 1
            await m._locks.setdefault(cid, asyncio.Lock()).acquire()

        async def __aexit__(self, *exc: Any) -> None:
            m, cid = self.manager, self.conversation_id
            m._locks[cid].release()
            m._lock_users[cid] -= 1
            if m._lock_users[cid] == 0:
                del m._lock_users[cid], m._locks[cid]

    def _conversation_lock(self, conversation_id: int) -> "_LockHandle":
        return self._LockHandle(self, conversation_id)

    def _turn_state(self, message: dict) -> tuple[dict, Any, list[dict], dict]:
        """Everything a turn reads, in one trip to the database thread."""
        conversation = self.store.conversation(message["conversation_id"])
        if conversation["status"] in HUMAN_OWNED:
            self.store.set_message_status(message["id"], FOR_AGENT)
            return conversation, None, [], {}
        try:
            rendered: Any = self.templates.render_for(
                conversation["channel"], conversation["language"] or "en", conversation["user_name"] or ""
            )
        except TemplateError as exc:
            log.error("no usable template for channel %s", conversation["channel"])
            rendered = exc
        history = self.store.history(conversation["id"], message["episode"], message["id"])
        images = self.store.attachments({i for row in [*history, message] for i in attachment_ids(row)})
        return conversation, rendered, history, images

    async def _turn(self, message: dict) -> TurnOutcome:
        message_id = message["id"]
        if message["status"] != PENDING:
            return TurnOutcome("already_done", message_id, message["conversation_id"])
        conversation, rendered, history, stored_images = await self.db(self._turn_state, message)
        cid = conversation["id"]
        if conversation["status"] in HUMAN_OWNED:
            self._emit("message", conversation_id=cid, message_id=message_id)
            return TurnOutcome("for_agent", message_id, cid)

        language = conversation["language"] or "en"
        refused = json.loads(message.get("refused_images") or "[]")
        attachments = attachment_ids(message)
        notices = [ImageRejected(reason, self.options.image_limits).message(language) for reason in refused]
        has_content = bool(message["text"].strip() or attachments)

        generation: Generation | None = None
        error: BaseException | None = None
        if isinstance(rendered, TemplateError):
            error, rendered = rendered, None
        previous_low = False
        if rendered is not None and has_content:
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
                request, _ = await asyncio.to_thread(build) if stored_images else build()
                generation = await self._generate(
                    request, conversation, message, rendered.template.escalation.decline_marker
                )
            except EngineError as exc:
                error = exc
            except Exception as exc:  # an engine bug must not lose the turn: hand over
                log.exception("generation failed")
                error = exc
        decision = self.policy.decide(
            user_text=message["text"],
            generation=generation,
            error=error if has_content else None,
            unreadable_images=len(refused),
            answerable_text=has_content,
            previous_turn_low_confidence=previous_low,
            threshold=rendered.template.escalation.confidence_threshold if rendered else 0.55,
            decline_marker=rendered.template.escalation.decline_marker if rendered else "[[HANDOVER]]",
            unknown_confidence_hands_over=self.options.unknown_confidence_hands_over,
        )
        if not has_content and not refused:  # an empty message: nothing to answer, nothing to escalate
            decision = Decision(True, Reason.UNREADABLE_IMAGE, "empty message", "")
        handover_text = self._handover_text(rendered, language) if decision.handover else ""
        stored = await self.db(
            self._store_turn, conversation, message, decision, generation, rendered, notices, handover_text
        )
        await self._deliver_all(conversation, stored)
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

    @staticmethod
    def _handover_text(rendered, language: str) -> str:
        if rendered is not None:
            try:
                return rendered.template.render_handover(language)
            except TemplateError:
                log.error("the hand-over message of template %s does not render", rendered.template.name)
        return _fallback_handover(language)

    async def _generate(self, request, conversation: dict, message: dict, marker: str) -> Generation:
        """Generate, streaming the text to the user's channel when it can show it.

        Nothing is streamed when the turn is bound to go to a person anyway, and text that
        could still turn into the decline marker is held back until it cannot.
        """
        channel = self.channels.get(conversation["channel"])
        send_delta = getattr(channel, "send_delta", None)
        send_typing = getattr(channel, "send_typing", None)
        text = message["text"]
        if send_typing is not None:
            try:
                await send_typing(_target(conversation), message["id"])
            except Exception as exc:  # a typing indicator is a courtesy: never fail the turn for it
                log.warning("typing indicator on %s failed: %s", conversation["channel"], type(exc).__name__)
        deadline = asyncio.get_running_loop().time() + self.options.busy_wait_s
        async with self._engine_slot(deadline):
            if send_delta is None or self.policy.wants_human(text) or self.policy.sensitive_topic(text):
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

    def _store_turn(self, conversation: dict, message: dict, decision: Decision, generation: Generation | None,
                    rendered, notices: list[str], handover_text: str) -> list[tuple[int, Outbound]]:
        """Persist a turn's outcome in one transaction; returns what to deliver."""
        cid = conversation["id"]
        out: list[tuple[int, Outbound]] = []
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
        if rendered is not None:
            figures.update(template_name=rendered.template.name, template_version=rendered.version)
        with self.store.transaction():
            for notice in notices:
                notice_id = self.store.add_message(cid, "system", notice, reply_to=message["id"], kind="notice")
                out.append((notice_id, Outbound(notice, kind="notice", message_id=notice_id, reply_to=message["id"])))
            if decision.handover:
                notice_id = self.store.add_message(
                    cid, "system", handover_text, reply_to=message["id"], kind="handover", **figures
                )
                out.append(
                    (notice_id, Outbound(handover_text, kind="handover", message_id=notice_id, reply_to=message["id"],
                                         reason=decision.reason.value if decision.reason else None,
                                         confidence=figures.get("confidence")))
                )
                self.store.add_escalation(
                    cid, message["id"], decision.reason.value if decision.reason else "engine_error",
                    decision.detail, figures.get("confidence"), decision.answer,
                )
                self.store.update_conversation(cid, status=WAITING, assigned_agent=None)
                self.store.set_message_status(message["id"], HANDED_OVER)
            else:
                reply_id = self.store.add_message(
                    cid, "bot", decision.answer, reply_to=message["id"], kind="answer", **figures
                )
                out.append(
                    (reply_id, Outbound(decision.answer, kind="answer", message_id=reply_id, reply_to=message["id"]))
                )
                self.store.set_message_status(message["id"], ANSWERED)
            attachments = attachment_ids(message)
            if attachments:
                self.store.describe_attachments(attachments, describe_from_answer(decision.answer, message["text"]))
        return out

    async def _deliver_all(self, conversation: dict, items: list[tuple[int, Outbound]]) -> None:
        target = _target(conversation)
        for message_id, outbound in items:
            await self._deliver(target, message_id, outbound)

    async def _deliver(self, target: Conversation, message_id: int, outbound: Outbound) -> bool:
        channel = self.channels.get(target.channel)
        if channel is None:
            log.warning("no channel %r registered; message %d stays undelivered", target.channel, message_id)
            return False
        if message_id in self._delivering:
            return False
        self._delivering.add(message_id)
        try:
            await channel.send(target, outbound)
        except Exception as exc:
            log.warning("delivery of message %d on %s failed: %s", message_id, target.channel, type(exc).__name__)
            return False
        finally:
            self._delivering.discard(message_id)
        await self.db(self.store.mark_delivered, message_id)
        return True

    async def announce(self, conversation_id: int) -> None:
        """Tell the consoles and the user's channel who owns the conversation now."""
        conversation = await self.db(self.store.conversation, conversation_id)
        if conversation is not None:
            self._emit("status", conversation_id=conversation_id, status=conversation["status"],
                       agent=conversation["assigned_agent"])
        channel = self.channels.get(conversation["channel"]) if conversation else None
        send_status = getattr(channel, "send_status", None)
        if send_status is None:
            return
        try:
            await send_status(_target(conversation), conversation["status"], conversation["assigned_agent"])
        except Exception as exc:
            log.warning("status update on %s failed: %s", conversation["channel"], type(exc).__name__)

    def _emit(self, event: str, **data: Any) -> None:
        for listener in self.listeners:
            try:
                listener(event, data)
            except Exception as exc:  # a broken listener must not break a conversation
                log.warning("event listener failed on %s: %s", event, type(exc).__name__)

    # Platform events ----------------------------------------------------------------
    async def record_event(self, channel: str, event_key: str, payload: dict) -> bool:
        """Store a raw platform event before acknowledging it; False for a retry of a stored one."""
        return await self.db(self.store.add_platform_event, channel, event_key, payload)

    async def finish_event(self, channel: str, event_key: str) -> None:
        await self.db(self.store.finish_platform_event, channel, event_key)

    async def pending_events(self, channel: str) -> list[dict]:
        return await self.db(self.store.pending_platform_events, channel)

    # Crash recovery -----------------------------------------------------------------
    async def recover(self) -> dict[str, int]:
        """Finish turns cut off by a crash, then deliver replies stored but not sent."""
        pending = await self.db(self.store.pending_inbound)
        for row in pending:
            await self.process(row["id"])
        return {"reprocessed": len(pending), "redelivered": await self.redeliver()}

    async def redeliver(self, min_age_s: float = 0.0) -> int:
        """Send again the replies stored but not delivered (a platform that was down, a crash).

        Run at start and then every `SNAPDESK_RETRY_INTERVAL_S`: a reply never waits for a
        restart. A reply younger than `min_age_s`, or still being sent, is left to its first
        delivery, which may be retrying.
        """
        redelivered = 0
        cutoff = utcnow() - timedelta(seconds=min_age_s)
        for row in await self.db(self.store.undelivered):
            if row["id"] in self._delivering or datetime.fromisoformat(row["created_at"]) > cutoff:
                continue
            conversation, escalation = await self.db(self._redelivery_state, row)
            outbound = Outbound(row["text"], kind=row.get("kind") or "notice", author=row.get("author") or "",
                                message_id=row["id"], reply_to=row.get("reply_to"),
                                reason=escalation["reason"] if escalation else None,
                                confidence=escalation["confidence"] if escalation else None)
            if await self._deliver(_target(conversation), row["id"], outbound):
                redelivered += 1
                self._emit("delivered", conversation_id=conversation["id"], message_id=row["id"])
        return redelivered

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
            if row["conversation_id"] in self._lock_users or datetime.fromisoformat(row["created_at"]) > cutoff:
                continue
            try:
                await self.process(row["id"], row["conversation_id"])
                retried += 1
            except Exception as exc:
                log.warning("message %d is still pending (%s)", row["id"], type(exc).__name__)
        return retried

    async def maintain_forever(self, interval_s: float) -> None:
        """Every `interval_s`: retry turns left pending and send replies left undelivered."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.retry_pending(min_age_s=interval_s)
                await self.redeliver(min_age_s=interval_s)
            except Exception as exc:  # the next round tries again
                log.warning("maintenance round failed: %s", type(exc).__name__)

    # Human side ---------------------------------------------------------------------
    async def request_human(self, conversation_id: int, reason: str = "user_request") -> None:
        """Put a conversation in the agents' queue (e.g. the user pressed 'talk to a person')."""
        def apply() -> None:
            with self.store.transaction():
                self.store.add_escalation(conversation_id, 0, reason, "requested", None, "")
                self.store.update_conversation(conversation_id, status=WAITING)
        await self.db(apply)
        await self.announce(conversation_id)

    async def claim(self, conversation_id: int, agent: str) -> bool:
        """Assign a waiting conversation to an agent; False if someone else has it."""
        def apply() -> bool:
            with self.store.transaction():
                conversation = self.store.conversation(conversation_id)
                if conversation is None or conversation["status"] != WAITING:
                    return False
                self.store.update_conversation(conversation_id, status=CLAIMED, assigned_agent=agent)
                escalation = self.store.open_escalation(conversation_id)
                if escalation:
                    self.store.update_escalation(escalation["id"], status="claimed", claimed_by=agent, claimed_at=iso())
                self.store.audit(agent, "claim", f"conversation:{conversation_id}")
                return True
        claimed = await self.db(apply)
        if claimed:
            await self.announce(conversation_id)
        return claimed

    async def agent_reply(self, conversation_id: int, agent: str, text: str) -> int:
        """Store an agent's reply and deliver it on the user's channel."""
        def apply() -> tuple[int, dict, bool]:
            with self.store.transaction():
                conversation = self.store.conversation(conversation_id)
                joined = conversation["status"] != CLAIMED or conversation["assigned_agent"] != agent
                if joined:
                    self.store.update_conversation(conversation_id, status=CLAIMED, assigned_agent=agent)
                message_id = self.store.add_message(conversation_id, "agent", text, author=agent, kind="agent")
                self.store.audit(agent, "reply", f"conversation:{conversation_id}")
                return message_id, self.store.conversation(conversation_id), joined
        message_id, conversation, joined = await self.db(apply)
        if joined:
            await self.announce(conversation_id)
        self._emit("message", conversation_id=conversation_id, message_id=message_id)
        await self._deliver_all(conversation, [(message_id, Outbound(text, kind="agent", author=agent, message_id=message_id))])
        return message_id

    async def add_note(self, conversation_id: int, agent: str, text: str) -> int:
        """An internal note: visible to agents only, never delivered to the user."""
        def apply() -> int:
            with self.store.transaction():
                note_id = self.store.add_message(conversation_id, "note", text, author=agent, kind="note", delivered=1)
                self.store.audit(agent, "note", f"conversation:{conversation_id}")
                return note_id
        note_id = await self.db(apply)
        self._emit("note", conversation_id=conversation_id, message_id=note_id)
        return note_id

    async def _finish_human(self, conversation_id: int, agent: str, status: str, action: str) -> None:
        def apply() -> None:
            with self.store.transaction():
                self.store.update_conversation(conversation_id, status=status, assigned_agent=None)
                escalation = self.store.open_escalation(conversation_id)
                if escalation:
                    self.store.update_escalation(
                        escalation["id"], status="resolved" if status == RESOLVED else "returned",
                        resolved_by=agent, resolved_at=iso(),
                    )
                self.store.audit(agent, action, f"conversation:{conversation_id}")
        await self.db(apply)
        await self.announce(conversation_id)

    async def restart(self, channel: str, conversation_key: str) -> bool:
        """The user starts over (e.g. /reset): the next message opens a fresh bot episode."""
        conversation = await self.db(self.store.conversation_by_key, channel, conversation_key)
        if conversation is None:
            return False
        await self._finish_human(conversation["id"], "user", RESOLVED, "restart")
        return True

    async def resolve(self, conversation_id: int, agent: str) -> None:
        await self._finish_human(conversation_id, agent, RESOLVED, "resolve")

    async def hand_back(self, conversation_id: int, agent: str) -> None:
        await self._finish_human(conversation_id, agent, BOT, "hand_back")


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
