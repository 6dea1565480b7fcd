"""Fetching operator-given help-centre pages and sitemaps without turning the server into an SSRF tool.

The server runs inside the company's network, so a URL typed by an operator (or a redirect or sitemap
entry it leads to) could otherwise reach the cloud metadata service, an admin port on loopback or an
intranet host. Every hop, the first request and each redirect target, is checked again: http/https
only, host in the allow list, and the addresses the name resolves to must all be public unless
private ones are allowed. The host name is resolved once and the request is sent to that checked
address (Host header and TLS server name kept), so a DNS answer that changes between the check and
the connection cannot send the request elsewhere. Bodies are read as a stream and cut at the size
limit after decompression, and the whole page, redirects and retries included, has one time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from xml.parsers import expat

import httpx

log = logging.getLogger(__name__)

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRY_PAUSE_S = 0.25
_MAX_INDEX_DEPTH = 2
_GZIP_MAGIC = b"\x1f\x8b"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int = 5 * 1024 * 1024
    timeout_s: float = 20.0
    max_redirects: int = 5
    max_pages: int = 2000


@dataclass(frozen=True)
class FetchedPage:
    url: str
    final_url: str
    content_type: str
    data: bytes


class FetchRefused(Exception):
    """A page that was not fetched; `reason` is one of host_not_allowed, private_address, too_large,
    timeout, too_many_redirects, http_status, not_http, bad_sitemap, unreachable, and the message is
    written for the operator who gave the URL."""

    def __init__(self, url: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason


async def fetch_page(
    url: str,
    allowed_hosts: Sequence[str],
    *,
    allow_private: bool = False,
    limits: FetchLimits = FetchLimits(),
    client: httpx.AsyncClient | None = None,
) -> FetchedPage:
    """Fetch one page, following at most `limits.max_redirects` checked redirects.

    A connection error or a 5xx answer is tried once more; a 4xx answer is not. A given `client`
    is used as it is (its proxy settings included) and not closed."""
    async with _client(client, limits) as http:
        try:
            async with asyncio.timeout(limits.timeout_s):
                return await _follow(http, url, allowed_hosts, allow_private, limits)
        except TimeoutError:
            raise FetchRefused(url, "timeout", f"{url} took longer than {limits.timeout_s:g} s") from None


async def sitemap_urls(
    url: str,
    allowed_hosts: Sequence[str],
    *,
    allow_private: bool = False,
    limits: FetchLimits = FetchLimits(),
    client: httpx.AsyncClient | None = None,
) -> list[str]:
    """The page URLs a sitemap lists, in order and without repeats, at most `limits.max_pages`.

    Sitemap indexes are followed (an index may list indexes, which must list sitemaps), gzip
    sitemaps are unpacked within `limits.max_bytes`, and every sitemap is fetched with
    `fetch_page`'s checks. The page URLs themselves are returned as listed: they are checked when
    they are fetched."""
    pages: dict[str, None] = {}
    queue = [(url, 0)]
    seen = {url}
    async with _client(client, limits) as http:
        while queue and len(pages) < limits.max_pages:
            sitemap, depth = queue.pop(0)
            page = await fetch_page(
                sitemap, allowed_hosts, allow_private=allow_private, limits=limits, client=http
            )
            kind, locs = _sitemap_entries(_unpacked(page.data, sitemap, limits.max_bytes), sitemap)
            if kind == "urlset":
                pages.update(dict.fromkeys(locs))
                continue
            if depth >= _MAX_INDEX_DEPTH:
                raise FetchRefused(
                    sitemap, "bad_sitemap",
                    f"{sitemap} is a sitemap index nested deeper than {_MAX_INDEX_DEPTH} levels",
                )
            for loc in locs:
                if loc not in seen:
                    seen.add(loc)
                    queue.append((loc, depth + 1))
    if len(pages) > limits.max_pages or queue:
        log.warning("sitemap %s lists %d pages; only the first %d are kept", url, len(pages), limits.max_pages)
    return list(pages)[: limits.max_pages]


def _client(client: httpx.AsyncClient | None, limits: FetchLimits):
    if client is not None:
        return contextlib.nullcontext(client)
    return httpx.AsyncClient(timeout=limits.timeout_s, trust_env=False)


async def _follow(
    http: httpx.AsyncClient, asked: str, allowed_hosts: Sequence[str], allow_private: bool, limits: FetchLimits
) -> FetchedPage:
    try:
        current = httpx.URL(asked)
    except httpx.InvalidURL as exc:
        raise FetchRefused(asked, "not_http", f"{asked!r} is not a valid URL: {exc}") from None
    for _ in range(limits.max_redirects + 1):
        _check_target(current, asked, allowed_hosts)
        status, headers, body = await _hop(http, current, asked, allow_private, limits)
        if status in _REDIRECTS and "location" in headers:
            try:
                current = current.join(headers["location"])
            except httpx.InvalidURL as exc:
                raise FetchRefused(asked, "not_http", f"{current} redirects to an invalid URL: {exc}") from None
            continue
        if not 200 <= status < 300:
            raise FetchRefused(asked, "http_status", f"{current} answered HTTP {status}")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        return FetchedPage(url=asked, final_url=str(current), content_type=content_type, data=body)
    raise FetchRefused(asked, "too_many_redirects", f"{asked} redirects more than {limits.max_redirects} times")


def _check_target(url: httpx.URL, asked: str, allowed_hosts: Sequence[str]) -> None:
    if url.scheme not in ("http", "https"):
        raise FetchRefused(asked, "not_http", f"{url} is not an http or https URL")
    host = _normal_host(url.raw_host.decode("ascii"))
    for entry in allowed_hosts:
        if entry.startswith("*."):
            if host.endswith("." + _normal_host(entry[2:])):
                return
        elif host == _normal_host(entry):
            return
    raise FetchRefused(asked, "host_not_allowed", f"{url.host or url} is not one of the allowed hosts")


def _normal_host(name: str) -> str:
    """The ASCII (IDNA) lower-case form, without brackets or a trailing dot, so entries compare exactly."""
    return httpx.URL(scheme="http", host=name.strip()).raw_host.decode("ascii").lower().rstrip(".")


async def _hop(
    http: httpx.AsyncClient, url: httpx.URL, asked: str, allow_private: bool, limits: FetchLimits
) -> tuple[int, httpx.Headers, bytes]:
    addresses = await _checked_addresses(url, asked, allow_private)
    failure: httpx.TransportError | None = None
    for attempt in (1, 2):
        if attempt == 2:
            await asyncio.sleep(_RETRY_PAUSE_S)
        try:
            answer = await _first_answer(http, url, addresses, limits)
        except httpx.TimeoutException:
            raise FetchRefused(asked, "timeout", f"{url} took longer than {limits.timeout_s:g} s") from None
        except _BodyRefused as exc:
            raise FetchRefused(asked, exc.reason, f"{url} {exc}") from None
        except httpx.TransportError as exc:
            failure = exc
            continue
        if answer[0] < 500 or attempt == 2:
            return answer
    raise FetchRefused(asked, "unreachable", f"{url.host} could not be reached: {failure!r}")


async def _checked_addresses(url: httpx.URL, asked: str, allow_private: bool) -> list[str]:
    host = url.raw_host.decode("ascii")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = await _resolve(host, url.port or (443 if url.scheme == "https" else 80), asked)
    if not allow_private:
        for address in addresses:
            if _is_forbidden(address):
                raise FetchRefused(
                    asked, "private_address",
                    f"{url.host} is at {address}, a private or reserved address; only public addresses are fetched",
                )
    return list(dict.fromkeys(str(address) for address in addresses))


async def _resolve(host: str, port: int, asked: str) -> list[IPAddress]:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchRefused(asked, "unreachable", f"{host} could not be resolved: {exc}") from None
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def _is_forbidden(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is not None and _is_forbidden(embedded):
            return True
    return address.is_multicast or address.is_reserved or address.is_unspecified or not address.is_global


async def _first_answer(
    http: httpx.AsyncClient, url: httpx.URL, addresses: list[str], limits: FetchLimits
) -> tuple[int, httpx.Headers, bytes]:
    """Tries the checked addresses in turn: a name may resolve to ::1 and 127.0.0.1 but listen on one."""
    for address in addresses[:-1]:
        with contextlib.suppress(httpx.ConnectError):
            return await _request(http, url, address, limits)
    return await _request(http, url, addresses[-1], limits)


async def _request(
    http: httpx.AsyncClient, url: httpx.URL, address: str, limits: FetchLimits
) -> tuple[int, httpx.Headers, bytes]:
    """One GET to the checked address. Connections are pooled by address, so an https connection
    is closed after its answer: reused for another host name on the same address, it would carry
    that name's request under a certificate checked for the first one."""
    host = url.raw_host.decode("ascii")
    headers = {"Host": url.netloc.decode("ascii"), "Accept-Encoding": "gzip, deflate"}
    extensions = None
    if url.scheme == "https":
        headers["Connection"] = "close"
        extensions = {"sni_hostname": host} if host != address else None
    request = http.build_request(
        "GET", url.copy_with(host=address), headers=headers, extensions=extensions, timeout=limits.timeout_s
    )
    response = await http.send(request, stream=True, follow_redirects=False)
    try:
        body = await _read_body(response, limits.max_bytes) if 200 <= response.status_code < 300 else b""
    finally:
        await response.aclose()
    return response.status_code, response.headers, body


class _BodyRefused(Exception):
    """A body not read; the caller, which knows the URL asked for, turns it into a FetchRefused."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


async def _read_body(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _BodyRefused("too_large", f"is larger than {max_bytes} bytes")
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
        raise _BodyRefused("http_status", f"answered in an unsupported encoding {encoding!r}")
    inflater = None if encoding == "identity" else _Inflater(max_bytes)
    body = bytearray()
    try:
        async for chunk in response.aiter_raw():
            body += inflater.feed(chunk) if inflater else chunk
            if len(body) > max_bytes:
                raise _BodyRefused("too_large", f"is larger than {max_bytes} bytes")
    except zlib.error as exc:
        raise _BodyRefused("http_status", f"sent a {encoding} body that does not unpack: {exc}") from None
    return bytes(body)


class _Inflater:
    """Unpacks gzip or zlib data a piece at a time and refuses more than `limit` unpacked bytes, so a
    small compressed answer cannot expand into gigabytes in memory."""

    def __init__(self, limit: int) -> None:
        self._inflate = zlib.decompressobj(wbits=32 + zlib.MAX_WBITS)
        self._limit = self._left = limit

    def feed(self, data: bytes) -> bytes:
        out = self._inflate.decompress(data, self._left + 1)
        if len(out) > self._left:
            raise _BodyRefused("too_large", f"unpacks to more than {self._limit} bytes")
        self._left -= len(out)
        return out


def _unpacked(data: bytes, url: str, max_bytes: int) -> bytes:
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return _Inflater(max_bytes).feed(data)
    except _BodyRefused as exc:
        raise FetchRefused(url, exc.reason, f"{url} {exc}") from None
    except zlib.error as exc:
        raise FetchRefused(url, "bad_sitemap", f"{url} is not a valid gzip file: {exc}") from None


def _sitemap_entries(data: bytes, url: str) -> tuple[str, list[str]]:
    """The root kind ("urlset" or "sitemapindex") and its <loc> values.

    Parsed with expat, refusing any DTD: sitemaps need none, and entity declarations are how XML
    bombs and external-entity reads work."""
    parser = expat.ParserCreate(namespace_separator=" ")
    path: list[str] = []
    text: list[str] = []
    locs: list[str] = []
    root: list[str] = []

    def refuse_dtd(*_args) -> None:
        raise FetchRefused(url, "bad_sitemap", f"{url} declares a DTD, which sitemaps never need")

    def start(name: str, _attrs) -> None:
        path.append(name.rpartition(" ")[2])
        if not root:
            root.append(path[0])
        text.clear()

    def end(_name: str) -> None:
        if path in (["urlset", "url", "loc"], ["sitemapindex", "sitemap", "loc"]) and "".join(text).strip():
            locs.append("".join(text).strip())
        path.pop()

    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text.append
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise FetchRefused(url, "bad_sitemap", f"{url} is not valid XML: {exc}") from None
    if root not in (["urlset"], ["sitemapindex"]):
        raise FetchRefused(url, "bad_sitemap", f"{url} is neither a sitemap (<urlset>) nor a sitemap index")
    return root[0], locs
