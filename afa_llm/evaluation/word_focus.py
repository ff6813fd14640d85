"""Focus on words: token focus mapped to words, and plausibility against human ratings.

Focus is the clean pass's (`afa_llm.attention.clean_pass.clean_pass`): the answer position's attention
over the text tokens. Here it is mapped to words through the tokenizer's offsets
(`PromptTask.text_offsets`): a word split over several tokens is one unit with the summed
focus of its tokens; a token that touches no word (punctuation) is a unit of its own.

Human ratings come from the VADER lexicon (Hutto & Gilbert 2014; PyPI ``vadersentiment``,
MIT): about 7,500 words, each rated by 10 people on -4..4. A word is sentiment-bearing if
its mean valence has ``|v| >= threshold`` (default 1.0). Per text with at least one such word:

    lexicon_share = focus mass on sentiment words
    lexicon_lift  = lexicon_share / (sentiment words' tokens / text tokens)    (1 = no preference)
    lexicon_auprc = average precision of the word ranking by focus against the sentiment words
                    (ERASER's soft-score AUPRC; ties ranked together, as sklearn does)

and the reported value is the mean over those texts.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from afa_llm.defaults import LEXICON_THRESHOLD
from afa_llm.errors import UserError

if TYPE_CHECKING:
    from afa_llm.model.task import PromptTask

VADER_PACKAGE, VADER_FILE = "vadersentiment", "vaderSentiment/vader_lexicon.txt"
WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)*")


@functools.lru_cache(maxsize=1)
def vader_lexicon() -> dict[str, float]:
    """word -> mean valence, read from the installed package's file (the package is not imported)."""
    try:
        path = Path(importlib.metadata.distribution(VADER_PACKAGE).locate_file(VADER_FILE))
    except importlib.metadata.PackageNotFoundError as exc:
        raise UserError(f"the human-rated lexicon needs the package {VADER_PACKAGE!r} (run `make setup`)") from exc
    lexicon = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            lexicon[fields[0].lower()] = float(fields[1])
    return lexicon


def sentiment_words(threshold: float = LEXICON_THRESHOLD) -> frozenset[str]:
    return frozenset(w for w, v in vader_lexicon().items() if abs(v) >= threshold)


def word_units(text: str, spans: Sequence[tuple[int, int]]) -> list[tuple[str | None, list[int]]]:
    """Group token indices into words: ``(word lower-cased, [token indices])`` in text order; a token
    that overlaps no word is ``(None, [i])``. A token overlapping several words joins the first."""
    words = [(m.start(), m.end(), m.group().lower()) for m in WORD.finditer(text)]
    units: list[tuple[str | None, list[int]]] = []
    by_word: dict[int, int] = {}
    w = 0
    for i, (start, end) in enumerate(spans):
        while w < len(words) and words[w][1] <= start:
            w += 1
        if w < len(words) and words[w][0] < end:  # overlaps word w
            if w not in by_word:
                by_word[w] = len(units)
                units.append((words[w][2], []))
            units[by_word[w]][1].append(i)
        else:
            units.append((None, [i]))
    return units


def average_precision(scores: Sequence[float], relevant: Sequence[bool]) -> float:
    """Area under the precision-recall curve as sklearn's average_precision_score: sum over
    distinct score thresholds of (recall step) x precision; NaN without a relevant item."""
    scores, relevant = np.asarray(scores, dtype=np.float64), np.asarray(relevant, dtype=bool)
    if not relevant.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, relevant = scores[order], relevant[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    tp = np.cumsum(relevant)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall_steps = np.diff(np.r_[0, tp]) / relevant.sum()
    return float((recall_steps * precision).sum())


def lexicon_scores(focus: np.ndarray, units: list[tuple[str | None, list[int]]],
                   rated: frozenset[str]) -> dict[str, float] | None:
    """One text's lexicon share, lift and AUPRC (None if it has no sentiment word)."""
    is_rated = [word is not None and word in rated for word, _ in units]
    if not any(is_rated):
        return None
    unit_focus = np.array([focus[idx].sum() for _, idx in units])
    rated_tokens = sum(len(idx) for (_, idx), r in zip(units, is_rated) if r)
    share = float(unit_focus[is_rated].sum())
    return {"lexicon_share": share, "lexicon_lift": share / (rated_tokens / len(focus)),
            "lexicon_auprc": average_precision(unit_focus, is_rated)}


def lexicon_metrics(focus_rows: Sequence[np.ndarray], offsets: Sequence[Sequence[tuple[int, int]]],
                    texts: Sequence[str], threshold: float = LEXICON_THRESHOLD) -> dict[str, float]:
    """The three lexicon metrics averaged over the texts that hold a sentiment word."""
    rated = sentiment_words(threshold)
    per_text = [lexicon_scores(f, word_units(t, o), rated) for f, o, t in zip(focus_rows, offsets, texts)]
    kept = [s for s in per_text if s is not None]
    out = {key: float(np.mean([s[key] for s in kept])) if kept else None  # None: no text had a rated word
           for key in ("lexicon_share", "lexicon_lift", "lexicon_auprc")}
    return {**out, "lexicon_n": len(kept), "lexicon_threshold": threshold}


def span_focus(focus: np.ndarray, spans: Sequence[tuple[int, int]], start: int, end: int) -> float:
    """The focus mass on the tokens that overlap the characters [start, end)."""
    return float(sum(f for f, (s, e) in zip(focus, spans) if s < end and start < e))


def text_focus(model: torch.nn.Module, task: PromptTask, texts: Sequence[str], *, batch_size: int = 32,
               focus_layers: Sequence[int] | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Per text: its text tokens' focus (in `text_offsets` order), and the class logits (N, C)."""
    from afa_llm.evaluation.evaluate import score_rows

    scored = score_rows(model, task, texts, batch_size=batch_size, progress=False, focus_on=range(len(texts)),
                        focus_layers=focus_layers)
    return [scored.focus[i] for i in range(len(texts))], scored.logits


def focus_lexicon(model: torch.nn.Module, task: PromptTask, texts: Sequence[str], *,
                  threshold: float = LEXICON_THRESHOLD, batch_size: int = 32,
                  focus_layers: Sequence[int] | None = None) -> dict[str, float]:
    """`lexicon_metrics` of ``model``'s focus on ``texts`` (its own pass; an evaluation reads the focus
    off its scoring pass instead: `afa_llm.evaluation.evaluate.evaluate_with_focus`)."""
    rows, _ = text_focus(model, task, texts, batch_size=batch_size, focus_layers=focus_layers)
    return texts_lexicon_metrics(task, texts, rows, threshold)


def texts_lexicon_metrics(task: PromptTask, texts: Sequence[str], focus_rows: Sequence[np.ndarray],
                          threshold: float = LEXICON_THRESHOLD) -> dict[str, float]:
    """`lexicon_metrics` of focus rows over ``texts``' text tokens, mapped to words by the task's tokenizer."""
    return lexicon_metrics(focus_rows, [task.text_offsets(t) for t in texts], texts, threshold)
