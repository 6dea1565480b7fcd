"""Regression runs through the operator console's API over real HTTP: a run's progress to the end
on the tiny model with both versions of every case and the totals; cancelling a run of slow cases;
an engine failing for some cases mid-run; the publish gate (confirm, block, a run required); the
one-line threshold change; roles and CSRF.

The sets are temporary case files (a template's set as a shipped file would hold it) and one
operator's own case, so the runs stay small whatever prompts/cases/ ships.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import yaml

from bot.templates import Template
from engine.base import EngineError
from engine.loading import LoadOptions
from engine.stub import StubEngine, last_user_text
from engine.transformers_engine import TransformersEngine
from tests.live_server import live_server, wait_for
from tests.test_agent_console import ROLES, png, signed_in

CASES = {
    "template": "billing",
    "cases": [
        {"id": "renewal", "text": "Why was I charged 88?", "expect": "answer", "must_contain": ["88"],
         "must_not_contain": ["4716 2630 5531 1881"]},
        {"id": "person", "text": "let me talk to a human please", "expect": "handover", "reason": "user_request"},
        {"id": "invoices", "text": "Where can I download my invoices?", "expect": "answer"},
        {"id": "statement", "text": "What is this charge?", "screenshots": ["statement.png"], "language": "en",
         "expect": "answer"},
    ],
}
ARMS = ("draft", "live")
REBRANDED = "Globex"  # in a draft's system prompt: the scripted engine answers worse


def case_files(directory: Path, cases: dict = CASES) -> Path:
    (directory / "screenshots").mkdir(parents=True, exist_ok=True)
    (directory / "screenshots" / "statement.png").write_bytes(png())
    (directory / "billing.yaml").write_text(yaml.safe_dump(cases, allow_unicode=True), encoding="utf-8")
    return directory


def scripted(request):
    """88 from the live version; a rebranded draft forgets it; an invoice question breaks the engine."""
    if "invoice" in last_user_text(request):
        return EngineError("CUDA error: device-side assert triggered")
    system = request.messages[0].parts[0].text
    return ("I can't tell what that was.", 0.55) if REBRANDED in system else ("You paid 88 for the renewal.", 0.9)


def start(client: httpx.Client, draft: str) -> int:
    response = client.post("/operator/api/templates/billing/runs", json={"yaml": draft})
    assert response.status_code == 200, response.text
    return response.json()["run_id"]


def finished(client: httpx.Client, run_id: int, timeout: float = 120) -> dict:
    def ended():
        view = client.get(f"/operator/api/runs/{run_id}").json()
        return view if view["run"]["status"] != "running" else None
    return wait_for(ended, timeout=timeout, what=f"run {run_id} to end")


def live_yaml(client: httpx.Client) -> str:
    return client.get("/operator/api/templates/billing").json()["yaml"]


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    root = tmp_path_factory.mktemp("regression-http")
    with live_server(root / "data", engine=StubEngine(script=scripted), login_rate_per_ip=10_000,
                     widget_rate_per_ip=10_000, users={role: role for role in ROLES}) as (base, app):
        app.state.server.regression.cases_directory = case_files(root / "cases")
        yield base, app


# A run, start to end, on the tiny model ------------------------------------------------------------
def test_a_run_shows_progress_then_both_versions_of_every_case_and_the_totals(tmp_path, tiny_model_dir):
    """The tiny model's answers are noise: the mechanics are what is checked."""
    engine = TransformersEngine(LoadOptions(model=str(tiny_model_dir)), max_batch_size=2)
    with live_server(tmp_path / "data", engine=engine, max_new_tokens=8, login_rate_per_ip=1000,
                     users={"olga": "operator"}) as (base, app):
        app.state.server.regression.cases_directory = case_files(tmp_path / "cases")
        olga = signed_in(base, "olga")
        draft = live_yaml(olga).replace("confidence_threshold: 0.6", "confidence_threshold: 0.3")
        listed = [c["key"] for c in olga.get("/operator/api/templates/billing/cases").json()["cases"]]
        assert listed == [f"shipped:{c['id']}" for c in CASES["cases"]]

        run_id = start(olga, draft)
        seen, deadline = [], time.monotonic() + 180
        while True:
            view = olga.get(f"/operator/api/runs/{run_id}").json()
            seen.append((view["run"]["status"], view["run"]["done"]))
            if view["run"]["status"] != "running":
                break
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        total = 2 * len(CASES["cases"])
        assert seen[0][0] == "running" and seen[0][1] < total, seen
        assert [done for _, done in seen] == sorted(done for _, done in seen), "progress only goes forward"
        assert view["run"]["status"] == "done" and view["run"]["done"] == view["run"]["total"] == total
        assert [c["key"] for c in view["cases"]] == listed
        for case in view["cases"]:
            for arm in ARMS:
                got = case[arm]
                assert got["outcome"] in ("answer", "handover") and isinstance(got["passed"], bool)
                assert got["latency_s"] is not None and got["error"] is None
                assert got["checks"] >= got["checks_passed"] >= 0
            assert case["change"] in ("fixed", "broken", "changed", "same")
        person = next(c for c in view["cases"] if c["key"] == "shipped:person")
        assert all(person[a]["reason"] == "user_request" and not person[a]["model_called"] for a in ARMS)
        renewal = next(c for c in view["cases"] if c["key"] == "shipped:renewal")
        assert renewal["draft"]["model_called"] and renewal["draft"]["prompt_tokens"] > 0
        shot = next(c for c in view["cases"] if c["key"] == "shipped:statement")
        assert shot["case"]["screenshots"] == 1 and len(shot["draft"]["screenshots"]) == 1
        for arm in ARMS:
            figures = view["summary"][arm]
            assert figures["cases"] == len(CASES["cases"]) and figures["pass_rate"] is not None
            assert figures["handovers_expected"] == 1 and len(figures["reliability"]) == 5
            assert {"handover_precision", "handover_recall", "answer_check_rate", "confidence_auroc",
                    "threshold_advice", "engine_errors", "tokens", "latency_s_median"} <= set(figures)
        assert view["summary"]["draft"]["threshold"] == 0.3 and view["summary"]["live"]["threshold"] == 0.6
        assert sum(view["changes"].values()) == len(CASES["cases"])
        runs = olga.get("/operator/api/templates/billing/runs").json()["runs"]
        assert runs[0]["id"] == run_id and runs[0]["status"] == "done"
        assert app.state.server.api_share.active == 0


# Cancel ---------------------------------------------------------------------------------------------
def test_cancelling_keeps_the_decided_cases_and_frees_every_engine_place(tmp_path):
    slow = StubEngine(reply="You paid 88.", tokens_per_s=2.0, first_token_ms=50)
    with live_server(tmp_path / "data", engine=slow, login_rate_per_ip=1000, users={"olga": "operator"}) as (base, app):
        app.state.server.regression.cases_directory = case_files(tmp_path / "cases")
        olga = signed_in(base, "olga")
        run_id = start(olga, live_yaml(olga))
        share = app.state.server.api_share
        wait_for(lambda: olga.get(f"/operator/api/runs/{run_id}").json()["run"]["done"] >= 2 and share.active > 0,
                 timeout=30, what="the hand-over cases decided and generations holding places")
        assert olga.post(f"/operator/api/runs/{run_id}/cancel").status_code == 200
        view = olga.get(f"/operator/api/runs/{run_id}").json()
        assert view["run"]["status"] == "cancelled" and 2 <= view["run"]["done"] < view["run"]["total"]
        decided = [c[arm] for c in view["cases"] for arm in ARMS if c[arm] is not None]
        assert len(decided) == view["run"]["done"], "every case decided before the cancel is kept"
        assert all(r["passed"] and r["reply"] == "You paid 88." for r in decided if r["model_called"])
        assert view["summary"] == {}  # no totals for a run that did not answer every case
        assert share.active == 0, "no engine place left held"
        assert not slow._running, "no generation left going"
        again = olga.post(f"/operator/api/runs/{run_id}/cancel")
        assert again.status_code == 409 and again.json()["error"] == "not_running"
        time.sleep(1.0)  # what was cancelled stays cancelled
        assert olga.get(f"/operator/api/runs/{run_id}").json()["run"]["done"] == view["run"]["done"]


# An engine failing for some cases ---------------------------------------------------------------------
def test_an_engine_failing_mid_run_fails_exactly_those_cases(stub):
    base, _ = stub
    olga = signed_in(base, "operator")
    view = finished(olga, start(olga, live_yaml(olga)))
    assert view["run"]["status"] == "done"
    for case in view["cases"]:
        for arm in ARMS:
            got = case[arm]
            if case["key"] == "shipped:invoices":
                assert got["passed"] is False and got["error"].startswith("EngineError: CUDA error")
                assert any(f.startswith("the engine failed: EngineError") for f in got["failures"])
            else:
                assert got["error"] is None and got["passed"], (case["key"], arm, got["failures"])
    for arm in ARMS:
        assert view["summary"][arm]["engine_errors"] == 1 and view["summary"][arm]["pass_rate"] == 0.75


# The publish gate ----------------------------------------------------------------------------------------
def test_a_draft_that_does_worse_asks_for_confirmation_then_publishes(stub):
    base, app = stub
    olga = signed_in(base, "operator")
    live = live_yaml(olga)
    draft = live.replace("Acme", REBRANDED)
    before = olga.post("/operator/api/templates/billing/publish-check", json={"yaml": draft}).json()
    assert before["check"]["run_id"] is None and before["gate"] == "confirm"
    run_id = finished(olga, start(olga, draft))["run"]["id"]
    looked = olga.post("/operator/api/templates/billing/publish-check", json={"yaml": draft}).json()["check"]
    assert looked["run_id"] == run_id and looked["comparison"]["worse"]
    assert len(app.state.runtime.store.template_versions("billing")) == 1  # looking publishes nothing
    asked = olga.post("/operator/api/templates/billing/publish", json={"yaml": draft})
    assert asked.status_code == 409
    detail = asked.json()
    assert detail["error"] == "confirm_worse" and "Publish it anyway?" in detail["message"]
    check = detail["check"]
    assert check["run_id"] == run_id and check["comparison"]["worse"]
    # the draft's replies miss the 88 and come with a confidence under the threshold (hand-overs)
    assert "pass rate 25% against 75% live" in check["comparison"]["why"], check["comparison"]
    assert check["summary"]["draft"]["pass_rate"] == 0.25 and check["summary"]["live"]["pass_rate"] == 0.75
    published = olga.post("/operator/api/templates/billing/publish", json={"yaml": draft, "confirm": True})
    assert published.status_code == 200, published.text
    audit = app.state.runtime.store._all(
        "select detail from audit_log where action = 'template_publish' order by id desc limit 1")
    assert '"worse_confirmed": true' in audit[0]["detail"] and f'"run": {run_id}' in audit[0]["detail"]
    assert olga.post("/operator/api/templates/billing/restore",
                     json={"version": 1}).status_code == 200  # the live version again for the next tests


def test_the_block_setting_refuses_a_worse_draft_and_one_without_a_run(tmp_path):
    with live_server(tmp_path / "data", engine=StubEngine(script=scripted), publish_gate="block",
                     login_rate_per_ip=1000, users={"olga": "operator"}) as (base, app):
        app.state.server.regression.cases_directory = case_files(tmp_path / "cases")
        olga = signed_in(base, "olga")
        live = live_yaml(olga)
        worse = live.replace("Acme", REBRANDED)
        unrun = olga.post("/operator/api/templates/billing/publish", json={"yaml": worse, "confirm": True})
        assert unrun.status_code == 409 and unrun.json()["error"] == "run_required"
        assert unrun.json()["check"]["run_id"] is None
        finished(olga, start(olga, worse))
        blocked = olga.post("/operator/api/templates/billing/publish", json={"yaml": worse, "confirm": True})
        assert blocked.status_code == 409 and blocked.json()["error"] == "worse_than_live"
        assert "blocked" in blocked.json()["message"]
        edited = live.replace("confidence_threshold: 0.6", "confidence_threshold: 0.5")
        finished(olga, start(olga, edited))
        assert olga.post("/operator/api/templates/billing/publish", json={"yaml": edited}).json()["version"] == 2
        versions = olga.get("/operator/api/templates/billing/versions").json()["versions"]
        assert [v["version"] for v in versions] == [2, 1]


# The threshold ------------------------------------------------------------------------------------------
def test_applying_a_threshold_changes_only_that_line(stub):
    base, _ = stub
    olga = signed_in(base, "operator")
    live = "# Our billing template, as we keep it\n" + live_yaml(olga)
    changed = olga.post("/operator/api/draft/threshold", json={"yaml": live, "threshold": 0.72}).json()["yaml"]
    before, after = live.splitlines(), changed.splitlines()
    assert len(before) == len(after)
    differ = [(b, a) for b, a in zip(before, after) if b != a]
    assert len(differ) == 1 and differ[0][1].strip() == "confidence_threshold: 0.72", differ
    assert Template.from_yaml(changed).escalation.confidence_threshold == 0.72
    refused = olga.post("/operator/api/draft/threshold", json={"yaml": "name: [", "threshold": 0.5})
    assert refused.status_code in (400, 422) and refused.json()["issues"]
    out_of_range = olga.post("/operator/api/draft/threshold", json={"yaml": live, "threshold": 1.5})
    assert out_of_range.status_code == 422


# Roles and CSRF -------------------------------------------------------------------------------------------
def test_only_operators_and_admins_run_sets_and_every_change_needs_the_csrf_token(stub):
    base, app = stub
    olga = signed_in(base, "operator")
    draft = live_yaml(olga)
    run_id = finished(olga, start(olga, draft))["run"]["id"]
    routes = [
        ("GET", "/operator/api/templates/billing/cases", None),
        ("GET", "/operator/api/templates/billing/runs", None),
        ("GET", f"/operator/api/runs/{run_id}", None),
        ("POST", "/operator/api/templates/billing/runs", {"yaml": draft}),
        ("POST", f"/operator/api/runs/{run_id}/cancel", None),
        ("POST", "/operator/api/draft/threshold", {"yaml": draft, "threshold": 0.5}),
        ("DELETE", "/operator/api/cases/1", None),
    ]
    bare = httpx.Client(base_url=base, cookies=olga.cookies)  # signed in, without the CSRF header
    started = len(app.state.runtime.store._all("select id from eval_runs"))
    for method, path, body in routes:
        kwargs = {"json": body} if body is not None else {}
        assert httpx.request(method, base + path, **kwargs).status_code == 401, path
        for role in ROLES:
            status = signed_in(base, role).request(method, path, **kwargs).status_code
            assert (status == 403) == (role == "agent"), (path, role, status)
        if method != "GET":
            refused = bare.request(method, path, **kwargs)
            assert refused.status_code == 403 and refused.json()["error"] == "csrf", path
    # each operator and admin POST started one run; nothing the agent or the bare client sent did
    assert len(app.state.runtime.store._all("select id from eval_runs")) == started + 2
