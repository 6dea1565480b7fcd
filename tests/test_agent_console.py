"""The agent console API over real HTTP: roles, CSRF, queue, claim, replies, notes, search.

Operators read the console (to make regression cases of real turns) and change nothing in it."""

from __future__ import annotations

import io
import json
import re
import threading
import time

import httpx
import pytest
from PIL import Image

from engine.stub import StubEngine
from tests.live_server import PASSWORD, live_server

ROLES = ("agent", "operator", "admin")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("agents"), engine=StubEngine(), login_rate_per_ip=1000,
                     widget_rate_per_ip=10_000, widget_rate_per_visitor=1000,
                     users={**{role: role for role in ROLES}, "mei": "agent"}) as (base, app):
        yield base, app


def signed_in(base: str, name: str) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=False)
    form = client.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    response = client.post("/login", data={"name": name, "password": PASSWORD, "csrf_token": csrf})
    assert response.status_code == 303, response.text
    client.headers["X-CSRF-Token"] = client.get("/console/api/me").json()["csrf_token"]
    return client


def assert_admits_exactly(base: str, method: str, url: str, allowed: set[str], **request) -> None:
    """Anonymous callers get 401; of the signed-in roles exactly `allowed` get 200, the others 403."""
    assert httpx.request(method, base + url, **request).status_code == 401
    for role in ROLES:
        status = signed_in(base, role).request(method, url, **request).status_code
        assert status == (200 if role in allowed else 403), (role, status)


def assert_page_signs_in_and_refuses(base: str, page: str, refused_role: str) -> None:
    anonymous = httpx.get(f"{base}{page}", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"] == f"/login?next={page}"
    assert signed_in(base, refused_role).get(page).status_code == 403


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (400, 300), "red").save(buffer, "PNG")
    return buffer.getvalue()


def visitor_hands_over(base: str, text: str = "I want to talk to a human", image: bool = True) -> dict:
    token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    files = [("images", ("bill.png", png(), "image/png"))] if image else None
    response = httpx.post(f"{base}/widget/api/messages", headers=headers,
                          data={"client_message_id": f"c{time.monotonic_ns()}", "text": text}, files=files)
    assert response.status_code == 202
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conversation = httpx.get(f"{base}/widget/api/conversation", headers=headers).json()
        if conversation["status"] == "waiting":
            return headers
        time.sleep(0.05)
    raise AssertionError("no hand-over")


def queue_item(client: httpx.Client, **filters) -> dict:
    return client.get("/agent/api/queue", params=filters).json()["conversations"][-1]


AGENT_ROUTES = [
    ("GET", "/agent/api/queue"),
    ("GET", "/agent/api/conversations/{id}"),
    ("POST", "/agent/api/conversations/{id}/note"),
    ("GET", "/agent/api/search?q=human"),
]
WRITES = ("claim", "reply", "note", "resolve", "hand-back", "transfer")


@pytest.mark.parametrize("method, path", AGENT_ROUTES)
def test_agents_and_admins_use_the_agent_routes_and_operators_only_read(server, method, path):
    base, _ = server
    visitor_hands_over(base, image=False)
    agent = signed_in(base, "agent")
    conversation_id = queue_item(agent)["id"]
    url = path.format(id=conversation_id)
    body = {"json": {"text": "checking"}} if method == "POST" else {}
    assert_admits_exactly(base, method, url, {"agent", "admin"} | ({"operator"} if method == "GET" else set()), **body)


def test_agent_page_redirects_to_sign_in_and_opens_for_every_role(server):
    base, _ = server
    anonymous = httpx.get(f"{base}/agent", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/login?next=/agent"
    for role in ROLES:
        page = signed_in(base, role).get("/agent")
        assert page.status_code == 200 and 'data-testid="read-only"' in page.text, role


def test_an_operator_reads_a_conversation_and_changes_nothing(server):
    base, app = server
    visitor_hands_over(base, "A human please, about this bill")
    olga = signed_in(base, "operator")
    item = queue_item(olga)
    conversation_id = item["id"]
    thread = olga.get(f"/agent/api/conversations/{conversation_id}").json()
    assert thread["status"] == "waiting" and thread["escalation"]["reason"] == "user_request"
    assert olga.get(item["thumbnail"]).status_code == 200
    assert olga.get("/agent/api/search", params={"q": "bill"}).json()["results"]
    for verb in WRITES:
        body = {"agent": "mei"} if verb == "transfer" else {"text": "from an operator"}
        refused = olga.post(f"/agent/api/conversations/{conversation_id}/{verb}", json=body)
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden", verb
    after = olga.get(f"/agent/api/conversations/{conversation_id}").json()
    assert after["status"] == "waiting" and after["assigned_agent"] is None and after["messages"] == thread["messages"]

    # An operator is never an agent: not offered for transfers, and nobody can give them a conversation.
    agents = {a["name"] for a in olga.get("/agent/api/agents").json()["agents"]}
    assert "operator" not in agents and {"agent", "mei", "admin"} <= agents
    given = signed_in(base, "admin").post(f"/agent/api/conversations/{conversation_id}/transfer",
                                          json={"agent": "operator"})
    assert given.status_code == 400 and given.json()["error"] == "no_such_agent"
    assert app.state.runtime.store.conversation(conversation_id)["assigned_agent"] is None


def test_changes_need_the_csrf_token(server):
    base, _ = server
    visitor_hands_over(base, image=False)
    agent = signed_in(base, "agent")
    conversation_id = queue_item(agent)["id"]
    for token in (None, "wrong"):
        headers = {"X-CSRF-Token": token} if token else {}
        client = httpx.Client(base_url=base, cookies=agent.cookies)
        response = client.post(f"/agent/api/conversations/{conversation_id}/claim", headers=headers)
        assert response.status_code == 403 and response.json()["error"] == "csrf"


def test_a_hand_over_appears_in_the_queue_with_its_reason_and_screenshot(server):
    base, _ = server
    agent = signed_in(base, "agent")
    visitor_hands_over(base, "Can I talk to a human about my bill?")
    item = queue_item(agent)
    assert item["status"] == "waiting" and item["reason"] == "user_request" and item["channel"] == "widget"
    assert item["preview"] == "Can I talk to a human about my bill?"
    thumbnail = agent.get(item["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/png"
    assert agent.get("/agent/api/queue", params={"reason": "low_confidence"}).json()["conversations"] == [] or all(
        c["reason"] == "low_confidence" for c in agent.get("/agent/api/queue", params={"reason": "low_confidence"}).json()["conversations"])
    assert all(c["channel"] == "slack" for c in agent.get("/agent/api/queue", params={"channel": "slack"}).json()["conversations"])


def test_claim_reply_note_resolve_round_trip(server):
    base, _ = server
    visitor = visitor_hands_over(base, "human please, my card was charged twice <script>alert(1)</script>")
    mei, other = signed_in(base, "mei"), signed_in(base, "agent")
    conversation_id = queue_item(mei)["id"]
    assert mei.post(f"/agent/api/conversations/{conversation_id}/claim").status_code == 200
    taken = other.post(f"/agent/api/conversations/{conversation_id}/claim")
    assert taken.status_code == 409 and taken.json()["error"] == "claimed"
    thread = mei.get(f"/agent/api/conversations/{conversation_id}").json()
    assert thread["status"] == "claimed" and thread["assigned_agent"] == "mei"
    assert thread["escalation"]["reason"] == "user_request"
    assert "<script>alert(1)</script>" in thread["messages"][0]["text"]  # stored and returned as text
    assert mei.post(f"/agent/api/conversations/{conversation_id}/note", json={"text": "refund case"}).status_code == 200
    reply = mei.post(f"/agent/api/conversations/{conversation_id}/reply", json={"text": "Hi, I'm Mei. Checking now."})
    assert reply.status_code == 200
    seen = httpx.get(f"{base}/widget/api/conversation", headers=visitor).json()
    assert seen["status"] == "claimed" and seen["agent"] == "mei"
    assert seen["messages"][-1]["role"] == "agent" and seen["messages"][-1]["text"] == "Hi, I'm Mei. Checking now."
    assert all(m["text"] != "refund case" for m in seen["messages"]), "notes are for agents only"
    assert mei.post(f"/agent/api/conversations/{conversation_id}/resolve").status_code == 200
    assert mei.get(f"/agent/api/conversations/{conversation_id}").json()["status"] == "resolved"
    assert all(c["id"] != conversation_id for c in mei.get("/agent/api/queue").json()["conversations"])


def test_hand_back_returns_the_thread_to_the_bot(server):
    base, _ = server
    visitor = visitor_hands_over(base, "human please")
    agent = signed_in(base, "agent")
    conversation_id = queue_item(agent)["id"]
    assert agent.post(f"/agent/api/conversations/{conversation_id}/hand-back").status_code == 200
    httpx.post(f"{base}/widget/api/messages", headers=visitor, data={"client_message_id": "after-handback", "text": "Why was I charged?"})
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kinds = [m["kind"] for m in httpx.get(f"{base}/widget/api/conversation", headers=visitor).json()["messages"]]
        if kinds[-1] == "answer":
            break
        time.sleep(0.05)
    assert kinds[-1] == "answer"


def test_search_finds_past_conversations_in_english_and_chinese(server):
    base, _ = server
    visitor_hands_over(base, "I need a human, the parcel tracking page is empty", image=False)
    visitor_hands_over(base, "我要转人工，包裹一直没到", image=False)
    agent = signed_in(base, "agent")
    english = agent.get("/agent/api/search", params={"q": "parcel tracking"}).json()["results"]
    assert english and "parcel tracking" in english[0]["snippet"]
    chinese = agent.get("/agent/api/search", params={"q": "包裹"}).json()["results"]
    assert chinese and "包裹" in chinese[0]["snippet"]
    assert agent.get("/agent/api/search", params={"q": '" OR 1=1 --'}).status_code == 200


@pytest.mark.parametrize("role", ["agent", "operator"])
def test_the_event_stream_announces_new_hand_overs(server, role):
    base, _ = server
    agent = signed_in(base, role)
    updates: list[dict] = []

    def listen():
        with agent.stream("GET", "/agent/api/events", timeout=10) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    updates.append(json.loads(line[6:]))
                    if updates[-1]["type"] == "handover":
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(0.3)
    visitor_hands_over(base, "agent please", image=False)
    listener.join(timeout=10)
    assert any(u["type"] == "handover" for u in updates)
