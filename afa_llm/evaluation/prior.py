"""Post-hoc corrections of a classifier's probabilities, fitted on a held-out report, with no training:
label-prior corrections that undo a preference for one label, and temperature scaling for confidence
calibration (ECE, Brier).

A prompt classifier can favour one label word whatever the input: the Gemma-3-270M base says
" positive" for 90% of the Rotten Tomatoes test sentences (docs/RESULTS.md, where this correction
does as well as ACT's attention edit). The correction is fitted on the stored output probabilities
of one `afa-llm eval --output` report (a held-out split: validation, never the rows it will score)
and applied to another evaluation of the same model, adapter and prompt:

- ``normalize`` (label-free): divide each class's probability by its mean over the fitting rows and
  renormalise, so that every class has the same mean probability there (the bias estimate of batch
  calibration, Zhou et al. 2024; contextual calibration, Zhao et al. 2021, estimates it from
  content-free inputs instead);
- ``offset`` (two classes; uses the fitting rows' labels): shift the log-odds by the constant that
  maximises accuracy on the fitting rows;
- ``temperature`` (any number of classes; uses the labels): divide the log-probabilities by the one
  temperature that minimises the fitting rows' negative log-likelihood (Guo et al. 2017). It changes
  confidence (ECE, Brier), never a prediction: for a classifier head, sharper than label words.

    afa-llm eval --model gemma3-270m --split validation --output val.json
    afa-llm eval --model gemma3-270m --prior-from val.json [--prior-correction offset|temperature]
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from afa_llm.deprecations import truncation_name
from afa_llm.errors import UserError
from afa_llm.evaluation.metrics import softmax
from afa_llm.specs import SCORER_KEYS as SPEC_KEYS

CORRECTIONS = ("normalize", "offset", "temperature")
# what must be the same between the fitting report and the evaluation it corrects (where both record it):
# every ScorerSpec field, the shots and ACT (the label words, not the class names: a run's saved names may
# differ from its data set's)
SCORER_KEYS = (*SPEC_KEYS, "shots", "act")
_EPS = 1e-12


# ---- the math (pure functions) ------------------------------------------------------------
def prior_weights(probs: np.ndarray) -> np.ndarray:
    """Per-class weights 1 / mean probability: after weighting, every class has the same mean."""
    return 1.0 / probs.mean(axis=0)


def log_odds(probs: np.ndarray) -> np.ndarray:
    """log p(class 1) - log p(class 0) per example (two classes)."""
    return np.log(probs[:, 1] + _EPS) - np.log(probs[:, 0] + _EPS)


def fitted_offset(margins: np.ndarray, labels: np.ndarray) -> float:
    """The offset b that maximises the accuracy of ``margin + b > 0``; among ties, the smallest |b|.

    Candidates are 0 and the midpoints between neighbouring sorted margins (and beyond both ends),
    which covers every distinct decision.
    """
    s = np.sort(margins)
    cuts = np.concatenate([[s[0] - 1.0], (s[:-1] + s[1:]) / 2, [s[-1] + 1.0]])
    candidates = np.concatenate([[0.0], -cuts])
    accuracy = [((margins + b > 0).astype(int) == labels).mean() for b in candidates]
    best = max(accuracy)
    return float(min((b for b, a in zip(candidates, accuracy) if a == best), key=abs))


def tempered(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): the same ranking per row, flatter for T > 1, sharper for T < 1."""
    return softmax(np.log(probs + _EPS) / temperature)


def mean_nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(probs[np.arange(len(labels)), labels] + _EPS).mean())


def fitted_temperature(probs: np.ndarray, labels: np.ndarray, iterations: int = 80) -> float:
    """The T in [e^-4, e^4] that minimises the mean NLL of ``tempered(probs, T)``.

    The NLL is convex in 1/T, so it is unimodal in log T and a golden-section search finds its minimum.
    """
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    lo, hi = -4.0, 4.0

    def loss(log_t: float) -> float:
        return mean_nll(tempered(probs, float(np.exp(log_t))), labels)

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return float(np.exp((lo + hi) / 2.0))


def check_classes(correction: str | None, n_classes: int, source: str = "the report") -> None:
    """``offset`` is two-class only; callers that know the class count early check it before any work."""
    if correction == "offset" and n_classes != 2:
        raise UserError(f"prior correction offset needs two classes, {source} has {n_classes}; use normalize")


def fit_correction(probs: np.ndarray, labels: np.ndarray, correction: str) -> dict:
    """The correction's parameters, fitted on ``probs`` (n x classes) and, for ``offset``, ``labels``."""
    check_classes(correction, probs.shape[1])
    if correction == "normalize":
        return {"correction": correction, "weights": prior_weights(probs).tolist()}
    if correction == "offset":
        return {"correction": correction, "offset": fitted_offset(log_odds(probs), labels)}
    if correction == "temperature":
        return {"correction": correction, "temperature": fitted_temperature(probs, labels)}
    raise ValueError(f"unknown prior correction {correction!r}; expected one of {CORRECTIONS}")


def correction_kind(correction: dict) -> str:
    """normalize, offset or temperature (a correction recorded before the key was ``correction`` says ``method``)."""
    return correction.get("correction", correction.get("method"))


def apply_correction(probs: np.ndarray, correction: dict) -> np.ndarray:
    """Corrected probabilities (rows sum to 1); their argmax is the corrected prediction."""
    if correction_kind(correction) == "normalize":
        weighted = probs * np.asarray(correction["weights"])
        return weighted / weighted.sum(axis=1, keepdims=True)
    if correction_kind(correction) == "temperature":
        return tempered(probs, correction["temperature"])
    positive = 1.0 / (1.0 + np.exp(-(log_odds(probs) + correction["offset"])))
    return np.stack([1.0 - positive, positive], axis=1)


# ---- reports -------------------------------------------------------------------------------
def load_fit_report(path: str | Path, where: str = "--prior-from") -> dict:
    """An `afa-llm eval --output` report; a missing or unusable file is a one-line UserError that starts
    with ``where``."""
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{where}: no such file: {path}") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{where}: cannot read {path} as JSON: {err}") from None
    if not isinstance(report, dict) or not all(k in report for k in ("probabilities", "labels")):
        raise UserError(f"{where}: {path} is not an `afa-llm eval --output` report "
                        "(it needs 'probabilities' and 'labels')")
    if not report["probabilities"]:
        raise UserError(f"{where}: {path} scored no examples")
    return report


def _comparable(key: str, value):
    if key == "adapter" and value:  # a run folder and its adapter/ subfolder are the same adapter
        path = os.path.normpath(value)
        return os.path.dirname(path) if os.path.basename(path) == "adapter" else path
    if key == "truncation":  # reports before the rename say head / head_tail
        return truncation_name(value, quiet=True)
    if key == "act" and value:
        # the same ACT attention calibration wherever its file is (reports before the rename say "heads")
        return {("attention_heads" if k == "heads" else k): v for k, v in value.items() if k != "path"}
    return value


def check_fit_report(fit: dict, scorer: dict, path: str | Path, where: str = "--prior-from") -> None:
    """Refuse a fitting report of another scorer (model, adapter, prompt, ACT, ...) or of the rows scored now."""
    for key in SCORER_KEYS:
        if key in fit and key in scorer and _comparable(key, fit[key]) != _comparable(key, scorer[key]):
            raise UserError(f"{where}: {path} was scored with {key}={fit[key]!r}, this evaluation uses "
                            f"{scorer[key]!r}; fit the correction on a report of the same model and prompt")
    same_rows = all(fit.get(k) == scorer.get(k) for k in ("data", "split", "split_seed"))
    if same_rows:
        raise UserError(f"{where}: {path} scored the same rows ({scorer.get('data')}, split "
                        f"{scorer.get('split')}); fit the correction on another split, e.g. --split validation")


def fit_from_report(fit: dict, kind: str, path: str | Path) -> dict:
    """The correction fitted on a loaded report, with where it came from (what the corrected report records)."""
    correction = fit_correction(np.asarray(fit["probabilities"], dtype=np.float64), np.asarray(fit["labels"]), kind)
    return {**correction, "from": str(path), "fitted_on": {k: fit.get(k) for k in ("data", "split", "split_seed")},
            "fitted_n": len(fit["labels"])}


def prior_from_report(path: str, kind: str | None, scorer: dict) -> dict:
    """Load the fitting report at ``path``, check it against ``scorer`` (a report's scorer record) and fit
    the correction ``kind`` (default: normalize) on it."""
    fit = load_fit_report(path)
    check_fit_report(fit, scorer, path)
    return fit_from_report(fit, kind or "normalize", path)


def correction_name(correction: dict) -> str:
    """How reports name a fitted correction: ``temperature scaling, T = 1.420``, ``label-prior correction, offset``."""
    if correction_kind(correction) == "temperature":
        return f"temperature scaling, T = {correction['temperature']:.3f}"
    return f"label-prior correction, {correction_kind(correction)}"


def correct_report(report: dict, correction: dict, label_names: Sequence[str]) -> dict:
    """``report`` with its metrics and predictions recomputed from corrected probabilities.

    The uncorrected accuracy and macro-F1 stay in ``prior_correction`` for comparison.
    """
    from afa_llm.evaluation.evaluate import scores_from_probabilities

    corrected = apply_correction(np.asarray(report["probabilities"], dtype=np.float64), correction)
    before = {k: report[k] for k in ("accuracy", "macro_f1", "ece", "brier") if k in report}
    record = {**correction, "uncorrected": before}
    return {**report, **scores_from_probabilities(corrected, report["labels"], label_names), "prior_correction": record}
