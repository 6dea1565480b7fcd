"""Building the configured engine backend, and the conversation core around it."""

from __future__ import annotations

from engine.base import Engine
from engine.ocr import OcrReader
from engine.stub import StubEngine
from engine.transformers_engine import TransformersEngine

from .conversation import ConversationManager
from .escalation import EscalationPolicy
from .knowledge.index import KnowledgeBase
from .messages import ChannelRegistry
from .settings import Settings
from .template_versions import PublishedTemplates
from .templates import TemplateLibrary


def make_engine(settings: Settings) -> Engine:
    """The engine named by SNAPDESK_ENGINE, not yet started."""
    if settings.engine == "stub":
        return StubEngine(
            confidence=settings.stub_confidence,
            first_token_ms=settings.stub_first_token_ms,
            tokens_per_s=settings.stub_tokens_per_s,
            keep_requests=0,
        )
    if settings.engine == "openai":
        from engine.openai_engine import OpenAICompatibleEngine

        return OpenAICompatibleEngine(
            urls=[url.strip() for url in settings.engine_url.split(",") if url.strip()],
            model=settings.model,
            api_key=settings.engine_api_key or None,
            max_queue=settings.queue_size,
            request_timeout_s=settings.request_timeout_s,
            min_image_tokens=settings.image_min_tokens,
            max_image_tokens=settings.image_max_tokens,
        )
    return TransformersEngine(
        settings.load_options(),
        max_queue=settings.queue_size,
        max_batch_size=settings.max_batch_size,
        batch_window_ms=settings.batch_window_ms,
        request_timeout_s=settings.request_timeout_s,
    )


def make_manager(settings: Settings, engine: Engine, channels: ChannelRegistry) -> ConversationManager:
    """Store (migrated), templates (seeded), policy and manager, from settings."""
    store = settings.open_store()
    templates = PublishedTemplates(store, TemplateLibrary())
    templates.seed()
    reading = settings.reading_options()
    reader = OcrReader(settings.ocr_workers, settings.ocr_timeout_s) if reading.ocr else None
    return ConversationManager(store, engine, templates, EscalationPolicy(), channels, settings.manager_options(),
                               reader=reader, reading=reading, knowledge=KnowledgeBase(store))
