"""``debias: poe``: a product of experts with a bag-of-words bias model (Clark et al., EMNLP 2019; Utama et al.,
EMNLP 2020; Sanh et al., ICLR 2021).

Before training, a logistic regression on binary bag-of-words features (scikit-learn) is fitted to the
training split as the run sees it (a planted cue included). Each training row's bias distribution is
predicted out of fold (5-fold cross-fitting), so that the bias model has not memorised the row it scores.
The classification loss of every method then becomes

    L_cls = CE(log_softmax(logits + log p_bias(x)), y)

so the model gains little from what the bag of words already explains and learns the rest. Prediction and
evaluation use the model alone (the bias never enters a scoring pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from afa_llm.errors import UserError

BIAS_FOLDS = 5
BIAS_FLOOR = 1e-4  # probability floor of the bias model, so log p_bias stays finite
BIAS_C = 1.0  # inverse L2 strength of the logistic regression (scikit-learn's default)


@dataclass
class BiasModel:
    """The fitted bias model and its out-of-fold log-probabilities of the training rows."""

    log_probs: np.ndarray  # (N, C) float32, out of fold
    record: dict


def _pipeline(seed: int):
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from afa_llm.evaluation.word_focus import WORD

    return make_pipeline(CountVectorizer(binary=True, lowercase=True, token_pattern=WORD.pattern),
                         LogisticRegression(C=BIAS_C, max_iter=2000, random_state=seed))


def _full_columns(probs: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    """predict_proba's columns (the classes seen in training) placed into all ``num_classes``."""
    out = np.full((len(probs), num_classes), BIAS_FLOOR)
    out[:, classes] = np.maximum(probs, BIAS_FLOOR)
    return out / out.sum(axis=1, keepdims=True)


def fit_bias_model(texts: Sequence[str], labels: Sequence[int], num_classes: int, seed: int,
                   top: int = 10) -> BiasModel:
    """Fit the bias model; out-of-fold log-probabilities of the rows and a record (accuracy, top words)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    folds = min(BIAS_FOLDS, int(counts[counts > 0].min()))
    if folds < 2 or (counts > 0).sum() < 2:
        raise UserError("config key 'debias': poe needs at least two classes with two training rows each")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    probs = cross_val_predict(_pipeline(seed), list(texts), labels, cv=cv, method="predict_proba")
    present = np.flatnonzero(counts > 0)
    probs = _full_columns(probs, present, num_classes)
    whole = _pipeline(seed).fit(list(texts), labels)
    record = {"kind": "poe", "folds": folds, "out_of_fold_accuracy": float((probs.argmax(1) == labels).mean()),
              "top_words": top_words(whole, present, top)}
    return BiasModel(np.log(probs).astype(np.float32), record)


def top_words(pipeline, classes: np.ndarray, top: int) -> dict[int, list[list]]:
    """The ``top`` words with the largest coefficient toward each class (binary: the positive class and its
    negation for the other)."""
    vectorizer, regression = pipeline[0], pipeline[-1]
    vocab = np.asarray(vectorizer.get_feature_names_out())
    coef = regression.coef_
    if coef.shape[0] == 1:  # binary: one row, toward classes[1]
        coef = np.vstack([-coef[0], coef[0]])
    out = {}
    for row, cls in zip(coef, classes):
        best = np.argsort(-row)[:top]
        out[int(cls)] = [[str(vocab[i]), round(float(row[i]), 4)] for i in best]
    return out

