"""A real conversation turn made into a regression case, over real HTTP.

The case must keep what Snapdesk stored (the redacted screenshot, never the upload), join its
template's set and its runs, and outlive the conversation it came from: retention deletes
conversations and their screenshots, never the cases an operator made of them.
"""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bot.cli import main as snapdesk
from bot.store import Store
from engine.stub import StubEngine
from tests.live_server import live_server, wait_for
from tests.test_agent_console import signed_in

# An operator's own template: no shipped case file, so its set is only the cases made here.
TEMPLATE = "checkout-help"
GENERAL = Path(__file__).resolve().parent.parent / "prompts" / "general.yaml"
USERS = {"olga": "operator", "ana": "agent", "root": "admin"}


def picture(colour: str) -> bytes:
    """A screenshot of its own: stored files are shared by content, and purging keeps a shared one."""
    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), colour).save(buffer, "PNG")
    return buffer.getvalue()


def own_template_yaml(name: str = TEMPLATE) -> str:
    return re.sub(r"^name: general$", f"name: {name}", GENERAL.read_text(encoding="utf-8"), count=1, flags=re.M)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """OCR off (the test default): a screenshot is stored unchecked for personal data."""
    data_dir = tmp_path_factory.mktemp("cases-from-turns")
    with live_server(data_dir, engine=StubEngine(reply="You were charged 88 for the renewal."), users=USERS,
                     login_rate_per_ip=1000, widget_rate_per_ip=10_000, widget_rate_per_visitor=1000) as (base, app):
        olga = signed_in(base, "olga")
        published = olga.post(f"/operator/api/templates/{TEMPLATE}/publish", json={"yaml": own_template_yaml()})
        assert published.status_code == 200, published.text
        assert olga.post("/operator/api/channels", json={"channel": "widget", "template": TEMPLATE}).status_code == 200
        yield base, app, data_dir


def new_visitor(base: str) -> dict[str, str]:
    """A widget visitor of their own: the headers their messages go with."""
    token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def widget_turn(base: str, text: str, image: bytes | None = None, timeout: float = 60,
                visitor: dict[str, str] | None = None) -> tuple[dict, dict]:
    """A visitor's message through the widget (a new visitor's unless `visitor` says whose),
    once the bot has decided it: (the user message, the bot's reply to it), as the widget API
    shows them."""
    headers = visitor or new_visitor(base)
    client_id = f"c{time.monotonic_ns()}"
    files = [("images", ("statement.png", image, "image/png"))] if image else None
    sent = httpx.post(f"{base}/widget/api/messages", headers=headers, files=files, timeout=30,
                      data={"client_message_id": client_id, "text": text})
    assert sent.status_code == 202, sent.text

    def decided():
        messages = httpx.get(f"{base}/widget/api/conversation", headers=headers).json()["messages"]
        user = next(m for m in messages if m["kind"] == "user" and m["client_message_id"] == client_id)
        reply = next((m for m in messages if m["reply_to"] == user["id"] and m["kind"] in ("answer", "handover")), None)
        return (user, reply) if reply else None

    return wait_for(decided, timeout=timeout, what="the bot's reply")


def two_hand_overs(base: str, store: Store, agent: httpx.Client) -> list[dict]:
    """One visitor's conversation handed over twice, for different reasons (a person asked for,
    then a sensitive topic), handed back to the bot by `agent` in between: its two user messages."""
    visitor = new_visitor(base)
    first, notice = widget_turn(base, "I want to talk to a human about my bill", visitor=visitor)
    assert notice["kind"] == "handover"
    conversation_id = store.message(first["id"])["conversation_id"]
    assert agent.post(f"/agent/api/conversations/{conversation_id}/hand-back").status_code == 200
    second, notice = widget_turn(base, "I want a chargeback for this charge", visitor=visitor)
    assert notice["kind"] == "handover"
    return [first, second]


def add_case(client: httpx.Client, message_id: int, **body) -> httpx.Response:
    return client.post(f"/operator/api/messages/{message_id}/case", json={"expect": "handover", **body})


def cases_of(client: httpx.Client, template: str = TEMPLATE) -> dict[int, dict]:
    listed = client.get(f"/operator/api/templates/{template}/cases")
    assert listed.status_code == 200, listed.text
    return {case["id"]: case for case in listed.json()["cases"] if case["source"] == "operator"}


def stored_screenshot(base: str, app, message_id: int) -> bytes:
    """The message's screenshot as the agent console serves it: the copy Snapdesk stored."""
    conversation_id = app.state.runtime.store.message(message_id)["conversation_id"]
    thread = signed_in(base, "root").get(f"/agent/api/conversations/{conversation_id}").json()
    (url,) = next(m for m in thread["messages"] if m["id"] == message_id)["images"]
    return signed_in(base, "root").get(url).content


def test_an_answered_message_becomes_a_case_of_the_template_that_answered(server):
    base, app, _ = server
    user, reply = widget_turn(base, "Why was I charged 88 this month?")
    assert reply["kind"] == "answer"
    olga = signed_in(base, "olga")
    added = add_case(olga, user["id"], reason="low_confidence", must_contain=[" 88 "],
                     must_not_contain=["4716 2630 5531 1881"], cite=["auto-renewal"], notes="It should have asked.")
    assert added.status_code == 200, added.text
    case_id = added.json()["case_id"]
    assert added.json() == {"case_id": case_id, "template": TEMPLATE}

    case = cases_of(olga)[case_id]
    assert case["text"] == "Why was I charged 88 this month?" and case["channel"] == "widget" and case["language"] == "en"
    assert case["expect"] == "handover" and case["reason"] == "low_confidence"
    assert case["must_contain"] == ["88"] and case["must_not_contain"] == ["4716 2630 5531 1881"]
    assert case["cite"] == ["auto-renewal"] and case["notes"] == "It should have asked."
    assert case["source_message_id"] == user["id"] and case["created_by"] == "olga" and case["screenshots"] == 0

    audit = app.state.runtime.store._all("select actor, target, detail from audit_log where action = 'case_add'")
    assert {"actor": "olga", "target": f"template:{TEMPLATE}",
            "detail": json.dumps({"case": case_id, "message": user["id"]})} in audit


def test_a_screenshot_nobody_checked_for_personal_data_needs_the_operators_word(server):
    base, app, _ = server
    user, _ = widget_turn(base, "What is this charge?", picture("orange"))
    olga = signed_in(base, "olga")
    before = cases_of(olga)

    refused = add_case(olga, user["id"])
    assert refused.status_code == 409
    assert refused.json()["error"] == "unchecked_screenshots"
    assert "not checked for personal data" in refused.json()["message"]
    assert cases_of(olga) == before

    added = add_case(olga, user["id"], allow_unchecked_screenshots=True)
    assert added.status_code == 200, added.text
    case_id = added.json()["case_id"]
    assert cases_of(olga)[case_id]["screenshots"] == 1
    kept = olga.get(f"/operator/api/cases/{case_id}/screenshots/1")
    assert kept.status_code == 200 and kept.headers["content-type"] == "image/png"
    assert kept.content == stored_screenshot(base, app, user["id"])
    assert olga.get(f"/operator/api/cases/{case_id}/screenshots/2").status_code == 404


def test_only_operators_make_cases_and_only_of_user_messages(server):
    base, app, _ = server
    user, reply = widget_turn(base, "Where is my parcel?")
    url = f"/operator/api/messages/{user['id']}/case"

    assert httpx.post(base + url, json={"expect": "answer"}).status_code == 401
    refused = signed_in(base, "ana").post(url, json={"expect": "answer"})
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    olga = signed_in(base, "olga")
    no_token = httpx.post(base + url, json={"expect": "answer"}, cookies=olga.cookies)
    assert no_token.status_code == 403 and no_token.json()["error"] == "csrf"

    for not_a_user_message in (reply["id"], 10**12):
        missing = add_case(olga, not_a_user_message)
        assert missing.status_code == 404 and missing.json()["error"] == "not_found", missing.text
    assert add_case(olga, user["id"], expect="maybe").status_code == 422
    assert add_case(olga, user["id"], template="no-such-template").status_code == 404
    assert signed_in(base, "root").post(url, json={"expect": "answer"}).status_code == 200  # admins may


def test_an_operator_reads_any_turn_of_a_conversation_and_makes_it_a_case_without_answering(server):
    base, app, _ = server
    store = app.state.runtime.store
    first, second = two_hand_overs(base, store, signed_in(base, "root"))
    conversation_id = store.message(first["id"])["conversation_id"]
    olga = signed_in(base, "olga")

    thread = olga.get(f"/agent/api/conversations/{conversation_id}")
    assert thread.status_code == 200, thread.text
    messages = thread.json()["messages"]
    notices = [m for m in messages if m["kind"] == "handover"]
    # Every hand-over says its own reason and which template version handed over, not only the newest.
    assert [(m["reply_to"], m["reason"]) for m in notices] == [(first["id"], "user_request"),
                                                                (second["id"], "sensitive_topic")]
    assert {(m["template_name"], m["template_version"]) for m in notices} == {(TEMPLATE, 1)}
    assert thread.json()["escalation"]["reason"] == "sensitive_topic"
    assert all(m["reason"] is None for m in messages if m["kind"] != "handover")

    for verb in ("claim", "reply"):
        refused = olga.post(f"/agent/api/conversations/{conversation_id}/{verb}", json={"text": "Hello"})
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden", verb
    added = add_case(olga, first["id"], reason="user_request")
    assert added.status_code == 200, added.text
    case = cases_of(olga)[added.json()["case_id"]]
    assert case["source_message_id"] == first["id"] and case["reason"] == "user_request" and case["created_by"] == "olga"
    after = olga.get(f"/agent/api/conversations/{conversation_id}").json()
    assert after["status"] == "waiting" and after["assigned_agent"] is None and after["messages"] == messages

    # "Talk to a person" after an answer: a hand-over with no bot turn still says its reason.
    visitor = new_visitor(base)
    asked, _ = widget_turn(base, "Why was I charged 88 this month?", visitor=visitor)
    assert httpx.post(f"{base}/widget/api/handover", headers=visitor).status_code == 200
    thread = olga.get(f"/agent/api/conversations/{store.message(asked['id'])['conversation_id']}").json()
    (notice,) = [m for m in thread["messages"] if m["kind"] == "handover"]
    assert notice["reply_to"] is None and notice["reason"] == "user_request"


def test_a_case_outlives_its_conversation_and_still_runs(server):
    base, app, data_dir = server
    user, _ = widget_turn(base, "I was charged twice, see the screenshot", picture("teal"))
    olga = signed_in(base, "olga")
    case_id = add_case(olga, user["id"], allow_unchecked_screenshots=True).json()["case_id"]
    kept = olga.get(f"/operator/api/cases/{case_id}/screenshots/1").content

    store = app.state.runtime.store
    conversation_id = store.message(user["id"])["conversation_id"]
    attachment = next(iter(store.attachments(json.loads(store.message(user["id"])["attachment_ids"])).values()))
    other = Store(data_dir)  # what an old conversation looks like to retention
    try:
        with other.transaction():
            other.db.execute("update conversations set last_message_at = '2001-01-01T00:00:00+00:00' where id = ?",
                             [conversation_id])
    finally:
        other.close()
    assert snapdesk(["purge", "--older-than", "30", "--data", str(data_dir)]) == 0
    assert store.conversation(conversation_id) is None and store.message(user["id"]) is None
    assert not attachment.path.exists()

    case = cases_of(olga)[case_id]
    assert case["source_message_id"] == user["id"] and case["screenshots"] == 1
    again = olga.get(f"/operator/api/cases/{case_id}/screenshots/1")
    assert again.status_code == 200 and again.content == kept

    started = olga.post(f"/operator/api/templates/{TEMPLATE}/runs", json={"yaml": own_template_yaml()})
    assert started.status_code == 200, started.text
    run_id = started.json()["run_id"]
    run = wait_for(lambda: (lambda r: r if r["run"]["status"] != "running" else None)(
        olga.get(f"/operator/api/runs/{run_id}").json()), timeout=60, what="the run")
    assert run["run"]["status"] == "done", run["run"]
    ran = next(c for c in run["cases"] if c["key"] == f"case:{case_id}")
    assert ran["case"]["source_message_id"] == user["id"]
    for arm in ("draft", "live"):
        assert ran[arm]["error"] is None and ran[arm]["model_called"] is True
        assert ran[arm]["outcome"] == "answer" and ran[arm]["passed"] is False  # it expected a hand-over
        assert ran[arm]["screenshots"], "the run did not get the case's screenshot"


# With OCR on: the corpus card statement, read once for this file ------------------------------
def test_a_screenshot_case_keeps_the_stored_redacted_copy_not_the_upload(tmp_path):
    from bench import screenshot_corpus as corpus

    buffer = io.BytesIO()
    corpus.sample("card_statement_en_desktop").image.save(buffer, "PNG")
    upload = buffer.getvalue()
    # A busy machine must not turn the reading into "not checked": give it all the time it needs.
    with live_server(tmp_path, engine=StubEngine(reply="That is your StreamPlus renewal of $88.00."), users=USERS,
                     ocr=True, ocr_timeout_s=240) as (base, app):
        user, reply = widget_turn(base, "Why was I charged?", upload, timeout=300)
        store = app.state.runtime.store
        (attachment,) = store.attachments(json.loads(store.message(user["id"])["attachment_ids"])).values()
        assert "card" in {r["kind"] for r in attachment.reading["redactions"]}

        olga = signed_in(base, "olga")
        added = add_case(olga, user["id"], must_not_contain=[corpus.VISA_1881])
        assert added.status_code == 200, added.text  # checked by OCR: no override needed
        answered_by = store.message(reply["id"])["template_name"]
        assert added.json()["template"] == answered_by

        kept = olga.get(f"/operator/api/cases/{added.json()['case_id']}/screenshots/1").content
        assert kept == stored_screenshot(base, app, user["id"]) == attachment.path.read_bytes()
        assert kept != upload
