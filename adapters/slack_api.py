"""Talking to Slack: Web API calls with retries, and downloading the files users share.

Web API calls go through slack_sdk's own client. `AsyncWebClient` is used when aiohttp (its
optional transport) is installed; otherwise the same calls run on slack_sdk's `WebClient`
(standard library only) in a small dedicated thread pool, so the event loop never blocks
either way. Transient failures (HTTP 5xx, `ratelimited` with its Retry-After, network
errors, Slack's own temporary errors) are retried with backoff for a bounded time; a
permanent error (`channel_not_found`, `invalid_auth`, ...) is raised at once.

Files are fetched with httpx: the bot token goes only to Slack's file host, the declared
size is checked first, the download stops as soon as it passes the limit, and the first
bytes must be an image (a missing scope answers with an HTML login page, not a picture).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from slack_sdk.errors import SlackApiError

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
SLACK_FILE_HOST = "files.slack.com"

# Errors Slack documents as temporary: worth another try.
TRANSIENT_ERRORS = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
# Errors that mean the token itself is unusable.
AUTH_ERRORS = {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired", "no_permission",
               "missing_scope", "not_allowed_token_type", "invalid_token"}

try:  # slack_sdk's async client needs aiohttp, an optional dependency of slack_sdk
    import aiohttp  # noqa: F401

    from slack_sdk.web.async_client import AsyncWebClient
except ImportError:  # pragma: no cover - depends on what is installed
    AsyncWebClient = None  # type: ignore[assignment,misc]


class SlackCallError(Exception):
    """A Web API call failed for good (after retries, or at once for a permanent error)."""

    def __init__(self, method: str, error: str, status: int | None = None) -> None:
        super().__init__(f"Slack {method} failed: {error}" + (f" (HTTP {status})" if status else ""))
        self.method, self.error, self.status = method, error, status


class SlackApi:
    """`await api.call("chat.postMessage", channel=..., text=...)` -> the response's data."""

    def __init__(self, token: str, base_url: str = DEFAULT_API_URL, *, attempts: int = 4,
                 retry_base_s: float = 0.5, max_total_s: float = 30.0, timeout_s: int = 15) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.attempts = attempts
        self.retry_base_s = retry_base_s
        self.max_total_s = max_total_s
        self._pool: ThreadPoolExecutor | None = None
        if AsyncWebClient is not None:
            self.client: Any = AsyncWebClient(token=token, base_url=self.base_url, timeout=timeout_s, retry_handlers=[])
            self.is_async = True
        else:
            from slack_sdk import WebClient

            self.client = WebClient(token=token, base_url=self.base_url, timeout=timeout_s, retry_handlers=[])
            self.is_async = False
            self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="slack-api")

    async def _once(self, method: str, kwargs: dict[str, Any]) -> dict:
        function = getattr(self.client, method.replace(".", "_"))
        if self.is_async:
            response = await function(**kwargs)
        else:
            loop = asyncio.get_running_loop()
            response = await loop.run_in_executor(self._pool, partial(function, **kwargs))
        return response.data if isinstance(response.data, dict) else {"ok": True}

    async def call(self, method: str, *, attempts: int | None = None, max_total_s: float | None = None,
                   **kwargs: Any) -> dict:
        attempts = attempts or self.attempts
        max_total_s = self.max_total_s if max_total_s is None else max_total_s
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            wait: float | None
            try:
                return await self._once(method, kwargs)
            except SlackApiError as exc:
                response = exc.response
                data = response.data if isinstance(response.data, dict) else {}
                error = str(data.get("error") or f"http_{response.status_code}")
                if error.startswith("Received a response in a non-JSON"):  # slack_sdk's wording
                    error = "non_json_response"
                status = response.status_code
                if status == 429 or error == "ratelimited":
                    wait = _retry_after(response.headers)
                elif status >= 500 or error in TRANSIENT_ERRORS or error == "non_json_response":
                    wait = None
                else:
                    raise SlackCallError(method, error, status if status != 200 else None) from None
                failure = SlackCallError(method, error, status if status != 200 else None)
            except SlackCallError:
                raise
            except Exception as exc:  # network trouble: connection refused, reset, timeout
                failure, wait = SlackCallError(method, type(exc).__name__), None
            if wait is None:
                wait = self.retry_base_s * (2 ** (attempt - 1)) * (1 + random.random() / 4)
            elapsed = time.monotonic() - started
            if attempt == attempts or elapsed + wait > max_total_s:
                raise failure
            log.info("Slack %s failed (%s); retrying in %.1f s", method, failure.error, wait)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        session = getattr(self.client, "session", None)
        if session is not None and not session.closed:  # pragma: no cover - aiohttp only
            await session.close()


def _retry_after(headers: Any) -> float:
    for key, value in dict(headers or {}).items():
        if key.lower() == "retry-after":
            value = value[0] if isinstance(value, (list, tuple)) else value
            try:
                return max(0.0, float(value))
            except (TypeError, ValueError):
                break
    return 1.0


# Files ------------------------------------------------------------------------------------------
IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)


def sniff_image(data: bytes) -> str | None:
    """The image format the first bytes announce (PNG, JPEG, GIF, WebP, BMP), or None."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for signature, kind in IMAGE_SIGNATURES:
        if data.startswith(signature):
            return kind
    return None


class FileProblem(Exception):
    """A shared file that cannot be used; `kind` is too_big, not_image or unreadable."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> "Origin":
        parts = urlsplit(url)
        scheme = (parts.scheme or "").lower()
        port = parts.port or (443 if scheme == "https" else 80)
        return cls(scheme, (parts.hostname or "").lower(), port)


def file_origins(api_url: str) -> frozenset[Origin]:
    """Where the bot token may be sent for a download.

    With Slack's own API that is files.slack.com and nothing else; with another API URL (a
    test server, a Slack-compatible host) it is that URL's host and its `files.` host.
    """
    api = Origin.of(api_url)
    if api == Origin.of(DEFAULT_API_URL):
        return frozenset({Origin("https", SLACK_FILE_HOST, 443)})
    return frozenset({api, Origin(api.scheme, f"files.{api.host}", api.port)})


class FileFetcher:
    """Downloads files users share, within size, time and origin limits."""

    def __init__(self, token: str, api_url: str, max_bytes: int, *, timeout_s: float = 30.0,
                 max_redirects: int = 3) -> None:
        self.token = token
        self.origins = file_origins(api_url)
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        self._client: httpx.AsyncClient | None = None

    def allowed(self, url: str) -> bool:
        return Origin.of(url) in self.origins

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(15.0, connect=5.0), follow_redirects=False,
                headers={"User-Agent": "Snapdesk"},
            )
        return self._client

    async def fetch(self, url: str) -> bytes:
        """The file's bytes, checked to be an image; raises FileProblem."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._fetch(url)
        except TimeoutError:
            raise FileProblem("unreadable", "download timed out") from None
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:  # ValueError: a URL with a bad port
            raise FileProblem("unreadable", type(exc).__name__) from None

    async def _fetch(self, url: str) -> bytes:
        for _ in range(self.max_redirects + 1):
            if not self.allowed(url):  # never send the token elsewhere, and fetch nothing else either
                raise FileProblem("unreadable", "not on Slack's file host")
            headers = {"Authorization": f"Bearer {self.token}"}
            async with self.client().stream("GET", url, headers=headers) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise FileProblem("unreadable", f"HTTP {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    raise FileProblem("too_big", f"{declared} bytes")
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > self.max_bytes:
                        raise FileProblem("too_big", "more than the limit")
                if sniff_image(bytes(data[:16])) is None:
                    content_type = response.headers.get("content-type", "?").split(";")[0]
                    raise FileProblem("unreadable", f"not an image ({content_type})")
                return bytes(data)
        raise FileProblem("unreadable", "too many redirects")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
