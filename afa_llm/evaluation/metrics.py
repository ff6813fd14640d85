"""Classification metrics and paired significance tests (numpy only)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def confusion_matrix(labels: Sequence[int], preds: Sequence[int], num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=int), np.asarray(preds, dtype=int)), 1)
    return matrix


def classification_report(labels: Sequence[int], preds: Sequence[int], label_names: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix."""
    matrix = confusion_matrix(labels, preds, len(label_names))
    true_pos = np.diag(matrix).astype(float)
    predicted = matrix.sum(0).astype(float)
    actual = matrix.sum(1).astype(float)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, actual, out=np.zeros_like(true_pos), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    n = int(matrix.sum())
    return {
        "n": n,
        "accuracy": float(true_pos.sum() / n) if n else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1, actual)
        },
        "confusion_matrix": matrix.tolist(),
    }


def mcnemar_test(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict:
    """Exact two-sided McNemar test on paired per-example correctness."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    k = min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": p}


def report_correct(report: dict) -> np.ndarray:
    """Per-example correctness of an evaluation report (its ``predictions`` and ``labels``)."""
    return np.asarray(report["predictions"]) == np.asarray(report["labels"])


def reports_mcnemar_p(report_a: dict, report_b: dict) -> float:
    """`mcnemar_test`'s p-value for two evaluation reports of the same examples."""
    return mcnemar_test(report_correct(report_a), report_correct(report_b))["p_value"]


def paired_bootstrap(
    correct_a: Sequence[bool], correct_b: Sequence[bool], samples: int = 2000, seed: int = 0
) -> dict:
    """Bootstrap the accuracy difference a - b over examples: mean and 95% interval."""
    a, b = np.asarray(correct_a, float), np.asarray(correct_b, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(samples, len(a)))
    diffs = a[idx].mean(1) - b[idx].mean(1)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"diff": float(a.mean() - b.mean()), "ci95": [float(low), float(high)]}


def seed_pooled_test(correct_a: np.ndarray, correct_b: np.ndarray, samples: int = 10000, seed: int = 0) -> dict:
    """Pool a paired comparison over seeds scored on the same test examples.

    ``correct_a``/``correct_b``: (seeds, examples) correctness. The examples are the independent
    units (every seed sees the same ones), so each example contributes its seed-mean difference
    d_i; pooling discordant pairs over seeds instead would count each example once per seed and
    overstate the evidence. Returns the mean difference, a 95% bootstrap interval over examples,
    and the two-sided p of the sign-flip test (under the null, swapping a and b for an example, in
    all seeds at once, changes nothing): exact (`exact_sign_flip_p`) where the values are correctness,
    else from FLIP_DRAWS sign draws; ``samples`` draws the bootstrap.
    """
    a, b = np.atleast_2d(np.asarray(correct_a, float)), np.atleast_2d(np.asarray(correct_b, float))
    if a.shape != b.shape:
        raise ValueError(f"correctness shapes differ: {a.shape} vs {b.shape}")
    d = (a - b).mean(0)
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, len(d), size=(samples, len(d)))].mean(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    summed = (a - b).sum(0)
    if np.array_equal(summed, np.rint(summed)):  # correctness: exact
        p = exact_sign_flip_p(np.rint(summed).astype(np.int64))
    else:  # real-valued scores (e.g. each example's Brier): sampled
        p = sampled_sign_flip_p(d, FLIP_DRAWS, seed)
    return {"diff": float(d.mean()), "ci95": [float(low), float(high)], "p_value": p}


FLIP_DRAWS = 100_000


def sampled_sign_flip_p(d: np.ndarray, draws: int, seed: int = 0, chunk: int = 2_000) -> float:
    """Two-sided sign-flip p of real paired differences ``d`` from ``draws`` random sign patterns."""
    rng = np.random.default_rng([seed, 0x5F])
    observed, exceed = abs(d.sum()), 0
    for start in range(0, draws, chunk):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(chunk, draws - start), len(d)))
        exceed += int((np.abs(signs @ d) >= observed - 1e-12).sum())
    return min(1.0, (1 + exceed) / (1 + draws))


def exact_sign_flip_p(diffs: np.ndarray) -> float:
    """Two-sided p of the sign-flip test on integer paired differences, by exact enumeration:
    P(|sum_i s_i diffs_i| >= |sum_i diffs_i|) over independent fair signs s_i. The differences of a
    paired correctness comparison summed over S seeds lie in [-S, S], so the 2^n sign patterns collapse
    to one binomial per distinct |diff| value, convolved (n * S + 1 possible sums)."""
    from scipy.stats import binom

    magnitudes = np.abs(np.asarray(diffs, dtype=np.int64))
    magnitudes = magnitudes[magnitudes > 0]
    dist, offset = np.ones(1), 0  # dist[j] = P(sum = j - offset)
    for value, count in zip(*np.unique(magnitudes, return_counts=True)):
        spread = np.zeros(2 * value * count + 1)  # value * (2B - count), B ~ Binomial(count, 1/2)
        spread[:: 2 * value] = binom.pmf(np.arange(count + 1), count, 0.5)
        dist, offset = np.convolve(dist, spread), offset + value * count
    observed = abs(int(np.sum(diffs)))
    sums = np.abs(np.arange(len(dist)) - offset)
    return float(min(1.0, dist[sums >= observed].sum()))


def reports_pooled_test(reports_a: Sequence[dict], reports_b: Sequence[dict], **kwargs) -> dict:
    """`seed_pooled_test` for paired lists of evaluation reports (one pair per seed) of the same examples."""
    return seed_pooled_test([report_correct(r) for r in reports_a], [report_correct(r) for r in reports_b], **kwargs)


def f1_by_class(labels: Sequence[int], preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Each class's F1 for one or many rows of predictions: ``preds`` (..., N) -> (..., C).

    2 tp / (predicted + actual), which is `classification_report`'s 2PR / (P + R); 0 for a class that is
    neither predicted nor present."""
    classes = np.arange(num_classes)
    predicted = np.asarray(preds)[..., None] == classes  # (..., N, C)
    actual = np.asarray(labels)[:, None] == classes      # (N, C)
    true_pos = (predicted & actual).sum(-2)
    denom = predicted.sum(-2) + actual.sum(0)
    return np.divide(2.0 * true_pos, denom, out=np.zeros(true_pos.shape), where=denom > 0)


def seed_pooled_f1_test(preds_a: np.ndarray, preds_b: np.ndarray, labels: Sequence[int], num_classes: int,
                        class_index: int | None = None, samples: int = 10000, seed: int = 0) -> dict:
    """Paired test of macro-F1 (or of one class's F1) between two models, pooled over seeds.

    ``preds_a``/``preds_b``: (seeds, examples) predicted classes on the same examples. The statistic is
    the seed-mean F1 difference. F1 is not a mean over examples, so the test is approximate
    randomization (Noreen 1989; Yeh, COLING 2000): under the null, swapping the two models' predictions
    for an example (in every seed at once: the examples are the units, as in `seed_pooled_test`) changes
    nothing. Returns the difference and the two-sided p."""
    a, b = np.atleast_2d(np.asarray(preds_a, int)), np.atleast_2d(np.asarray(preds_b, int))
    if a.shape != b.shape:
        raise ValueError(f"prediction shapes differ: {a.shape} vs {b.shape}")

    def difference(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
        diff = f1_by_class(labels, pa, num_classes) - f1_by_class(labels, pb, num_classes)  # (..., seeds, C)
        return (diff.mean(-1) if class_index is None else diff[..., class_index]).mean(-1)

    observed = float(difference(a, b))
    rng = np.random.default_rng(seed)
    exceed, chunk = 0, 250  # chunks bound the (chunk, seeds, N, C) masks
    for start in range(0, samples, chunk):
        swap = rng.random((min(chunk, samples - start), 1, a.shape[1])) < 0.5
        permuted = difference(np.where(swap, b, a), np.where(swap, a, b))
        exceed += int((np.abs(permuted) >= abs(observed) - 1e-12).sum())
    return {"diff": observed, "p_value": min(1.0, (1 + exceed) / (1 + samples))}


# ---- calibration ---------------------------------------------------------------------
ECE_BINS = 15


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Student's paired t-test of ``a - b`` (e.g. one metric per seed of two variants): the mean difference
    and the two-sided p with n - 1 degrees of freedom (the t density integrated by Simpson's rule; numpy
    only). p is NaN below two pairs or when every difference is equal."""
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(diffs)
    if n < 2 or np.ptp(diffs) == 0:
        return {"diff": float(diffs.mean()) if n else float("nan"), "p_value": float("nan"), "n": n}
    t = abs(diffs.mean()) / (diffs.std(ddof=1) / math.sqrt(n))
    return {"diff": float(diffs.mean()), "p_value": student_t_two_sided_p(t, n - 1), "n": n}


def student_t_two_sided_p(t: float, df: int, points: int = 4001) -> float:
    """P(|T| >= t) for Student's t with ``df`` degrees of freedom."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    x = np.linspace(0.0, abs(t), points)
    density = np.exp(log_norm - (df + 1) / 2 * np.log1p(x * x / df))
    h = x[1] - x[0]
    inner = h / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum())
    return float(min(1.0, max(0.0, 1.0 - 2.0 * inner)))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits (shifted by the row max, so no overflow)."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(shifted - shifted.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def reliability_bins(probs: np.ndarray, labels: Sequence[int], bins: int = ECE_BINS) -> list[dict]:
    """Equal-width bins on the max probability (confidence): count, accuracy, mean confidence.

    Bin b holds confidences in (b/bins, (b+1)/bins]; the first bin also takes 0. Empty
    bins have count 0 and None for accuracy and confidence.
    """
    probs = np.asarray(probs, dtype=np.float64)
    confidence, correct = probs.max(-1), probs.argmax(-1) == np.asarray(labels)
    # searchsorted on the same b / bins edges that the rows report, so a confidence equal
    # to an edge falls in the lower bin as documented (ceil(conf * bins) can round up)
    index = np.searchsorted(np.arange(1, bins) / bins, confidence, side="left")
    out = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        out.append({"low": b / bins, "high": (b + 1) / bins, "count": count,
                    "accuracy": float(correct[members].mean()) if count else None,
                    "confidence": float(confidence[members].mean()) if count else None})
    return out


def expected_calibration_error(probs: np.ndarray, labels: Sequence[int], bins: int = ECE_BINS) -> float:
    """ECE: sum over confidence bins of (bin share of examples) * |bin accuracy - bin mean confidence|."""
    table = reliability_bins(probs, labels, bins)
    n = sum(row["count"] for row in table)
    return float(sum(row["count"] / n * abs(row["accuracy"] - row["confidence"]) for row in table if row["count"]))


def brier_score(probs: np.ndarray, labels: Sequence[int]) -> float:
    """Multi-class Brier score: mean over examples of sum over classes of (p_c - [c == y])^2.

    0 is perfect; 2 is the worst (all mass on one wrong class); always predicting the
    uniform distribution over C classes scores 1 - 1/C.
    """
    return float(brier_by_example(probs, labels).mean())


def brier_by_example(probs: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Each example's sum over classes of (p_c - [c == y])^2 (N,): the Brier score's terms, for paired tests."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(labels, dtype=int)]
    return ((probs - onehot) ** 2).sum(-1)
