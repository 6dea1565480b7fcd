"""Escalation rules measured on labelled support messages (no model, well under a second).

`bench/data/escalation_messages.jsonl` holds real-looking messages in English and Chinese,
one JSON object a line: ``text``, ``lang``, and what a support lead would say about it:
``wants_human`` (the user asks for a person now), ``sensitive`` (a topic a person must
handle: money back, legal, account deletion, fraud, data breaches), ``not_helpful`` (the
user says what was tried or suggested did not work) and ``after_answer`` (the bot had
already answered in this hand-over episode). Most of the file is near-misses: "agent",
"person", "someone", 人, 客服 in senses that are not a request; "refundable" next to
"refund". The figures compare `EscalationPolicy`'s matchers with those labels, and
``repeated_failure`` compares whole `decide` outcomes (a user who says it did not help is
handed over only when the bot had answered before).

    python -m bench.escalation_bench          # the figures
    python -m bench.escalation_bench --show   # also every message the rules get wrong
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bot.escalation import EscalationPolicy, Reason
from engine.base import Generation, Timings

from .figures import Figure, print_figures

DATA = Path(__file__).resolve().parent / "data" / "escalation_messages.jsonl"

PRECISION_TARGET = ">= 0.95"
RECALL_TARGET = ">= 0.90"


@dataclass(frozen=True)
class Case:
    text: str
    lang: str
    wants_human: bool
    sensitive: bool
    not_helpful: bool
    after_answer: bool
    note: str


def load_cases(path: Path | str = DATA) -> list[Case]:
    cases = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            try:
                cases.append(Case(
                    text=row["text"], lang=row["lang"], wants_human=bool(row["wants_human"]),
                    sensitive=bool(row["sensitive"]), not_helpful=bool(row["not_helpful"]),
                    after_answer=bool(row["after_answer"]), note=row.get("note", ""),
                ))
            except KeyError as exc:
                raise ValueError(f"{path}:{number}: missing {exc}") from None
    return cases


def _confident_answer() -> Generation:
    return Generation(
        text="Here is what to do.", finish_reason="stop", token_logprobs=(-0.01,) * 8,
        token_ids=tuple(range(8)), prompt_tokens=100, completion_tokens=8,
        timings=Timings(queued_ms=0.0, first_token_ms=1.0, total_ms=2.0),
    )


def predictions(policy: EscalationPolicy, cases: list[Case]) -> dict[str, list[tuple[bool, bool, Case]]]:
    """For each check: (expected, predicted, case) per message."""
    generation = _confident_answer()
    out: dict[str, list[tuple[bool, bool, Case]]] = {
        "request": [], "sensitive": [], "not_helpful": [], "repeated_failure": [],
    }
    for case in cases:
        out["request"].append((case.wants_human, policy.wants_human(case.text), case))
        out["sensitive"].append((case.sensitive, policy.sensitive_topic(case.text) is not None, case))
        out["not_helpful"].append((case.not_helpful, policy.said_not_helpful(case.text), case))
        decision = policy.decide(user_text=case.text, generation=generation, earlier_answer=case.after_answer)
        expected = case.not_helpful and case.after_answer and not case.wants_human and not case.sensitive
        out["repeated_failure"].append((expected, decision.reason is Reason.REPEATED_FAILURE, case))
    return out


def precision_recall(rows: list[tuple[bool, bool, Case]]) -> tuple[float, float]:
    tp = sum(1 for expected, got, _ in rows if expected and got)
    fp = sum(1 for expected, got, _ in rows if got and not expected)
    fn = sum(1 for expected, got, _ in rows if expected and not got)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return precision, recall


def measure(policy: EscalationPolicy | None = None, path: Path | str = DATA) -> dict[str, float]:
    """Every figure by name, as plain numbers (for tests)."""
    cases = load_cases(path)
    results = predictions(policy or EscalationPolicy(), cases)
    figures: dict[str, float] = {"escalation_cases": float(len(cases))}
    for check, rows in results.items():
        precision, recall = precision_recall(rows)
        figures[f"escalation_{check}_precision"] = precision
        figures[f"escalation_{check}_recall"] = recall
    return figures


_WHAT = {
    "request": "the user asks for a person",
    "sensitive": "a sensitive topic",
    "not_helpful": "the user says it did not help",
    "repeated_failure": "decide() says repeated_failure (only after an earlier answer)",
}


def run() -> list[Figure]:
    values = measure()
    n = int(values["escalation_cases"])
    figures = [Figure("escalation_cases", n, "", f"labelled messages in {DATA.relative_to(DATA.parents[2])}, en and zh")]
    for check in ("request", "sensitive", "not_helpful", "repeated_failure"):
        strict = check in ("request", "sensitive")
        figures.append(Figure(
            f"escalation_{check}_precision", round(values[f"escalation_{check}_precision"], 3),
            PRECISION_TARGET if strict else "", f"share of messages flagged as {_WHAT[check]} that are, {n} messages",
        ))
        figures.append(Figure(
            f"escalation_{check}_recall", round(values[f"escalation_{check}_recall"], 3),
            RECALL_TARGET if strict else "", f"share of messages with {_WHAT[check]} that are flagged, {n} messages",
        ))
    return figures


def show_mistakes() -> None:
    results = predictions(EscalationPolicy(), load_cases())
    for check, rows in results.items():
        for expected, got, case in rows:
            if expected != got:
                kind = "missed" if expected else "false alarm"
                after = " (after an answer)" if case.after_answer else ""
                print(f"{check:<16} {kind:<11} {case.text!r}{after}  -- {case.note}")


if __name__ == "__main__":
    print_figures(run())
    if "--show" in sys.argv[1:]:
        print()
        show_mistakes()
