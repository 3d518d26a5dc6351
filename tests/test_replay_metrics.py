"""AUC (Mann-Whitney, ties = 0.5), verdict flips and the weighted pass rate on known data."""

from __future__ import annotations

import random

import pytest

from engine.replay.metrics import CriterionFlips, agreement_rate, auc, count_flips


def _brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    total = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return total / (len(pos) * len(neg))


def test_auc_known_values():
    assert auc([0.9, 0.8, 0.7, 0.1], [True, True, False, False]) == 1.0
    assert auc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auc([0.9, 0.8, 0.3, 0.3], [True, False, True, False]) == pytest.approx(0.625)
    assert auc([0.5] * 6, [True, False] * 3) == 0.5  # all tied: no separation


def test_auc_undefined_without_both_classes_and_skips_unknowns():
    assert auc([0.1, 0.9], [True, True]) is None
    assert auc([], []) is None
    assert auc([0.9, None, 0.1, 0.5], [True, False, False, None]) == 1.0


def test_auc_matches_pairwise_definition_on_random_data():
    rng = random.Random(7)
    for _ in range(50):
        n = rng.randint(2, 40)
        scores = [rng.choice([0.0, 0.25, 0.5, 0.75, 1.0, rng.random()]) for _ in range(n)]
        labels = [rng.random() < 0.5 for _ in range(n)]
        if all(labels) or not any(labels):
            continue
        assert auc(scores, labels) == pytest.approx(_brute_auc(scores, labels))


def test_flips_and_agreement():
    crits = [CriterionFlips("c1", "a", 5), CriterionFlips("c2", "b", 1)]
    count_flips([True, True], [True, False], crits)
    count_flips([False, True], [True, True], crits)
    count_flips(None, [True, True], crits)  # an answer without old verdicts is not compared
    assert (crits[0].judged, crits[0].agree, crits[0].false_to_true, crits[0].true_to_false) == (2, 1, 1, 0)
    assert (crits[1].judged, crits[1].agree, crits[1].false_to_true, crits[1].true_to_false) == (2, 1, 0, 1)
    assert agreement_rate(crits) == 0.5
    assert agreement_rate([]) is None
