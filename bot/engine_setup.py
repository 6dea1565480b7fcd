"""Building the configured engine backend from settings."""

from __future__ import annotations

from engine.base import Engine
from engine.transformers_engine import TransformersEngine

from .settings import Settings


def make_engine(settings: Settings) -> Engine:
    """The engine named by SNAPDESK_ENGINE, not yet started."""
    return TransformersEngine(
        settings.load_options(),
        max_queue=settings.queue_size,
        max_batch_size=settings.max_batch_size,
        batch_window_ms=settings.batch_window_ms,
        request_timeout_s=settings.request_timeout_s,
    )
