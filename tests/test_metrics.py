"""Tests of afa_llm.evaluation.metrics on hand-computed examples."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from afa_llm.evaluation.metrics import (classification_report, confusion_matrix, f1_by_class,
                                        mcnemar_test, paired_bootstrap, reports_mcnemar_p,
                                        seed_pooled_f1_test, seed_pooled_test)

LABELS = [0, 0, 0, 1, 1, 1, 1, 2]
PREDS = [0, 1, 0, 1, 1, 0, 2, 2]
NAMES = ["negative", "neutral", "positive"]


def test_confusion_matrix_rows_are_true_classes():
    assert confusion_matrix(LABELS, PREDS, 3).tolist() == [[2, 1, 0], [1, 2, 1], [0, 0, 1]]


def test_classification_report_on_a_hand_example():
    report = classification_report(LABELS, PREDS, NAMES)
    assert report["n"] == 8
    assert report["accuracy"] == pytest.approx(5 / 8)
    # precision 2/3, 2/3, 1/2; recall 2/3, 1/2, 1; F1 2/3, 4/7, 2/3.
    assert report["macro_f1"] == pytest.approx((2 / 3 + 4 / 7 + 2 / 3) / 3)
    expected = {
        "negative": (2 / 3, 2 / 3, 2 / 3, 3),
        "neutral": (2 / 3, 1 / 2, 4 / 7, 4),
        "positive": (1 / 2, 1.0, 2 / 3, 1),
    }
    for name, (p, r, f, s) in expected.items():
        row = report["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p, r, f))
        assert row["support"] == s
    assert report["confusion_matrix"] == [[2, 1, 0], [1, 2, 1], [0, 0, 1]]


def test_report_with_an_absent_class_counts_it_as_zero_f1():
    report = classification_report([0, 1, 0, 1], [0, 1, 1, 1], NAMES)
    assert report["accuracy"] == pytest.approx(0.75)
    assert report["per_class"]["positive"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    f1_neg, f1_neu = 2 * 1 * 0.5 / 1.5, 2 * (2 / 3) * 1 / (5 / 3)
    assert report["macro_f1"] == pytest.approx((f1_neg + f1_neu) / 3)
    assert all(math.isfinite(v["f1"]) for v in report["per_class"].values())


def test_perfect_predictions():
    report = classification_report([0, 1, 1, 0], [0, 1, 1, 0], ["negative", "positive"])
    assert report["accuracy"] == 1.0 and report["macro_f1"] == 1.0


def _pairs(only_a: int, only_b: int, both: int = 3, neither: int = 2):
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * neither
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * neither
    return a, b


@pytest.mark.parametrize(
    "only_a, only_b, p",
    [
        (5, 0, 2 / 32),
        (10, 2, 2 * (1 + 12 + 66) / 4096),
        (3, 3, 1.0),
        (0, 0, 1.0),
    ],
)
def test_mcnemar_exact_p_values(only_a, only_b, p):
    result = mcnemar_test(*_pairs(only_a, only_b))
    assert result == {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": pytest.approx(p)}
    swapped = mcnemar_test(*reversed(_pairs(only_a, only_b)))
    assert swapped["p_value"] == pytest.approx(p)
    assert (swapped["only_a_correct"], swapped["only_b_correct"]) == (only_b, only_a)


def test_reports_mcnemar_p_pairs_per_example_correctness():
    labels = [0, 1] * 5
    right = {"predictions": labels, "labels": labels}
    five_wrong = {"predictions": [1 - y if i < 5 else y for i, y in enumerate(labels)], "labels": labels}
    assert reports_mcnemar_p(right, five_wrong) == pytest.approx(2 / 32)
    assert reports_mcnemar_p(right, right) == 1.0


def test_mcnemar_large_counts_stay_finite():
    # chi-square approximation: (600 - 500)^2 / 1100 = 9.09 -> p ~ 0.0026.
    assert 0.001 < mcnemar_test(*_pairs(600, 500))["p_value"] < 0.005
    assert mcnemar_test(*_pairs(3000, 2000))["p_value"] < 1e-40


def test_paired_bootstrap_sanity():
    a, b = _pairs(0, 0, both=10, neither=10)
    assert paired_bootstrap(a, b) == {"diff": 0.0, "ci95": [0.0, 0.0]}
    assert paired_bootstrap([True] * 20, [False] * 20) == {"diff": 1.0, "ci95": [1.0, 1.0]}

    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.8
    b = rng.random(400) < 0.6
    result = paired_bootstrap(a, b, samples=1000, seed=1)
    assert result["diff"] == pytest.approx(a.mean() - b.mean())
    low, high = result["ci95"]
    assert low < result["diff"] < high
    assert 0.0 < low and high < 0.4  # a is clearly better
    assert paired_bootstrap(a, b, samples=1000, seed=1) == result  # seeded
    assert paired_bootstrap(a, b, samples=1000, seed=2)["ci95"] != result["ci95"]
    swapped = paired_bootstrap(b, a, samples=1000, seed=1)
    assert swapped["diff"] == pytest.approx(-result["diff"])
    assert swapped["ci95"] == pytest.approx([-high, -low])


def test_seed_pooled_test_units_are_examples():
    rng = np.random.default_rng(0)
    same = rng.random((3, 300)) < 0.7
    tie = seed_pooled_test(same, same, samples=2000)
    assert tie == {"diff": 0.0, "ci95": [0.0, 0.0], "p_value": 1.0}

    a = rng.random((3, 400)) < 0.8
    b = rng.random((3, 400)) < 0.6
    result = seed_pooled_test(a, b, samples=2000, seed=1)
    assert result["diff"] == pytest.approx((a.mean(1) - b.mean(1)).mean())  # = the mean of the per-seed differences
    low, high = result["ci95"]
    assert 0.0 < low < result["diff"] < high
    assert 0 < result["p_value"] < 1e-9  # exact: hardly any sign pattern reaches a 20-point gap
    swapped = seed_pooled_test(b, a, samples=2000, seed=1)
    assert swapped["diff"] == pytest.approx(-result["diff"]) and swapped["p_value"] == result["p_value"]


def test_seed_pooled_test_does_not_count_an_example_once_per_seed():
    # 3 seeds that repeat one run (a wins 12 examples, b 4): pooling discordant pairs over seeds
    # would see 36 vs 12 (McNemar p < 0.001); the examples are 12 vs 4, as for one seed.
    a = np.array([True] * 12 + [False] * 4 + [True] * 50)
    b = np.array([False] * 12 + [True] * 4 + [True] * 50)
    one_seed = mcnemar_test(a, b)["p_value"]
    assert mcnemar_test(np.tile(a, 3), np.tile(b, 3))["p_value"] < 0.001 < one_seed
    pooled = seed_pooled_test(np.tile(a, (3, 1)), np.tile(b, (3, 1)), samples=2000)
    assert pooled["p_value"] == pytest.approx(one_seed, rel=1e-9)  # one seed's sign flips are McNemar's binomial
    with pytest.raises(ValueError, match="shapes differ"):
        seed_pooled_test(np.tile(a, (3, 1)), np.tile(b, (2, 1)))


def test_exact_sign_flip_p_matches_enumeration_and_sampling():
    from itertools import product

    from afa_llm.evaluation.metrics import exact_sign_flip_p

    diffs = np.array([3, -1, 2, 2, 0, 1, -3, 2, 1, 1])
    sums = [abs(np.dot(signs, diffs)) for signs in product([-1, 1], repeat=len(diffs))]
    brute = np.mean([s >= abs(diffs.sum()) for s in sums])
    assert exact_sign_flip_p(diffs) == pytest.approx(brute, rel=1e-12)
    assert exact_sign_flip_p(-diffs) == pytest.approx(brute, rel=1e-12)
    assert exact_sign_flip_p(np.zeros(5, int)) == 1.0
    rng = np.random.default_rng(0)
    big = rng.integers(-3, 4, 200) + 2 * (rng.random(200) < 0.2)
    draws = np.abs(rng.choice(np.array([-1, 1], np.int8), size=(50000, 200)) @ big) >= abs(big.sum())
    assert exact_sign_flip_p(big) == pytest.approx(draws.mean(), abs=0.005)


def test_student_t_p_matches_closed_forms():
    import math

    from afa_llm.evaluation.metrics import paired_t_test, student_t_two_sided_p

    for t in (0.5, 1.0, 3.0, 10.0):
        assert student_t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-7)
        assert student_t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-7)
    assert student_t_two_sided_p(1.96, 100000) == pytest.approx(0.05, abs=1e-3)  # the normal limit
    # three seeds: differences 0.10, 0.12, 0.14 -> t = 0.12 / (0.02 / sqrt 3), df 2
    out = paired_t_test([0.30, 0.32, 0.34], [0.20, 0.20, 0.20])
    t = 0.12 / (0.02 / math.sqrt(3))
    assert out["diff"] == pytest.approx(0.12) and out["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-7)
    assert math.isnan(paired_t_test([0.3], [0.2])["p_value"])


# ---- F1 tests (macro-F1, one class's F1) --------------------------------------------------------
def test_f1_by_class_matches_the_classification_report():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 50)
    preds = np.stack([rng.integers(0, 3, 50), np.where(rng.random(50) < 0.7, labels, 0)])
    rows = f1_by_class(labels, preds, 3)
    for row, p in zip(rows, preds):
        report = classification_report(labels, p, ["a", "b", "c"])
        assert row == pytest.approx([report["per_class"][c]["f1"] for c in "abc"])
        assert row.mean() == pytest.approx(report["macro_f1"])
    assert f1_by_class([0, 0], np.array([0, 0]), 3).tolist() == [1.0, 0.0, 0.0]  # absent and never predicted


def test_seed_pooled_f1_test_matches_exact_enumeration():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    a = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])
    b = np.array([0, 1, 1, 1, 0, 0, 2, 2, 1, 1])

    def macro(pa, pb):
        return f1_by_class(labels, pa, 3).mean() - f1_by_class(labels, pb, 3).mean()

    observed = macro(a, b)
    swaps = np.array(list(itertools.product([False, True], repeat=len(labels))))
    exact = np.mean([abs(macro(np.where(s, b, a), np.where(s, a, b))) >= abs(observed) - 1e-12 for s in swaps])
    result = seed_pooled_f1_test(a, b, labels, 3, samples=20000)
    assert result["diff"] == pytest.approx(observed)
    assert result["p_value"] == pytest.approx(exact, abs=0.015)
    assert 0.0 < exact < 1.0
    # one class's F1: its own difference
    one = seed_pooled_f1_test(a, b, labels, 3, class_index=2, samples=200)
    assert one["diff"] == pytest.approx(f1_by_class(labels, a, 3)[2] - f1_by_class(labels, b, 3)[2])


def test_seed_pooled_f1_test_units_are_examples():
    labels = np.repeat([0, 1, 2], 40)
    rng = np.random.default_rng(3)
    a = np.where(rng.random(120) < 0.8, labels, (labels + 1) % 3)
    b = np.where(rng.random(120) < 0.5, labels, (labels + 1) % 3)
    tie = seed_pooled_f1_test(np.tile(a, (3, 1)), np.tile(a, (3, 1)), labels, 3, samples=500)
    assert tie == {"diff": 0.0, "p_value": 1.0}
    one = seed_pooled_f1_test(a, b, labels, 3, samples=2000)
    three = seed_pooled_f1_test(np.tile(a, (3, 1)), np.tile(b, (3, 1)), labels, 3, samples=2000)
    assert one["p_value"] < 0.01 and three == pytest.approx(one)  # copies of one seed are no new evidence
    with pytest.raises(ValueError, match="shapes differ"):
        seed_pooled_f1_test(np.tile(a, (3, 1)), np.tile(b, (2, 1)), labels, 3)
