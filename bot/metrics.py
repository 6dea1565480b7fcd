"""Prometheus metrics (all named snapdesk_*), fed by the conversation core and the engine."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)


disable_created_metrics()  # *_created series only add noise to these counters


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter("snapdesk_messages", "User messages received", ["channel"], registry=r)
        self.answers = Counter("snapdesk_answers", "Turns answered by the bot", ["channel"], registry=r)
        self.handovers = Counter("snapdesk_handovers", "Turns handed over to a person", ["reason"], registry=r)
        self.queue_depth = Gauge("snapdesk_engine_queue_depth", "Requests waiting for the model", registry=r)
        self.batch_size = Histogram(
            "snapdesk_engine_batch_size", "Requests per generate call", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r
        )
        self.first_token = Histogram(
            "snapdesk_time_to_first_token_seconds", "From request to first token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.latency = Histogram(
            "snapdesk_generation_seconds", "From request to last token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.tokens = Counter("snapdesk_tokens", "Tokens processed", ["kind"], registry=r)
        self.busy_waits = Counter(
            "snapdesk_engine_busy_waits", "Times a turn found the engine queue full and waited", registry=r
        )

        self.screenshots_read = Counter(
            "snapdesk_screenshots_read", "Screenshots read locally, by outcome (read, timeout, failed, busy)",
            ["outcome"], registry=r,
        )
        self.redactions = Counter("snapdesk_redactions", "Personal data painted out of screenshots", ["kind"], registry=r)

    def watch_engine(self, engine: Any) -> None:
        if hasattr(engine, "queue_depth"):
            self.queue_depth.set_function(lambda: engine.queue_depth)
        worker = getattr(engine, "worker", None)
        if worker is not None:
            worker.on_batch = self.batch_size.observe

    def on_event(self, event: str, data: dict) -> None:
        """ConversationManager.on_event hook."""
        if event == "inbound":
            self.messages.labels(data.get("channel", "")).inc()
            return
        if event == "busy":
            self.busy_waits.inc()
            return
        if event == "screenshot_read":
            self.screenshots_read.labels(data.get("outcome", "read")).inc()
            for kind in data.get("redacted", ()):
                self.redactions.labels(kind).inc()
            return
        if event not in ("answer", "handover"):
            return
        if event == "answer":
            self.answers.labels(data.get("channel", "")).inc()
        else:
            self.handovers.labels(data.get("reason") or "unknown").inc()
        generation = data.get("generation")
        if generation is not None:
            self.first_token.observe(generation.timings.first_token_ms / 1000.0)
            self.latency.observe(generation.timings.total_ms / 1000.0)
            self.tokens.labels("prompt").inc(generation.prompt_tokens)
            self.tokens.labels("completion").inc(generation.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
