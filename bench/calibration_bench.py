"""The regression runs' quality figures checked against a labelled set whose AUROC is known.

Negatives sit on a grid j/N and positives on the same grid shifted by a quarter, with every
tenth positive moved onto a negative's value (a tie, worth half): the AUROC follows from
counting pairs with integers, independently of the rank computation in bot/calibration.py.
"""

from __future__ import annotations

import random
from fractions import Fraction

from bot.calibration import auroc

from .figures import Figure

N = 2000
SHIFT = N // 4


def known_set() -> tuple[list[float], list[bool], Fraction]:
    negatives = list(range(N))  # scores j / N
    positives = [i + SHIFT if i % 10 else i for i in range(N)]  # every tenth lands on a negative's value
    wins = Fraction(0)
    for p in positives:
        below = min(N, p)  # negatives j < p
        tie = 1 if p < N else 0  # the negative j == p, when there is one
        wins += below + Fraction(tie, 2)
    known = wins / (N * N)
    scores = [p / N for p in positives] + [n / N for n in negatives]
    passed = [True] * N + [False] * N
    order = list(range(2 * N))
    random.Random(11).shuffle(order)  # the order cases ran in must not matter
    return [scores[i] for i in order], [passed[i] for i in order], known


def run() -> list[Figure]:
    scores, passed, known = known_set()
    computed = auroc(scores, passed)
    return [Figure("eval_auroc_selfcheck", abs(computed - float(known)), "<= 0.000001",
                   f"|AUROC computed - known| on {2 * N:,} synthetic cases with ties (known {float(known):.6f})")]
