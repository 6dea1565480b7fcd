"""Through a real server with OCR on: the widget and the agent console only ever get the
redacted screenshot, and `snapdesk inspect` reads images as a conversation does."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from bot.cli import main
from engine.stub import StubEngine
from tests.browser import chromium, needs_chromium
from tests.live_server import live_server
from tests.test_agent_console import signed_in
from tests.test_screenshot_flow import CARD, EMAIL, PAINT, statement_png


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("ocr-server")
    with live_server(data_dir, engine=StubEngine(reply="That is your renewal."), users={"ana": "agent"},
                     ocr=True) as (base, app):
        yield base, app, data_dir


def _painted_share(image: Image.Image, box) -> float:
    region = np.asarray(image.convert("RGB").crop(tuple(box)))
    return float((region == np.array(PAINT)).all(axis=2).mean())


def test_the_widget_and_the_agent_console_get_only_the_redacted_screenshot(server):
    base, app, data_dir = server
    original = statement_png()
    headers = {"Authorization": "Bearer " + httpx.post(f"{base}/widget/api/session", json={}).json()["token"]}
    response = httpx.post(f"{base}/widget/api/messages", headers=headers,
                          data={"client_message_id": "shot-0001", "text": "Why was I charged?"},
                          files=[("images", ("bill.png", original, "image/png"))], timeout=30)
    assert response.status_code == 202, response.text

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conversation = httpx.get(f"{base}/widget/api/conversation", headers=headers).json()
        if any(m["kind"] == "answer" for m in conversation["messages"]):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("no answer arrived")
    kinds = [m["kind"] for m in conversation["messages"]]
    assert kinds == ["user", "notice", "answer"]
    assert "personal data" in conversation["messages"][1]["text"]

    (widget_url,) = conversation["messages"][0]["images"]
    widget_copy = httpx.get(base + widget_url).content
    agent = signed_in(base, "ana")
    store = app.state.runtime.store
    conversation_id = store.message(conversation["messages"][0]["id"])["conversation_id"]
    thread = agent.get(f"/agent/api/conversations/{conversation_id}").json()
    user = thread["messages"][0]
    (agent_url,) = user["images"]
    agent_copy = agent.get(agent_url).content
    assert widget_copy == agent_copy and hashlib.sha256(widget_copy).hexdigest() != hashlib.sha256(original).hexdigest()

    (shot,) = user["screenshots"]
    assert {r["kind"] for r in shot["redacted"]} == {"card", "email"}
    assert "CARD_DECLINED" in shot["summary"] and CARD not in json.dumps(thread) and EMAIL not in json.dumps(thread)
    stored = Image.open(io.BytesIO(agent_copy))
    (attachment,) = store.attachments(json.loads(store.message(user["id"])["attachment_ids"])).values()
    for redaction in attachment.reading["redactions"]:
        assert _painted_share(stored, redaction["box"]) > 0.98
    assert list((data_dir / "staging").iterdir()) == []

    found = agent.get("/agent/api/search", params={"q": "CARD_DECLINED"}).json()["results"]
    assert [r["conversation_id"] for r in found] == [thread["id"]]
    assert agent.get("/agent/api/search", params={"q": "jane.doe"}).json()["results"] == []
    metrics = httpx.get(f"{base}/metrics").text
    assert 'snapdesk_screenshots_read_total{outcome="read"} 1.0' in metrics
    assert 'snapdesk_redactions_total{kind="card"} 1.0' in metrics


def test_inspect_prints_lines_evidence_redactions_and_timings(tmp_path, capsys):
    image = tmp_path / "bill.png"
    image.write_bytes(statement_png())
    out = tmp_path / "redacted"
    assert main(["inspect", str(image), "--json", "--out", str(out)]) == 0
    (document,) = json.loads(capsys.readouterr().out)
    assert document["file"] == str(image)
    assert {"lines", "evidence", "redactions", "timings"} <= set(document)
    assert sorted(r["kind"] for r in document["redactions"]) == ["card", "email"]
    assert "CARD_DECLINED" in document["evidence"]["error_codes"]
    assert CARD not in json.dumps(document) and EMAIL not in json.dumps(document)
    assert document["timings"]["ocr_ms"] > 0
    written = Image.open(out / "bill.png")
    assert written.size == (document["width"], document["height"])
    for redaction in document["redactions"]:
        assert _painted_share(written, redaction["box"]) > 0.98

    assert main(["inspect", str(image)]) == 0
    text = capsys.readouterr().out
    assert "Evidence: " in text and "card •••• 6467" in text and "Timings: " in text


def test_inspect_refuses_a_disguised_file_with_exit_2(tmp_path):
    fake = tmp_path / "bill.png"
    fake.write_text("<html>not an image</html>")
    result = subprocess.run([sys.executable, "-m", "bot.cli", "inspect", str(fake)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "not an image we can read" in result.stderr and "unsupported_format" in result.stderr


@needs_chromium
def test_the_widget_swaps_its_local_preview_for_the_redacted_copy(server, tmp_path):
    base, app, _ = server
    shot = tmp_path / "statement.png"
    shot.write_bytes(statement_png())
    with chromium() as browser:
        page = browser.new_context(locale="en-US").new_page()
        page.goto(base + "/")
        page.click("[data-testid=launcher]")
        page.set_input_files("[data-testid=file-input]", str(shot))
        page.wait_for_selector("[data-testid=preview]")
        page.fill("[data-testid=input]", "Why was I charged?")
        page.keyboard.press("Enter")
        image = page.wait_for_selector(
            "[data-testid=message][data-role=user] img[src*='/widget/api/attachments/']", timeout=60_000)
        sha256 = image.get_attribute("src").split("/attachments/")[1].split("?")[0]
        page.wait_for_selector("[data-testid=message][data-role=bot]", timeout=60_000)
        page.screenshot(path=str(tmp_path / "widget-redacted.png"))
    stored = app.state.runtime.store.select("select sha256, redactions from attachments where sha256 = ?", [sha256])
    assert stored and stored[0]["redactions"] == 2  # the copy the widget shows is the redacted one
