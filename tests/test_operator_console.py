"""The operator console API over real HTTP: roles, validation, try it, versions, stats, and the
engine's queue kept for customers while "try it" and regression runs use it."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from bot.accounts import Accounts
from bot.store import Store
from engine.base import ImagePart
from engine.loading import LoadOptions
from engine.stub import StubEngine
from engine.transformers_engine import TransformersEngine
from tests.live_server import live_server, wait_for
from tests.test_agent_console import (PASSWORD, ROLES, assert_admits_exactly, assert_page_signs_in_and_refuses,
                                      signed_in)

ENGINE = StubEngine(reply="Your membership renewed automatically for 88.", confidence=0.83)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("operators"), engine=ENGINE, login_rate_per_ip=1000,
                     widget_rate_per_ip=10_000, users={role: role for role in ROLES}) as (base, app):
        yield base, app


def billing_yaml(client: httpx.Client) -> str:
    return client.get("/operator/api/templates/billing").json()["yaml"]


OPERATOR_ROUTES = [
    ("GET", "/operator/api/templates", None),
    ("GET", "/operator/api/templates/billing", None),
    ("GET", "/operator/api/templates/billing/versions", None),
    ("POST", "/operator/api/validate", {"yaml": "name: x"}),
    ("GET", "/operator/api/stats", None),
]


@pytest.mark.parametrize("method, path, body", OPERATOR_ROUTES)
def test_operator_routes_allow_exactly_operators_and_admins(server, method, path, body):
    base, _ = server
    kwargs = {"json": body} if body is not None else {}
    assert_admits_exactly(base, method, path, {"operator", "admin"}, **kwargs)


def test_operator_page_redirects_to_sign_in_and_refuses_agents(server):
    assert_page_signs_in_and_refuses(server[0], "/operator", "agent")


def test_template_list_shows_live_versions_and_channels(server):
    base, _ = server
    overview = signed_in(base, "operator").get("/operator/api/templates").json()
    names = {t["name"]: t for t in overview["templates"]}
    assert {"general", "billing", "account", "orders", "screenshot_errors"} <= set(names)
    assert names["billing"]["published_version"] == 1 and names["billing"]["title"]["zh"]
    assert {"channel": "widget", "template": "general"} in overview["channels"]
    assert "widget" in names["general"]["channels"]


def test_validation_reports_problems_and_previews_good_drafts(server):
    base, _ = server
    operator = signed_in(base, "operator")
    good = billing_yaml(operator)
    result = operator.post("/operator/api/validate", json={"yaml": good}).json()
    assert result["ok"] and "Acme" in result["preview"]["en"] and result["preview"]["zh"]
    broken = good.replace("{{ company }}", "{{ company ", 1)
    result = operator.post("/operator/api/validate", json={"yaml": broken}).json()
    assert not result["ok"] and result["issues"] and result["preview"] is None
    sneaky = good.replace("{{ company }}", "{{ ''.__class__.__mro__ }}", 1)
    issues = operator.post("/operator/api/validate", json={"yaml": sneaky}).json()["issues"]
    assert any("__class__" in i["message"] for i in issues)


def test_try_it_runs_the_unsaved_draft_with_a_screenshot(server):
    base, _ = server
    operator = signed_in(base, "operator")
    draft = billing_yaml(operator).replace("Acme", "Globex")
    buffer = io.BytesIO()
    Image.new("RGB", (800, 600), "white").save(buffer, "PNG")
    before = len(ENGINE.requests)
    result = operator.post("/operator/api/try", data={"yaml": draft, "text": "Why was I charged?", "language": "auto"},
                           files=[("images", ("statement.png", buffer.getvalue(), "image/png"))]).json()
    assert result["reply"] == "Your membership renewed automatically for 88."
    assert result["confidence"] == pytest.approx(0.83) and result["decision"]["handover"] is False
    assert result["prompt_tokens"] > 0 and result["latency_ms"] is not None
    request = ENGINE.requests[before]
    assert "Globex" in request.messages[0].parts[0].text  # the draft, not the published version
    assert any(isinstance(p, ImagePart) for p in request.messages[1].parts)
    refund = operator.post("/operator/api/try", data={"yaml": draft, "text": "I want a refund"}).json()
    assert refund["decision"] == {"handover": True, "reason": "sensitive_topic", "detail": refund["decision"]["detail"]}
    bad = operator.post("/operator/api/try", data={"yaml": "name: [", "text": "hi"})
    assert bad.status_code == 422 and bad.json()["issues"]


def test_publish_history_diff_and_restore(server):
    base, app = server
    operator = signed_in(base, "operator")
    original = billing_yaml(operator)
    edited = original.replace("Acme", "Initech")
    assert operator.post("/operator/api/templates/billing/publish", json={"yaml": edited}).json()["version"] == 2
    history = operator.get("/operator/api/templates/billing/versions").json()["versions"]
    assert [v["version"] for v in history][:2] == [2, 1] and history[0]["live"] and history[0]["author"] == "operator"
    assert "-" in history[0]["diff"] and "+" in history[0]["diff"] and "Initech" in history[0]["diff"]
    restored = operator.post("/operator/api/templates/billing/restore", json={"version": 1}).json()["version"]
    assert restored == 3 and billing_yaml(operator) == original
    renamed = operator.post("/operator/api/templates/billing/publish", json={"yaml": original.replace("name: billing", "name: other", 1)})
    assert renamed.status_code == 422
    audit = app.state.runtime.store._all("select action from audit_log where actor = 'operator'")
    assert {"template_publish", "template_restore"} <= {a["action"] for a in audit}


def test_the_active_template_per_channel_is_set_here(server):
    base, app = server
    operator = signed_in(base, "operator")
    assert operator.post("/operator/api/channels", json={"channel": "widget", "template": "billing"}).status_code == 200
    assert app.state.runtime.manager.templates.template_name_for("widget") == "billing"
    assert operator.post("/operator/api/channels", json={"channel": "widget", "template": "nope"}).status_code == 404
    operator.post("/operator/api/channels", json={"channel": "widget", "template": "general"})


def test_statistics_summarise_recent_traffic(server):
    base, _ = server
    token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    def replies() -> int:
        messages = httpx.get(f"{base}/widget/api/conversation", headers=headers).json()["messages"]
        return sum(m["role"] != "user" for m in messages)

    for i, text in enumerate(["Why was I charged?", "I want to talk to a human"]):
        httpx.post(f"{base}/widget/api/messages", headers=headers, data={"client_message_id": f"stats-{i:04d}", "text": text})
        wait_for(lambda: replies() > i, what=f"the reply to message {i + 1}")
    result = signed_in(base, "operator").get("/operator/api/stats", params={"days": 7}).json()
    assert len(result["days"]) == 7 and result["days"][-1]["messages"] >= 2
    assert result["days"][-1]["answered"] >= 1 and result["days"][-1]["handed_over"] >= 1
    assert 0 < result["answered_share"] < 1
    assert result["handovers_by_reason"].get("user_request", 0) >= 1
    assert sum(b["count"] for b in result["confidence_histogram"]) >= 1
    assert result["reply_time_s"]["p50"] is not None and "latency_ms" not in result  # seconds, not milliseconds
    assert sum(share["share"] for share in result["outcomes"]["shares"]) == pytest.approx(1.0)


def test_statistics_count_the_widget_feedback_and_show_the_latest_comments(server):
    from datetime import timedelta

    from bot.messages import utcnow
    from bot.store import iso

    base, app = server
    start = utcnow()
    store = app.state.runtime.store
    conversation = store._ensure_conversation("widget", "feedback-stats", "v", "Visitor", iso())
    for episode in range(1, 13):  # 12 verdicts, the newest last; three without a comment
        store._insert("feedback", {
            "conversation_id": conversation["id"], "episode": episode, "helpful": int(episode % 3 == 0),
            "comment": "" if episode in (4, 8, 12) else f"comment {episode} <b>as text</b>",
            "created_at": iso(start + timedelta(milliseconds=episode)),
        })
    feedback = signed_in(base, "operator").get("/operator/api/stats", params={"days": 7}).json()["feedback"]
    assert feedback["helpful"] == 4 and feedback["not_helpful"] == 8
    comments = feedback["comments"]
    assert [c["comment"] for c in comments] == [f"comment {e} <b>as text</b>" for e in (11, 10, 9, 7, 6, 5, 3, 2, 1)]
    assert all(c["conversation_id"] == conversation["id"] for c in comments)
    assert [c["helpful"] for c in comments[:3]] == [False, False, True]


def short_draft(base_yaml: str, max_new_tokens: int) -> str:
    """A valid draft with a short prompt (fast on the tiny model)."""
    data = yaml.safe_load(base_yaml)
    data["system_prompt"] = {"en": "You help users of {{ company }}. If unsure, write {{ decline_marker }}.",
                             "zh": "你为 {{ company }} 的用户提供帮助。没有把握时，写 {{ decline_marker }}。"}
    data["generation"]["max_new_tokens"] = max_new_tokens
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def many_cases(directory: Path, count: int) -> Path:
    """A billing regression set of `count` text cases, as a shipped case file."""
    (directory / "screenshots").mkdir(parents=True)
    cases = [{"id": f"charged-{i + 1}", "text": f"Why was I charged {i + 1} times?", "expect": "answer"}
             for i in range(count)]
    (directory / "billing.yaml").write_text(yaml.safe_dump({"template": "billing", "cases": cases}), encoding="utf-8")
    return directory


def test_a_regression_run_of_many_cases_leaves_the_engine_queue_to_customers(tmp_path, tiny_model_dir):
    # The real engine with a queue of 4 waiting requests; a customer's turn waits at most 0.3 s for room
    # in it before going to a person as "busy". A run of many cases (each answered by the draft and by
    # the live version) takes its places in the engine's queue only from the share of "try it" and the
    # API, waiting for one when that share is taken: the customers writing meanwhile find room.
    accounts = Accounts(Store(tmp_path / "data"))
    accounts.add_user("operator", "operator", PASSWORD)
    engine = TransformersEngine(LoadOptions(model=str(tiny_model_dir)), max_queue=4, max_batch_size=1,
                                batch_window_ms=0.0)
    with live_server(tmp_path / "data", engine=engine, queue_size=4, busy_wait_s=0.3, max_new_tokens=48,
                     login_rate_per_ip=1000, widget_rate_per_ip=10_000) as (base, app):
        app.state.server.regression.cases_directory = many_cases(tmp_path / "cases", 8)
        share = app.state.server.api_share
        held = []  # the share's places in use, each time the run took one
        acquire = share.acquire

        def counted():
            ticket = acquire()
            held.append(share.active)
            return ticket

        share.acquire = counted
        operator = signed_in(base, "operator")
        draft = short_draft(operator.get("/operator/api/templates/billing").json()["yaml"], 48)
        assert operator.post("/operator/api/templates/billing/publish", json={"yaml": draft}).status_code == 200
        run_id = operator.post("/operator/api/templates/billing/runs", json={"yaml": draft}).json()["run_id"]
        wait_for(lambda: engine.worker.busy_for_s > 0, timeout=30, what="the first case to be generating")
        visitors = []
        for i in range(2):
            token = httpx.post(f"{base}/widget/api/session", json={}).json()["token"]
            headers = {"Authorization": f"Bearer {token}"}
            sent = httpx.post(f"{base}/widget/api/messages", headers=headers,
                              data={"client_message_id": f"queue-{i:04d}", "text": "Why was I charged?"})
            assert sent.status_code == 202
            visitors.append(headers)

        def answered(headers):
            conversation = httpx.get(f"{base}/widget/api/conversation", headers=headers).json()
            replies = [m for m in conversation["messages"] if m["role"] != "user"]
            return not conversation["working"] and replies

        for headers in visitors:
            wait_for(lambda: answered(headers), timeout=60, what="the customer's turn")

        def finished():
            view = operator.get(f"/operator/api/runs/{run_id}").json()
            return view if view["run"]["status"] != "running" else None

        view = wait_for(finished, timeout=180, what="the run to finish")
        reasons = [row["reason"] for row in app.state.runtime.store._all("select reason from escalations")]
        assert "busy" not in reasons, reasons
        assert view["run"]["status"] == "done" and view["run"]["done"] == 16
        results = [case[arm] for case in view["cases"] for arm in ("draft", "live")]
        assert len(results) == 16 and all(r["model_called"] and r["reason"] != "busy" for r in results), \
            [r["reason"] for r in results]
        assert held and max(held) <= share.limit, (held, share.limit)
        assert share.active == 0, "every place taken for a case was given back"


def test_try_it_gets_a_clear_429_when_the_api_holds_every_place(server, monkeypatch):
    base, app = server
    operator = signed_in(base, "operator")
    draft = billing_yaml(operator)
    share = app.state.server.api_share
    monkeypatch.setattr("bot.web.operator_console.PLACE_WAIT_S", 0.2)
    asked = len(ENGINE.requests)
    taken = share.active
    share.active = share.limit  # as if API clients held every place
    try:
        refused = operator.post("/operator/api/try", data={"yaml": draft, "text": "Why was I charged?"})
    finally:
        share.active = taken
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == "busy" and "kept for customers" in refused.json()["message"]
    assert len(ENGINE.requests) == asked
    assert operator.post("/operator/api/try", data={"yaml": draft, "text": "Why was I charged?"}).status_code == 200
