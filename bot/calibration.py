"""How well a confidence separates answers that pass from answers that fail.

A regression run gives, per answered case, the bot's confidence and whether the answer passed
its checks. An operator needs three things from that: whether confidence means anything at all
(AUROC: the chance a passing answer outranks a failing one; 0.5 is a coin), whether its values
can be read as probabilities (a reliability table: stated confidence against the pass rate, bin
by bin), and which hand-over threshold reaches the precision they want among the answers kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def auroc(scores: Sequence[float], passed: Sequence[bool]) -> float | None:
    """Area under the ROC curve of `scores` for telling passed (True) from failed cases: the
    Mann-Whitney statistic with ties counted as half. None when either class is empty."""
    if len(scores) != len(passed):
        raise ValueError(f"{len(scores)} scores for {len(passed)} outcomes")
    positives = sum(1 for p in passed if p)
    negatives = len(passed) - positives
    if positives == 0 or negatives == 0:
        return None
    # Average ranks over ties, then the rank sum of the positives.
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        average = (start + end) / 2 + 1
        for k in range(start, end + 1):
            ranks[order[k]] = average
        start = end + 1
    rank_sum = sum(rank for rank, p in zip(ranks, passed) if p)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    count: int
    mean_confidence: float | None
    pass_rate: float | None


def reliability(scores: Sequence[float], passed: Sequence[bool], bins: int = 10) -> list[ReliabilityBin]:
    """Stated confidence against the observed pass rate, in `bins` equal-width bins over [0, 1]
    (a confidence of exactly 1 falls in the last bin)."""
    grouped: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for score, ok in zip(scores, passed):
        grouped[min(bins - 1, max(0, int(score * bins)))].append((score, ok))
    table = []
    for index, members in enumerate(grouped):
        count = len(members)
        table.append(ReliabilityBin(
            index / bins, (index + 1) / bins, count,
            sum(s for s, _ in members) / count if count else None,
            sum(1 for _, ok in members if ok) / count if count else None,
        ))
    return table


def expected_calibration_error(table: Sequence[ReliabilityBin]) -> float | None:
    total = sum(b.count for b in table)
    if not total:
        return None
    return sum(b.count * abs(b.mean_confidence - b.pass_rate) for b in table if b.count) / total


@dataclass(frozen=True)
class ThresholdAdvice:
    threshold: float  # hand over below this confidence
    precision: float  # share of the answers kept that pass
    kept: int  # answers kept (the rest would be handed over)
    total: int


def threshold_for_precision(scores: Sequence[float], passed: Sequence[bool], target: float) -> ThresholdAdvice | None:
    """The lowest threshold whose kept answers (confidence >= threshold) pass at `target`
    precision or better: the most answers at that quality. None when no threshold reaches it."""
    candidates = sorted(set(scores))
    for threshold in candidates:
        kept = [ok for score, ok in zip(scores, passed) if score >= threshold]
        precision = sum(kept) / len(kept)
        if precision >= target:
            return ThresholdAdvice(threshold, precision, len(kept), len(scores))
    return None
