"""The help-centre index: every article format read into sections, passages labelled with their
headings, re-imports that rewrite only what changed, and search that finds Chinese words, exact
error codes and English word forms without ever failing on what a user typed."""

from __future__ import annotations

import time

import pytest

from bot.knowledge import terms
from bot.knowledge.articles import Document, KnowledgeError, Section, chunks, parse_document
from bot.knowledge.index import KnowledgeBase, search_statement
from bot.store import Store

PAYMENTS_MD = b"""# Payment errors

What to do when a payment fails.

## CARD_DECLINED (E-4012)

Your bank declined the card. Try another card, or call the bank on the number on its back.

### Next steps

Check that the card has not expired.

```
# not a heading inside a code block
```
"""

RENEWAL_ZH = """# 会员自动续费说明

会员到期后会自动续费，从您保存的支付方式扣款 88 元。

## 如何关闭自动续费

打开 App，进入“会员”，点“管理”，关闭开关。关闭后不会再扣款。
""".encode()

DECOYS = {
    "blocked.md": b"# Transaction blocked: RISK_REJECTED (E-3301)\n\nOur security checks stopped the payment. "
    b"A decline such as CARD_DECLINED (E-4012) comes from your bank instead.\n",
    "gateway.md": b"# Connection errors\n\n## HTTP 502\n\nA 502 Bad Gateway means our server did not answer in time. "
    b"Reload the page after a minute.\n\n## ERR_CONNECTION_RESET\n\nThe connection was reset by a proxy.\n",
    "windows.md": b"# Windows update fails\n\nThe update stops with error 0x80070005 (access denied): run it as an "
    b"administrator.\n",
    "shipping.md": b"# Shipping times\n\nParcels arrive in 3 to 5 working days. We charge no fee for "
    b"card payments or for shipping to a locker. If the card was charged twice, contact us.\n",
    "orders.zh.md": "# 订单状态\n\n已发货的订单可以在“我的订单”里查看物流。会员订单不单独发货。\n".encode(),
    "refunds.zh.md": "# 退款说明\n\n退款会在 5 个工作日内原路退回。如果续订后想退款，请联系客服。\n".encode(),
}


def minimal_pdf(content: str) -> bytes:
    """A one-page PDF written by hand; `content` is its page's content stream (BT ... Tj ET for text)."""
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path)
    yield store
    store.close()


@pytest.fixture
def kb(store):
    return KnowledgeBase(store)


def import_all(kb: KnowledgeBase, files: dict[str, bytes]) -> dict[str, int]:
    return {name: kb.upsert(name, parse_document(data, name)).article_id for name, data in files.items()}


# Reading articles -----------------------------------------------------------------------------------
def test_markdown_title_and_section_paths():
    document = parse_document(PAYMENTS_MD, "help/payments.md")
    assert document.title == "Payment errors"
    assert document.language == "en"
    assert [section.path for section in document.sections] == [
        (), ("CARD_DECLINED (E-4012)",), ("CARD_DECLINED (E-4012)", "Next steps"),
    ]
    assert document.sections[1].text.startswith("Your bank declined the card.")
    assert "# not a heading inside a code block" in document.sections[2].text


def test_markdown_front_matter_and_file_name_titles():
    with_front_matter = parse_document(b"---\ntitle: Refund policy\n---\nRefunds take five days.\n", "refunds.md")
    assert with_front_matter.title == "Refund policy"
    assert with_front_matter.sections == (Section((), "Refunds take five days."),)
    assert parse_document(b"## Only a subheading\n\nText.\n", "faq-billing.md").title == "faq-billing"
    text = parse_document(b"First  paragraph\nwrapped.\n\n\nSecond one.", "notes/router tips.txt")
    assert text.title == "router tips"
    assert text.sections == (Section((), "First paragraph wrapped.\n\nSecond one."),)


def test_html_drops_page_furniture_and_finds_its_title():
    page = b"""<!doctype html><html><head><title>Refunds - Acme Help</title>
    <style>body { color: red }</style><script>track("refunds")</script></head>
    <body><nav><a href="/">Home</a> Menu</nav>
    <h1>Refunds</h1><p>How refunds&nbsp;work.</p>
    <h2>Card payments</h2><p>Five days.<br>Sometimes <b>ten</b>.</p>
    <table><tr><th>Code</th><th>Meaning</th></tr><tr><td>E-4012</td><td>Declined</td></tr></table>
    <footer>Copyright Acme</footer></body></html>"""
    document = parse_document(page, "https://help.example.com/articles/refunds", "text/html; charset=utf-8")
    assert document.title == "Refunds"
    assert document.sections == (
        Section((), "How refunds work."),
        Section(("Card payments",), "Five days.\n\nSometimes ten.\n\nCode | Meaning\n\nE-4012 | Declined"),
    )
    everything = " ".join(section.text for section in document.sections)
    assert "Menu" not in everything and "Copyright" not in everything and "track" not in everything
    no_h1 = parse_document(b"<html><head><title>Shipping</title></head><body><p>Two days.</p></body></html>", "x.html")
    assert no_h1.title == "Shipping"
    assert parse_document(b"<p>Just text.</p>", "plain-page.htm").title == "plain-page"


def test_html_keeps_only_the_main_content_when_marked():
    page = b"""<html><body><div class="sidebar"><p>Popular articles: refunds, passwords</p></div>
    <main><h1>Router lights</h1><p>Solid red means the line is down.</p></main></body></html>"""
    document = parse_document(page, "router.html")
    assert document.sections == (Section((), "Solid red means the line is down."),)


def test_pdf_text_layer_is_read():
    pdf = minimal_pdf("BT /F1 12 Tf 72 720 Td (Invoices are sent by e-mail within a day.) Tj ET")
    document = parse_document(pdf, "invoices.pdf")
    assert document.title == "invoices"
    assert "Invoices are sent by e-mail within a day." in document.sections[0].text
    assert parse_document(pdf, "download", "application/pdf").sections == document.sections


def test_pdf_without_text_layer_and_unknown_types_are_refused():
    scanned = minimal_pdf("0 0 m 200 200 l S")
    with pytest.raises(KnowledgeError, match="no text layer"):
        parse_document(scanned, "scan.pdf")
    with pytest.raises(KnowledgeError, match="not a Markdown, HTML, text or PDF file"):
        parse_document(b"PK\x03\x04", "manual.docx")
    with pytest.raises(KnowledgeError, match="not a Markdown, HTML, text or PDF file"):
        parse_document(b"{}", "https://help.example.com/api", "application/json")
    with pytest.raises(KnowledgeError, match="could not be read as a PDF"):
        parse_document(b"%PDF-1.4 truncated", "broken.pdf")


def test_language_detected_or_given():
    assert parse_document(RENEWAL_ZH, "renewal.md").language == "zh"
    assert parse_document(PAYMENTS_MD, "payments.md", language="zh").language == "zh"
    gbk = "# 退款\n\n五个工作日内到账。".encode("gb18030")
    assert parse_document(gbk, "refunds.md").title == "退款"


def test_chunks_carry_the_heading_path_and_fit_the_size():
    document = parse_document(PAYMENTS_MD, "payments.md")
    assert [chunk.section for chunk in chunks(document)] == [
        "Payment errors",
        "Payment errors > CARD_DECLINED (E-4012)",
        "Payment errors > CARD_DECLINED (E-4012) > Next steps",
    ]
    paragraphs = [f"Paragraph {n} " + "word " * 40 for n in range(10)]  # about 215 characters each
    long_sentence = "One sentence. " * 100 + "x" * 700
    long = Document("Guide", "en", (Section(("Setup",), "\n\n".join(p.strip() for p in paragraphs)),
                                    Section(("Long",), long_sentence)))
    pieces = chunks(long, max_chars=500)
    assert all(len(piece.text) <= 500 for piece in pieces)
    setup = [piece for piece in pieces if piece.section == "Guide > Setup"]
    assert len(setup) == 5 and setup[0].text.startswith("Paragraph 0") and "\n\nParagraph 1" in setup[0].text
    assert "".join(piece.text for piece in pieces if piece.section == "Guide > Long").replace(" ", "") == (
        long_sentence.replace(" ", "")
    )


# Importing ------------------------------------------------------------------------------------------
def test_upsert_added_unchanged_updated(kb, store):
    first = kb.upsert("help/payments.md", parse_document(PAYMENTS_MD, "payments.md"), "https://help/payments")
    assert first.status == "added"
    before = kb.article(first.article_id)
    assert before["title"] == "Payment errors" and before["url"] == "https://help/payments"
    assert before["chunks"][1]["section"] == "Payment errors > CARD_DECLINED (E-4012)"

    again = kb.upsert("help/payments.md", parse_document(PAYMENTS_MD, "payments.md"), "https://help/payments")
    assert again == first.__class__(first.article_id, "unchanged")
    assert kb.article(first.article_id) == before

    edited = PAYMENTS_MD.replace(b"call the bank on the number on its back", b"use a different payment method")
    time.sleep(0.001)
    updated = kb.upsert("help/payments.md", parse_document(edited, "payments.md"), "https://help/payments")
    assert updated.status == "updated" and updated.article_id == first.article_id
    after = kb.article(first.article_id)
    assert after["imported_at"] == before["imported_at"] and after["updated_at"] > before["updated_at"]
    assert after["content_hash"] != before["content_hash"]
    assert kb.search("different payment method")[0].article_id == first.article_id
    assert kb.search("number on its back") == []
    assert store.db.execute("select count(*) from kb_chunks").fetchone()[0] == 3
    assert store.db.execute("select count(*) from kb_chunks_fts").fetchone()[0] == 3

    listed = kb.articles()
    assert [row["source"] for row in listed] == ["help/payments.md"]
    assert set(listed[0]) == {
        "id", "title", "url", "source", "origin", "language", "content_hash", "chunks", "imported_at", "updated_at",
    }
    assert listed[0]["chunks"] == 3


def test_remove_and_remove_missing(kb, store):
    folder = "/srv/help"
    ids = {
        name: kb.upsert(f"{folder}/{name}", parse_document(data, name), origin=folder).article_id
        for name, data in DECOYS.items()
    }
    elsewhere = kb.upsert("https://help/payments", parse_document(PAYMENTS_MD, "payments.md"), origin="https://help/sitemap.xml")
    assert kb.article(ids["windows.md"])["origin"] == folder

    keep = {f"{folder}/{name}" for name in DECOYS if name not in ("windows.md", "shipping.md")}
    removed = kb.remove_missing(folder, keep)
    assert sorted(removed) == sorted([ids["windows.md"], ids["shipping.md"]])
    assert kb.article(ids["windows.md"]) is None
    assert kb.search("0x80070005") == []
    assert {row["source"] for row in kb.articles()} == keep | {"https://help/payments"}

    assert kb.remove(elsewhere.article_id) is True
    assert kb.remove(elsewhere.article_id) is False
    assert kb.search("CARD_DECLINED")[0].article_id == ids["blocked.md"]
    orphans = "select count(*) from kb_chunks_fts where rowid not in (select id from kb_chunks)"
    assert store.db.execute(orphans).fetchone()[0] == 0
    with pytest.raises(ValueError):
        kb.remove_missing("", set())


# Searching ------------------------------------------------------------------------------------------
def test_english_word_forms_match(kb):
    ids = import_all(kb, {"payments.md": PAYMENTS_MD, **DECOYS})
    hits = kb.search("my card was declining, what should I try?")
    assert hits[0].article_id == ids["payments.md"]
    assert hits[0].title == "Payment errors" and hits[0].section == "Payment errors > CARD_DECLINED (E-4012)"
    assert hits[0].score > 0 and [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert kb.search("parcels arriving")[0].article_id == ids["shipping.md"]
    assert len(kb.search("card", k=2)) == 2


@pytest.mark.parametrize("segmenter", [terms.JIEBA, terms.BIGRAM])
def test_chinese_two_character_words_match(kb, monkeypatch, segmenter):
    monkeypatch.setattr(terms, "SEGMENTER", segmenter)
    ids = import_all(kb, {"renewal.md": RENEWAL_ZH, "payments.md": PAYMENTS_MD, **DECOYS})
    for question in ("续费", "扣款", "自动续费", "为什么自动扣款了？", "怎么关闭自动续费"):
        hits = kb.search(question)
        assert hits and hits[0].article_id == ids["renewal.md"], (segmenter, question, hits[:1])
    assert kb.search("如何关闭自动续费")[0].section == "会员自动续费说明 > 如何关闭自动续费"
    assert kb.search("退款多久到账")[0].article_id == ids["refunds.zh.md"]


def test_segmenters_cut_chinese_runs_only():
    assert terms.segment("关闭自动续费 E-4012", terms.BIGRAM).split() == ["关闭", "闭自", "自动", "动续", "续费", "E-4012"]
    assert {"关闭", "自动", "续费"} <= set(terms.segment("关闭自动续费", terms.JIEBA).split())
    assert terms.segment("钱", terms.BIGRAM).split() == ["钱"]
    with pytest.raises(ValueError):
        terms.segment("续费", "characters")


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("E-4012", "payments.md"),
        ("e4012", "payments.md"),
        ("card_declined", "payments.md"),
        ("Payment failed — CARD_DECLINED (E-4012). I was charged for shipping and my card payments keep failing, "
         "what fee is this?", "payments.md"),
        ("HTTP 502", "gateway.md"),
        ("the checkout shows http 502 bad gateway when I pay by card", "gateway.md"),
        ("Windows says 0x80070005 during the update, access denied", "windows.md"),
        ("ERR_CONNECTION_RESET", "gateway.md"),
        ("RISK_REJECTED", "blocked.md"),
        ("支付时提示错误码E-4012", "payments.md"),
    ],
)
def test_exact_codes_rank_their_article_first(kb, question, expected):
    ids = import_all(kb, {"payments.md": PAYMENTS_MD, "renewal.md": RENEWAL_ZH, **DECOYS})
    assert kb.search(question)[0].article_id == ids[expected]


def test_the_article_in_the_questions_language_comes_first(kb):
    ids = import_all(kb, {
        "blocked.en.md": DECOYS["blocked.md"],
        "blocked.zh.md": "# 支付被风控拦截：RISK_REJECTED (E-3301)\n\n安全检查拦截了这笔付款。\n".encode(),
    })
    assert kb.search("E-3301 什么意思")[0].article_id == ids["blocked.zh.md"]
    assert kb.search("what does E-3301 mean")[0].article_id == ids["blocked.en.md"]


def test_codes_are_normalised_whole_tokens():
    text = "Payment failed — CARD_DECLINED (E-4012), HTTP 502, 0x80070005, 错误码E-3301, order 2024-05-01, 42"
    assert terms.codes(text) == ["carddeclined", "e4012", "http502", "0x80070005", "e3301"]


@pytest.mark.parametrize(
    "question",
    [
        '"', '""', '"card', "card*", "*", "NEAR(card declined", "card AND", "AND OR NOT", "card NOT declined",
        "title:card", "{title body}: card", "^card", "card + -declined", "(((", "'; drop table kb_chunks; --",
        "\x00card\x00", "續費？！", "😀 card 😀", "E-4012" * 500, "word " * 1000, "x" * 5000,
    ],
)
def test_hostile_queries_never_raise(kb, question):
    import_all(kb, {"payments.md": PAYMENTS_MD})
    assert isinstance(kb.search(question), list)


def test_long_queries_are_capped_and_empty_ones_find_nothing(kb):
    import_all(kb, {"payments.md": PAYMENTS_MD})
    many = " ".join(f"term{n}x" for n in range(500)) + " declined"
    assert len(terms.query_terms(many)) == terms.MAX_TERMS
    for question in ("", "   ", "?!", "the and of", "的 了 吗", "*"):
        assert kb.search(question) == []
    assert kb.search("declined", k=0) == []


def test_search_over_ten_thousand_passages_uses_the_full_text_index(kb, store):
    sections = tuple(
        Section((f"Topic {n}",), f"Passage {n} about router model R{n % 97} and plan {n % 13}: restart it, check cable {n}.")
        for n in range(10_000)
    )
    kb.upsert("generated", Document("Generated handbook", "en", sections))
    assert store.db.execute("select count(*) from kb_chunks").fetchone()[0] == 10_000
    question = "restart the router and check the cable"
    for query in (question, "restart the router R42"):  # without, and with, a code (R42) to rank first
        sql, params = search_statement(query, 5)
        plan = " ".join(row[-1] for row in store.db.execute("explain query plan " + sql, params))
        assert "SCAN f VIRTUAL TABLE INDEX" in plan and "SCAN c" not in plan, plan
    started = time.perf_counter()
    hits = kb.search(question)
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert len(hits) == 5
    assert all("R42" in hit.text for hit in kb.search("R42 restart"))
    print(f"search over 10,000 passages: {elapsed_ms:.1f} ms")
