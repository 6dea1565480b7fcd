"""The hand-over promises through the real server: widget and console over HTTP, with an
engine the test holds and releases so that people act while the bot is still thinking."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bot.accounts import Accounts
from bot.conversation import ConversationManager
from bot.messages import Inbound, Outbound, utcnow
from bot.store import Store
from engine.base import ImagePart
from tests.held_engine import HeldEngine
from tests.live_server import live_server, sse_events, wait_for
from tests.test_agent_console import PASSWORD, signed_in
from tests.test_conversation import make

CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("handover-http")
    accounts = Accounts(Store(data))
    accounts.add_user("mei", "agent", PASSWORD, display_name="Mei Lin")
    accounts.add_user("tom", "agent", PASSWORD)
    accounts.add_user("boss", "admin", PASSWORD)
    engine = HeldEngine()
    engine.auto("Your renewal of 88 was automatic; turn it off under Settings > Membership.", 0.95)
    with live_server(data, engine=engine, login_rate_per_ip=1000, widget_rate_per_ip=10_000,
                     widget_rate_per_visitor=1000) as (base, app):
        yield base, engine, data


@pytest.fixture()
def held(served):
    """The engine holds every new request during the test (and answers at once again after)."""
    _, engine, _ = served
    engine.hold()
    yield engine
    for handle in engine.pending():
        handle.release("Late answer.", 0.95)
    engine.auto("Your renewal of 88 was automatic; turn it off under Settings > Membership.", 0.95)


class Visitor:
    """One widget visitor: its token, its messages and what its event stream received."""

    def __init__(self, base: str) -> None:
        self.base = base
        token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
        self.headers = {"Authorization": f"Bearer {token}"}
        self.events: list[tuple[str, dict]] = []
        self._listening = threading.Event()
        threading.Thread(target=self._listen, args=(token,), daemon=True).start()
        self._listening.wait(5)
        time.sleep(0.1)

    def _listen(self, token: str) -> None:
        try:
            with httpx.stream("GET", f"{self.base}/widget/api/events", params={"token": token}, timeout=60) as stream:
                self._listening.set()
                for event, data in sse_events(stream.iter_lines()):
                    self.events.append((event, data))
        except httpx.HTTPError:  # the server stopped at the end of the module
            return

    def send(self, text: str, images: tuple[bytes, ...] = ()) -> int:
        files = [("images", (f"shot{i}.png", data, "image/png")) for i, data in enumerate(images)] or None
        response = httpx.post(f"{self.base}/widget/api/messages", headers=self.headers, files=files,
                              data={"client_message_id": f"c{time.monotonic_ns()}", "text": text})
        assert response.status_code == 202, response.text
        return response.json()["message_id"]

    def conversation(self) -> dict:
        return httpx.get(f"{self.base}/widget/api/conversation", headers=self.headers).json()

    def messages(self, kind: str | None = None) -> list[dict]:
        return [d for e, d in self.events if e == "message" and (kind is None or d["kind"] == kind)]

    def wait_message(self, kind: str, count: int = 1, **match) -> list[dict]:
        def found():
            hits = [m for m in self.messages(kind) if all(m.get(k) == v for k, v in match.items())]
            return hits if len(hits) >= count else None
        return wait_for(found, what=f"{count} {kind} message(s) {match or ''}")


def png(colour: str, size=(320, 240)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def request_for(engine: HeldEngine, marker: str):
    return wait_for(lambda: next((h for h in engine.requests if marker in h.text), None),
                    what=f"the engine request for {marker!r}")


def handed_over(base: str, data: Path, text: str = "human please") -> tuple[Visitor, int]:
    """A new visitor whose first message asks for a person: (visitor, conversation id)."""
    visitor = Visitor(base)
    cid = conversation_id(data, visitor.send(text))
    visitor.wait_message("handover")
    return visitor, cid


def conversation_id(data: Path, message_id: int) -> int:
    return Store(data).message(message_id)["conversation_id"]


def escalations(data: Path, cid: int) -> list[dict]:
    return Store(data).escalations(cid)


# 1. The bot never talks over the agent -----------------------------------------------------
def test_an_agent_who_replies_during_generation_is_never_followed_by_the_bot(served, held):
    base, engine, data = served
    visitor = Visitor(base)
    asked = visitor.send("TALKOVER why was I charged 88?")
    handle = request_for(engine, "TALKOVER")
    cid = conversation_id(data, asked)
    mei = signed_in(base, "mei")
    assert mei.post(f"/agent/api/conversations/{cid}/reply", json={"text": "Hi, Mei here."}).status_code == 200
    handle.release("The 88 was your automatic renewal.", 0.95)
    thread = wait_for(lambda: (t := mei.get(f"/agent/api/conversations/{cid}").json())
                      and any(m["role"] == "draft" for m in t["messages"]) and t, what="the bot's draft")
    draft = next(m for m in thread["messages"] if m["role"] == "draft")
    assert draft["text"] == "The 88 was your automatic renewal." and draft["reply_to"] == asked
    assert thread["status"] == "claimed" and thread["assigned_agent"] == "mei"
    time.sleep(0.3)
    assert not visitor.messages("answer"), "the user received the bot's answer after the agent's reply"
    kinds = [m["kind"] for m in visitor.conversation()["messages"]]
    assert kinds == ["user", "status", "agent"]  # the draft never reaches the visitor, even on reload


def test_a_claim_during_generation_keeps_the_claim_and_one_escalation(served, held):
    base, engine, data = served
    visitor = Visitor(base)
    asked = visitor.send("CLAIMDURING my router light is solid red")
    handle = request_for(engine, "CLAIMDURING")
    cid = conversation_id(data, asked)
    assert httpx.post(f"{base}/widget/api/handover", headers=visitor.headers).status_code == 200
    visitor.wait_message("handover")
    mei = signed_in(base, "mei")
    assert mei.post(f"/agent/api/conversations/{cid}/claim").status_code == 200
    handle.release("Maybe restart it?", 0.2)  # low confidence: would have handed over again
    wait_for(lambda: Store(data).message(asked)["status"] == "for_agent", what="the turn to end as the agent's")
    thread = mei.get(f"/agent/api/conversations/{cid}").json()
    assert thread["status"] == "claimed" and thread["assigned_agent"] == "mei"
    assert len(escalations(data, cid)) == 1
    assert len(visitor.messages("handover")) == 1
    again = httpx.post(f"{base}/widget/api/handover", headers=visitor.headers)
    assert again.status_code == 409 and again.json()["error"] == "already_with_person"


# 2. Decide before showing ------------------------------------------------------------------
def test_a_request_for_a_person_goes_out_at_once_without_the_model(served, held):
    base, engine, _ = served
    visitor = Visitor(base)
    before = len(engine.requests)
    visitor.send("NOMODEL I want to talk to a human please")
    [notice] = visitor.wait_message("handover")
    assert "person" in notice["text"] or "support" in notice["text"]
    assert len(engine.requests) == before, "a request for a person waited for the model"
    assert visitor.conversation()["status"] == "waiting"


def test_a_low_confidence_answer_is_never_shown_before_the_hand_over(served, held):
    base, engine, _ = served
    visitor = Visitor(base)
    asked = visitor.send("UNSURE what does the blinking light mean?")
    handle = request_for(engine, "UNSURE")
    wait_for(lambda: any(e == "typing" and d["reply_to"] == asked for e, d in visitor.events), what="typing")
    assert visitor.conversation()["working"] is True
    handle.release("It might mean the line is down.", 0.2)
    visitor.wait_message("handover")
    time.sleep(0.2)
    assert not [e for e, _ in visitor.events if e == "delta"], "text was shown that the hand-over withdrew"
    assert not visitor.messages("answer")
    assert "might mean" not in json.dumps(visitor.conversation())


def test_a_refused_screenshot_is_explained_at_once(served, held):
    base, engine, _ = served
    visitor = Visitor(base)
    visitor.send("REFUSED here is my bill", images=(b"not an image at all",))
    [notice] = visitor.wait_message("notice")
    handle = request_for(engine, "REFUSED")
    assert not handle.done, "the notice waited for the answer"
    handle.release("I could not read that file; please send a screenshot.", 0.95)
    visitor.wait_message("answer")


# 3. Every screenshot reaches the model -------------------------------------------------------
def test_four_screenshots_sent_together_all_reach_the_model(served, held):
    base, engine, _ = served
    visitor = Visitor(base)
    visitor.send("FOURSHOTS compare these", images=tuple(png(c) for c in ("red", "green", "blue", "yellow")))
    handle = request_for(engine, "FOURSHOTS")
    images = [p.image.getpixel((5, 5)) for m in handle.request.messages for p in m.parts if isinstance(p, ImagePart)]
    assert images == [(255, 0, 0), (0, 128, 0), (0, 0, 255), (255, 255, 0)]
    handle.release("Four screens.", 0.95)


# 6. Card numbers -------------------------------------------------------------------------------
def test_a_card_number_in_the_bots_draft_is_masked(served, held):
    base, engine, data = served
    visitor = Visitor(base)
    asked = visitor.send("CARDDRAFT why did my payment fail?")
    request_for(engine, "CARDDRAFT").release(f"Your card {CARD} expired.", 0.2)
    visitor.wait_message("handover")
    mei = signed_in(base, "mei")
    thread = mei.get(f"/agent/api/conversations/{conversation_id(data, asked)}").json()
    assert thread["escalation"]["draft_answer"] == "Your card •••• 1111 expired."
    assert CARD not in json.dumps(thread) and CARD.replace(" ", "") not in json.dumps(thread)


# 7. An earlier answer is needed for "it did not help" ----------------------------------------
def test_a_first_message_about_a_failed_fix_is_answered(served):
    base, _, _ = served
    visitor = Visitor(base)
    visitor.send("I restarted the router but it is still not working")
    [answer] = visitor.wait_message("answer")
    assert answer["text"].startswith("Your renewal")
    visitor.send("That did not help, it is still not working")
    visitor.wait_message("handover")
    assert visitor.conversation()["status"] == "waiting"


# 8. What people see around a hand-over --------------------------------------------------------
def test_hand_back_tells_the_user_and_answers_the_waiting_question(served):
    base, _, data = served
    visitor, cid = handed_over(base, data)
    mei = signed_in(base, "mei")
    assert mei.post(f"/agent/api/conversations/{cid}/claim").status_code == 200
    [joined] = visitor.wait_message("status", status="claimed")
    assert joined["text"] == "Mei Lin from our support team has joined the conversation."
    mei.post(f"/agent/api/conversations/{cid}/reply", json={"text": "How can I help?"})
    [reply] = visitor.wait_message("agent")
    assert reply["author"] == "Mei Lin", "users see the display name, never the login"
    waiting = visitor.send("Where is my parcel?")
    time.sleep(0.2)
    assert not visitor.messages("answer")
    assert mei.post(f"/agent/api/conversations/{cid}/hand-back").status_code == 200
    [back] = visitor.wait_message("status", status="bot")
    assert "back with the assistant" in back["text"]
    [answer] = visitor.wait_message("answer", reply_to=waiting)
    kinds = [m["kind"] for m in visitor.conversation()["messages"]]
    assert kinds[-3:] == ["user", "status", "answer"]
    assert visitor.conversation()["status"] == "bot"


def test_resolve_then_feedback_then_a_new_message_returns_to_the_bot(served):
    base, _, data = served
    visitor, cid = handed_over(base, data, "agent please")
    mei = signed_in(base, "mei")
    mei.post(f"/agent/api/conversations/{cid}/reply", json={"text": "Fixed it for you."})
    assert mei.post(f"/agent/api/conversations/{cid}/resolve").status_code == 200
    [resolved] = visitor.wait_message("status", status="resolved")
    assert "resolved" in resolved["text"]
    assert visitor.conversation()["feedback_requested"] is True
    feedback = httpx.post(f"{base}/widget/api/feedback", headers=visitor.headers,
                          json={"helpful": False, "comment": "Took too long"})
    assert feedback.status_code == 200
    assert httpx.post(f"{base}/widget/api/feedback", headers=visitor.headers,
                      json={"helpful": True}).status_code == 409, "rated twice"
    assert visitor.conversation()["feedback_requested"] is False
    visitor.send("One more question about my bill")
    visitor.wait_message("answer")
    wait_for(lambda: any(e == "status" and d["status"] == "bot" for e, d in visitor.events), what="header back to bot")
    assert visitor.conversation()["status"] == "bot"


def test_only_the_holder_or_an_admin_changes_a_claimed_conversation(served):
    base, _, data = served
    visitor, cid = handed_over(base, data)
    mei, tom, boss = signed_in(base, "mei"), signed_in(base, "tom"), signed_in(base, "boss")
    assert mei.post(f"/agent/api/conversations/{cid}/claim").status_code == 200
    for action, body in (("reply", {"text": "me too"}), ("note", {"text": "n"}), ("resolve", None),
                         ("hand-back", None), ("transfer", {"agent": "tom"})):
        refused = tom.post(f"/agent/api/conversations/{cid}/{action}", json=body)
        assert refused.status_code == 409 and refused.json()["error"] == "not_owner", action
        assert "Mei Lin has this conversation" in refused.json()["message"]
    assert boss.post(f"/agent/api/conversations/{cid}/note", json={"text": "admin note"}).status_code == 200
    assert mei.post(f"/agent/api/conversations/{cid}/transfer", json={"agent": "tom"}).status_code == 200
    [joined] = visitor.wait_message("status", count=2, status="claimed")[1:]
    assert joined["text"].startswith("tom from our support team")
    assert tom.post(f"/agent/api/conversations/{cid}/reply", json={"text": "Tom here."}).status_code == 200
    assert mei.post(f"/agent/api/conversations/{cid}/reply", json={"text": "x"}).status_code == 409
    assert tom.post(f"/agent/api/conversations/{cid}/transfer", json={"agent": "nobody"}).status_code == 400
    agents = {a["name"]: a["display_name"] for a in tom.get("/agent/api/agents").json()["agents"]}
    assert agents["mei"] == "Mei Lin" and "boss" in agents


def test_each_bot_turn_shows_its_figures_to_agents(served):
    base, _, data = served
    visitor = Visitor(base)
    asked = visitor.send("FIGURES why was I charged?", images=(png("white", (640, 480)),))
    visitor.wait_message("answer")
    thread = signed_in(base, "mei").get(f"/agent/api/conversations/{conversation_id(data, asked)}").json()
    answer = next(m for m in thread["messages"] if m["kind"] == "answer")
    assert answer["confidence"] == pytest.approx(0.95, abs=0.01)
    assert answer["image_tokens"] > 0 and answer["prompt_tokens"] > answer["image_tokens"]
    assert answer["completion_tokens"] > 0 and answer["latency_ms"] is not None


# 4. Recovery never stops at a bad message -------------------------------------------------------
def test_recovery_and_the_periodic_round_go_past_a_message_that_keeps_failing(tmp_path):
    store = Store(tmp_path)
    ids = []
    for n in range(3):  # stored and acknowledged, then the process died before answering
        row, _ = store.add_inbound(channel="widget", external_key=f"crashed-{n}", platform_message_id=f"crashed-{n}:1",
                                   user_id=f"crashed-{n}", user_name="", text=f"Question {n}", attachment_ids=[],
                                   refused_images=[], received_at=utcnow(), language="en")
        ids.append(row["id"])
    with store.transaction():  # the first one cannot be answered: its stored row is broken
        store.db.execute("update messages set refused_images = '{broken' where id = ?", [ids[0]])
    store.close()
    engine = HeldEngine()
    engine.auto("Answer.", 0.95)
    with live_server(tmp_path, engine=engine, retry_interval_s=0.5):
        check = Store(tmp_path)
        wait_for(lambda: all(check.message(i)["status"] == "answered" for i in ids[1:]), timeout=30,
                 what="the other messages to be answered")
        assert check.message(ids[0])["status"] == "pending"
        with check.transaction():  # repaired: the periodic round (running despite the failure) answers it
            check.db.execute("update messages set refused_images = '[]' where id = ?", [ids[0]])
        wait_for(lambda: check.message(ids[0])["status"] == "answered", timeout=30, what="the periodic round")


# 5. A reply is delivered at most once ------------------------------------------------------------
async def test_a_reply_being_sent_is_not_sent_again_by_redelivery_rounds(tmp_path):
    class SlowChannel:
        name = "widget"

        def __init__(self) -> None:
            self.sent: list[int] = []

        async def send(self, conversation, outbound: Outbound) -> None:
            self.sent.append(outbound.message_id)
            await asyncio.sleep(0.2)  # a platform that takes its time

    engine = HeldEngine()
    engine.auto("Answer.", 0.95)
    manager, channel, _ = make(tmp_path, engine, channel=SlowChannel())
    store = manager.store
    try:
        accepted = await manager.accept(Inbound("widget", "v1", "m1", "v1", text="agent please"))
        await manager.process(accepted.message_id, accepted.conversation_id)
        reply = asyncio.create_task(manager.agent_reply(accepted.conversation_id, "mei", "Hello"))
        rounds = [asyncio.create_task(manager.redeliver()) for _ in range(5)]
        await asyncio.sleep(0.05)
        rounds += [asyncio.create_task(manager.redeliver()) for _ in range(5)]
        await asyncio.gather(reply, *rounds)
        assert len(channel.sent) == len(set(channel.sent)), "a reply was sent twice"
        assert await manager.redeliver() == 0
        # A new manager (a restart) sends what the old one never finished, once.
        with store.transaction():
            store.db.execute("update messages set delivered = 0, delivering_by = 'gone' where kind = 'agent'")
        second = ConversationManager(store, engine, manager.templates, manager.policy, manager.channels)
        await asyncio.gather(second.recover(), second.redeliver(), second.redeliver())
        assert channel.sent.count(reply.result()) == 2  # the original send, and the one after the restart
        second.close()
    finally:
        manager.close()
        store.close()
