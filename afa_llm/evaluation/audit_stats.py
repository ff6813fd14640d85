"""The model-free half of the shortcut audit: candidate words and pairs, their counts per class, the label skew,
and the score that ranks them (`afa_llm.evaluation.audit` measures the effects that go into it).

Words are the runs of letters and digits (with an apostrophe suffix) that the focus metrics use
(`afa_llm.evaluation.word_focus.WORD`), lower-cased. A candidate is

- a word type with at least ``min_count`` occurrences in the audited texts, or
- a pair of adjacent words with at least ``min_count`` occurrences whose rarer word occurs mostly
  inside the pair (in at least `PAIR_SHARE` of its occurrences): a phrase such as a street name,
  which hiding one of its words would leave half in place.

**Skew** (Monroe, Colaresi & Quinn 2008, "Fightin' words", log-odds with an informative Dirichlet
prior): for class c against the other classes, with y the candidate's occurrences and n all word
occurrences on each side,

    delta = log((y_c + a) / (n_c + a0 - y_c - a)) - log((y_r + a) / (n_r + a0 - y_r - a))
    z     = delta / sqrt(1 / (y_c + a) + 1 / (y_r + a)),      p = 2 * (1 - Phi(|z|))

where the prior a = a0 * y / n spreads a0 = n pseudo-occurrences by the candidate's pooled
frequency (the pooled corpus as its own prior). The skewed class is the one with the largest z.

**Score**: each effect (how much hiding the candidate lowers the log-odds of its skewed class, mean
over the sampled texts) is divided by its model's typical effect (the median |effect| over every
measured candidate), so that a fine-tuned model's sharper judgements do not count as reliance:

    score = effect_model / scale_model - max(effect_base, 0) / scale_base

A word that the trained model leans on and the base would not (a planted name) scores high; a sentiment
word that both lean on scores near the difference of their standardised effects; without a base the
score is effect_model / scale_model. The base's effect counts only where it is positive: a word that
pushes the base away from its skewed class while the trained model ignores it (a negative base effect,
a model effect near 0) is not something the model leans on, and the plain difference would rank it high.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from afa_llm.evaluation.word_focus import WORD

PAIR_SHARE = 0.5  # a pair is a candidate when its rarer word occurs inside it at least this often
SCALE_FLOOR = 1e-3  # log-odds; keeps the standardisation finite for a model that ignores every word


@dataclass
class Candidate:
    """A word type or an adjacent pair, with where it occurs."""

    words: tuple[str, ...]
    counts: list[int]  # occurrences per class
    rows: list[int] = field(default_factory=list)  # texts that hold it, in row order

    @property
    def text(self) -> str:
        return " ".join(self.words)


def text_words(text: str) -> list[tuple[str, int, int]]:
    """The words of ``text``: (lower-cased word, start, end) in order."""
    return [(m.group().lower(), m.start(), m.end()) for m in WORD.finditer(text)]


def occurrence_spans(text: str, words: Sequence[str]) -> list[tuple[int, int]]:
    """The character spans of every occurrence of the word sequence ``words`` in ``text``."""
    found, n = [], len(words)
    tokens = text_words(text)
    for i in range(len(tokens) - n + 1):
        if all(tokens[i + k][0] == words[k] for k in range(n)):
            found.append((tokens[i][1], tokens[i + n - 1][2]))
    return found


def find_candidates(texts: Sequence[str], labels: Sequence[int], num_classes: int, min_count: int,
                    pairs: bool = True) -> list[Candidate]:
    """Word types (and collocated pairs) with at least ``min_count`` occurrences, most frequent first."""
    per_class: dict[tuple[str, ...], np.ndarray] = defaultdict(lambda: np.zeros(num_classes, dtype=np.int64))
    rows: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for row, (text, label) in enumerate(zip(texts, labels)):
        words = [w for w, _, _ in text_words(text)]
        grams = [(w,) for w in words] + ([tuple(words[i:i + 2]) for i in range(len(words) - 1)] if pairs else [])
        for gram in grams:
            per_class[gram][label] += 1
        for gram in dict.fromkeys(grams):
            rows[gram].append(row)
    total = {gram: int(c.sum()) for gram, c in per_class.items()}
    keep = [gram for gram, n in total.items() if n >= min_count and
            (len(gram) == 1 or n >= PAIR_SHARE * min(total[(gram[0],)], total[(gram[1],)]))]
    keep.sort(key=lambda gram: (-total[gram], gram))
    return [Candidate(gram, per_class[gram].tolist(), rows[gram]) for gram in keep]


def class_word_totals(texts: Sequence[str], labels: Sequence[int], num_classes: int) -> np.ndarray:
    """All word occurrences per class (the n_c of the skew)."""
    totals = np.zeros(num_classes, dtype=np.int64)
    for text, label in zip(texts, labels):
        totals[label] += len(WORD.findall(text))
    return totals


def log_odds_skew(counts: Sequence[int], totals: Sequence[int]) -> dict:
    """Monroe et al.'s z of a candidate for each class against the rest; the class with the largest z,
    its delta, z and two-sided p."""
    counts, totals = np.asarray(counts, dtype=float), np.asarray(totals, dtype=float)
    y, n = counts.sum(), totals.sum()
    a0 = n
    a = a0 * y / n
    zs, deltas = [], []
    for c in range(len(counts)):
        y_c, y_r = counts[c], y - counts[c]
        n_c, n_r = totals[c], n - totals[c]
        delta = math.log((y_c + a) / (n_c + a0 - y_c - a)) - math.log((y_r + a) / (n_r + a0 - y_r - a))
        deltas.append(delta)
        zs.append(delta / math.sqrt(1 / (y_c + a) + 1 / (y_r + a)))
    best = int(np.argmax(zs))
    return {"class": best, "log_odds": deltas[best], "z": zs[best], "p": math.erfc(abs(zs[best]) / math.sqrt(2))}


def effect_scale(effects: Sequence[float]) -> float:
    """A model's typical effect: the median |effect| over the candidates, floored at `SCALE_FLOOR`."""
    values = np.abs(np.asarray([e for e in effects if e is not None and np.isfinite(e)], dtype=float))
    return max(float(np.median(values)) if len(values) else 0.0, SCALE_FLOOR)


def audit_scores(effect_model: Sequence[float], effect_base: Sequence[float] | None) -> tuple[list[float], dict]:
    """The score of each candidate (module docstring) and the two scales."""
    model = np.asarray(effect_model, dtype=float)
    scales = {"model": effect_scale(model)}
    score = model / scales["model"]
    if effect_base is not None:
        base = np.asarray(effect_base, dtype=float)
        scales["base"] = effect_scale(base)
        score = score - np.maximum(base, 0.0) / scales["base"]
    return score.tolist(), scales


def rescore(candidates: Sequence[dict]) -> tuple[list[dict], dict]:
    """The rows of a saved audit (its ``candidates``) scored and ranked anew from their mean effects, e.g. an audit
    written before the score last changed; the scales come from the same effects, so the result is exact."""
    effect_base = [c["effect_base"] for c in candidates]
    has_base = any(e is not None for e in effect_base)
    model = [np.nan if c["effect_model"] is None else c["effect_model"] for c in candidates]
    base = [np.nan if e is None else e for e in effect_base] if has_base else None
    score, scales = audit_scores(model, base)
    order = rank_order(score, [sum(c["counts"].values()) for c in candidates])
    return [{**candidates[i], "rank": rank, "score": score[i]} for rank, i in enumerate(order, start=1)], scales


def rank_order(values: Sequence[float], ties: Sequence[int]) -> list[int]:
    """Indices by ``values`` descending; ties broken by ``ties`` descending (more occurrences first)."""
    return sorted(range(len(values)), key=lambda i: (-values[i], -ties[i], i))


def mentions(candidate_words: Sequence[str], cue: str) -> bool:
    """Whether a candidate is the cue or one of its words (how a planted phrase counts as found)."""
    cue_words = tuple(w.lower() for w in re.findall(WORD, cue))
    words = tuple(candidate_words)
    return words == cue_words or (len(words) == 1 and words[0] in cue_words)
