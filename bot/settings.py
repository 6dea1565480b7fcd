"""Every Snapdesk setting, read in one place.

Values come from environment variables prefixed `SNAPDESK_` and an optional `.env` file
in the working directory; command-line flags override them. Everything else receives the
`Settings` object (or the small option objects built from it) instead of reading the
environment itself.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.images import ImageLimits
from engine.loading import DEFAULT_MODEL, LoadOptions

if TYPE_CHECKING:
    from .conversation import ManagerOptions
    from .screenshots import ReadingOptions
    from .store import Store


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SNAPDESK_", env_file=".env", extra="ignore")

    # Model and engine
    model: str = Field(DEFAULT_MODEL, description="Hub id or local directory of a Qwen3-VL checkpoint.")
    engine: Literal["transformers", "openai", "stub"] = Field(
        "transformers",
        description="transformers (in-process model), openai (a remote vLLM/SGLang server) or stub (for load tests).",
    )
    engine_url: str = Field("", description="openai engine: comma-separated base URLs, e.g. http://gpu1:8000/v1")
    engine_api_key: str = Field("", description="openai engine: bearer key for the remote servers")
    stub_first_token_ms: float = Field(
        0.0, ge=0, description="stub engine: milliseconds before the first word of a reply (0 = instant)"
    )
    stub_tokens_per_s: float = Field(0.0, ge=0, description="stub engine: tokens per second after the first (0 = instant)")
    stub_confidence: float = Field(0.9, ge=0, le=1, description="stub engine: the confidence of every reply")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    max_batch_size: int = Field(8, ge=1)
    batch_window_ms: float = Field(2.0, ge=0)
    queue_size: int = Field(64, ge=1)
    request_timeout_s: float = Field(120.0, gt=0)
    retry_interval_s: float = Field(
        60.0, gt=0, description="how often turns left pending and replies left undelivered are tried again"
    )
    busy_wait_s: float = Field(
        30.0, ge=0, description="how long a turn waits for room in a full engine queue before it goes to a person"
    )
    max_new_tokens: int = Field(512, ge=1)

    # Images
    image_max_bytes: int = Field(20 * 1024 * 1024, ge=1)
    image_max_source_pixels: int = Field(40_000_000, ge=1)
    image_min_tokens: int = Field(256, ge=1)
    image_max_tokens: int = Field(1280, ge=1)
    image_decodes: int = Field(4, ge=1, description="screenshots decoded at the same time, bot and /v1 together")

    # Reading screenshots locally (OCR), redaction inside them
    ocr: bool = Field(True, description="read the text of every screenshot on this machine (on|off); "
                      "redaction, screenshot evidence and unreadable detection need it")
    ocr_workers: int = Field(1, ge=1, le=16, description="screenshots read at the same time")
    ocr_timeout_s: float = Field(20.0, gt=0, description="the longest wait for one screenshot's reading")
    redact: bool = Field(True, description="paint personal data out of screenshots before they are stored (on|off)")
    redact_kinds: str = Field("card,iban,email,phone,code",
                              description="comma-separated kinds of personal data to paint out")

    # Knowledge (the help centre the bot answers from)
    kb_tokens: int = Field(1200, ge=0, description="prompt tokens the help-centre passages of one turn may take (0: none)")
    kb_passages: int = Field(4, ge=1, le=20, description="most passages put in one prompt")
    kb_min_score: float = Field(
        5.0, ge=0, description="a passage scoring below this is not relevant (also what require_knowledge checks)"
    )
    kb_allowed_hosts: str = Field("", description="comma-separated hosts Snapdesk may fetch articles and sitemaps from "
                                  "(*.example.com for subdomains)")
    kb_allow_private: bool = Field(False, description="allow fetching from private and loopback addresses")
    kb_stale_days: int = Field(180, ge=1, description="the Knowledge tab lists cited articles not updated for this long")

    # Quality loop: regression sets and publishing
    publish_gate: Literal["confirm", "block"] = Field(
        "confirm", description="a draft whose regression run does worse than the live version: confirm asks before "
        "publishing it, block refuses (and then a draft must have a finished run to be published)")
    eval_target_precision: float = Field(0.9, gt=0, le=1, description="the precision of answered cases that threshold "
                                         "advice aims for")

    # Conversations
    context_tokens: int = Field(8192, ge=512, description="token budget of a prompt: system prompt + history + new message")
    recent_images: int = Field(2, ge=0, description="screenshots sent as images; older ones become text stand-ins")
    unknown_confidence_hands_over: bool = True

    # Storage
    data_dir: Path = Path("data")
    db_lock_wait_s: float = Field(
        10.0, gt=0, description="how long a database write waits for another program's lock before it is refused"
    )
    retention_days: float = Field(
        0.0, ge=0, description="delete conversations idle for longer than this, daily (0: keep everything)"
    )

    # Web server and widget
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    secret_key: str = Field("", description="signs visitor tokens; generated and kept in the data directory when empty")
    widget_allowed_origins: str = Field(
        "", description="comma-separated origins of the sites that embed the widget (the server's own origin is always allowed)"
    )
    widget_max_images: int = Field(4, ge=1, le=20)
    widget_max_text_chars: int = Field(4000, ge=1)
    widget_rate_per_visitor: int = Field(20, ge=1, description="messages per visitor per minute")
    widget_rate_per_ip: int = Field(120, ge=1, description="widget requests per IP address per minute")
    public_url: str = Field("", description="the server's public base URL, for links (e.g. to the agent console)")
    console_idle_minutes: int = Field(30, ge=1, description="console sessions end after this long without a request")
    console_session_hours: int = Field(12, ge=1, description="console sessions end this long after sign-in")
    api_rate_per_key: int = Field(600, ge=1, description="/v1 requests per API key per minute")
    login_rate_per_ip: int = Field(10, ge=1, description="console sign-in attempts per IP address per minute")
    login_free_failures: int = Field(
        5, ge=1, description="failed sign-ins for one user name before each further try must wait (a growing delay)"
    )
    login_free_failures_per_ip: int = Field(
        20, ge=1, description="failed sign-ins from one IP address (/64 for IPv6) before each further try must wait"
    )
    login_delay_s: float = Field(1.0, gt=0, description="the first wait after the free failures; it doubles each time")
    login_max_delay_s: float = Field(300.0, gt=0, description="the longest wait between sign-in tries")
    trusted_proxies: str = Field(
        "",
        description="comma-separated addresses or networks of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed (default: none; the connecting address is the client)",
    )
    widget_streams_per_visitor: int = Field(3, ge=1, description="open widget event streams per visitor")
    widget_streams_per_ip: int = Field(30, ge=1, description="open widget event streams per IP address (/64 for IPv6)")
    console_streams_per_session: int = Field(4, ge=1, description="open console event streams per signed-in session")
    event_streams_total: int = Field(400, ge=1, description="open event streams in all, widget and consoles together")
    password_hash_workers: int = Field(
        2, ge=1, description="password checks at the same time (each takes ~20 MiB and tens of milliseconds)"
    )
    metrics_token: str = Field("", description="bearer token /metrics requires (empty: /metrics is open)")
    api_docs: bool = Field(True, description="serve /docs, /redoc and /openapi.json")

    # Slack
    slack_bot_token: str = ""
    slack_signing_secret: str = ""
    slack_app_token: str = Field("", description="xapp- token: Socket Mode instead of HTTP events")
    slack_agent_channel: str = Field("", description="channel id where hand-overs are announced")
    slack_api_url: str = "https://slack.com/api/"

    # Telegram
    telegram_token: str = ""
    telegram_webhook_secret: str = ""
    telegram_webhook_url: str = Field("", description="public URL of /telegram/webhook, registered with setWebhook")
    telegram_api_url: str = "https://api.telegram.org"

    def load_options(self) -> LoadOptions:
        return LoadOptions(
            model=self.model,
            device=self.device,
            dtype=self.dtype,
            attn_implementation=self.attn_implementation,
            min_image_tokens=self.image_min_tokens,
            max_image_tokens=max(self.image_max_tokens, self.image_min_tokens),
        )

    def manager_options(self) -> "ManagerOptions":
        from .context import ContextOptions
        from .conversation import ManagerOptions

        return ManagerOptions(
            context=ContextOptions(
                budget_tokens=self.context_tokens, recent_images=self.recent_images, max_new_tokens=self.max_new_tokens
            ),
            image_limits=self.image_limits(),
            image_decodes=self.image_decodes,
            request_timeout_s=self.request_timeout_s,
            busy_wait_s=self.busy_wait_s,
            engine_slots=self.queue_size,
            unknown_confidence_hands_over=self.unknown_confidence_hands_over,
            kb_tokens=self.kb_tokens,
            kb_passages=self.kb_passages,
            kb_min_score=self.kb_min_score,
            public_url=self.public_url.rstrip("/"),
        )

    @field_validator("redact_kinds")
    @classmethod
    def _known_kinds(cls, value: str) -> str:
        from engine.sensitive import KINDS

        unknown = [k for k in _kinds(value) if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown kind {unknown[0]!r} (known: {', '.join(KINDS)})")
        return value

    def reading_options(self) -> "ReadingOptions":
        from .screenshots import ReadingOptions

        kinds = _kinds(self.redact_kinds)
        return ReadingOptions(ocr=self.ocr, redact=self.redact and bool(kinds), kinds=kinds)

    @property
    def kb_host_list(self) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in self.kb_allowed_hosts.split(",") if h.strip())

    def open_store(self) -> "Store":
        from .store import Store

        return Store(self.data_dir, lock_wait_s=self.db_lock_wait_s)

    @property
    def trusted_proxy_list(self) -> list[str]:
        return [p.strip() for p in self.trusted_proxies.split(",") if p.strip()]

    @property
    def allowed_origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.widget_allowed_origins.split(",") if o.strip()]

    def image_limits(self) -> ImageLimits:
        return ImageLimits(
            max_bytes=self.image_max_bytes,
            max_source_pixels=self.image_max_source_pixels,
            max_pixels=max(self.image_max_tokens, self.image_min_tokens) * 32 * 32,
        )


def _kinds(value: str) -> tuple[str, ...]:
    return tuple(k.strip().lower() for k in value.split(",") if k.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
