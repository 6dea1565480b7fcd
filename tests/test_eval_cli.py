"""`snapdesk eval` through the real command line, on the tiny model: exit codes, JSON, JUnit.

The tiny model's answers are noise with a confidence near zero, so the cases are ones whose
outcome does not depend on its words: a request for a person and a sensitive topic are settled
before the model, and an answer case passes only under a version whose threshold lets noise
through (and fails under the live one, which hands it over for low confidence).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import yaml

from bench.screenshot_corpus import sample
from bot.cli import main
from bot.regression import junit
from bot.regression.cases import Case, CaseSpec, add_case
from bot.regression.checks import Verdict
from bot.regression.turn import TurnResult
from bot.settings import Settings
from bot.template_versions import PublishedTemplates
from bot.templates import TemplateLibrary

CASES = [
    {"id": "asks-for-a-person", "text": "I want to talk to a human agent, please.", "expect": "handover",
     "reason": "user_request"},
    {"id": "wants-a-refund", "text": "I want a refund for last month.", "expect": "handover",
     "reason": "sensitive_topic"},
    {"id": "password-help", "text": "How do I change my password?", "expect": "answer",
     "must_not_contain": ["CARD_DECLINED"]},
]
LOW_CONFIDENCE = "expected an answer, got a hand-over (low_confidence)"


def general(**escalation) -> str:
    """The shipped general template with its escalation settings changed, as YAML."""
    data = TemplateLibrary().get("general").to_dict()
    data["escalation"].update(escalation)
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@pytest.fixture
def setup(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("SNAPDESK_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("SNAPDESK_MAX_NEW_TOKENS", "8")
    monkeypatch.setenv("SNAPDESK_DATA_DIR", str(tmp_path / "data"))
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "general.yaml").write_text(yaml.safe_dump({"template": "general", "cases": CASES}))
    return tmp_path


def snapdesk(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_live_version_fails_the_answer_case_json_and_junit(setup, capsys):
    report = setup / "reports" / "eval.xml"
    code, out, err = snapdesk(capsys, "general", "--cases", str(setup / "cases"), "--json", "--junit", str(report))
    assert code == 1, err
    document = json.loads(out)  # the only thing on stdout
    assert (document["template"], document["arm"], document["version"]) == ("general", "live", 1)
    by_label = {c["case"]["label"]: c for c in document["cases"]}
    assert list(by_label) == ["asks-for-a-person", "wants-a-refund", "password-help"]  # the set's order
    assert by_label["asks-for-a-person"]["verdict"]["passed"]
    assert by_label["asks-for-a-person"]["result"]["model_called"] is False
    assert by_label["wants-a-refund"]["result"]["reason"] == "sensitive_topic"
    failed = by_label["password-help"]
    assert failed["result"]["model_called"] and failed["result"]["reason"] == "low_confidence"
    assert failed["verdict"] == {"passed": False, "failures": [LOW_CONFIDENCE], "checks": 1, "checks_passed": 1}
    figures = document["summary"]
    assert (figures["cases"], figures["passed"], figures["failed"], figures["handover_recall"]) == (3, 2, 1, 1.0)
    assert figures["threshold"] == 0.55 and figures["calibration_cases"] == 1

    root = ET.parse(report).getroot()
    assert root.tag == "testsuites" and (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "0")
    suite = root.find("testsuite")
    assert suite.get("name") == "general live (version 1)" and suite.get("failures") == "1"
    assert {p.get("name"): p.get("value") for p in suite.iter("property")}["pass_rate"] == "0.6667"
    tests = {t.get("name"): t for t in suite.iter("testcase")}
    assert list(tests) == ["asks-for-a-person", "wants-a-refund", "password-help"]
    assert {t.get("classname") for t in tests.values()} == {"snapdesk.general"}
    assert all(float(t.get("time")) >= 0 for t in tests.values())
    assert tests["asks-for-a-person"].find("failure") is None
    failure = tests["password-help"].find("failure")
    assert failure.get("message") == LOW_CONFIDENCE and failure.get("type") == "regression"
    assert tests["password-help"].find("system-out").text == failed["result"]["reply"]


def test_a_draft_a_stored_version_and_the_live_one_each_run_their_own_template(setup, capsys):
    draft = setup / "draft.yaml"
    draft.write_text(general(confidence_threshold=0.0))
    code, out, err = snapdesk(capsys, "general", "--cases", str(setup / "cases"), "--draft", str(draft))
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith("general draft: 3 cases on ")
    assert [line.split()[:2] for line in lines[1:4]] == [["PASS", "asks-for-a-person"], ["PASS", "wants-a-refund"],
                                                          ["PASS", "password-help"]]
    assert "handover (user_request: user asked for a human)  confidence n/a" in out
    assert lines[4] == "general draft: 3 cases, 3 passed, 0 failed"
    assert lines[5].startswith("pass rate 100% · hand-over precision 100% (2 handed over) · recall 100%")
    assert lines[7].startswith("threshold advice: ")

    # A stored version (not published) whose sensitive topics take the password question away,
    # and an operator's own case from the data directory joins the set.
    store = Settings().open_store()
    PublishedTemplates(store, TemplateLibrary()).seed()
    version = store.add_template_version("general", general(confidence_threshold=0.0, sensitive_topics=["password"]),
                                         author="ops")
    add_case(store, "general", CaseSpec(text="Can I talk to a real person?", expect="handover"), [], "ops")
    store.close()
    code, out, err = snapdesk(capsys, "general", "--cases", str(setup / "cases"), "--version", str(version))
    assert code == 1 and version == 2
    assert "FAIL  password-help  handover (sensitive_topic: matched 'password')" in out
    assert "      expected an answer, got a hand-over (sensitive_topic)" in out
    assert "PASS  wants-a-refund" not in out  # "refund" is no longer one of this version's topics
    assert "PASS  #1  handover (user_request" in out
    assert "general version 2: 4 cases, 2 passed, 2 failed" in out

    code, out, _ = snapdesk(capsys, "general", "--cases", str(setup / "cases"))  # live: still the shipped version 1
    assert code == 1 and "general live (version 1): 4 cases, 3 passed, 1 failed" in out
    assert "FAIL  password-help  handover (low_confidence" in out


def broken_case_file(tmp: Path) -> list[str]:
    (tmp / "cases" / "general.yaml").write_text("template: general\ncases:\n  - id: x\n    expect: maybe\n")
    return []


def bad_draft(tmp: Path) -> list[str]:
    (tmp / "draft.yaml").write_text(general().replace("system_prompt:", "system_prompt: [", 1))
    return ["--draft", str(tmp / "draft.yaml")]


def other_templates_draft(tmp: Path) -> list[str]:
    (tmp / "draft.yaml").write_text(TemplateLibrary().get("billing").to_yaml())
    return ["--draft", str(tmp / "draft.yaml")]


@pytest.mark.parametrize("template, extra, says", [
    ("genral", lambda tmp: [], "there is no template genral (did you mean 'general'?)"),
    ("general", broken_case_file, "general.yaml, case 1: expect:"),
    ("general", bad_draft, "is not a usable template: "),
    ("general", other_templates_draft, "is the template billing, not general"),
    ("general", lambda tmp: ["--draft", str(tmp / "nowhere.yaml")], "cannot read the draft"),
    ("general", lambda tmp: ["--version", "9"], "the template general has no version 9 (its versions: 1)"),
    ("billing", lambda tmp: [], "the template billing has no regression cases"),
    ("general", lambda tmp: ["--cases", str(tmp / "nowhere")], "no such folder"),
])
def test_a_set_that_cannot_run_exits_2_with_one_line(setup, capsys, template, extra, says):
    code, out, err = snapdesk(capsys, template, "--cases", str(setup / "cases"), *extra(setup))
    assert code == 2 and out == ""
    assert err.startswith("snapdesk: ") and says in err and err.count("\n") == 1


def test_a_model_that_cannot_load_exits_2_before_any_case(setup, capsys, monkeypatch):
    monkeypatch.setenv("SNAPDESK_MODEL", str(setup / "no-model"))
    report = setup / "eval.xml"
    code, out, err = snapdesk(capsys, "general", "--cases", str(setup / "cases"), "--json", "--junit", str(report))
    assert code == 2 and out == "" and not report.exists()
    assert err.startswith("snapdesk: the model cannot be loaded: ") and err.count("\n") == 1


def test_screenshots_are_read_when_ocr_is_on(setup, capsys, monkeypatch):
    monkeypatch.setenv("SNAPDESK_OCR", "on")
    shots = setup / "cases" / "screenshots"
    shots.mkdir()
    dialog = sample("payment_failed_en_desktop").image.crop((440, 320, 1000, 600))  # small: read in a second
    dialog.save(shots / "declined.png")
    (setup / "cases" / "general.yaml").write_text(yaml.safe_dump({"template": "general", "cases": [
        {"id": "declined", "text": "What does this mean?", "screenshots": ["declined.png"], "expect": "handover",
         "must_not_contain": ["4111"]}]}))
    code, out, err = snapdesk(capsys, "general", "--cases", str(setup / "cases"), "--json")
    assert code == 0, err
    [case] = json.loads(out)["cases"]
    assert case["case"]["screenshots"] == 1
    [shot] = case["result"]["screenshots"]
    assert shot["read"] and "E-4012" in shot["evidence"]["error_codes"]


def test_the_junit_report_stays_valid_xml_whatever_the_reply_holds(tmp_path):
    case = Case(key="shipped:odd", template="general", text="hi", language="en", channel="widget", expect="answer")
    reply = "noise \x00\x1b[31m <b>&amp; \"quoted\" \ud800 \ufffe 中文 ]]>"
    result = TurnResult(outcome="answer", reply=reply, latency_s=0.25, confidence=0.4, model_called=True)
    verdict = Verdict(False, ("the answer does not say \u201c<total>\u201d\x07",), 1, 0)
    tree = junit.report("general draft", "general", [(case, result, verdict)], {"pass_rate": 0.0},
                        time_s=0.3, started=datetime.now(timezone.utc))
    path = tmp_path / "deep" / "report.xml"
    junit.write(tree, path)
    assert [p.name for p in path.parent.iterdir()] == ["report.xml"]
    test = ET.parse(path).getroot().find("testsuite/testcase")
    assert test.get("time") == "0.250"
    assert test.find("failure").get("message") == "the answer does not say \u201c<total>\u201d"
    assert test.find("system-out").text == "noise [31m <b>&amp; \"quoted\"   中文 ]]>"


def test_the_installed_command_prints_only_json_on_stdout(setup):
    draft = setup / "draft.yaml"
    draft.write_text(general(confidence_threshold=0.0))
    done = subprocess.run([sys.executable, "-m", "bot.cli", "eval", "general", "--cases", str(setup / "cases"),
                           "--draft", str(draft), "--json"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["arm"] == "draft" and document["passed"] and document["summary"]["pass_rate"] == 1.0
