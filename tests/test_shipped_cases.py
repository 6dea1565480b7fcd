"""The shipped templates' regression cases are sound data: files the loader reads, real corpus
screenshots, articles that exist, every support scenario of the design in English and Chinese,
no card number, IBAN or code of a screenshot left off a case's never-say list, and hand-over
reasons that the escalation policy really gives.

No model and no OCR: the checks read the files, the corpus's committed truth and the policy's
text rules. One test draws the screenshots again (a few seconds).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from bench import case_screenshots
from bench.screenshot_corpus import TRUTH
from bot.escalation import DEFAULT_SENSITIVE_TOPICS, EscalationPolicy
from bot.regression.cases import read_case_file

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "prompts"
CASES = case_screenshots.CASES
SCREENSHOTS = case_screenshots.SCREENSHOTS
TEMPLATES = ("billing", "account", "orders", "screenshot_errors", "general")

KEYS = {"id", "text", "screenshots", "language", "channel", "expect", "reason", "must_contain", "must_not_contain",
        "cite", "notes"}
REQUIRED = {"id", "text", "language", "expect"}
REASONS = {"user_request", "low_confidence", "model_declined", "sensitive_topic", "unreadable_image", "no_knowledge"}
NEVER_SAID = {"card", "iban", "code"}  # what a case must list under must_not_contain when its screenshot shows it
ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")

TRUTH_BY_FILE = {row["file"]: row for row in json.loads(TRUTH.read_text(encoding="utf-8"))}
FILES = {name: yaml.safe_load((CASES / f"{name}.yaml").read_text(encoding="utf-8")) for name in TEMPLATES}
ALL = [(name, case) for name, data in FILES.items() for case in data["cases"]]
BY_KEY = {f"{name}/{case['id']}": case for name, case in ALL}


def items(file: str) -> list[dict]:
    return [item for drawn in TRUTH_BY_FILE[file]["strings"] for item in drawn["items"]]


def shows(case: dict, predicate) -> bool:
    return any(predicate(TRUTH_BY_FILE[file]) for file in case.get("screenshots", []))


def has_item(kind: str, value: str | None = None):
    return lambda row: any(i["kind"] == kind and (value is None or i["value"] == value)
                           for drawn in row["strings"] for i in drawn["items"])


def tagged(*tags: str):
    return lambda row: bool(set(tags) & set(row["tags"]))


def unreadable_only(case: dict) -> bool:
    files = case.get("screenshots", [])
    return bool(files) and all(TRUTH_BY_FILE[file]["unreadable"] for file in files)


# DESIGN.md, "Support scenarios to design for": scenario -> the cases that play it in each language,
# and what each of those cases must be to play it.
SCENARIOS = {
    "billing: a statement with an automatic renewal of 88": (
        {"en": ["billing/renewal-charge-en"], "zh": ["billing/renewal-charge-zh", "billing/renewal-photo-zh"]},
        lambda c: c["expect"] == "answer" and "88" in c["must_contain"] and shows(c, tagged("statement", "bill"))),
    "device: a router photo with a solid red light": (
        {"en": ["screenshot_errors/router-red-light-en"], "zh": ["screenshot_errors/router-red-light-zh"]},
        lambda c: c["expect"] == "answer" and shows(c, tagged("device"))),
    "error dialog: Payment failed, CARD_DECLINED (E-4012)": (
        {"en": ["screenshot_errors/card-declined-en"], "zh": ["screenshot_errors/card-declined-zh"]},
        lambda c: c["expect"] == "answer" and "E-4012" in c["must_contain"] and shows(c, has_item("error_code", "E-4012"))),
    "order page: where is my parcel?": (
        {"en": ["orders/parcel-en", "orders/in-transit-en"], "zh": ["orders/parcel-zh", "orders/out-for-delivery-zh"]},
        lambda c: c["expect"] == "answer" and shows(c, tagged("order", "tracking"))),
    "login: a locked-account or two-step verification screen": (
        {"en": ["account/locked-account-en", "account/two-step-screen-en"],
         "zh": ["account/locked-account-zh", "account/code-not-received-zh"]},
        lambda c: c["expect"] == "answer" and shows(c, tagged("login", "2fa"))),
    "not support at all": (
        {"en": ["general/homework-en", "general/salary-check-en"], "zh": ["general/spring-poem-zh", "general/transfer-fee-zh"]},
        lambda c: c["expect"] == "handover"),
    "an unreadable screenshot": (
        {"en": ["screenshot_errors/unreadable-error-en", "orders/unreadable-screenshot-only-en"],
         "zh": ["account/unreadable-screenshot-only-zh"]},
        lambda c: c["expect"] == "handover" and unreadable_only(c)),
    "a screenshot showing a full card number": (
        {"en": ["billing/double-charge-card-number-en", "screenshot_errors/service-unavailable-card-form-en"],
         "zh": ["billing/double-charge-card-number-zh"]},
        lambda c: c["expect"] == "handover" and shows(c, has_item("card")) and c.get("must_not_contain")),
}


def policy_for(template: str) -> EscalationPolicy:
    data = yaml.safe_load((PROMPTS / f"{template}.yaml").read_text(encoding="utf-8"))
    return EscalationPolicy((data.get("escalation") or {}).get("sensitive_topics") or DEFAULT_SENSITIVE_TOPICS)


def test_every_shipped_template_has_a_case_file_and_no_file_is_extra():
    templates = {yaml.safe_load(path.read_text(encoding="utf-8"))["name"] for path in PROMPTS.glob("*.yaml")}
    assert templates == set(TEMPLATES)
    assert {path.stem for path in CASES.glob("*.yaml")} == set(TEMPLATES)


@pytest.mark.parametrize("template", TEMPLATES)
def test_a_case_file_names_its_template_and_the_loader_reads_it(template):
    data = FILES[template]
    assert set(data) == {"date", "template", "cases"} and data["template"] == template
    assert str(data["date"]) == "2024-03-06"  # the day the screenshots show; the prompt's "today" in a run
    assert isinstance(data["cases"], list) and data["cases"]
    loaded = read_case_file(CASES / f"{template}.yaml")
    assert [case.key for case in loaded] == [f"shipped:{case['id']}" for case in data["cases"]]


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_case_has_known_keys_and_valid_values(template):
    ids = [case["id"] for case in FILES[template]["cases"]]
    assert len(ids) == len(set(ids)), "ids are unique in a file"
    for case in FILES[template]["cases"]:
        where = f"{template}/{case.get('id')}"
        assert set(case) <= KEYS and REQUIRED <= set(case), where
        assert ID.fullmatch(case["id"]), where
        assert isinstance(case["text"], str) and (case["text"].strip() or case.get("screenshots")), where
        assert case["language"] in ("en", "zh"), where
        assert case.get("channel", "widget") in ("widget", "slack", "telegram"), where
        assert case["expect"] in ("answer", "handover"), where
        if "reason" in case:
            assert case["expect"] == "handover" and case["reason"] in REASONS, where
        if case["expect"] == "handover":
            assert not case.get("must_contain") and not case.get("cite"), f"{where}: answer checks on a hand-over"
        for key in ("screenshots", "must_contain", "must_not_contain", "cite"):
            values = case.get(key, [])
            assert isinstance(values, list) and all(isinstance(v, str) and v.strip() for v in values), where
        assert isinstance(case.get("notes", ""), str) and case.get("notes"), f"{where}: say what a good answer does"


def test_every_screenshot_is_a_real_corpus_image_and_every_committed_one_is_used():
    used = {file for _, case in ALL for file in case.get("screenshots", [])}
    assert used == set(case_screenshots.used_files())
    assert used <= set(TRUTH_BY_FILE), "screenshots are corpus samples"
    assert {path.name for path in SCREENSHOTS.iterdir()} == used
    for file in used:
        with Image.open(SCREENSHOTS / file) as image:
            assert image.format == ("JPEG" if file.endswith(".jpg") else "PNG"), file
            image.verify()


def test_every_cited_article_exists_in_the_case_language():
    for name, case in ALL:
        for slug in case.get("cite", []):
            assert (PROMPTS / "knowledge" / f"{slug}.{case['language']}.md").is_file(), (name, case["id"], slug)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_design_scenario_is_played_in_english_and_chinese(scenario):
    by_language, plays = SCENARIOS[scenario]
    assert set(by_language) == {"en", "zh"}
    for language, keys in by_language.items():
        assert keys, (scenario, language)
        for key in keys:
            case = BY_KEY[key]
            assert case["language"] == language and plays(case), (scenario, key)


def test_never_say_lists_cover_every_card_iban_and_code_a_screenshot_shows():
    for name, case in ALL:
        never = set(case.get("must_not_contain", []))
        for file in case.get("screenshots", []):
            missing = [i["value"] for i in items(file) if i["kind"] in NEVER_SAID and i["value"] not in never]
            assert not missing, (name, case["id"], file, missing)


def test_given_reasons_are_what_the_policy_decides():
    for name, case in ALL:
        reason = case.get("reason")
        if reason in ("user_request", "sensitive_topic"):
            decision = policy_for(name).before_model(case["text"])
            assert decision is not None and decision.reason.value == reason, (name, case["id"])
        elif reason == "unreadable_image":
            assert not case["text"].strip() and unreadable_only(case), (name, case["id"])


def test_expected_answers_reach_the_model():
    for name, case in ALL:
        if case["expect"] == "answer":
            assert policy_for(name).before_model(case["text"]) is None, (name, case["id"])
            assert not unreadable_only(case), (name, case["id"])


def test_the_export_draws_the_committed_screenshots_again(tmp_path, capsys):
    assert case_screenshots.main([str(tmp_path)]) == 0
    assert {path.name for path in tmp_path.iterdir()} == {path.name for path in SCREENSHOTS.iterdir()}
    for committed in SCREENSHOTS.iterdir():
        with Image.open(committed) as ours, Image.open(tmp_path / committed.name) as drawn:
            assert (ours.size, ours.mode, ours.format) == (drawn.size, drawn.mode, drawn.format), committed.name
            assert ours.size == (TRUTH_BY_FILE[committed.name]["width"], TRUTH_BY_FILE[committed.name]["height"])
    assert f"{len(list(SCREENSHOTS.iterdir()))} case screenshots written" in capsys.readouterr().out


def test_the_export_refuses_what_the_corpus_does_not_draw_and_removes_what_no_case_uses(tmp_path):
    with pytest.raises(ValueError, match="router_photo.png"):
        case_screenshots.export(tmp_path, ["router_photo.png"])
    (tmp_path / "tiny_order_status_en.png").write_bytes(b"stale")
    (tmp_path / "operator-notes.txt").write_text("kept")
    removed = case_screenshots.remove_unused(tmp_path, ["router_photo.jpg"])
    assert [path.name for path in removed] == ["tiny_order_status_en.png"]
    assert (tmp_path / "operator-notes.txt").exists()
