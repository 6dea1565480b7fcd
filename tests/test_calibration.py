"""The quality figures a regression run reports, checked against values worked out by hand."""

from __future__ import annotations

import random

import pytest

from bot.calibration import auroc, expected_calibration_error, reliability, threshold_for_precision


def test_auroc_of_hand_counted_cases():
    # Passed 0.9, 0.8, 0.5 against failed 0.8, 0.3: six pairs; 0.9 beats both, 0.8 ties 0.8 (a half) and beats
    # 0.3, 0.5 loses to 0.8 and beats 0.3: 4.5 / 6.
    assert auroc([0.9, 0.8, 0.8, 0.3, 0.5], [True, False, True, False, True]) == 0.75
    assert auroc([0.1, 0.2], [False, True]) == 1.0
    assert auroc([0.1, 0.2], [True, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [True, False, True]) == 0.5  # a constant confidence tells nothing
    assert auroc([0.4, 0.6], [True, True]) is None  # no failed answer to compare with


def test_auroc_matches_the_pairwise_definition_on_random_sets():
    rng = random.Random(3)
    for _ in range(50):
        n = rng.randint(2, 40)
        scores = [round(rng.random(), 1) for _ in range(n)]  # rounded: many ties
        passed = [rng.random() < 0.6 for _ in range(n)]
        pos = [s for s, p in zip(scores, passed) if p]
        neg = [s for s, p in zip(scores, passed) if not p]
        if not pos or not neg:
            assert auroc(scores, passed) is None
            continue
        pairwise = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
        assert auroc(scores, passed) == pytest.approx(pairwise, abs=1e-12)


def test_reliability_bins_and_calibration_error():
    table = reliability([0.05, 0.15, 0.95, 1.0, 0.92], [False, False, True, True, False], bins=10)
    assert [b.count for b in table] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 3]
    last = table[-1]
    assert last.mean_confidence == pytest.approx((0.95 + 1.0 + 0.92) / 3) and last.pass_rate == pytest.approx(2 / 3)
    assert table[2].mean_confidence is None and table[2].pass_rate is None
    error = (1 * 0.05 + 1 * 0.15 + 3 * abs((0.95 + 1.0 + 0.92) / 3 - 2 / 3)) / 5
    assert expected_calibration_error(table) == pytest.approx(error)


def test_threshold_advice_keeps_the_most_answers_at_the_precision_asked():
    scores = [0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    passed = [False, True, False, True, True, True, True]
    advice = threshold_for_precision(scores, passed, 0.9)
    assert (advice.threshold, advice.kept, advice.total) == (0.6, 4, 7) and advice.precision == 1.0
    assert threshold_for_precision(scores, passed, 0.7).threshold == 0.2  # all 7 kept: 5 pass, 0.71
    assert threshold_for_precision(scores, passed, 0.75).threshold == 0.4  # 6 kept, 5 pass: 0.83
    assert threshold_for_precision([0.9], [False], 0.5) is None


def test_the_benchmark_set_has_the_auroc_it_was_built_with():
    from bench.calibration_bench import known_set

    scores, passed, known = known_set()
    assert abs(auroc(scores, passed) - float(known)) <= 1e-6
