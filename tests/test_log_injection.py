"""Users' names and file names cannot write lines into the server's log.

`snapdesk serve` runs as its own process with its real logging set-up, Slack and Telegram
pointed at the local fakes; users whose names and file names carry a newline and a forged
log line write to it, and the server's stderr is read back.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import uvicorn.logging
from PIL import Image

from bot.log_format import ESCAPE_ARGUMENTS, EscapingFormatter, escape_controls
from tests.fake_slack import BOT_TOKEN, FakeSlack, dm_event, event_callback, sign
from tests.fake_telegram import FakeTelegram
from tests.live_server import free_port, wait_for

FORGED = "\n2026-12-07 INFO forged line"
HOSTILE = f"Ana{FORGED}\r\x1b[2J\x1b]0;owned\x07\u2028\x85\x7f\u202etxt.exe"
SLACK_SECRET = "0123456789abcdef0123456789abcdef"
TELEGRAM_TOKEN = "123456:LOGTEST"
TELEGRAM_SECRET = "log-secret"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "white").save(buffer, "PNG")
    return buffer.getvalue()


def forged_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.lstrip().startswith("2026-12-07 INFO forged")]


@pytest.fixture
def fakes():
    slack = FakeSlack().start()
    telegram = FakeTelegram(TELEGRAM_TOKEN)
    try:
        with telegram.serve():
            yield slack, telegram
    finally:
        slack.stop()


def test_hostile_names_and_file_names_write_no_line_into_the_server_log(tmp_path, fakes):
    slack, telegram = fakes
    port = free_port()
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "SNAPDESK_ENGINE": "stub",
        "SNAPDESK_SLACK_BOT_TOKEN": BOT_TOKEN, "SNAPDESK_SLACK_SIGNING_SECRET": SLACK_SECRET,
        "SNAPDESK_SLACK_API_URL": slack.api_url,
        "SNAPDESK_TELEGRAM_TOKEN": TELEGRAM_TOKEN, "SNAPDESK_TELEGRAM_WEBHOOK_SECRET": TELEGRAM_SECRET,
        "SNAPDESK_TELEGRAM_API_URL": telegram.base_url,
    }
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log_file:
        server = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "serve", "--data", str(tmp_path / "data"), "--port", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parent.parent)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready():
            assert server.poll() is None, log_path.read_text()
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(ready, timeout=60, what="snapdesk serve to start")

        # Slack: a user with a hostile display name shares a file with a hostile name that cannot be fetched.
        slack.add_user("U0LOG", "mallory", "Mallory")
        slack.users["U0LOG"]["profile"]["display_name"] = HOSTILE
        shared = slack.add_file(f"bill{HOSTILE}.png", png(), kind="error500")
        body = httpx.Request("POST", "/", json=event_callback(
            dm_event("D0LOGS", "What is this charge?", user="U0LOG", files=[shared]))).read()
        assert httpx.post(f"{base}/slack/events", content=body, headers=sign(SLACK_SECRET, body)).status_code == 200

        # Telegram: a user with a hostile name sends a document with a hostile name that is no image.
        pdf = telegram.add_file(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", extension="pdf")
        first, last = HOSTILE.split("\n", 1)
        update = {"update_id": 501, "message": {
            "message_id": 7, "date": int(time.time()),
            "from": {"id": 91, "is_bot": False, "first_name": first, "last_name": last, "language_code": "en"},
            "chat": {"id": 91, "type": "private", "first_name": first, "last_name": last},
            "caption": "Why was I charged?",
            "document": {"file_id": pdf.file_id, "file_unique_id": pdf.file_unique_id, "file_size": pdf.file_size,
                         "file_name": f"invoice{HOSTILE}.pdf", "mime_type": "application/pdf"}}}
        assert httpx.post(f"{base}/telegram/webhook", json=update,
                          headers={"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}).status_code == 200

        wait_for(lambda: "is not an image; the user is told" in log_path.read_text()
                 and "Slack file bill" in log_path.read_text(), timeout=20, what="both file names in the log")
    finally:
        server.terminate()
        server.wait(timeout=20)
    log = log_path.read_text()
    assert forged_lines(log) == [], log
    for line in log.splitlines():
        if "Slack file bill" in line or "invoice" in line:  # the lines that carry the names: escaped, on one line
            assert "\\n2026-12-07 INFO forged line\\r\\x1b[2J\\x1b]0;owned\\x07\\u2028\\x85\\x7f\\u202etxt.exe" in line
    assert not any(c in log for c in "\r\x1b\x07\u2028\x85\x7f\u202e"), "no control character reached the log"


def test_the_formatter_escapes_the_message_and_keeps_the_traceback():
    formatter = EscapingFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("adapters.slack", logging.INFO, __file__, 1, "file %s: %r", (HOSTILE, HOSTILE), None)
    line = formatter.format(record)
    assert "\n" not in line and "\x1b" not in line and "\\n2026-12-07 INFO forged line" in line
    try:
        raise ValueError("broken")
    except ValueError:
        record = logging.LogRecord("bot", logging.ERROR, __file__, 1, "name %s", (HOSTILE,), sys.exc_info())
    first, *traceback = formatter.format(record).split("\n")
    assert first.startswith("ERROR bot: name Ana\\n2026-12-07") and traceback[0] == "Traceback (most recent call last):"
    assert escape_controls("价格 tab\there") == "价格 tab\\there" and escape_controls("plain text") == "plain text"


def test_uvicorn_lines_are_escaped_in_their_own_layout():
    """uvicorn's formatters keep their colours and the access layout; what users sent is escaped."""
    access = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", f"/widget{FORGED}", "1.1", 200), None)
    error = logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, "bad request from %s: %s",
                              (FORGED, ValueError(FORGED)), None)
    for record in (access, error):
        assert ESCAPE_ARGUMENTS.filter(record)
    layout = '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'
    access_line = uvicorn.logging.AccessFormatter(layout, use_colors=True).format(access)
    error_line = uvicorn.logging.DefaultFormatter("%(levelprefix)s %(message)s", use_colors=False).format(error)
    assert "\n" not in access_line and "/widget\\n2026-12-07 INFO forged line" in access_line
    assert "\x1b[" in access_line, "uvicorn's own colours stay"
    assert error_line.count("\\n2026-12-07 INFO forged line") == 2 and "\n" not in error_line
