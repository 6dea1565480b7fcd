"""One user message answered by a given template, the way a new conversation's first turn is.

Regression runs, "try it" and `snapdesk eval` must judge a draft by what users would get, so
this follows a real turn step for step: screenshots decoded, read and redacted (the model sees
only the redacted pixels), the checks that need no model first, help-centre passages found
from the text and the screenshot evidence, the system prompt with its Knowledge section, the
engine, then the escalation policy. Only storing and delivering are left out. Where the engine
is shared with customers, the caller lends a place in its queue (`Places`); each stage can be
reported as it happens (`Progress`).
"""

from __future__ import annotations

import asyncio
import time
from datetime import date
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncContextManager, Awaitable, Callable, Protocol

from engine.base import ChatMessage, EngineError, Generation, GenerationRequest, SamplingParams
from engine.images import ImageRejected, prepare_image
from engine.screenshots import ScreenshotReading, reading_limits

from ..context import screenshot_values
from ..conversation import ConversationManager
from ..escalation import Decision, Reason, policy_for_topics
from ..knowledge.retrieval import Passage, cited, knowledge_section
from ..masking import mask_card_numbers
from ..templates import Template, TemplateError

Progress = Callable[[str, dict], Awaitable[None] | None]  # (stage, details)


class Places(Protocol):
    def __call__(self) -> AsyncContextManager[Any]: ...


class _Free:
    """No sharing to respect (the command line owns its engine)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: Any) -> None:
        return None


def free_places() -> AsyncContextManager[Any]:
    return _Free()


@dataclass(frozen=True)
class TurnResult:
    outcome: str  # answer | handover
    reason: str | None = None
    detail: str = ""
    reply: str = ""  # the answer, or on a hand-over the bot's draft for the agent
    confidence: float | None = None
    min_token_prob: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float | None = None  # the whole turn, screenshots included
    generation_s: float | None = None
    error: str | None = None  # the engine failed or timed out: never a pass
    retrieved: tuple[dict, ...] = ()
    cited: tuple[dict, ...] = ()
    screenshots: tuple[dict, ...] = ()  # per screenshot: evidence, hidden kinds, unreadable
    model_called: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome, "reason": self.reason, "detail": self.detail, "reply": self.reply,
            "confidence": self.confidence, "min_token_prob": self.min_token_prob,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "latency_s": self.latency_s, "generation_s": self.generation_s, "error": self.error,
            "retrieved": list(self.retrieved), "cited": list(self.cited), "screenshots": list(self.screenshots),
            "model_called": self.model_called,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TurnResult":
        tuples = {"retrieved", "cited", "screenshots"}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class PreparedScreenshots:
    """A message's screenshots after intake and reading: what the model may see."""

    readings: list[ScreenshotReading] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why each refused image was refused
    read_s: float = 0.0

    @property
    def unreadable(self) -> int:
        return len(self.refused) + sum(r.unreadable for r in self.readings)

    @property
    def readable(self) -> list[ScreenshotReading]:
        return [r for r in self.readings if not r.unreadable]

    def details(self) -> list[dict]:
        return [r.details() for r in self.readings]

    def summary(self) -> tuple[dict, ...]:
        out = [{"refused": reason} for reason in self.refused]
        for reading in self.readings:
            shown = reading.details()
            out.append({"unreadable": reading.unreadable, "read": reading.ocr, "evidence": shown["evidence"],
                        "hidden": sorted({r["kind"] for r in shown["redactions"]})})
        return tuple(out)


class TemplateTurn:
    """Runs one message against any template with the deployment's engine, OCR and knowledge."""

    def __init__(self, manager: ConversationManager, *, max_new_tokens: int, timeout_s: float,
                 unknown_confidence_hands_over: bool = True) -> None:
        self.manager = manager
        self.engine = manager.engine
        self.max_new_tokens = max_new_tokens
        self.timeout_s = timeout_s
        self.unknown_confidence_hands_over = unknown_confidence_hands_over

    @classmethod
    def for_settings(cls, manager: ConversationManager, settings) -> "TemplateTurn":
        return cls(manager, max_new_tokens=settings.max_new_tokens, timeout_s=settings.request_timeout_s,
                   unknown_confidence_hands_over=settings.unknown_confidence_hands_over)

    # Screenshots --------------------------------------------------------------------------------
    async def prepare(self, images: list[bytes], progress: Progress | None = None) -> PreparedScreenshots:
        """Decode, read and redact a message's screenshots as intake and finishing do."""
        prepared = PreparedScreenshots()
        started = time.perf_counter()
        limits = reading_limits(self.manager.core.options.image_limits)
        for number, data in enumerate(images, start=1):
            await _report(progress, "screenshot", {"number": number, "of": len(images)})
            try:
                image = (await asyncio.to_thread(prepare_image, data, limits)).image
            except ImageRejected as exc:
                prepared.refused.append(exc.reason)
                continue
            prepared.readings.append(await self.manager.screenshots.read(image))
        prepared.read_s = time.perf_counter() - started
        return prepared

    async def prepare_files(self, paths: list[Path], progress: Progress | None = None) -> PreparedScreenshots:
        return await self.prepare([await asyncio.to_thread(p.read_bytes) for p in paths], progress)

    # The turn -----------------------------------------------------------------------------------
    async def _passages(self, text: str, screenshots: PreparedScreenshots) -> list[Passage]:
        knowledge = self.manager.turns.knowledge
        if knowledge is None:
            return []
        return await self.manager.db(knowledge.passages, {"text": text}, [], screenshots.details())

    async def run(self, template: Template, text: str, language: str, screenshots: PreparedScreenshots, *,
                  channel: str = "widget", places: Places = free_places, progress: Progress | None = None,
                  today: date | None = None) -> TurnResult:
        """The decision for `text` (and the prepared screenshots) under `template`.

        A template that does not render raises TemplateError (the operator's mistake, shown to
        them); an engine failure or timeout is in `error`, with the policy's hand-over.
        """
        started = time.perf_counter() - screenshots.read_s
        policy = policy_for_topics(tuple(template.escalation.sensitive_topics))
        escalation = template.escalation
        has_content = bool(text.strip() or screenshots.readable)
        decision = policy.before_model(text, unreadable_images=screenshots.unreadable, answerable_text=has_content)
        if decision is None and not has_content:
            decision = Decision(True, Reason.UNREADABLE_IMAGE, "empty message", "")
        passages = await self._passages(text, screenshots) if decision is None else []
        if decision is None and not passages and escalation.require_knowledge:
            decision = Decision(True, Reason.NO_KNOWLEDGE, "nothing relevant in the help centre", "")
        generation: Generation | None = None
        error: BaseException | None = None
        generation_s = None
        if decision is None:
            values = screenshot_values(screenshots.details())
            when = {"now": today} if today else {}
            system = template.render_system_prompt(language, channel=channel, **values, **when)
            section = knowledge_section(passages, language)
            if section:
                system = f"{system.rstrip()}\n\n{section}"
            request = GenerationRequest(
                (ChatMessage.of("system", system),
                 ChatMessage.of("user", *[r.image for r in screenshots.readings], text)),  # as a real turn sends them
                max_new_tokens=min(template.generation.max_new_tokens, self.max_new_tokens),
                sampling=SamplingParams(temperature=template.generation.temperature, top_p=template.generation.top_p),
            )
            await _report(progress, "queued", {})
            async with places():
                await _report(progress, "generating", {})
                began = time.perf_counter()
                try:
                    generation = await self._generate(request, progress)
                except EngineError as exc:
                    error = exc
                generation_s = time.perf_counter() - began
            decision = policy.decide(
                user_text=text, generation=generation, error=error if has_content else None,
                unreadable_images=screenshots.unreadable, answerable_text=has_content, text_checked=True,
                threshold=escalation.confidence_threshold, decline_marker=escalation.decline_marker,
                unknown_confidence_hands_over=self.unknown_confidence_hands_over,
            )
        answer = mask_card_numbers(decision.answer)
        given = [p.as_dict() for p in passages]
        return TurnResult(
            outcome="handover" if decision.handover else "answer",
            reason=decision.reason.value if decision.reason else None,
            detail=mask_card_numbers(decision.detail), reply=answer,
            confidence=generation.confidence if generation else None,
            min_token_prob=generation.min_token_prob if generation else None,
            prompt_tokens=generation.prompt_tokens if generation else 0,
            completion_tokens=generation.completion_tokens if generation else 0,
            latency_s=round(time.perf_counter() - started, 3),
            generation_s=round(generation_s, 3) if generation_s is not None else None,
            error=_error_text(error), retrieved=tuple(given),
            cited=tuple(p.as_dict() for p in cited(answer, passages)) if not decision.handover else (),
            screenshots=screenshots.summary(), model_called=generation_s is not None,
        )

    async def _generate(self, request: GenerationRequest, progress: Progress | None) -> Generation:
        if progress is None:
            return await self.engine.generate(request, timeout=self.timeout_s)
        stream = self.engine.stream(request, timeout=self.timeout_s)
        try:
            async for delta in stream:
                await _report(progress, "text", {"delta": delta})
            return await stream.result()
        except BaseException:
            stream.cancel()  # a cancelled caller (a closed page, a cancelled run) frees the engine at once
            raise


def _error_text(error: BaseException | None) -> str | None:
    if error is None:
        return None
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


async def _report(progress: Progress | None, stage: str, details: dict) -> None:
    if progress is None:
        return
    outcome = progress(stage, details)
    if asyncio.iscoroutine(outcome):
        await outcome


__all__ = ["PreparedScreenshots", "TemplateTurn", "TurnResult", "TemplateError", "free_places"]
