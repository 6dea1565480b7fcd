"""The figures of a run, per version, and what changed between the two versions.

Definitions (shown in the console beside each figure):
- pass rate: cases that passed every check, of all cases (an engine failure is a failure);
- hand-over precision: of the cases the version handed over, those that should be; recall: of
  the cases that should be handed over, those it handed over (an engine failure counts as
  getting it wrong, whatever the outcome looked like);
- answer checks: the contains / never-contains / cites checks that held, of those applied;
- calibration: over the cases where the model answered with a confidence, how well that
  confidence separates answers that pass from answers that fail (AUROC), and a reliability table;
- threshold advice: the lowest confidence threshold at which the answers kept would pass at the
  target precision.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Iterable, Sequence

from ..calibration import auroc, expected_calibration_error, reliability, threshold_for_precision
from .cases import Case
from .checks import Verdict, good_answer
from .turn import TurnResult

DEFAULT_TARGET_PRECISION = 0.9
ARMS = ("draft", "live")


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def summary(pairs: Sequence[tuple[Case, TurnResult, Verdict]], target_precision: float = DEFAULT_TARGET_PRECISION,
            threshold: float | None = None) -> dict[str, Any]:
    """The totals of one version over the cases it ran (`threshold`: the version's own)."""
    total = len(pairs)
    passed = sum(v.passed for _, _, v in pairs)
    errors = sum(1 for _, r, _ in pairs if r.error)
    handed = [(c, r) for c, r, _ in pairs if r.outcome == "handover" and not r.error]
    should = [(c, r) for c, r, _ in pairs if c.expect == "handover"]
    right_handovers = sum(1 for c, _ in handed if c.expect == "handover")
    caught = sum(1 for _, r in should if r.outcome == "handover" and not r.error)
    checks = sum(v.checks for _, _, v in pairs)
    checks_passed = sum(v.checks_passed for _, _, v in pairs)
    # Calibration: answers the model gave with a confidence, labelled by whether they are good
    # answers to give (the case wants an answer and the text passes its checks).
    scored = [(r.confidence, good_answer(c, r)) for c, r, v in pairs
              if r.model_called and r.confidence is not None and not r.error and r.reason != "model_declined"]
    scores, good = [s for s, _ in scored], [g for _, g in scored]
    table = reliability(scores, good, bins=5)
    advice = threshold_for_precision(scores, good, target_precision) if scored else None
    latencies = sorted(r.latency_s for _, r, _ in pairs if r.latency_s is not None)
    return {
        "cases": total, "passed": passed, "failed": total - passed, "pass_rate": _ratio(passed, total),
        "engine_errors": errors,
        "handover_precision": _ratio(right_handovers, len(handed)), "handovers": len(handed),
        "handover_recall": _ratio(caught, len(should)), "handovers_expected": len(should),
        "answer_checks": checks, "answer_checks_passed": checks_passed,
        "answer_check_rate": _ratio(checks_passed, checks),
        "confidence_auroc": _round(auroc(scores, good)) if scored else None,
        "calibration_cases": len(scored),
        "expected_calibration_error": _round(expected_calibration_error(table)),
        "reliability": [asdict(b) for b in table],
        "threshold": threshold,
        "threshold_advice": None if advice is None else {
            "target_precision": target_precision, "threshold": round(advice.threshold, 4),
            "precision": round(advice.precision, 4), "kept": advice.kept, "of": advice.total,
        },
        "tokens": sum(r.prompt_tokens + r.completion_tokens for _, r, _ in pairs),
        "latency_s_median": latencies[len(latencies) // 2] if latencies else None,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def case_change(draft: dict | None, live: dict | None) -> str:
    """How one case moved from the live version to the draft: fixed, broken, changed, same."""
    if draft is None or live is None:
        return "incomplete"
    if draft["passed"] and not live["passed"]:
        return "fixed"
    if live["passed"] and not draft["passed"]:
        return "broken"
    if draft["outcome"] != live["outcome"] or draft["reply"] != live["reply"]:
        return "changed"
    return "same"


def comparison(draft: dict | None, live: dict | None) -> dict[str, Any]:
    """Whether the draft does worse than the live version, and in what, for publishing."""
    if not draft or not live:
        return {"worse": False, "why": []}
    why = []
    for key, name in (("pass_rate", "pass rate"), ("handover_recall", "hand-over recall"),
                      ("handover_precision", "hand-over precision"), ("answer_check_rate", "answer checks")):
        d, l = draft.get(key), live.get(key)
        if d is not None and l is not None and d < l:
            why.append(f"{name} {d:.0%} against {l:.0%} live")
    return {"worse": bool(why), "why": why}


def counts_by_change(changes: Iterable[str]) -> dict[str, int]:
    out = {"fixed": 0, "broken": 0, "changed": 0, "same": 0, "incomplete": 0}
    for change in changes:
        out[change] += 1
    return out
