"""`snapdesk kb` through the real command line: import, re-import, list, search, remove, sync."""

from __future__ import annotations

import http.server
import io
import json
import shutil
import threading
from pathlib import Path

import pytest

from bench.screenshot_corpus import sample
from bot.cli import main
from bot.settings import get_settings

HELP_CENTRE = Path("prompts/knowledge")


def run(capsys, *args: str) -> tuple[int, str, str]:
    get_settings.cache_clear()  # each command reads the environment as a new process would
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_import_list_search_remove_and_sync_a_folder(tmp_path, capsys):
    folder = tmp_path / "help"
    shutil.copytree(HELP_CENTRE, folder)
    data = str(tmp_path / "data")
    code, out, _ = run(capsys, "kb", "import", str(folder), "--data", data)
    assert code == 0 and out.startswith("30 added, 0 updated, 0 unchanged, 0 removed")

    code, out, _ = run(capsys, "kb", "list", "--json", "--data", data)
    articles = json.loads(out)
    assert len(articles) == 30 and {"id", "title", "url", "language", "chunks", "updated_at"} <= set(articles[0])

    code, out, _ = run(capsys, "kb", "search", "--json", "-k", "3", "--data", data, "CARD_DECLINED what now")
    hits = json.loads(out)
    assert len(hits) == 3 and set(hits[0]) == {"article_id", "title", "url", "section", "score", "text"}
    assert "Payment failed" in hits[0]["title"]

    # A changed article is updated, a deleted one removed, the rest left alone.
    renewal = folder / "auto-renewal.en.md"
    renewal.write_text(renewal.read_text() + "\n## Renewal reminders\nWe e-mail you three days before.\n")
    (folder / "wifi-slow.zh.md").unlink()
    code, out, _ = run(capsys, "kb", "sync", "--data", data)
    assert code == 0 and out.startswith("0 added, 1 updated, 28 unchanged, 1 removed")

    removed = next(a["id"] for a in articles if a["title"].startswith("Reset your password"))
    assert run(capsys, "kb", "remove", str(removed), "--data", data)[0] == 0
    code, _, err = run(capsys, "kb", "remove", str(removed), "--data", data)
    assert code == 2 and f"no article {removed}" in err
    code, out, _ = run(capsys, "kb", "list", "--data", data)
    assert len(out.strip().splitlines()) == 28


def test_a_missing_path_is_refused_and_a_bad_file_reported(tmp_path, capsys):
    data = str(tmp_path / "data")
    code, _, err = run(capsys, "kb", "import", str(tmp_path / "nowhere.md"), "--data", data)
    assert code == 2 and "no such file" in err
    bad = tmp_path / "scan.pdf"
    bad.write_bytes(b"not a pdf at all")
    code, out, err = run(capsys, "kb", "import", str(bad), "--data", data)
    assert code == 1 and "1 failed" in out and "scan.pdf" in err


@pytest.fixture
def pages(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "refunds.html").write_text("<html><head><title>Refunds</title></head><body><h1>Refunds at Acme</h1>"
                                       "<h2>When the money arrives</h2><p>Card refunds take 5-10 business days.</p>"
                                       "</body></html>")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(root))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler_class = http.server.SimpleHTTPRequestHandler
    handler_class.log_message = lambda *a: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root_url = f"http://127.0.0.1:{server.server_address[1]}"
    (root / "sitemap.xml").write_text('<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
                                      f"<url><loc>{root_url}/refunds.html</loc></url></urlset>")
    yield root_url
    server.shutdown()


def test_a_sitemap_is_imported_only_from_allowed_hosts(tmp_path, capsys, monkeypatch, pages):
    data = str(tmp_path / "data")
    code, out, err = run(capsys, "kb", "import", f"{pages}/sitemap.xml", "--data", data)
    assert code == 1 and "1 failed" in out  # no host allowed yet
    monkeypatch.setenv("SNAPDESK_KB_ALLOWED_HOSTS", "127.0.0.1")
    code, out, err = run(capsys, "kb", "import", f"{pages}/sitemap.xml", "--data", data)
    assert code == 1 and "private" in err.lower()  # a loopback address needs SNAPDESK_KB_ALLOW_PRIVATE
    monkeypatch.setenv("SNAPDESK_KB_ALLOW_PRIVATE", "true")
    code, out, _ = run(capsys, "kb", "import", f"{pages}/sitemap.xml", "--data", data)
    assert code == 0 and out.startswith("1 added")
    (article,) = json.loads(run(capsys, "kb", "list", "--json", "--data", data)[1])
    assert article["title"] == "Refunds at Acme" and article["url"] == f"{pages}/refunds.html"

    # The site changes: a page is replaced by another. A sync follows the sitemap.
    site = tmp_path / "site"
    (site / "invoices.html").write_text("<h1>Invoices</h1><p>Download them under Me > Orders.</p>")
    (site / "sitemap.xml").write_text('<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/'
                                      f'sitemap/0.9"><url><loc>{pages}/invoices.html</loc></url></urlset>')
    code, out, _ = run(capsys, "kb", "sync", "--data", data)
    assert code == 0 and out.startswith("1 added, 0 updated, 0 unchanged, 1 removed")
    assert [a["title"] for a in json.loads(run(capsys, "kb", "list", "--json", "--data", data)[1])] == ["Invoices"]


def test_search_with_a_screenshot_uses_what_it_shows(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SNAPDESK_OCR", "on")
    data = str(tmp_path / "data")
    run(capsys, "kb", "import", str(HELP_CENTRE), "--data", data)
    shot = tmp_path / "blocked.png"
    buffer = io.BytesIO()
    sample("risk_rejected_en_phone").image.save(buffer, "PNG")
    shot.write_bytes(buffer.getvalue())
    code, out, _ = run(capsys, "kb", "search", "--image", str(shot), "--data", data, "?")
    assert code == 0 and "RISK_REJECTED" in out.splitlines()[0]  # the query line shows the screenshot's code
    assert "Transaction blocked" in out.splitlines()[1]
