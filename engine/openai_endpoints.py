"""Which inference server a remote request goes to, and when one is down.

Several base URLs are used round-robin. An endpoint that cannot be reached is marked down
for a backoff period (doubling on each failure, up to a maximum) and skipped; when its
backoff has passed, a `GET /models` (or `/health`) tells whether it is back before a
request is sent to it. At start every endpoint is checked at once, so that a wrong URL,
model name or API key is reported before the first conversation rather than during it.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from .base import ModelLoadError
from .openai_payload import LLAMA_CPP, STRICT
from .openai_stream import describe, error_message

log = logging.getLogger(__name__)

# How servers name themselves in `GET /models` (`owned_by`): llama-server says "llamacpp",
# llama-cpp-python's server "me". vLLM says "vllm", SGLang "sglang".
LLAMA_CPP_OWNERS = ("llamacpp", "me")


@dataclass(eq=False)
class Endpoint:
    """One server's base URL (ending in /v1) and what Snapdesk knows of its health."""

    url: str
    failures: int = 0
    down_until: float = 0.0  # time.monotonic()
    last_error: str = ""
    requests: int = 0
    checking: bool = False
    kind: str = ""  # LLAMA_CPP, STRICT, or "" (vLLM, SGLang and the rest; also while unknown)

    @property
    def root(self) -> str:
        """The server's root (where vLLM, SGLang and transformers serve `/health`)."""
        return self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url

    def available(self, now: float) -> bool:
        return now >= self.down_until

    @property
    def suspect(self) -> bool:
        """It failed and has not answered a health check since."""
        return self.failures > 0


def normalize_base_url(url: str) -> str:
    """`http://gpu1:8000`, `http://gpu1:8000/` and `http://gpu1:8000/v1/` all mean `.../v1`."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ModelLoadError(
            f"'{url}' is not an http(s) URL: set SNAPDESK_ENGINE_URL to base URLs such as http://gpu1:8000/v1."
        )
    if parts.path in ("", "/"):
        url += "/v1"
    return url


# (state, detail, served model ids or None when unknown); state is ok/unlisted/auth/wrong-model/down.
_Check = tuple[str, str, list[str] | None]


class EndpointPool:
    """The endpoints of one engine, their round-robin order and their down periods.

    The down period is `down_backoff_s * 2 ** (failures - 1)`, at most `max_down_backoff_s`:
    written out rather than through tenacity's `wait_exponential`, which computes a pause
    from a retry's call state, and an endpoint's failures are not one call's tries.
    """

    def __init__(self, urls: list[str], *, connect_timeout_s: float, read_timeout_s: float, down_backoff_s: float,
                 max_down_backoff_s: float) -> None:
        self.endpoints = [Endpoint(normalize_base_url(url)) for url in urls]
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.down_backoff_s = down_backoff_s
        self.max_down_backoff_s = max_down_backoff_s
        self.probe_timeout = httpx.Timeout(min(read_timeout_s, 10.0), connect=connect_timeout_s)
        self._next = 0

    # Start -------------------------------------------------------------------------------
    def check_at_start(self, model: str, headers: dict[str, str]) -> None:
        """Check that at least one endpoint answers and serves `model` (blocking); the others are marked down."""
        with httpx.Client(headers=headers, timeout=self.probe_timeout) as client:
            with ThreadPoolExecutor(max_workers=min(8, len(self.endpoints))) as pool:
                checks = list(pool.map(lambda ep: self._check_sync(client, ep, model), self.endpoints))
        self._apply_checks(checks, model)

    def _check_sync(self, client: httpx.Client, endpoint: Endpoint, model: str) -> _Check:
        try:
            response = _get_sync(client, f"{endpoint.url}/models")
        except httpx.HTTPError as exc:
            return "down", describe(exc), None
        if response.status_code in (401, 403):
            return "auth", f"HTTP {response.status_code}", None
        if response.status_code == 200:
            endpoint.kind = server_kind(response)
            served = _model_ids(response)
            if served is not None and model in served:
                return "ok", "", served
        else:
            served = None
            try:  # some servers list only cached models and fail without a cache: ask /health
                health = _get_sync(client, f"{endpoint.root}/health")
            except httpx.HTTPError as exc:
                return "down", describe(exc), None
            if health.status_code != 200:
                return "down", f"HTTP {response.status_code} from /models and {health.status_code} from /health", None
        # Up, but the model is not in its list: ask for one token, the only sure test.
        try:
            probe = client.post(
                f"{endpoint.url}/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1},
                timeout=httpx.Timeout(self.read_timeout_s, connect=self.connect_timeout_s),
            )
        except httpx.HTTPError as exc:
            return "down", describe(exc), None
        if probe.status_code == 200:
            return "unlisted", "", served
        if probe.status_code in (401, 403):
            return "auth", f"HTTP {probe.status_code}", None
        if probe.status_code in (400, 404, 422):
            return "wrong-model", error_message(probe.text), served
        return "down", f"HTTP {probe.status_code} for a one-token request: {error_message(probe.text)}", None

    def _apply_checks(self, checks: list[_Check], model: str) -> None:
        states = [state for state, _, _ in checks]
        if "ok" not in states and "unlisted" not in states:
            urls = ", ".join(ep.url for ep in self.endpoints)
            if "wrong-model" in states:
                wrong = [(ep, d, m) for ep, (state, d, m) in zip(self.endpoints, checks) if state == "wrong-model"]
                served = sorted({name for _, _, models in wrong for name in models or []})
                listing = f"it serves {', '.join(served)}" if served else f"it says: {wrong[0][1].rstrip('.')}"
                raise ModelLoadError(
                    f"The inference server at {', '.join(ep.url for ep, _, _ in wrong)} does not serve the model "
                    f"'{model}' ({listing}): set SNAPDESK_MODEL to the name the server was started with "
                    "(its --served-model-name)."
                )
            if "auth" in states:
                rejecting = [ep.url for ep, (state, _, _) in zip(self.endpoints, checks) if state == "auth"]
                raise ModelLoadError(
                    f"The inference server at {', '.join(rejecting)} rejected the API key: set "
                    "SNAPDESK_ENGINE_API_KEY to the key the server was started with (--api-key)."
                )
            reasons = "; ".join(f"{ep.url}: {detail}" for ep, (_, detail, _) in zip(self.endpoints, checks))
            raise ModelLoadError(
                f"No inference server answered at {urls} ({reasons}): start vLLM or SGLang there, or fix "
                "SNAPDESK_ENGINE_URL."
            )
        for endpoint, (state, detail, _) in zip(self.endpoints, checks):
            if state not in ("ok", "unlisted"):
                self.mark_down(endpoint, f"{state}: {detail}" if detail else state)

    # Requests ------------------------------------------------------------------------------
    async def choose(self, client: httpx.AsyncClient, tried: set[int], allow_repeat: bool) -> Endpoint | None:
        """The next healthy endpoint in round-robin order, preferring ones this request has not tried."""
        count = len(self.endpoints)
        for _ in range(count):
            endpoint = self.endpoints[self._next % count]
            self._next += 1
            if id(endpoint) in tried or not endpoint.available(time.monotonic()) or endpoint.checking:
                continue
            if endpoint.suspect and not await self._health_check(client, endpoint):
                continue
            return endpoint
        if not allow_repeat:
            candidates = [ep for ep in self.endpoints if id(ep) not in tried]
        else:
            candidates = list(self.endpoints)
        if not candidates:
            return None
        # Nothing healthy: try the endpoint whose backoff ends first rather than failing at once.
        return min(candidates, key=lambda ep: (id(ep) in tried, ep.down_until))

    async def _health_check(self, client: httpx.AsyncClient, endpoint: Endpoint) -> bool:
        """`GET /models` (or `/health`) on an endpoint that failed, once its backoff has passed."""
        endpoint.checking = True
        try:
            for url in (f"{endpoint.url}/models", f"{endpoint.root}/health"):
                try:
                    response = await _get_async(client, url, self.probe_timeout)
                except httpx.HTTPError as exc:
                    self.mark_down(endpoint, f"health check: {describe(exc)}")
                    return False
                if response.status_code == 200:
                    if url.endswith("/models"):
                        endpoint.kind = server_kind(response) or (STRICT if endpoint.kind == STRICT else "")
                    log.info("inference server %s is answering again", endpoint.url)
                    endpoint.failures = 0
                    endpoint.down_until = 0.0
                    endpoint.last_error = ""
                    return True
            self.mark_down(endpoint, f"health check: HTTP {response.status_code}")
            return False
        finally:
            endpoint.checking = False

    def mark_down(self, endpoint: Endpoint, reason: str) -> None:
        endpoint.failures += 1
        backoff = min(self.down_backoff_s * 2 ** (endpoint.failures - 1), self.max_down_backoff_s)
        endpoint.down_until = time.monotonic() + backoff
        endpoint.last_error = reason
        log.warning("inference server %s marked down for %.1f s: %s", endpoint.url, backoff, reason)


def server_kind(response: httpx.Response) -> str:
    """LLAMA_CPP when a `GET /models` answer says so, else ""."""
    try:
        data = response.json().get("data")
        owners = {str(item.get("owned_by", "")).lower() for item in data if isinstance(item, dict)}
    except (ValueError, AttributeError, TypeError):
        return ""
    return LLAMA_CPP if owners & set(LLAMA_CPP_OWNERS) else ""


# A pooled keep-alive connection the server has just closed fails with one of these: a GET
# is safe to repeat once on a fresh connection.
_STALE_CONNECTION = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


def _get_sync(client: httpx.Client, url: str) -> httpx.Response:
    try:
        return client.get(url)
    except _STALE_CONNECTION:
        return client.get(url)


async def _get_async(client: httpx.AsyncClient, url: str, timeout: httpx.Timeout) -> httpx.Response:
    try:
        return await client.get(url, timeout=timeout)
    except _STALE_CONNECTION:
        return await client.get(url, timeout=timeout)


def _model_ids(response: httpx.Response) -> list[str] | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return None
    return [str(item.get("id")) for item in data if isinstance(item, dict) and item.get("id") is not None]
