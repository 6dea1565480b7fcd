"""Fetching help-centre pages and sitemaps from a real local HTTP server: what is fetched, and every
way an operator-given URL is refused (SSRF targets, redirects, size, time, bad sitemaps)."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
from collections import Counter

import pytest
import pytest_asyncio
from aiohttp import web

from bot.knowledge import fetch
from bot.knowledge.fetch import FetchLimits, FetchRefused, fetch_page, sitemap_urls

LOCAL = {"allowed_hosts": ["127.0.0.1"], "allow_private": True}
SMALL = FetchLimits(max_bytes=64 * 1024, timeout_s=1.0, max_redirects=3)

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url><loc>&lol2;</loc></url></urlset>"""


def urlset(*locs: str) -> bytes:
    entries = "".join(f"<url><loc> {loc} </loc><lastmod>2024-01-01</lastmod></url>" for loc in locs)
    return f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</urlset>'.encode()


def sitemap_index(*locs: str) -> bytes:
    entries = "".join(f"<sitemap><loc>{loc}</loc></sitemap>" for loc in locs)
    return f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</sitemapindex>'.encode()


class Site:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.base = ""

    def url(self, path: str) -> str:
        return self.base + path

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{name:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] += 1
        xml = "application/xml"
        match name:
            case "page.html":
                return web.Response(text="<h1>Refunds</h1>", content_type="text/html", charset="utf-8")
            case "host":
                return web.Response(text=request.headers["Host"])
            case "encoded":
                body = gzip.compress(b"<p>packed</p>" * 100)
                return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/html"})
            case "encoded-bomb":
                body = gzip.compress(b"\0" * 2_000_000)
                return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "text/html"})
            case "redirect":
                raise web.HTTPFound("/page.html")
            case "redirect-away":
                raise web.HTTPFound("http://intranet.example/")
            case "redirect-file":
                raise web.HTTPFound("file:///etc/passwd")
            case "redirect-metadata":
                raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")
            case "loop":
                raise web.HTTPFound("/loop")
            case "chunked-big":
                response = web.StreamResponse(headers={"Content-Type": "text/html"})
                response.enable_chunked_encoding()
                await response.prepare(request)
                try:
                    for _ in range(64):
                        await response.write(b"x" * 16 * 1024)
                except ConnectionError:
                    pass
                return response
            case "declared-big":
                return web.Response(body=b"x" * (SMALL.max_bytes + 1), content_type="text/html")
            case "slow":
                await asyncio.sleep(5)
                return web.Response(text="late")
            case "missing":
                raise web.HTTPNotFound()
            case "broken":
                raise web.HTTPInternalServerError()
            case "flaky":
                if self.hits[name] % 2:
                    raise web.HTTPServiceUnavailable()
                return web.Response(text="second time lucky")
            case "sitemap.xml":
                return web.Response(body=urlset(self.url("/a"), self.url("/b"), self.url("/a")), content_type=xml)
            case "sitemap.xml.gz":
                return web.Response(body=gzip.compress(urlset(self.url("/c"), self.url("/b"))),
                                    content_type="application/gzip")
            case "index.xml":
                body = sitemap_index(self.url("/sitemap.xml"), self.url("/sitemap.xml.gz"), self.url("/index.xml"))
                return web.Response(body=body, content_type=xml)
            case "index-of-index.xml":
                return web.Response(body=sitemap_index(self.url("/index.xml")), content_type=xml)
            case "too-deep.xml":
                return web.Response(body=sitemap_index(self.url("/index-of-index.xml")), content_type=xml)
            case "many.xml":
                return web.Response(body=urlset(*(self.url(f"/p{i}") for i in range(50))), content_type=xml)
            case "laughs.xml":
                return web.Response(body=BILLION_LAUGHS, content_type=xml)
            case "not-xml.xml":
                return web.Response(text="<html><body>oops", content_type="text/html")
            case "feed.xml":
                return web.Response(body=b"<rss><channel/></rss>", content_type=xml)
            case "bomb.xml.gz":
                return web.Response(body=gzip.compress(b" " * 2_000_000), content_type="application/gzip")
        raise web.HTTPNotFound()


@pytest_asyncio.fixture(scope="module")
async def site():
    served = Site()
    runner = web.AppRunner(served.app(), shutdown_timeout=0.5)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    host, port = runner.addresses[0][:2]
    served.base = f"http://{host}:{port}"
    yield served
    await runner.cleanup()


async def refused(reason: str, call) -> FetchRefused:
    with pytest.raises(FetchRefused) as caught:
        await call
    assert caught.value.reason == reason, caught.value
    assert str(caught.value)
    return caught.value


async def test_a_page_is_fetched_with_its_content_type(site):
    page = await fetch_page(site.url("/page.html"), **LOCAL)
    assert page.data == b"<h1>Refunds</h1>"
    assert page.content_type == "text/html"
    assert page.url == page.final_url == site.url("/page.html")


async def test_a_gzip_encoded_page_is_unpacked_within_the_limit(site):
    page = await fetch_page(site.url("/encoded"), **LOCAL)
    assert page.data == b"<p>packed</p>" * 100
    await refused("too_large", fetch_page(site.url("/encoded-bomb"), **LOCAL, limits=SMALL))


async def test_an_allowed_redirect_is_followed(site):
    page = await fetch_page(site.url("/redirect"), **LOCAL)
    assert page.url == site.url("/redirect")
    assert page.final_url == site.url("/page.html")
    assert page.data == b"<h1>Refunds</h1>"


async def test_redirect_targets_are_checked_again(site):
    away = await refused("host_not_allowed", fetch_page(site.url("/redirect-away"), **LOCAL))
    assert away.url == site.url("/redirect-away") and "intranet.example" in str(away)
    await refused("not_http", fetch_page(site.url("/redirect-file"), **LOCAL))
    await refused("too_many_redirects", fetch_page(site.url("/loop"), **LOCAL, limits=SMALL))
    assert site.hits["loop"] == SMALL.max_redirects + 1


async def test_a_redirect_to_a_private_address_is_refused(site, monkeypatch):
    """The server under test is on loopback, so here only link-local counts as private: the first
    hop passes, the redirect to the metadata service does not."""
    monkeypatch.setattr(fetch, "_is_forbidden", lambda address: address.is_link_local)
    hosts = ["127.0.0.1", "169.254.169.254"]
    assert (await fetch_page(site.url("/page.html"), hosts)).data == b"<h1>Refunds</h1>"
    await refused("private_address", fetch_page(site.url("/redirect-metadata"), hosts))


async def test_a_name_is_connected_at_its_checked_address_with_its_own_host_header(site, monkeypatch):
    async def resolve(host, port, asked):
        assert host == "help.example.com"
        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(fetch, "_resolve", resolve)
    port = site.base.rsplit(":", 1)[1]
    url = f"http://help.example.com:{port}/host"
    page = await fetch_page(url, ["*.example.com"], allow_private=True)
    assert page.data == f"help.example.com:{port}".encode()
    assert page.final_url == url
    await refused("private_address", fetch_page(url, ["*.example.com"]))


async def test_localhost_resolves_to_loopback_and_is_refused_unless_private_is_allowed(site):
    port = site.base.rsplit(":", 1)[1]
    url = f"http://localhost:{port}/host"
    await refused("private_address", fetch_page(url, ["localhost"]))
    page = await fetch_page(url, ["localhost"], allow_private=True)
    assert page.data == f"localhost:{port}".encode()


async def test_loopback_is_refused_by_default(site):
    await refused("private_address", fetch_page(site.url("/page.html"), ["127.0.0.1"]))


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/",
    "http://0.0.0.0/",
    "http://10.1.2.3/",
    "http://192.168.0.1/",
    "http://100.64.0.1/",
    "http://224.0.1.1/",
    "http://240.0.0.1/",
    "http://[fe80::1]/",
    "http://[fd00::1]/",
    "http://[ff02::1]/",
    "http://[::]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[2002:7f00:1::]/",
])
async def test_private_and_reserved_addresses_are_refused(url):
    host = url.split("//")[1].split("/")[0].strip("[]")
    await refused("private_address", fetch_page(url, [host], limits=SMALL))


@pytest.mark.parametrize(("url", "reason"), [
    ("file:///etc/passwd", "not_http"),
    ("ftp://127.0.0.1/pub", "not_http"),
    ("gopher://127.0.0.1/", "not_http"),
    ("http://example.com/", "host_not_allowed"),
    ("http://127.0.0.2/", "host_not_allowed"),
    ("http://127.0.0.1.example.org/", "host_not_allowed"),
])
async def test_other_schemes_and_hosts_are_refused(url, reason):
    await refused(reason, fetch_page(url, ["127.0.0.1"], allow_private=True, limits=SMALL))


@pytest.mark.parametrize("url", [
    "http://example.com/",
    "http://evilexample.com/",
    "http://help.example.com.evil.net/",
])
async def test_a_wildcard_allows_subdomains_only(url):
    await refused("host_not_allowed", fetch_page(url, ["*.example.com"], limits=SMALL))


async def test_a_page_over_the_size_limit_is_refused_while_streaming(site):
    refusal = await refused("too_large", fetch_page(site.url("/chunked-big"), **LOCAL, limits=SMALL))
    assert str(SMALL.max_bytes) in str(refusal)
    await refused("too_large", fetch_page(site.url("/declared-big"), **LOCAL, limits=SMALL))


async def test_a_slow_page_times_out(site):
    loop = asyncio.get_running_loop()
    started = loop.time()
    await refused("timeout", fetch_page(site.url("/slow"), **LOCAL, limits=FetchLimits(timeout_s=0.5)))
    assert loop.time() - started < 2


async def test_error_statuses_are_refused_and_only_server_errors_retried(site):
    await refused("http_status", fetch_page(site.url("/missing"), **LOCAL))
    assert site.hits["missing"] == 1
    refusal = await refused("http_status", fetch_page(site.url("/broken"), **LOCAL))
    assert "500" in str(refusal)
    assert site.hits["broken"] == 2
    page = await fetch_page(site.url("/flaky"), **LOCAL)
    assert page.data == b"second time lucky"


async def test_an_unreachable_port_is_refused_after_a_second_try():
    await refused("unreachable", fetch_page("http://127.0.0.1:9/", **LOCAL, limits=SMALL))


async def test_a_sitemap_lists_its_pages_once_each(site):
    assert await sitemap_urls(site.url("/sitemap.xml"), **LOCAL) == [site.url("/a"), site.url("/b")]


async def test_a_gzip_sitemap_is_unpacked(site):
    assert await sitemap_urls(site.url("/sitemap.xml.gz"), **LOCAL) == [site.url("/c"), site.url("/b")]
    await refused("too_large", sitemap_urls(site.url("/bomb.xml.gz"), **LOCAL, limits=SMALL))


async def test_sitemap_indexes_are_followed_two_levels_deep(site):
    expected = [site.url("/a"), site.url("/b"), site.url("/c")]
    assert await sitemap_urls(site.url("/index.xml"), **LOCAL) == expected
    assert await sitemap_urls(site.url("/index-of-index.xml"), **LOCAL) == expected
    await refused("bad_sitemap", sitemap_urls(site.url("/too-deep.xml"), **LOCAL))


async def test_a_sitemap_keeps_at_most_max_pages(site):
    urls = await sitemap_urls(site.url("/many.xml"), **LOCAL, limits=FetchLimits(max_pages=10))
    assert urls == [site.url(f"/p{i}") for i in range(10)]


@pytest.mark.parametrize("path", ["/laughs.xml", "/not-xml.xml", "/feed.xml"])
async def test_bad_sitemaps_are_refused(site, path):
    await refused("bad_sitemap", sitemap_urls(site.url(path), **LOCAL))


async def test_a_sitemap_is_fetched_with_the_same_checks(site):
    await refused("private_address", sitemap_urls(site.url("/sitemap.xml"), ["127.0.0.1"]))
    await refused("http_status", sitemap_urls(site.url("/missing"), **LOCAL))
