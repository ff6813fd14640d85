"""Label-prior correction: undo a prompt classifier's preference for one label word, with no training.

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
  maximises accuracy on the fitting rows.

    afa-llm eval --model gemma3-270m --split validation --output val.json
    afa-llm eval --model gemma3-270m --prior-from val.json [--prior-correction offset]
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from afa_llm.errors import UserError

METHODS = ("normalize", "offset")
# what must be the same between the fitting report and the evaluation it corrects (where both record it)
# (the label words, not the class names: a run's saved names may differ from its data set's)
SCORER_KEYS = ("model", "adapter", "quantization", "dtype", "template", "label_words", "max_text_tokens",
               "truncation", "shots", "act")
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


def check_classes(method: str, n_classes: int, source: str = "the report") -> None:
    """``offset`` is two-class only; callers that know the class count early check it before any work."""
    if method == "offset" and n_classes != 2:
        raise UserError(f"prior correction offset needs two classes, {source} has {n_classes}; use normalize")


def fit_correction(probs: np.ndarray, labels: np.ndarray, method: str) -> dict:
    """The correction's parameters, fitted on ``probs`` (n x classes) and, for ``offset``, ``labels``."""
    check_classes(method, probs.shape[1])
    if method == "normalize":
        return {"method": method, "weights": prior_weights(probs).tolist()}
    if method == "offset":
        return {"method": method, "offset": fitted_offset(log_odds(probs), labels)}
    raise ValueError(f"unknown prior correction {method!r}; expected one of {METHODS}")


def apply_correction(probs: np.ndarray, correction: dict) -> np.ndarray:
    """Corrected probabilities (rows sum to 1); their argmax is the corrected prediction."""
    if correction["method"] == "normalize":
        weighted = probs * np.asarray(correction["weights"])
        return weighted / weighted.sum(axis=1, keepdims=True)
    positive = 1.0 / (1.0 + np.exp(-(log_odds(probs) + correction["offset"])))
    return np.stack([1.0 - positive, positive], axis=1)


# ---- reports -------------------------------------------------------------------------------
def load_fit_report(path: str | Path) -> dict:
    """An `afa-llm eval --output` report to fit on; a missing or unusable file is a one-line UserError."""
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--prior-from: no such file: {path}") from None
    except (OSError, ValueError) as err:
        raise UserError(f"--prior-from: cannot read {path} as JSON: {err}") from None
    if not isinstance(report, dict) or not all(k in report for k in ("probabilities", "labels")):
        raise UserError(f"--prior-from: {path} is not an `afa-llm eval --output` report "
                        "(it needs 'probabilities' and 'labels')")
    if not report["probabilities"]:
        raise UserError(f"--prior-from: {path} scored no examples")
    return report


def _comparable(key: str, value):
    if key == "adapter" and value:  # a run folder and its adapter/ subfolder are the same adapter
        path = os.path.normpath(value)
        return os.path.dirname(path) if os.path.basename(path) == "adapter" else path
    if key == "act" and value:
        return {k: v for k, v in value.items() if k != "path"}  # the same calibration, wherever its file is
    return value


def check_fit_report(fit: dict, scorer: dict, path: str | Path) -> None:
    """Refuse a fitting report of another scorer (model, adapter, prompt, ACT, ...) or of the rows scored now."""
    for key in SCORER_KEYS:
        if key in fit and key in scorer and _comparable(key, fit[key]) != _comparable(key, scorer[key]):
            raise UserError(f"--prior-from: {path} was scored with {key}={fit[key]!r}, this evaluation uses "
                            f"{scorer[key]!r}; fit the correction on a report of the same model and prompt")
    same_rows = all(fit.get(k) == scorer.get(k) for k in ("data", "split", "split_seed"))
    if same_rows:
        raise UserError(f"--prior-from: {path} scored the same rows ({scorer.get('data')}, split "
                        f"{scorer.get('split')}); fit the correction on another split, e.g. --split validation")


def fit_from_report(fit: dict, method: str, path: str | Path) -> dict:
    """The correction fitted on a loaded report, with where it came from (what the corrected report records)."""
    correction = fit_correction(np.asarray(fit["probabilities"], dtype=np.float64), np.asarray(fit["labels"]), method)
    return {**correction, "from": str(path), "fitted_on": {k: fit.get(k) for k in ("data", "split", "split_seed")},
            "fitted_n": len(fit["labels"])}


def prior_from_report(path: str, method: str | None, scorer: dict) -> dict:
    """Load the fitting report at ``path``, check it against ``scorer`` (a report's scorer record) and fit
    ``method`` (default: normalize) on it."""
    fit = load_fit_report(path)
    check_fit_report(fit, scorer, path)
    return fit_from_report(fit, method or "normalize", path)


def correct_report(report: dict, correction: dict, label_names: Sequence[str]) -> dict:
    """``report`` with its metrics and predictions recomputed from corrected probabilities.

    The uncorrected accuracy and macro-F1 stay in ``prior_correction`` for comparison.
    """
    from afa_llm.evaluation.evaluate import scores_from_probabilities

    corrected = apply_correction(np.asarray(report["probabilities"], dtype=np.float64), correction)
    record = {**correction, "uncorrected": {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}}
    return {**report, **scores_from_probabilities(corrected, report["labels"], label_names), "prior_correction": record}
