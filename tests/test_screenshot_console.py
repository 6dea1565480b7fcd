"""What was read in screenshots, as agents meet it: beside each screenshot in a thread, in the
hand-over banner, and in search (a word only a screenshot shows finds its conversation; a value
painted out of it never does). Conversations are stored through the real Store with their
readings (no OCR runs here) and served by the real app; the page is checked in Chromium."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from bot.messages import utcnow
from bot.store import RESOLVED, WAITING, Store
from engine.evidence import Evidence
from engine.stub import StubEngine
from tests.browser import chromium, needs_chromium, sign_in
from tests.live_server import PASSWORD, live_server
from tests.test_agent_console import signed_in

SHOTS = Path(os.environ.get("SNAPDESK_SCREENSHOTS", tempfile.gettempdir()))
CARD = "4111 1111 1111 1881"  # what the user's screenshot showed; only its last four were kept
HOSTILE = "<img src=x onerror=window.__pwned=1>"

PAYMENT = {  # a declined payment: error codes, amount, order, and a card and an e-mail painted out
    "lines": ["支付失败", "风控拦截 RISK_REJECTED (E-3301)", "金额 ¥1,288.00", "订单号 DD2024030588812",
              "支付卡 [card •••• 1881]", "联系邮箱 [email]"],
    "evidence": {"title": "支付失败", "error_codes": ["RISK_REJECTED", "E-3301"], "amounts": ["¥1,288.00"],
                 "orders": ["DD2024030588812"], "tracking": [], "dates": [],
                 "redacted": [{"kind": "card", "last4": "1881"}, {"kind": "email", "last4": None}]},
}
PARCEL = {
    "lines": ["Order status", "Shipped with SF Express", "Tracking SF1234567890123", "Expected 2024-03-08"],
    "evidence": {"title": "Order status", "error_codes": [], "amounts": [], "orders": [],
                 "tracking": ["SF1234567890123"], "dates": ["2024-03-08"], "redacted": []},
}
EARLIER = {  # an earlier episode's screenshot: not what this hand-over is about
    "lines": ["Login failed", "ACCOUNT_LOCKED (E-1000)"],
    "evidence": {"title": "Login failed", "error_codes": ["ACCOUNT_LOCKED", "E-1000"], "redacted": []},
}
BLURRY = {"lines": [], "evidence": {}, "unreadable": True}
SCRIPTED = {  # text a screenshot showed that must stay text in the console
    "lines": [HOSTILE, "Payment failed — CARD_DECLINED (E-4012)"],
    "evidence": {"title": "<b>Payment failed</b>", "error_codes": ["CARD_DECLINED", "E-4012"], "redacted": []},
}


def summary(shot: dict) -> str:
    return Evidence.from_dict(shot["evidence"]).summary()


def picture(lines: list[str], shade: str) -> bytes:
    image = Image.new("RGB", (420, 260), shade)
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines or ["(blurred)"]):
        draw.text((16, 18 + 34 * row), line.encode("ascii", "replace").decode(), fill="#111827")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def screenshot(store: Store, shot: dict | None, shade: str, read: bool = True, failed: bool = False) -> int:
    """A stored screenshot, with its reading unless `read` is False (OCR off) or `failed`."""
    lines = (shot or {}).get("lines", [])
    data = picture(lines, shade)
    attachment_id = store.save_attachment(hashlib.sha256(data).hexdigest(), data, "image/png", 420, 260)
    if failed:
        reading = {"ocr": False, "unreadable": False, "lines": [], "evidence": {}, "redactions": [],
                   "readability": {"sharpness": 50.0, "contrast": 90.0, "too_small": False}, "timings": {}}
        store.record_reading(attachment_id, reading, "", 0, False)
    elif read:
        text = "\n".join(lines)
        reading = {
            "ocr": True, "unreadable": shot.get("unreadable", False),
            "lines": [{"text": line, "box": [16, 18 + 34 * i, 400, 40 + 34 * i], "score": 0.97}
                      for i, line in enumerate(lines)],
            "evidence": shot["evidence"],
            "redactions": [{"kind": r["kind"], "box": [0, 0, 10, 10], "last4": r["last4"]}
                           for r in shot["evidence"].get("redacted", [])],
            "readability": {"sharpness": 0.8, "contrast": 0.7, "too_small": False}, "timings": {"ocr_ms": 120.0},
        }
        store.record_reading(attachment_id, reading, text, len(reading["redactions"]), shot.get("unreadable", False))
    return attachment_id


def say(store: Store, key: str, name: str, text: str, images: list[int]) -> dict:
    row, _ = store.add_inbound(
        channel="widget", external_key=key, platform_message_id=f"{key}:{utcnow().timestamp()}:{text}", user_id=key,
        user_name=name, text=text, attachment_ids=images, refused_images=[], received_at=utcnow(), language="zh",
    )
    return row


def hand_over(store: Store, message: dict) -> None:
    store.add_escalation(message["conversation_id"], message["id"], "low_confidence", "not sure", 0.31, "")
    store.set_owner(message["conversation_id"], WAITING, None)


def build(data: Path) -> dict:
    """The conversations every test reads: ids of what they look for."""
    store = Store(data)
    try:
        earlier = say(store, "ana", "Ana Li", "I cannot sign in", [screenshot(store, EARLIER, "#fde2e2")])
        store.set_owner(earlier["conversation_id"], RESOLVED, None)
        payment = screenshot(store, PAYMENT, "#fff7ed")
        first = say(store, "ana", "Ana Li", "我的付款失败了", [payment])
        unread = screenshot(store, None, "#e0e7ff", read=False)
        latest = say(store, "ana", "Ana Li", "还是不行，包裹也没到",
                     [screenshot(store, PARCEL, "#ecfdf5"), payment, unread, screenshot(store, BLURRY, "#f3f4f6"),
                      screenshot(store, None, "#fafafa", failed=True)])
        hand_over(store, latest)
        typed = say(store, "carla", "Carla", "RISK_REJECTED again, what now?", [payment])
        scripted = say(store, "bob", "Bob", "see the screenshot", [screenshot(store, SCRIPTED, "#fef2f2")])
        hand_over(store, scripted)
        return {"ana": latest["conversation_id"], "ana_first": first["id"], "ana_latest": latest["id"],
                "ana_earlier": earlier["id"], "carla": typed["id"], "bob": scripted["conversation_id"]}
    finally:
        store.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("screenshots")
    ids = build(data)
    with live_server(data, engine=StubEngine(), login_rate_per_ip=1000, users={"mei": "agent"}) as (base, app):
        yield base, ids


def messages_by_id(thread: dict) -> dict[int, dict]:
    return {m["id"]: m for m in thread["messages"]}


def test_each_screenshot_comes_with_what_was_read_in_it(server):
    base, ids = server
    thread = signed_in(base, "mei").get(f"/agent/api/conversations/{ids['ana']}").json()
    latest = messages_by_id(thread)[ids["ana_latest"]]
    assert [shot["url"] for shot in latest["screenshots"]] == latest["images"] and len(latest["images"]) == 5
    parcel, payment, unread, blurry, failed = latest["screenshots"]
    assert payment == {
        "url": payment["url"], "read": True, "failed": False, "summary": summary(PAYMENT),
        "evidence": {**PAYMENT["evidence"]}, "redacted": [{"kind": "card", "last4": "1881"}, {"kind": "email", "last4": None}],
        "text": "\n".join(PAYMENT["lines"]), "unreadable": False,
    }
    assert "RISK_REJECTED (E-3301)" in payment["summary"] and "¥1,288.00" in payment["summary"]
    assert CARD not in str(thread) and CARD.replace(" ", "") not in str(thread)
    assert parcel["read"] and parcel["evidence"]["tracking"] == ["SF1234567890123"]
    assert unread == {"url": unread["url"], "read": False, "failed": False, "summary": "", "evidence": {},
                      "redacted": [], "text": "", "unreadable": False}
    assert failed["read"] is False and failed["failed"] is True  # OCR was on but could not read it
    assert blurry["read"] and blurry["unreadable"] and blurry["summary"] == ""
    assert all(m["screenshots"] == [] for m in thread["messages"] if not m["images"])


def test_the_hand_over_says_what_this_episodes_screenshots_show_newest_first_once_each(server):
    base, ids = server
    agent = signed_in(base, "mei")
    ana = agent.get(f"/agent/api/conversations/{ids['ana']}").json()["escalation"]
    assert ana["screenshot_summary"] == f"{summary(PARCEL)}; {summary(PAYMENT)}"  # not the earlier episode's E-1000
    bob = agent.get(f"/agent/api/conversations/{ids['bob']}").json()["escalation"]
    assert bob["screenshot_summary"] == summary(SCRIPTED)


def search(base: str, query: str) -> list[dict]:
    response = signed_in(base, "mei").get("/agent/api/search", params={"q": query})
    assert response.status_code == 200
    return response.json()["results"]


def test_search_finds_a_word_that_only_a_screenshot_shows(server):
    base, ids = server
    found = search(base, "RISK_REJECTED")
    assert [(r["message_id"], r["in_screenshot"]) for r in found] == [
        (ids["carla"], False), (ids["ana_latest"], True), (ids["ana_first"], True)]  # newest first, each once
    assert found[0]["snippet"].startswith("RISK_REJECTED again")  # a message's own text wins
    assert all("RISK_REJECTED" in r["snippet"] for r in found)
    assert found[1]["conversation_id"] == ids["ana"] and found[1]["role"] == "user"
    chinese = search(base, "风控")  # two characters: the LIKE fallback
    assert [(r["message_id"], r["in_screenshot"]) for r in chinese] == [
        (ids["carla"], True), (ids["ana_latest"], True), (ids["ana_first"], True)]  # Carla sent the same screenshot
    assert all("风控拦截" in r["snippet"] for r in chinese)
    assert [r["message_id"] for r in search(base, "SF1234567890123")] == [ids["ana_latest"]]


def test_search_never_finds_what_was_painted_out(server):
    base, _ = server
    for query in (CARD, CARD.replace(" ", ""), "4111 1111"):
        assert search(base, query) == []


# In the browser -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def agent_page(server):
    base, _ = server
    with chromium() as browser:
        page = sign_in(browser, base, "mei", PASSWORD, "/agent")
        page.on("dialog", lambda dialog: dialog.dismiss())
        yield page


def open_conversation(page, conversation_id: int) -> None:
    page.goto(page.url.split("#")[0] + f"#/conversations/{conversation_id}")
    page.wait_for_selector(f"[data-testid=thread][data-id='{conversation_id}'][aria-busy=false]", timeout=10_000)


def chips(scope) -> list[list[str]]:
    """(kind, value) of each evidence chip, without the label only screen readers hear."""
    return scope.locator("[data-testid=evidence-chip]").evaluate_all(
        "(cs) => cs.map((c) => [c.dataset.kind, c.lastChild.textContent])")


def message(page, message_id: int):
    return page.locator(f"[data-testid=thread-message][data-id='{message_id}']")


@needs_chromium
def test_the_thread_shows_the_evidence_beside_each_screenshot_and_the_banner_sums_it_up(agent_page, server):
    page, (_, ids) = agent_page, server
    open_conversation(page, ids["ana"])
    banner = page.locator("[data-testid=screenshot-summary]")
    assert banner.is_visible() and banner.inner_text() == f"Screenshot shows: {summary(PARCEL)}; {summary(PAYMENT)}"

    first = message(page, ids["ana_first"])
    evidence = first.locator("[data-testid=screenshot-evidence]")
    assert evidence.count() == 1 and evidence.is_visible()
    assert evidence.locator("[data-testid=evidence-summary]").inner_text() == summary(PAYMENT)
    assert chips(evidence) == [["error_codes", "RISK_REJECTED"], ["error_codes", "E-3301"], ["amounts", "¥1,288.00"],
                               ["orders", "DD2024030588812"]]
    assert evidence.locator("[data-testid=evidence-redacted]").inner_text() == "Personal data hidden: card •••• 1881, email"
    text = evidence.locator("[data-testid=evidence-text]")
    assert not text.is_visible()  # the read text is folded away until asked for
    evidence.locator("summary").click()
    assert text.is_visible() and "支付卡 [card •••• 1881]" in text.inner_text()

    latest = message(page, ids["ana_latest"])
    assert latest.locator("[data-testid=thread-image]").count() == 5
    assert latest.locator("[data-testid=screenshot-evidence]").count() == 4  # the one read with OCR off has none
    assert latest.locator("[data-testid=evidence-not-read]").inner_text() == "Not read: personal data in it was not checked"
    assert latest.locator("[data-testid=evidence-unreadable]").inner_text() == "Could not be read"
    assert ["tracking", "SF1234567890123"] in chips(latest) and ["dates", "2024-03-08"] in chips(latest)
    assert CARD not in page.inner_text("[data-testid=thread]")
    first.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "console-screenshot-evidence.png"))


@needs_chromium
def test_text_read_in_a_screenshot_stays_text(agent_page, server):
    page, (_, ids) = agent_page, server
    open_conversation(page, ids["bob"])
    evidence = page.locator("[data-testid=screenshot-evidence]")
    assert evidence.locator("[data-testid=evidence-title]").inner_text() == "<b>Payment failed</b>"
    assert evidence.locator("[data-testid=evidence-text]").text_content().startswith(HOSTILE)
    assert evidence.locator("img, b").count() == 0
    assert page.evaluate("window.__pwned") is None


@needs_chromium
def test_search_marks_results_found_in_a_screenshot(agent_page, server):
    page, (_, ids) = agent_page, server
    page.fill("[data-testid=search]", "RISK_REJECTED")
    page.wait_for_selector("[data-testid=search-result]")
    results = page.locator("[data-testid=search-result]")
    assert [int(m) for m in results.evaluate_all("(rs) => rs.map((r) => r.dataset.messageId)")] == [
        ids["carla"], ids["ana_latest"], ids["ana_first"]]
    marked = [results.nth(i).locator("[data-testid=in-screenshot]").count() for i in range(3)]
    assert marked == [0, 1, 1]
    assert results.nth(1).locator("[data-testid=in-screenshot]").inner_text() == "in screenshot"
    page.screenshot(path=str(SHOTS / "console-search-in-screenshot.png"))
    results.nth(1).click()
    page.wait_for_selector(f"[data-testid=thread][data-id='{ids['ana']}'][aria-busy=false]")
