"""Expected calibration error, Brier score and reliability bins against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from afa_llm.evaluation.metrics import brier_by_example, brier_score, expected_calibration_error, reliability_bins, softmax

# confidence (max prob), prediction (argmax, first on ties), label, correct, 15-bin index
#   0.60  0  0  yes  8   (0.533, 0.600]: an edge value falls in the lower bin
#   0.90  0  1  no   13  (0.867, 0.933]
#   0.88  0  0  yes  13
#   0.80  1  1  yes  11  (0.733, 0.800]
#   0.50  0  0  yes  7   (0.467, 0.533]: a tie predicts the first class
PROBS = np.array([[0.6, 0.4], [0.9, 0.1], [0.88, 0.12], [0.2, 0.8], [0.5, 0.5]])
LABELS = [0, 1, 0, 1, 0]


def test_reliability_bins_by_hand():
    table = reliability_bins(PROBS, LABELS)
    assert len(table) == 15 and table[0]["low"] == 0 and table[-1]["high"] == 1
    filled = {b: row for b, row in enumerate(table) if row["count"]}
    assert sorted(filled) == [7, 8, 11, 13]
    assert filled[13]["count"] == 2
    assert filled[13]["accuracy"] == pytest.approx(0.5)
    assert filled[13]["confidence"] == pytest.approx(0.89)
    assert filled[8]["confidence"] == pytest.approx(0.6) and filled[8]["accuracy"] == 1.0
    assert table[0]["accuracy"] is None and table[0]["confidence"] is None


def test_expected_calibration_error_by_hand():
    # bins 8, 11, 7: one example each, correct, gaps 0.4, 0.2, 0.5; bin 13: two examples, |0.5 - 0.89| = 0.39
    expected = (0.4 + 0.2 + 0.5) / 5 + 2 / 5 * 0.39
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(expected)  # 0.376
    assert expected_calibration_error(PROBS, LABELS, bins=1) == pytest.approx(abs(0.8 - 3.68 / 5))


def test_ece_is_zero_when_confident_and_right():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, [0, 1]) == 0.0
    assert expected_calibration_error(probs, [1, 0]) == pytest.approx(1.0)


def test_brier_score_by_hand():
    # rows: 0.16+0.16, 0.81+0.81, 0.0144+0.0144, 0.04+0.04, 0.25+0.25 -> 2.5488 / 5
    assert brier_score(PROBS, LABELS) == pytest.approx(2.5488 / 5)
    three = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    # 0.49 + 0.04 + 0.81 = 1.34; uniform over 3 classes: (2/3)^2 + 2 (1/3)^2 = 2/3
    assert brier_score(three, [2, 0]) == pytest.approx((1.34 + 2 / 3) / 2)
    assert brier_score(np.eye(3), [0, 1, 2]) == 0.0
    assert brier_score(np.eye(2), [1, 0]) == pytest.approx(2.0)


def test_softmax_is_stable_and_normalised():
    probs = softmax(np.array([[1000.0, 1000.0 + np.log(3.0)], [0.0, 0.0]]))
    np.testing.assert_allclose(probs, [[0.25, 0.75], [0.5, 0.5]])


def test_brier_by_example_by_hand():
    probs = [[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]]
    terms = brier_by_example(probs, [0, 2])
    assert terms == pytest.approx([0.09 + 0.04 + 0.01, 0.25 + 0.25 + 1.0])
    assert brier_score(probs, [0, 2]) == pytest.approx(terms.mean())
