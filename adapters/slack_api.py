"""Talking to Slack: Web API calls with slack_sdk's retry handlers, and downloading shared files.

Web API calls go through slack_sdk's `AsyncWebClient`, and transient failures are retried by
slack_sdk's own `RetryHandler`s: connection errors, HTTP 500/503, `ratelimited` (429, after
its Retry-After, up to a bound) and the errors Slack documents as temporary but answers with
HTTP 200. A permanent error (`channel_not_found`, `invalid_auth`, ...) is raised at once as
`SlackCallError`, the one exception the Slack channel deals with.

Files are fetched with httpx: the bot token goes only to Slack's file host, the declared
size is checked first, the download stops as soon as it passes the limit, and the first
bytes must be an image (a missing scope answers with an HTML login page, not a picture).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import urljoin, urlsplit

import httpx
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import HttpRequest, HttpResponse, RetryState
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.web.async_client import AsyncWebClient

from engine.images import sniff_format

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
SLACK_FILE_HOST = "files.slack.com"

# Errors Slack documents as temporary but answers with HTTP 200: worth another try.
TRANSIENT_ERRORS = {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}
# Errors that mean the token itself is unusable.
AUTH_ERRORS = {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired", "no_permission",
               "missing_scope", "not_allowed_token_type", "invalid_token"}


class SlackCallError(Exception):
    """A Web API call failed for good (after retries, or at once for a permanent error)."""

    def __init__(self, method: str, error: str, status: int | None = None) -> None:
        super().__init__(f"Slack {method} failed: {error}" + (f" (HTTP {status})" if status else ""))
        self.method, self.error, self.status = method, error, status


class TemporaryErrorRetryHandler(AsyncRetryHandler):
    """Slack's temporary errors (`internal_error`, ...) come with HTTP 200, which no built-in handler retries."""

    async def _can_retry_async(self, *, state: RetryState, request: HttpRequest,
                               response: Optional[HttpResponse] = None, error: Optional[Exception] = None) -> bool:
        body = response.body if response is not None else None
        return isinstance(body, dict) and body.get("error") in TRANSIENT_ERRORS


class BoundedRateLimitRetryHandler(AsyncRateLimitErrorRetryHandler):
    """Waits out a 429's Retry-After, unless it asks for longer than `max_wait_s`: then the call fails."""

    def __init__(self, max_retry_count: int, max_wait_s: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait_s = max_wait_s

    async def _can_retry_async(self, *, state: RetryState, request: HttpRequest,
                               response: Optional[HttpResponse] = None, error: Optional[Exception] = None) -> bool:
        if response is None or response.status_code != 429:
            return False
        return retry_after(response.headers) <= self.max_wait_s


def retry_after(headers: dict[str, list[str]]) -> float:
    for key, values in (headers or {}).items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(values[0]))
            except (TypeError, ValueError, IndexError):
                break
    return 1.0


def retry_handlers(retries: int, max_wait_s: float,
                   backoff: BackoffRetryIntervalCalculator) -> list[AsyncRetryHandler]:
    """slack_sdk's retry handlers; `retries` bounds them all together (they share one count per call)."""
    return [
        BoundedRateLimitRetryHandler(retries, max_wait_s),
        AsyncServerErrorRetryHandler(max_retry_count=retries, interval_calculator=backoff),
        AsyncConnectionErrorRetryHandler(max_retry_count=retries, interval_calculator=backoff),
        TemporaryErrorRetryHandler(max_retry_count=retries, interval_calculator=backoff),
    ]


def web_client(token: str | None, base_url: str, handlers: list[AsyncRetryHandler],
               timeout_s: int = 15) -> AsyncWebClient:
    return AsyncWebClient(token=token, base_url=base_url, timeout=timeout_s, retry_handlers=handlers)


class SlackApi:
    """`await api.call("chat.postMessage", channel=..., text=...)` -> the response's data.

    Two clients with one backoff: the default one retries up to `retries` times and waits out a
    Retry-After of up to 30 s; the `quick` one (for courtesies such as the placeholder) retries
    once and never waits more than 3 s.
    """

    def __init__(self, token: str, base_url: str = DEFAULT_API_URL, *, retries: int = 3,
                 timeout_s: int = 15) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.attempts = retries + 1
        self.backoff = BackoffRetryIntervalCalculator(backoff_factor=0.5)
        self.client = web_client(token, self.base_url, retry_handlers(retries, 30.0, self.backoff), timeout_s)
        self.quick_client = web_client(token, self.base_url, retry_handlers(1, 3.0, self.backoff), timeout_s)

    async def call(self, method: str, *, quick: bool = False, **kwargs: Any) -> dict:
        client = self.quick_client if quick else self.client
        try:
            response = await getattr(client, method.replace(".", "_"))(**kwargs)
        except SlackApiError as exc:
            data = exc.response.data if isinstance(exc.response.data, dict) else {}
            status = exc.response.status_code
            error = str(data.get("error") or ("non_json_response" if status == 200 else f"http_{status}"))
            raise SlackCallError(method, error, status if status != 200 else None) from None
        except Exception as exc:  # network trouble after the retries: refused, reset, timeout
            raise SlackCallError(method, type(exc).__name__) from None
        return response.data if isinstance(response.data, dict) else {"ok": True}

    async def close(self) -> None:
        for client in (self.client, self.quick_client):
            if client.session is not None and not client.session.closed:
                await client.session.close()


# Files ------------------------------------------------------------------------------------------
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
                if sniff_format(bytes(data[:32])) is None:
                    content_type = response.headers.get("content-type", "?").split(";")[0]
                    raise FileProblem("unreadable", f"not an image ({content_type})")
                return bytes(data)
        raise FileProblem("unreadable", "too many redirects")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
