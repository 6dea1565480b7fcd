"""The operator console's Knowledge tab over real HTTP and in Chromium: the shipped sample help
centre imported before start, then listing, reading, removing, importing (uploads, pages, a
sitemap, a refused host), sync, test retrieval, the gaps report and stale articles."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from bot.knowledge.importing import Importer
from bot.knowledge.index import KnowledgeBase
from bot.messages import utcnow
from bot.store import Store, iso
from engine.stub import StubEngine
from tests.browser import chromium, needs_chromium
from tests.browser import sign_in as console_sign_in
from tests.live_server import PASSWORD, live_server
from tests.test_agent_console import ROLES, assert_admits_exactly, signed_in

SAMPLE = Path(__file__).resolve().parents[1] / "prompts" / "knowledge"
API = "/operator/api/knowledge"
HOSTILE = '&lt;img src=x onerror="window.__snapdesk_xss = 1"&gt; Hostile gift cards'
HOSTILE_TITLE = '<img src=x onerror="window.__snapdesk_xss = 1"> Hostile gift cards'
PAGES = {
    "/help/gift-cards.html": ("text/html", "<html><head><title>Gift cards</title></head><body><h1>Gift cards</h1>"
                              "<h2>GIFT_CARD_EXPIRED (E-7001)</h2><p>An expired gift card cannot be used at "
                              "checkout. Ask the sender for a new code.</p></body></html>"),
    "/help/loyalty.html": ("text/html", "<html><body><h1>Loyalty points</h1><p>Points are added a day after "
                           "delivery and expire after 12 months.</p></body></html>"),
}


async def _direct(fn, *args, **kwargs):
    return fn(*args, **kwargs)


def import_sample(data_dir: Path) -> None:
    store = Store(data_dir)
    try:
        importing = Importer(KnowledgeBase(store), _direct).add([str(SAMPLE)])
        # In a thread of its own: Playwright's sync API may hold this thread's event loop already.
        with ThreadPoolExecutor(1) as thread:
            report = thread.submit(asyncio.run, importing).result()
        assert len(report.added) == 30 and not report.failed, report.summary()
    finally:
        store.close()


class PageServer:
    """A help site on a loopback port: the pages above and a sitemap listing them."""

    def __init__(self) -> None:
        pages = PAGES

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the standard library's name)
                if self.path == "/sitemap.xml":
                    locs = "".join(f"<url><loc>{base}{path}</loc></url>" for path in pages)
                    found = ("application/xml", '<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/'
                             f'schemas/sitemap/0.9">{locs}</urlset>')
                else:
                    found = pages.get(self.path)
                if found is None:
                    self.send_error(404)
                    return
                body = found[1].encode()
                self.send_response(200)
                self.send_header("Content-Type", f"{found[0]}; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.base = base
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def site():
    served = PageServer()
    yield served
    served.httpd.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("knowledge-console")
    import_sample(data_dir)
    with live_server(data_dir, engine=StubEngine(), login_rate_per_ip=1000, kb_allow_private=True,
                     kb_allowed_hosts="127.0.0.1", users={**{role: role for role in ROLES}, "olga": "operator"}) \
            as (base, app):
        yield base, app, data_dir


def operator(server) -> httpx.Client:
    client = signed_in(server[0], "operator")
    client.timeout = 30
    return client


def by_title(client: httpx.Client) -> dict[str, dict]:
    return {a["title"]: a for a in client.get(f"{API}/articles").json()["articles"]}


def audit_actions(data_dir: Path) -> list[tuple[str, str, dict]]:
    store = Store(data_dir)
    try:
        return [(r["actor"], r["action"], json.loads(r["detail"]))
                for r in store.select("select actor, action, detail from audit_log where action like 'kb_%' order by id")]
    finally:
        store.close()


READ_ROUTES = [("GET", f"{API}/articles"), ("GET", f"{API}/articles/1"), ("GET", f"{API}/gaps"),
               ("GET", f"{API}/stale"), ("POST", f"{API}/sync")]


@pytest.mark.parametrize("method, path", READ_ROUTES)
def test_knowledge_routes_admit_exactly_operators_and_admins(server, method, path):
    assert_admits_exactly(server[0], method, path, {"operator", "admin"})


def test_writes_need_the_csrf_token(server):
    client = operator(server)
    del client.headers["X-CSRF-Token"]
    assert client.post(f"{API}/sync").status_code == 403
    assert client.delete(f"{API}/articles/1").status_code == 403
    assert client.post(f"{API}/search", data={"question": "E-4012"}).status_code == 403


def test_the_list_shows_the_sample_help_centre_and_an_article_opens_with_its_passages(server):
    client = operator(server)
    listing = client.get(f"{API}/articles").json()
    articles = listing["articles"]
    assert len(articles) >= 30 and listing["stale_days"] == 180
    declined = next(a for a in articles if a["source"].endswith("payment-declined.en.md"))
    assert declined["language"] == "en" and declined["chunks"] >= 3 and declined["status"] == "current"
    assert declined["source_kind"] == "file" and declined["updated_at"]
    article = client.get(f"{API}/articles/{declined['id']}").json()
    assert article["title"] == declined["title"]
    assert len(article["chunks"]) == declined["chunks"]
    assert any("E-4012" in chunk["section"] for chunk in article["chunks"])
    assert client.get(f"{API}/articles/999999").status_code == 404
    assert client.get(f"{API}/articles/0").status_code == 422


def test_search_ranks_the_article_naming_an_error_code_first_and_marks_weak_passages(server):
    client = operator(server)
    result = client.post(f"{API}/search", data={"question": "My card payment failed with E-4012, what now?"}).json()
    assert "E-4012" in result["query"]
    first = result["passages"][0]
    assert "E-4012" in first["section"] and first["prompt_number"] == 1 and not first["below_min_score"]
    assert [p["rank"] for p in result["passages"]] == list(range(1, len(result["passages"]) + 1))
    assert [p["score"] for p in result["passages"]] == sorted((p["score"] for p in result["passages"]), reverse=True)
    for passage in result["passages"]:
        assert passage["below_min_score"] == (passage["score"] < result["min_score"])
        assert passage["prompt_number"] is None or not passage["below_min_score"]
    zh = client.post(f"{API}/search", data={"question": "路由器红灯一直亮"}).json()
    assert zh["passages"] and "router-lights" in client.get(f"{API}/articles/{zh['passages'][0]['article_id']}") \
        .json()["source"]
    assert client.post(f"{API}/search", data={"question": "  "}).status_code == 400


def test_a_screenshot_adds_nothing_while_ocr_is_off_and_the_answer_says_so(server):
    client = operator(server)
    png = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (200, 100), "white").save(png, "PNG")
    result = client.post(f"{API}/search", data={"question": "E-4012"},
                         files=[("screenshots", ("shot.png", png.getvalue(), "image/png"))]).json()
    assert result["query"] == "E-4012" and "SNAPDESK_OCR=off" in result["note"] and result["screenshots"] == []


def test_an_uploaded_markdown_file_is_imported_updated_and_removed_with_an_audit_trail(server):
    base, app, data_dir = server
    client = operator(server)
    body = b"# Gift wrapping\n\n## Can I add a message?\n\nYes: up to 200 characters, printed on the card.\n"
    report = client.post(f"{API}/import", data={"language": "en"},
                         files=[("files", ("../../gift-wrap.md", body, "text/markdown"))]).json()
    assert len(report["added"]) == 1 and report["failed"] == [] and report["summary"].startswith("1 added")
    article = client.get(f"{API}/articles/{report['added'][0]}").json()
    assert article["title"] == "Gift wrapping" and article["source"] == "upload:gift-wrap.md"
    assert article["source_kind"] == "upload"
    again = client.post(f"{API}/import", files=[("files", ("gift-wrap.md", body + b"\nFree of charge.\n",
                                                           "text/markdown"))]).json()
    assert again["updated"] == report["added"]
    bad = client.post(f"{API}/import", files=[("files", ("photo.png", b"\x89PNG\r\n\x1a\nxx", "image/png"))]).json()
    assert bad["added"] == [] and bad["failed"][0]["source"] == "upload:photo.png"
    assert "not a Markdown, HTML, text or PDF file" in bad["failed"][0]["reason"]
    assert client.post(f"{API}/import", data={"language": "fr", "urls": "https://example.com/"}).status_code == 400
    assert client.post(f"{API}/import", data={}).json()["message"].startswith("Choose files")

    assert client.delete(f"{API}/articles/{article['id']}").json() == {"ok": True}
    assert client.get(f"{API}/articles/{article['id']}").status_code == 404
    assert client.delete(f"{API}/articles/{article['id']}").status_code == 404
    actions = audit_actions(data_dir)
    assert ("operator", "kb_import") in [(a, b) for a, b, _ in actions]
    removal = [detail for actor, action, detail in actions if action == "kb_remove"]
    assert removal[-1]["title"] == "Gift wrapping"


def test_pages_and_a_sitemap_import_from_an_allowed_host_and_other_hosts_are_refused(server, site):
    client = operator(server)
    page = client.post(f"{API}/import", data={"urls": f"{site.base}/help/gift-cards.html"}).json()
    assert len(page["added"]) == 1 and not page["failed"]
    added = client.get(f"{API}/articles/{page['added'][0]}").json()
    assert added["url"] == f"{site.base}/help/gift-cards.html" and added["source_kind"] == "page"
    sitemap = client.post(f"{API}/import", data={"urls": f"{site.base}/sitemap.xml\n\n"}).json()
    assert len(sitemap["added"]) == 1 and sitemap["updated"] == page["added"] and not sitemap["failed"]
    assert "Loyalty points" in by_title(client)

    port = site.base.rsplit(":", 1)[1]
    refused = client.post(f"{API}/import", data={"urls": f"http://localhost:{port}/help/loyalty.html\n"
                                                        "ftp://127.0.0.1/file.md"}).json()
    assert refused["added"] == [] and len(refused["failed"]) == 2
    reasons = {f["source"]: f["reason"] for f in refused["failed"]}
    assert "not an http:// or https:// URL" in reasons["ftp://127.0.0.1/file.md"]
    assert "not one of the allowed hosts" in reasons[f"http://localhost:{port}/help/loyalty.html"]

    synced = client.post(f"{API}/sync").json()
    assert synced["failed"] == [] and len(synced["unchanged"]) >= 32 and synced["summary"]


def _rows(data_dir: Path) -> dict:
    """Hand-built conversations: hand-overs for missing knowledge and weak answers with screenshots
    showing E-4012 or a screen title, and answers that cite an old article."""
    store = Store(data_dir)
    conn = store.db.conn
    now = utcnow()
    reading = {"ocr": True, "evidence": {"title": "Payment failed", "error_codes": ["E-4012", "CARD_DECLINED"]}}
    other = {"ocr": True, "evidence": {"title": "Order status", "error_codes": []}}
    ids: dict = {}
    try:
        with store.transaction():
            old = iso(now - timedelta(days=400))
            article = conn.execute("select id from kb_articles where source like '%refunds.en.md'").fetchone()[0]
            conn.execute("update kb_articles set updated_at = ? where id = ?", [old, article])
            fresh = conn.execute("select id from kb_articles where source like '%wifi-slow.en.md'").fetchone()[0]
            ids.update(stale=article, fresh=fresh)
            shot = conn.execute("insert into attachments (sha256, mime, width, height, bytes, path, created_at, "
                                "reading) values ('a1', 'image/png', 10, 10, 1, 'x.png', ?, ?)",
                                [iso(now), json.dumps(reading)]).lastrowid
            shot2 = conn.execute("insert into attachments (sha256, mime, width, height, bytes, path, created_at, "
                                 "reading) values ('a2', 'image/png', 10, 10, 1, 'y.png', ?, ?)",
                                 [iso(now), json.dumps(other)]).lastrowid
            conversation = conn.execute("insert into conversations (channel, external_key, status, created_at) "
                                        "values ('widget', 'gaps-1', 'bot', ?)", [iso(now)]).lastrowid

            def message(role: str, text: str, **fields) -> int:
                record = {"conversation_id": conversation, "episode": 1, "role": role, "text": text,
                          "created_at": iso(now), **fields}
                return conn.execute(f"insert into messages ({', '.join(record)}) values "
                                    f"({', '.join('?' * len(record))})", list(record.values())).lastrowid

            for n in range(3):  # three hand-overs for missing knowledge, each with the E-4012 screenshot
                question = message("user", f"why did it fail {n}? {'x' * 300}", attachment_ids=json.dumps([shot]))
                conn.execute("insert into escalations (conversation_id, message_id, reason, status, created_at) "
                             "values (?, ?, 'no_knowledge', 'open', ?)", [conversation, question, iso(now)])
            weak = message("user", "<b>where</b> is my order?", attachment_ids=json.dumps([shot2]))
            message("bot", "Soon.", kind="answer", reply_to=weak, knowledge=json.dumps(
                {"retrieved": [{"n": 1, "chunk_id": 1, "article_id": fresh, "title": "t", "url": "", "section": "s",
                                "score": 0.2}], "cited": []}))
            bare = message("user", "hello there")
            message("bot", "Hi!", kind="answer", reply_to=bare)
            strong = message("user", "refund please")
            cites = {"retrieved": [{"n": 1, "chunk_id": 2, "article_id": article, "title": "Refunds", "url": "",
                                    "section": "s", "score": 9.5},
                                   {"n": 2, "chunk_id": 3, "article_id": fresh, "title": "Wi-Fi", "url": "",
                                    "section": "s", "score": 8.0}], "cited": [1, 2]}
            for _ in range(2):
                message("bot", "See [1] and [2].", kind="answer", reply_to=strong, knowledge=json.dumps(cites))
            message("bot", "Broken.", kind="answer", reply_to=strong, knowledge="{not json")
            message("bot", "Old.", kind="answer", reply_to=strong, knowledge=json.dumps(cites),
                    created_at=iso(now - timedelta(days=45)))
            ids["strong"] = strong
    finally:
        store.close()
    return ids


def test_gaps_group_missing_knowledge_by_error_code_and_screen_and_stale_lists_cited_old_articles(server):
    base, app, data_dir = server
    ids = _rows(data_dir)
    client = operator(server)
    gaps = client.get(f"{API}/gaps").json()
    groups = {(g["kind"], g["key"]): g for g in gaps["groups"]}
    assert gaps["groups"][0]["count"] == 3 and gaps["groups"][0]["kind"] in ("error_code", "screen_title")
    code = groups[("error_code", "E-4012")]
    assert code["count"] == 3 and code["handovers"] == 3 and code["weak_answers"] == 0
    assert len(code["examples"]) == 3 and len(code["examples"][0]["text"]) <= 201
    assert code["examples"][0]["text"].endswith("…")
    assert groups[("error_code", "CARD_DECLINED")]["count"] == 3
    assert groups[("screen_title", "Payment failed")]["count"] == 3
    order = groups[("screen_title", "Order status")]
    assert order["count"] == 1 and order["weak_answers"] == 1 and order["examples"][0]["best_score"] == 0.2
    assert order["examples"][0]["text"] == "<b>where</b> is my order?"
    assert groups[("text_only", "")]["examples"][0]["text"] == "hello there"
    assert all(example["message_id"] != ids["strong"] for g in gaps["groups"] for example in g["examples"])
    assert [g["count"] for g in gaps["groups"]] == sorted((g["count"] for g in gaps["groups"]), reverse=True)

    stale = client.get(f"{API}/stale").json()
    assert [a["id"] for a in stale["articles"]] == [ids["stale"]]
    assert stale["articles"][0]["citations"] == 2 and stale["stale_days"] == 180
    listed = {a["id"]: a for a in client.get(f"{API}/articles").json()["articles"]}
    assert listed[ids["stale"]]["status"] == "stale" and listed[ids["fresh"]]["status"] == "current"


def test_a_screenshot_read_by_ocr_joins_the_query_and_finds_its_article(tmp_path):
    from bench import screenshot_corpus as corpus

    import_sample(tmp_path)
    png = io.BytesIO()
    corpus.sample("access_denied_en_desktop").image.save(png, "PNG")
    with live_server(tmp_path, engine=StubEngine(), users={"olga": "operator"}, ocr=True) as (base, app):
        client = signed_in(base, "olga")
        result = client.post(f"{API}/search", data={"question": "?"}, timeout=120,
                             files=[("screenshots", ("update.png", png.getvalue(), "image/png"))]).json()
        assert result["note"] == "" and "0x80070005" in result["screenshots"][0]["error_codes"]
        assert result["query"].startswith("0x80070005")
        first = client.get(f"{API}/articles/{result['passages'][0]['article_id']}").json()
        assert first["source"].endswith(("windows-update-error.en.md", "windows-update-error.zh.md"))
        bad = client.post(f"{API}/search", data={"question": "?"},
                          files=[("screenshots", ("x.png", b"not an image", "image/png"))])
        assert bad.status_code == 400 and bad.json()["message"].startswith("x.png: ")


# Chromium -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@needs_chromium
def test_the_knowledge_tab_lists_articles_tests_retrieval_and_shows_titles_as_text(browser, server, tmp_path):
    base, app, data_dir = server
    client = operator(server)
    hostile = client.post(f"{API}/import", files=[("files", ("hostile.md", f"# {HOSTILE}\n\nGift cards never "
                                                             "expire (GC-1).\n".encode(), "text/markdown"))]).json()
    page = console_sign_in(browser, base, "olga", PASSWORD, "/operator")
    page.click("[data-testid=nav-knowledge]")
    page.wait_for_selector("[data-testid=kb-article][data-id]")
    rows = page.locator("[data-testid=kb-article]")
    assert rows.count() >= 30
    hostile_row = page.locator(f"[data-testid=kb-article][data-id='{hostile['added'][0]}']")
    assert HOSTILE_TITLE in hostile_row.locator("[data-testid=kb-article-title]").inner_text()

    hostile_row.locator("[data-testid=kb-view]").click()
    view = page.wait_for_selector("[data-testid=kb-article-view]:not([hidden])")
    page.wait_for_selector("[data-testid=kb-chunk]")
    assert HOSTILE_TITLE in page.locator("[data-testid=kb-view-title]").inner_text()

    page.fill("[data-testid=kb-question]", "Payment failed with E-4012")
    page.click("[data-testid=kb-search-run]")
    page.wait_for_selector("[data-testid=kb-passage]")
    first = page.locator("[data-testid=kb-passage]").first
    assert "E-4012" in first.inner_text() and first.get_attribute("data-in-prompt") == "true"
    assert "E-4012" in page.locator("[data-testid=kb-query]").inner_text()
    page.screenshot(path=str(tmp_path / "knowledge.png"), full_page=True)

    hostile_row.locator("[data-testid=kb-remove]").click()
    page.wait_for_selector(f"[data-testid=kb-article][data-id='{hostile['added'][0]}']", state="detached")
    assert page.dialogs and "Remove" in page.dialogs[-1]
    assert page.evaluate("() => window.__snapdesk_xss") is None
    assert view is not None
