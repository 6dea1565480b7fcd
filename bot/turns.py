"""A turn: one stored user message answered or handed over, whatever happens meanwhile.

The turn reads the conversation and its template, runs the checks that need no model, has
the engine generate, lets the escalation policy decide, and stores that decision only if
the bot still owns the conversation in the episode it started in (otherwise the answer is
the agent's draft). Only then is anything sent, so an answer is never shown and withdrawn.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

from engine.base import Engine, EngineError, Generation, SamplingParams
from engine.images import ImageRejected
from engine.readability import unreadable_message

from .context import ContextBuilder, attachment_ids, describe_from_answer, screenshot_values, template_values
from .delivery import Delivery
from .escalation import Decision, EscalationPolicy, Reason, policy_for_topics
from .generation import TurnGenerator
from .manager_core import ManagerCore
from .masking import mask_card_numbers
from .knowledge.index import KnowledgeBase
from .knowledge.retrieval import (KnowledgeOptions, Passage, TurnKnowledge, knowledge_section, stored_sources,
                                  record as knowledge_record)
from .messages import Outbound
from .screenshots import Screenshots, hidden_notice
from .store import ANSWERED, BOT, FOR_AGENT, HANDED_OVER, PENDING, WAITING
from .templates import TemplateError
from .turn_retries import retry_turn

log = logging.getLogger(__name__)

OutcomeKind = Literal["answered", "handed_over", "for_agent", "duplicate", "already_done"]


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


class Turns:
    def __init__(self, core: ManagerCore, engine: Engine, policy: EscalationPolicy, delivery: Delivery,
                 screenshots: Screenshots, knowledge: KnowledgeBase | None = None) -> None:
        self.core = core
        self.screenshots = screenshots
        options = core.options
        self.knowledge = None if knowledge is None else TurnKnowledge(
            knowledge, KnowledgeOptions(options.kb_tokens, options.kb_passages, options.kb_min_score),
            engine.count_text_tokens,
        )
        self.policy = policy  # the deployment's, for a conversation without a usable template
        self.delivery = delivery
        self.context = ContextBuilder(engine, core.options.context)
        self.generator = TurnGenerator(core, engine)

    async def process(self, message_id: int, conversation_id: int | None = None) -> TurnOutcome:
        """Answer or hand over one stored user message, after the earlier ones of its thread."""
        store = self.core.store
        if conversation_id is None:
            conversation_id = (await self.core.db(store.message, message_id))["conversation_id"]
        async with self.core.turn_locks(conversation_id):
            pending = await self.core.db(store.pending_up_to, conversation_id, message_id)
            outcome = None
            for row in pending:
                result = await self._turn_with_retries(row)
                if row["id"] == message_id:
                    outcome = result
            if outcome is None:
                current = await self.core.db(store.message, message_id)
                kind: OutcomeKind = "for_agent" if current["status"] == FOR_AGENT else "already_done"
                outcome = TurnOutcome(kind, message_id, conversation_id)
            return outcome

    async def _turn_with_retries(self, row: dict) -> TurnOutcome:
        """A turn that fails on something transient (a locked or full disk, an I/O error) is
        tried again after a pause; one that keeps failing stays pending for the next start."""
        async for attempt in retry_turn(row["id"]):
            if attempt.retry_state.attempt_number > 1:
                # Re-read it: if the failure came after the answer was stored, it must not be answered twice.
                row = await self.core.db(self.core.store.message, row["id"])
            with attempt:
                return await self._turn(row)
        raise AssertionError("unreachable: the policy raises the last failure")

    def _turn_state(self, message: dict) -> tuple[dict, Any, list[dict], dict, list[Passage]]:
        """Everything a turn reads, in one trip to the database thread."""
        store = self.core.store
        conversation = store.conversation(message["conversation_id"])
        if conversation["status"] != BOT:
            store.set_message_status(message["id"], FOR_AGENT)
            return conversation, None, [], {}, []
        history = store.history(conversation["id"], message["episode"], message["id"])
        images = store.attachments({i for row in [*history, message] for i in attachment_ids(row)})
        read = [images[i].reading for i in attachment_ids(message) if i in images]
        try:
            rendered: Any = self.core.templates.render_for(
                conversation["channel"], conversation["language"] or "en", **template_values(conversation),
                conversation=conversation, **screenshot_values(read),
            )
        except TemplateError as exc:
            log.error("no usable template for channel %s", conversation["channel"])
            rendered = exc
        passages = self.knowledge.passages(message, history, read) if self.knowledge else []
        return conversation, rendered, history, images, passages

    def _policy_for(self, rendered) -> EscalationPolicy:
        """The template's sensitive topics, or the deployment's policy when there is no template."""
        if rendered is None:
            return self.policy
        return policy_for_topics(tuple(rendered.template.escalation.sensitive_topics))

    async def _turn(self, message: dict) -> TurnOutcome:
        message_id = message["id"]
        if message["status"] != PENDING:
            return TurnOutcome("already_done", message_id, message["conversation_id"])
        if self.screenshots.staged:  # its screenshots are read and redacted before anything else
            await self.screenshots.finish(message_id)
            message = await self.core.db(self.core.store.message, message_id)
        conversation, rendered, history, stored_images, passages = await self.core.db(self._turn_state, message)
        cid = conversation["id"]
        if conversation["status"] != BOT:
            self.core.emit("message", conversation_id=cid, message_id=message_id)
            return TurnOutcome("for_agent", message_id, cid)
        owner_seq = conversation["owner_seq"]
        language = conversation["language"] or "en"
        refused = json.loads(message.get("refused_images") or "[]")
        attachments = attachment_ids(message)
        notices = [_refusal(reason, language, self.core.options.image_limits) for reason in refused]
        if any(_read_as(stored_images.get(i), "redactions") for i in attachments):
            notices.append(hidden_notice(language))
        if notices:  # the user learns at once that a screenshot could not be read
            async with self.core.send_locks(cid):
                stored = await self.core.db(self._store_notices, cid, message_id, notices)
                await self.delivery.deliver_all(conversation, stored)
        readable = [i for i in attachments if not _read_as(stored_images.get(i), "unreadable")]
        has_content = bool(message["text"].strip() or readable)

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
        if decision is None and not passages and rendered is not None and rendered.template.escalation.require_knowledge:
            decision = Decision(True, Reason.NO_KNOWLEDGE, "nothing relevant in the help centre", "")
        if decision is None and rendered is not None:
            threshold = rendered.template.escalation.confidence_threshold
            previous_low = _last_bot_low_confidence(history, threshold)
            try:
                build = partial(
                    self.context.build,
                    _with_knowledge(rendered.system_prompt, passages, language),
                    history,
                    message,
                    stored_images,
                    max_new_tokens=min(rendered.template.generation.max_new_tokens,
                                       self.core.options.context.max_new_tokens),
                    sampling=SamplingParams(
                        temperature=rendered.template.generation.temperature, top_p=rendered.template.generation.top_p
                    ),
                )
                # Reading screenshots from disk is slow work: off the event loop.
                request, stats = await asyncio.to_thread(build) if stored_images else build()
                generation = await self.generator.generate(
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
                unknown_confidence_hands_over=self.core.options.unknown_confidence_hands_over,
            )
        decision = replace(decision, answer=mask_card_numbers(decision.answer), detail=mask_card_numbers(decision.detail))
        handover_text = handover_message(rendered, language) if decision.handover else ""
        figures = _figures(generation, stats, rendered)
        if passages:
            figures["knowledge"] = json.dumps(knowledge_record(passages, decision.answer, self.core.options.public_url),
                                              ensure_ascii=False)
        async with self.core.send_locks(cid):
            stored, kept = await self.core.db(
                self._store_turn, conversation, owner_seq, message, decision, figures, handover_text
            )
            await self.delivery.deliver_all(conversation, stored)
        if not kept:  # a person took the conversation meanwhile: the answer is only their draft
            self.core.emit("message", conversation_id=cid, message_id=message_id)
            return TurnOutcome("for_agent", message_id, cid, reason=decision.reason.value if decision.reason else None)
        if decision.handover:
            await self.delivery.announce(cid)
        self.core.emit(
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
        store = self.core.store
        with store.transaction():
            if store.has_reply(message_id, "notice"):
                return []
            out = []
            for notice in notices:
                notice_id = store.add_message(conversation_id, "system", notice, reply_to=message_id,
                                              kind="notice", **self.core.sending())
                out.append((notice_id, Outbound(notice, kind="notice", message_id=notice_id, reply_to=message_id)))
            return out

    def _store_turn(self, conversation: dict, owner_seq: int, message: dict, decision: Decision,
                    figures: dict[str, Any], handover_text: str) -> tuple[list[tuple[int, Outbound]], bool]:
        """Persist a turn's outcome in one transaction: (what to deliver, kept).

        Compare-and-set: only if the conversation is still the bot's, in the ownership
        episode the turn started in. Otherwise a person took it meanwhile: the generation is
        kept as a draft for the agent, the message becomes theirs, and nothing is sent.
        """
        store = self.core.store
        cid = conversation["id"]
        out: list[tuple[int, Outbound]] = []
        with store.transaction():
            current = store.conversation(cid)
            if current["status"] != BOT or current["owner_seq"] != owner_seq:
                if decision.answer:
                    store.add_message(cid, "draft", decision.answer, reply_to=message["id"], kind="draft",
                                      delivered=1, **figures)
                store.set_message_status(message["id"], FOR_AGENT)
                return [], False
            if decision.handover:
                reason = decision.reason.value if decision.reason else "engine_error"
                notice_id = store.add_message(
                    cid, "system", handover_text, reply_to=message["id"], kind="handover", **figures,
                    **self.core.sending(),
                )
                out.append(
                    (notice_id, Outbound(handover_text, kind="handover", message_id=notice_id, reply_to=message["id"],
                                         reason=reason, confidence=figures.get("confidence")))
                )
                store.add_escalation(cid, message["id"], reason, decision.detail, figures.get("confidence"),
                                     decision.answer)
                store.set_owner(cid, WAITING, None)
                store.set_message_status(message["id"], HANDED_OVER)
            else:
                reply_id = store.add_message(
                    cid, "bot", decision.answer, reply_to=message["id"], kind="answer", **figures, **self.core.sending()
                )
                out.append(
                    (reply_id, Outbound(decision.answer, kind="answer", message_id=reply_id, reply_to=message["id"],
                                        sources=stored_sources(figures.get("knowledge"))))
                )
                store.set_message_status(message["id"], ANSWERED)
            attachments = attachment_ids(message)
            if attachments:
                store.describe_attachments(
                    attachments, mask_card_numbers(describe_from_answer(decision.answer, message["text"]))
                )
        return out, True


def _with_knowledge(system_prompt: str, passages: list[Passage], language: str) -> str:
    section = knowledge_section(passages, language)
    return f"{system_prompt.rstrip()}\n\n{section}" if section else system_prompt


def _read_as(attachment, key: str):
    """One thing the screenshot reading found (None when the screenshot was not read)."""
    return ((attachment.reading if attachment else None) or {}).get(key)


def _refusal(reason: str, language: str, limits) -> str:
    """What the user is told about a screenshot that was refused or could not be read."""
    if reason == "unreadable":
        return unreadable_message(language)
    return ImageRejected(reason, limits).message(language)


def handover_message(rendered, language: str) -> str:
    """The template's hand-over message in `language`, or a plain one where it has none."""
    if rendered is not None:
        try:
            return rendered.template.render_handover(language)
        except TemplateError:
            log.error("the hand-over message of template %s does not render", rendered.template.name)
    return _fallback_handover(language)


def _fallback_handover(language: str) -> str:
    return "正在为您转接人工客服，请稍候。" if language == "zh" else "I'm passing this to a member of our support team. A person will reply here."


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


def _last_bot_low_confidence(history: list[dict], threshold: float) -> bool:
    for row in reversed(history):
        if row["role"] == "bot":
            return row.get("confidence") is not None and row["confidence"] < threshold
        if row["role"] == "user":
            continue
        if row["role"] in ("agent", "system"):
            return False
    return False
