""""Try it" streamed over real HTTP and in Chromium: its stages in order, the reply as it is written,
then the same answer as the JSON route; the JSON route's errors as error events; and a closed
stream (or Stop in the console) cancels the generation and gives its place in the queue back."""

from __future__ import annotations

import io
import time

import httpx
import pytest

from bench.screenshot_corpus import sample
from engine.base import EngineTimeout
from tests.browser import chromium, needs_chromium, sign_in, wait_for_editor
from tests.held_engine import HeldEngine
from tests.live_server import PASSWORD, live_server, sse_events, wait_for
from tests.test_agent_console import ROLES, signed_in

ENGINE = HeldEngine()
EVENTS = {"Accept": "text/event-stream"}
REPLY = "Your membership renewed automatically for 88."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ENGINE.auto()  # the server is ready once the model answered its warm-up
    with live_server(tmp_path_factory.mktemp("try-stream"), engine=ENGINE, login_rate_per_ip=1000,
                     widget_rate_per_ip=10_000, users={role: role for role in ROLES}, ocr=True) as (base, app):
        yield base, app


@pytest.fixture
def operator(server):
    client = signed_in(server[0], "operator")
    client.draft = client.get("/operator/api/templates/billing").json()["yaml"]
    ENGINE.hold()
    yield client
    ENGINE.hold()
    for held in ENGINE.pending():
        held.fail()


def dialog_png() -> bytes:
    buffer = io.BytesIO()
    sample("payment_failed_en_desktop").image.crop((440, 320, 1000, 600)).save(buffer, "PNG")  # small: read fast
    return buffer.getvalue()


def streamed(client: httpx.Client, data: dict, files=None, until: str | None = None) -> list[tuple[str, dict]]:
    """The events of one streamed "try it", all of them or up to the first `until` (then it hangs up)."""
    events = []
    with client.stream("POST", "/operator/api/try", data=data, files=files, headers=EVENTS, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        for event in sse_events(response.iter_lines()):
            events.append(event)
            if event[0] == until:
                break
    return events


def test_the_stages_stream_in_order_then_the_json_routes_answer(server, operator):
    ENGINE.auto(REPLY, confidence=0.83)
    question = {"yaml": operator.draft.replace("Acme", "Globex"), "text": "Why did my payment fail?"}
    events = streamed(operator, question, files=[("images", ("dialog.png", dialog_png(), "image/png"))])
    names = [name for name, _ in events]
    assert names[:5] == ["draft", "screenshot", "screenshots", "queued", "generating"], names
    assert set(names[5:-1]) == {"text"} and names[-1] == "result", names
    assert events[0][1] == {"language": "en"} and events[1][1] == {"number": 1, "of": 1}
    assert events[2][1]["count"] == 1 and events[2][1]["unreadable"] == 0
    assert "CARD_DECLINED" in str(events[2][1]["read"])  # what the screenshot reading found
    assert "".join(data["delta"] for name, data in events if name == "text") == REPLY
    result = events[-1][1]
    assert result["reply"] == REPLY and result["decision"] == {"handover": False, "reason": None,
                                                               "detail": result["decision"]["detail"]}
    assert "Globex" in ENGINE.requests[-1].request.messages[0].parts[0].text  # the unsaved draft
    assert result["first_token_ms"] is not None and result["latency_ms"] >= result["first_token_ms"]

    plain = operator.post("/operator/api/try", data=question,
                          files=[("images", ("dialog.png", dialog_png(), "image/png"))], timeout=60).json()
    for key in ("reply", "decision", "confidence", "min_token_prob", "prompt_tokens", "completion_tokens", "screenshots"):
        assert plain[key] == result[key], key
    assert set(plain) == set(result)


def test_a_closed_stream_cancels_the_generation_and_gives_its_place_back(server, operator):
    base, app = server
    share = app.state.server.api_share
    before, asked = share.active, len(ENGINE.requests)
    events = streamed(operator, {"yaml": operator.draft, "text": "Why was I charged twice?"}, until="generating")
    assert [name for name, _ in events] == ["draft", "queued", "generating"]
    held = wait_for(lambda: ENGINE.requests[asked:] and ENGINE.requests[asked], what="the engine request")
    wait_for(lambda: held.cancelled, what="the generation to be cancelled when the stream closed")
    wait_for(lambda: share.active == before, what="the place in the queue to be given back")
    assert not held.done and ENGINE.pending() == []


def test_a_stream_closed_while_waiting_for_a_place_leaves_nothing_behind(server, operator, monkeypatch):
    base, app = server
    share = app.state.server.api_share
    monkeypatch.setattr("bot.web.operator_console.PLACE_WAIT_S", 30.0)
    asked, taken = len(ENGINE.requests), share.active
    share.active = share.limit  # as if API clients held every place
    try:
        events = streamed(operator, {"yaml": operator.draft, "text": "Why was I charged?"}, until="queued")
        assert [name for name, _ in events] == ["draft", "queued"]
    finally:
        share.active = taken
    ENGINE.auto()  # a turn still waiting would now get a place and reach the engine
    time.sleep(0.5)  # many place polls (PLACE_POLL_S) for a turn that went on waiting
    assert len(ENGINE.requests) == asked and share.active == taken


def test_the_json_routes_errors_arrive_as_error_events(server, operator, monkeypatch):
    base, app = server
    share = app.state.server.api_share
    cases = {
        "invalid draft": ({"yaml": "name: [", "text": "hi"}, None),
        "empty question": ({"yaml": operator.draft, "text": "  "}, None),
        "not an image": ({"yaml": operator.draft, "text": "hi"}, [("images", ("notes.png", b"not a picture", "image/png"))]),
    }
    for what, (data, files) in cases.items():
        plain = operator.post("/operator/api/try", data=data, files=files)
        events = streamed(operator, data, files)
        assert events[-1] == ("error", {"status": plain.status_code, **plain.json()}), what
        assert plain.status_code in (400, 422) and "message" in plain.json(), what
    assert "notes.png" in events[-1][1]["message"]

    monkeypatch.setattr("bot.web.operator_console.PLACE_WAIT_S", 0.2)
    taken = share.active
    share.active = share.limit
    try:
        plain = operator.post("/operator/api/try", data={"yaml": operator.draft, "text": "Why was I charged?"})
        events = streamed(operator, {"yaml": operator.draft, "text": "Why was I charged?"})
    finally:
        share.active = taken
    assert plain.status_code == 429 and "kept for customers" in plain.json()["message"]
    assert [name for name, _ in events] == ["draft", "queued", "error"]
    assert events[-1][1] == {"status": 429, "retry_after": 1, **plain.json()}


def test_an_engine_failure_is_decided_as_a_hand_over_in_the_result(server, operator):
    asked = len(ENGINE.requests)
    events = []
    with operator.stream("POST", "/operator/api/try", data={"yaml": operator.draft, "text": "Why was I charged?"},
                         headers=EVENTS, timeout=60) as response:
        for event in sse_events(response.iter_lines()):
            events.append(event)
            if event[0] == "generating":
                held = wait_for(lambda: ENGINE.requests[asked:] and ENGINE.requests[asked], what="the engine request")
                held.fail(EngineTimeout("generation took longer than 60 s"))
    assert events[-1][0] == "result"
    result = events[-1][1]
    assert result["decision"]["handover"] is True and result["decision"]["reason"] == "engine_error"
    assert "EngineTimeout" in result["error"]


@needs_chromium
def test_the_try_it_panel_shows_the_stages_and_the_text_then_the_result(server):
    base, app = server
    share = app.state.server.api_share
    ENGINE.hold()
    with chromium() as browser:
        page = sign_in(browser, base, "operator", PASSWORD, "/operator")
        problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.click("[data-testid=template-item][data-name=billing] [data-testid=edit-template]")
        wait_for_editor(page, "name: billing")
        page.fill("[data-testid=try-text]", "Why was I charged?")
        asked = len(ENGINE.requests)
        page.click("[data-testid=try-run]")
        page.wait_for_selector("[data-testid=try-stage][data-stage=generating][data-state=active]", timeout=10_000)
        stages = page.locator("[data-testid=try-stage]")
        assert stages.evaluate_all("items => items.map(i => [i.dataset.stage, i.dataset.state])") == [
            ["draft", "done"], ["queued", "done"], ["generating", "active"]]
        assert page.is_visible("[data-testid=try-stop]") and page.is_disabled("[data-testid=try-run]")
        held = wait_for(lambda: ENGINE.requests[asked:] and ENGINE.requests[asked], what="the engine request")
        held.stream.push_delta("Your membership")
        page.wait_for_function("() => document.querySelector('[data-testid=try-draft]').textContent === 'Your membership'")
        assert page.is_visible("text=Draft · not decided yet") and page.is_hidden("#try-output")
        held.release(REPLY)
        page.wait_for_selector("[data-testid=try-reply]", timeout=10_000)
        assert page.inner_text("[data-testid=try-reply]") == REPLY
        assert page.get_attribute("[data-testid=try-decision]", "data-handover") == "false"
        assert page.is_hidden("[data-testid=try-live]") and page.is_hidden("[data-testid=try-stop]")
        assert page.inner_text("#try-status") == "Done"

        # Stop closes the stream: the server cancels the generation and frees its place.
        before = share.active
        page.click("[data-testid=try-run]")
        page.wait_for_selector("[data-testid=try-stage][data-stage=generating][data-state=active]", timeout=10_000)
        held = wait_for(lambda: ENGINE.pending() and ENGINE.pending()[0], what="the second engine request")
        page.click("[data-testid=try-stop]")
        wait_for(lambda: held.cancelled, what="the generation to be cancelled")
        wait_for(lambda: share.active == before, what="the place to be given back")
        page.wait_for_selector("#try-status:text-is('Stopped')")
        assert page.is_enabled("[data-testid=try-run]") and page.is_hidden("[data-testid=try-live]")
        assert not problems, problems
