"""Whether one case passed: what a user would notice, checked the same way for every version.

An engine failure or timeout is a failure whatever the case expected: a hand-over that only
happened because the model broke proves nothing about the template.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from .cases import Case
from .turn import TurnResult


@dataclass(frozen=True)
class Verdict:
    passed: bool
    failures: tuple[str, ...]
    checks: int  # answer checks applied (contains, never contains, cites)
    checks_passed: int


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().casefold()


def article_slug(source: str, url: str = "") -> str:
    """"prompts/knowledge/auto-renewal.en.md" and "https://help.example/auto-renewal" -> "auto-renewal"."""
    if source.startswith("upload:"):  # a file an operator uploaded: its name
        source = source.split(":", 1)[1]
    where = source if source and "://" not in source else (urlsplit(url or source).path or "")
    name = PurePosixPath(where.replace("\\", "/")).name
    return name.split(".", 1)[0].casefold()


def _cites(wanted: str, cited: tuple[dict, ...]) -> bool:
    wanted = wanted.casefold()
    return any(wanted in (c.get("slug", ""), str(c.get("title", "")).casefold()) for c in cited)


def judge(case: Case, result: TurnResult) -> Verdict:
    failures: list[str] = []
    if result.error:
        failures.append(f"the engine failed: {result.error}")
    if result.outcome != case.expect:
        got = "a hand-over" + (f" ({result.reason})" if result.reason else "") if result.outcome == "handover" \
            else "an answer"
        failures.append(f"expected {'an answer' if case.expect == 'answer' else 'a hand-over'}, got {got}")
    elif case.expect == "handover" and case.reason and result.reason != case.reason:
        failures.append(f"expected the reason {case.reason}, got {result.reason}")
    checks = passed = 0
    said = _norm(f"{result.reply}\n{result.detail}")
    for text in case.must_not_contain:
        checks += 1
        if _norm(text) in said:
            failures.append(f"says \u201c{text}\u201d, which it must never say")
        else:
            passed += 1
    if case.expect == "answer" and result.outcome == "answer":
        answer = _norm(result.reply)
        for text in case.must_contain:
            checks += 1
            if _norm(text) in answer:
                passed += 1
            else:
                failures.append(f"the answer does not say \u201c{text}\u201d")
        for article in case.cite:
            checks += 1
            if _cites(article, result.cited):
                passed += 1
            else:
                failures.append(f"the answer does not cite \u201c{article}\u201d")
    return Verdict(not failures, tuple(failures), checks, passed)


def good_answer(case: Case, result: TurnResult) -> bool:
    """Whether the model's text would be a good answer to give, whatever the policy then did
    with it: the case wants an answer, and the text passes its answer checks. What a
    confidence is measured against."""
    if case.expect != "answer" or result.error:
        return False
    said = _norm(result.reply)
    return (all(_norm(t) in said for t in case.must_contain)
            and not any(_norm(t) in _norm(f"{result.reply}\n{result.detail}") for t in case.must_not_contain)
            and all(_cites(a, result.cited) for a in case.cite))
