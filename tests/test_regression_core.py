"""Regression sets without HTTP: case files, verdicts, the figures of a run (hand-counted), runs
through the same steps as a real turn on the tiny model, and a run's life (done, cancelled,
interrupted) as compare-and-set."""

from __future__ import annotations

import asyncio
import textwrap

import pytest
import yaml

from bot.regression.cases import CaseError, CaseSpec, add_case, read_case_file, regression_set, remove_case
from bot.regression.checks import article_slug, judge
from bot.regression.report import case_change, comparison, summary
from bot.regression.runner import Arm, RegressionRuns, evaluate, publish_check
from bot.regression.turn import TemplateTurn, TurnResult
from bot.template_yaml import set_confidence_threshold
from bot.templates import Template, TemplateLibrary
from engine.base import EngineError
from engine.stub import StubEngine

from test_conversation import make

CASES = textwrap.dedent("""\
    template: billing
    cases:
      - id: renewal
        text: Why was I charged 88?
        expect: answer
        must_contain: ["88"]
        must_not_contain: ["4716 2630 5531 1881"]
      - id: refund
        text: I want a refund of the renewal
        expect: handover
        reason: sensitive_topic
      - id: person
        text: let me talk to a human please
        language: en
        expect: handover
        reason: user_request
      - id: invoices
        text: Where are my invoices?
        expect: answer
""")


def case_dir(tmp_path, body: str = CASES):
    directory = tmp_path / "cases"
    (directory / "screenshots").mkdir(parents=True, exist_ok=True)
    (directory / "billing.yaml").write_text(body, encoding="utf-8")
    return directory


def result(outcome="answer", reply="", reason=None, confidence=0.9, error=None, cited=(), model_called=True):
    return TurnResult(outcome=outcome, reason=reason, reply=reply, confidence=confidence, error=error,
                      cited=tuple(cited), model_called=model_called)


# Case files ---------------------------------------------------------------------------------------
def test_a_case_file_is_read_with_keys_in_order(tmp_path):
    cases = read_case_file(case_dir(tmp_path) / "billing.yaml")
    assert [c.key for c in cases] == ["shipped:renewal", "shipped:refund", "shipped:person", "shipped:invoices"]
    assert cases[1].reason == "sensitive_topic" and cases[0].must_contain == ("88",)
    assert cases[0].channel == "widget" and cases[0].language == "en"


@pytest.mark.parametrize("body, says", [
    ("template: billing\ncases:\n  - id: a\n    expect: maybe\n", "case 1: expect"),
    ("template: billing\ncases:\n  - id: a\n    expect: answer\n  - id: a\n    expect: answer\n", "case 2: 'id'"),
    ("template: billing\ncases:\n  - id: Bad Id\n    expect: answer\n", "'id' must be unique"),
    ("template: billing\ncases:\n  - id: a\n    expect: answer\n    screenshots: [nope.png]\n", "no screenshot nope.png"),
    ("template: billing\ncases:\n  - id: a\n    expect: answer\n    colour: red\n", "colour"),
    ("template: billing\ncases:\n  - id: a\n    expect: handover\n    reason: bored\n", "reason"),
    ("just text", "expected 'template:'"),
    ("cases: [\n", "cannot be read"),
])
def test_a_broken_case_file_names_the_case_and_the_problem(tmp_path, body, says):
    with pytest.raises(CaseError) as caught:
        read_case_file(case_dir(tmp_path, body) / "billing.yaml")
    assert "billing.yaml" in str(caught.value) and says in str(caught.value)


def test_operator_cases_follow_the_shipped_ones_and_can_be_removed(tmp_path):
    manager, _, _ = make(tmp_path / "data")
    store = manager.store
    row = add_case(store, "billing", CaseSpec(text="Why 88?", expect="handover", reason="model_declined"), [], "olga")
    found = regression_set(store, "billing", case_dir(tmp_path))
    assert [c.key for c in found][-1] == f"case:{row}" and found[-1].source == "operator"
    assert found[-1].reason == "model_declined" and found[-1].created_by == "olga"
    assert remove_case(store, row, "olga").key == f"case:{row}"
    assert remove_case(store, row, "olga") is None
    actions = [r["action"] for r in store.db["audit_log"].rows]
    assert actions.count("case_add") == 1 and actions.count("case_remove") == 1
    manager.close()


# Verdicts -----------------------------------------------------------------------------------------
def _case(**fields):
    spec = yaml.safe_dump({"template": "billing", "cases": [{"id": "c", **fields}]})
    return spec


def one(tmp_path, **fields):
    return read_case_file(case_dir(tmp_path, _case(**fields)) / "billing.yaml")[0]


def test_an_engine_error_fails_even_a_case_that_expected_a_hand_over(tmp_path):
    case = one(tmp_path, text="x", expect="handover")
    verdict = judge(case, result("handover", reason="engine_error", error="EngineTimeout: too slow"))
    assert not verdict.passed and "the engine failed: EngineTimeout: too slow" in verdict.failures


def test_answer_checks_are_case_and_width_insensitive_and_never_contains_covers_the_agent_detail(tmp_path):
    case = one(tmp_path, text="x", expect="answer", must_contain=["Auto-Renewal", "８８"],
               must_not_contain=["6200 0000"], cite=["auto-renewal"])
    good = judge(case, result(reply="Your  auto-renewal of 88 [1].", cited=[{"slug": "auto-renewal", "title": "T"}]))
    assert good.passed and good.checks == good.checks_passed == 4
    bad = judge(case, result(reply="Your card 6200 0000 was charged"))
    assert not bad.passed and bad.checks == 4 and bad.checks_passed == 0
    assert any("does not say" in f for f in bad.failures) and any("must never say" in f for f in bad.failures)
    assert any("does not cite" in f for f in bad.failures)
    detail = judge(one(tmp_path, text="x", expect="handover", must_not_contain=["6200 0000"]),
                   TurnResult(outcome="handover", reason="model_declined", detail="card 6200 0000 shown"))
    assert not detail.passed


def test_the_wrong_outcome_or_reason_fails(tmp_path):
    handover = one(tmp_path, text="x", expect="handover", reason="user_request")
    assert judge(handover, result("answer")).failures == ("expected a hand-over, got an answer",)
    assert judge(handover, result("handover", reason="low_confidence")).failures == (
        "expected the reason user_request, got low_confidence",)
    assert judge(handover, result("handover", reason="user_request")).passed


def test_articles_are_named_by_their_slug():
    assert article_slug("prompts/knowledge/auto-renewal.en.md") == "auto-renewal"
    assert article_slug("https://help.example/articles/refunds.html") == "refunds"
    assert article_slug("upload:Router Lights.md") == "router lights"


# Figures (hand-counted) ---------------------------------------------------------------------------
def test_a_runs_figures_match_a_hand_count(tmp_path):
    answer = one(tmp_path, text="x", expect="answer", must_contain=["88"])
    handover = read_case_file(case_dir(tmp_path, _case(text="y", expect="handover")) / "billing.yaml")[0]
    rows = [
        (answer, result(reply="88", confidence=0.9)),  # pass, good answer
        (answer, result(reply="77", confidence=0.8)),  # fail, bad answer
        (answer, result("handover", reason="low_confidence", reply="88", confidence=0.3)),  # fail: missed answer
        (handover, result("handover", reason="model_declined", confidence=0.95)),  # pass (declined: not scored)
        (handover, result(reply="sure", confidence=0.7)),  # fail: should have handed over
        (handover, result("handover", reason="engine_error", error="EngineError: boom", model_called=True)),  # fail
    ]
    figures = summary([(c, r, judge(c, r)) for c, r in rows], target_precision=0.9, threshold=0.6)
    assert figures["cases"] == 6 and figures["passed"] == 2 and figures["pass_rate"] == round(2 / 6, 4)
    # handed over without error: rows 3, 4 -> right: row 4 only; expected hand-overs: rows 4-6 -> caught: row 4
    assert figures["handovers"] == 2 and figures["handover_precision"] == 0.5
    assert figures["handovers_expected"] == 3 and figures["handover_recall"] == round(1 / 3, 4)
    assert figures["engine_errors"] == 1
    # scored answers: rows 1 (good, .9), 2 (bad, .8), 3 (good answer text, .3), 5 (bad: wanted hand-over, .7)
    assert figures["calibration_cases"] == 4
    assert figures["confidence_auroc"] == pytest.approx(0.5)  # .9 beats both bad; .3 beats neither
    assert figures["threshold_advice"] == {"target_precision": 0.9, "threshold": 0.9, "precision": 1.0, "kept": 1,
                                           "of": 4}
    assert sum(b["count"] for b in figures["reliability"]) == 4
    assert figures["answer_checks"] == 2 and figures["answer_checks_passed"] == 1  # rows 1 and 2


def test_the_comparison_names_what_got_worse():
    live = {"pass_rate": 0.8, "handover_recall": 1.0, "handover_precision": 0.9, "answer_check_rate": 0.7}
    draft = {**live, "pass_rate": 0.6}
    assert comparison(draft, live) == {"worse": True, "why": ["pass rate 60% against 80% live"]}
    assert comparison(live, live) == {"worse": False, "why": []}
    assert case_change({"passed": True, "outcome": "answer", "reply": "a"},
                       {"passed": False, "outcome": "answer", "reply": "a"}) == "fixed"
    assert case_change({"passed": False, "outcome": "answer", "reply": "a"},
                       {"passed": True, "outcome": "answer", "reply": "a"}) == "broken"


# The threshold line ------------------------------------------------------------------------------
def test_setting_the_threshold_changes_only_that_line():
    text = TemplateLibrary().get("billing").to_yaml()
    text = "# my comment\n" + text
    changed = set_confidence_threshold(text, 0.72)
    assert Template.from_yaml(changed).escalation.confidence_threshold == 0.72
    before, after = text.splitlines(), changed.splitlines()
    assert len(before) == len(after) and sum(a != b for a, b in zip(before, after)) == 1
    without = "\n".join(line for line in before if "confidence_threshold" not in line) + "\n"
    added = set_confidence_threshold(without, 0.4)
    assert Template.from_yaml(added).escalation.confidence_threshold == 0.4
    assert added.startswith("# my comment\n")


# Runs ---------------------------------------------------------------------------------------------
async def test_a_set_runs_draft_and_live_on_the_tiny_model_through_a_real_turn(tmp_path, engine):
    """The tiny model's answers are noise: the mechanics are what is checked."""
    manager, _, _ = make(tmp_path / "data", engine)
    turn = TemplateTurn(manager, max_new_tokens=8, timeout_s=120)
    cases = read_case_file(case_dir(tmp_path) / "billing.yaml")
    live = TemplateLibrary().get("billing")
    draft = Template.from_yaml(live.to_yaml().replace("confidence_threshold: 0.6", "confidence_threshold: 0.0"))
    out = await evaluate(turn, cases, [Arm("draft", draft, None), Arm("live", live, 1)])
    assert sorted((c.key, arm) for c, arm, _, _ in out) == sorted((c.key, a) for c in cases for a in ("draft", "live"))
    by = {(c.key, arm): (r, v) for c, arm, r, v in out}
    for arm in ("draft", "live"):  # settled before the model: no tokens spent, right outcome
        person, verdict = by["shipped:person", arm]
        assert person.outcome == "handover" and person.reason == "user_request" and not person.model_called
        assert verdict.passed and person.prompt_tokens == 0
    renewal, _ = by["shipped:renewal", "draft"]
    assert renewal.model_called and renewal.prompt_tokens > 0 and renewal.completion_tokens > 0
    assert renewal.confidence is not None and renewal.latency_s is not None and renewal.error is None
    # a threshold of 0 never hands over for low confidence in the draft
    assert all(r.reason != "low_confidence" for (k, a), (r, _) in by.items() if a == "draft")
    manager.close()


def failing_engine(fail_on: str):
    def script(request):
        text = request.messages[-1].parts[-1].text
        return EngineError("CUDA error: device-side assert") if fail_on in text else ("You paid 88 [1].", 0.9)
    return StubEngine(script=script)


async def test_an_engine_failing_mid_run_fails_exactly_those_cases(tmp_path):
    manager, _, _ = make(tmp_path / "data", failing_engine("invoices"))
    runs = RegressionRuns(TemplateTurn(manager, max_new_tokens=32, timeout_s=10), cases_directory=case_dir(tmp_path))
    draft = TemplateLibrary().get("billing")
    run_id = await runs.start("billing", draft, draft.to_yaml(), "olga")
    view = await _finished(runs, run_id)
    assert view["run"]["status"] == "done" and view["run"]["done"] == 8
    for case in view["cases"]:
        for arm in ("draft", "live"):
            got = case[arm]
            if case["key"] == "shipped:invoices":
                assert not got["passed"] and got["error"].startswith("EngineError") and got["outcome"] == "handover"
            else:
                assert got["passed"], (case["key"], got["failures"])
    assert view["summary"]["draft"]["engine_errors"] == 1 and view["summary"]["draft"]["pass_rate"] == 0.75
    manager.close()


async def _finished(runs, run_id):
    for _ in range(400):
        view = await runs.view(run_id)
        if view["run"]["status"] != "running":
            return view
        await asyncio.sleep(0.02)
    raise AssertionError("the run did not finish")


async def test_a_cancelled_run_keeps_what_was_decided_and_frees_the_engine(tmp_path):
    slow = StubEngine(reply="You paid 88.", tokens_per_s=2.0, first_token_ms=50)
    manager, _, _ = make(tmp_path / "data", slow)
    runs = RegressionRuns(TemplateTurn(manager, max_new_tokens=32, timeout_s=60), cases_directory=case_dir(tmp_path))
    draft = TemplateLibrary().get("billing")
    run_id = await runs.start("billing", draft, draft.to_yaml(), "olga")
    for _ in range(200):  # the cases settled before the model are decided at once
        if (await runs.view(run_id))["run"]["done"] >= 4:
            break
        await asyncio.sleep(0.02)
    assert await runs.cancel(run_id, "olga") is True
    view = await runs.view(run_id)
    assert view["run"]["status"] == "cancelled" and 4 <= view["run"]["done"] < 8
    assert not slow._running  # no generation left going
    assert await runs.cancel(run_id, "olga") is False  # once ended, a run never changes again
    assert (await runs.view(run_id))["run"]["status"] == "cancelled"
    actions = [r["action"] for r in manager.store.db["audit_log"].rows]
    assert actions.count("regression_run") == 1 and actions.count("regression_cancel") == 1
    manager.close()


async def test_a_run_a_stopped_server_left_is_interrupted_and_a_done_run_gates_publishing(tmp_path):
    manager, _, _ = make(tmp_path / "data")
    cases = case_dir(tmp_path)
    runs = RegressionRuns(TemplateTurn(manager, max_new_tokens=32, timeout_s=10), cases_directory=cases)
    draft = TemplateLibrary().get("billing")
    run_id = await runs.start("billing", draft, draft.to_yaml(), "olga")
    await _finished(runs, run_id)
    check = publish_check(manager.store, "billing", draft.to_yaml(), runs.live("billing").version)
    assert check["run_id"] == run_id and check["comparison"] == {"worse": False, "why": []}
    assert publish_check(manager.store, "billing", draft.to_yaml() + "\n# changed\n", 1)["run_id"] is None
    manager.store.db.execute("update eval_runs set status = 'running' where id = ?", [run_id])
    restarted = RegressionRuns(TemplateTurn(manager, max_new_tokens=32, timeout_s=10), cases_directory=cases)
    assert (await restarted.view(run_id))["run"]["status"] == "interrupted"
    manager.close()


async def test_retention_removes_old_finished_runs_and_keeps_cases_and_running_runs(tmp_path):
    manager, _, _ = make(tmp_path / "data")
    store = manager.store
    runs = RegressionRuns(TemplateTurn(manager, max_new_tokens=32, timeout_s=10), cases_directory=case_dir(tmp_path))
    draft = TemplateLibrary().get("billing")
    old = await runs.start("billing", draft, draft.to_yaml(), "olga")
    await _finished(runs, old)
    recent = await runs.start("billing", draft, draft.to_yaml(), "olga")
    await _finished(runs, recent)
    case = add_case(store, "billing", CaseSpec(text="Why 88?", expect="answer"), [], "olga")
    store.db.execute("update eval_runs set started_at = '2020-01-01T00:00:00+00:00' where id = ?", [old])
    removed = store.purge(30)
    assert removed["regression_runs"] == 1
    assert await runs.view(old) is None and (await runs.view(recent))["run"]["status"] == "done"
    assert not list(store.db["eval_results"].rows_where("run_id = ?", [old]))
    assert [c.row_id for c in regression_set(store, "billing", case_dir(tmp_path)) if c.row_id] == [case]
    manager.close()
