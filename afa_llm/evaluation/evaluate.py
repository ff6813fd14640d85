"""The evaluator: a split's rows scored with the task's head, zero-shot or few-shot, into a report's scores
(accuracy, macro-F1, per-class scores, and confidence calibration: ECE and Brier). The report's other parts and
its printed table are `afa_llm.evaluation.report`'s; ``afa-llm eval`` runs `afa_llm.evaluation.request`.

Rows are sorted by prompt length before batching (less padding: ~1.7x faster on CPU)
and restored to their original order afterwards, so per-example predictions line up
with the data set for paired tests.

The focus of chosen rows (``focus_on``) comes from the scoring pass itself: a batch that holds
such a row runs as the clean pass (`afa_llm.attention.clean_pass`), the same forward with the
answer row's attention recomputed in the focus layers, so the focus metrics cost a few percent of
a scoring pass instead of a second pass (docs/PERFORMANCE.md), and the class logits are the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Collection, Sequence

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm

from afa_llm.errors import UserError
from afa_llm.evaluation.metrics import brier_score, classification_report, expected_calibration_error, softmax
from afa_llm.model.scoring import class_logits
from afa_llm.model.task import PromptTask, draw_demonstrations, length_batches


@dataclass
class ScoredRows:
    logits: np.ndarray  # (N, C), in the rows' order
    focus: dict[int, np.ndarray] = field(default_factory=dict)  # row -> focus over its text tokens (text_offsets order)


@torch.no_grad()
def score_rows(
    model: torch.nn.Module,
    task: PromptTask,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    demos: Sequence[Sequence[tuple[str, int]]] | None = None,
    progress: bool = True,
    desc: str = "eval",
    bar: tqdm | None = None,
    focus_on: Collection[int] = (),
    focus_layers: Sequence[int] | None = None,
) -> ScoredRows:
    """Class logits (N, C) for ``texts``, in their original order, and the focus of the rows ``focus_on``.

    ``bar``: an open progress bar to advance instead of a new one (a caller that scores
    a stream chunk by chunk keeps one bar for the whole stream).
    """
    from afa_llm.attention.clean_pass import clean_pass

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = ScoredRows(np.zeros((len(texts), task.num_classes), dtype=np.float32))
    wanted = set(focus_on)
    own_bar = bar is None
    if own_bar:
        bar = tqdm(total=len(texts), desc=desc, disable=not progress, unit="ex")
    for idx in length_batches(task, texts, batch_size):
        batch = task.encode([texts[i] for i in idx], demos=[demos[i] for i in idx] if demos else None).to(device)
        if wanted.intersection(idx.tolist()):
            clean = clean_pass(model, batch, task.head, focus_layers)
            logits = clean.class_logits
            for row, i in enumerate(idx.tolist()):
                if i in wanted:
                    out.focus[i] = clean.focus[row][batch.text_mask[row]].float().cpu().numpy()
        else:
            logits = class_logits(model, batch, task.head)
        out.logits[idx] = logits.float().cpu().numpy()
        bar.update(len(idx))
    if own_bar:
        bar.close()
    model.train(was_training)
    return out


def predict_logits(model: torch.nn.Module, task: PromptTask, texts: Sequence[str], *, batch_size: int = 32,
                   demos: Sequence[Sequence[tuple[str, int]]] | None = None, progress: bool = True,
                   desc: str = "eval", bar: tqdm | None = None) -> np.ndarray:
    """Class logits (N, C) for ``texts``, in their original order (`score_rows` without focus)."""
    return score_rows(model, task, texts, batch_size=batch_size, demos=demos, progress=progress, desc=desc,
                      bar=bar).logits


def evaluate_dataset(model: torch.nn.Module, task: PromptTask, dataset: Dataset, label_names: Sequence[str],
                     **options: Any) -> dict:
    """The report of `evaluate_with_focus` (the same keyword options), without focus."""
    return evaluate_with_focus(model, task, dataset, label_names, **options)[0]


def evaluate_with_focus(
    model: torch.nn.Module,
    task: PromptTask,
    dataset: Dataset,
    label_names: Sequence[str],
    *,
    batch_size: int = 32,
    shots: int = 0,
    demo_pool: Dataset | None = None,
    seed: int = 0,
    progress: bool = True,
    focus_on: Sequence[int] = (),
    focus_layers: Sequence[int] | None = None,
) -> tuple[dict, list[np.ndarray]]:
    """Evaluate on ``dataset``: the report dict with per-example predictions, and the focus over their
    text tokens of the rows ``focus_on`` (in that order), read off the same pass (`score_rows`).

    Besides accuracy and macro-F1 the report has the confidence calibration: ``ece`` (expected
    calibration error, 15 equal-width bins on the max probability) and ``brier`` (mean over examples
    of the sum over classes of (p - onehot)^2), both from ``probabilities``, the softmax of the class
    logits (see `afa_llm.evaluation.metrics`).
    """
    if len(dataset) == 0:
        raise UserError("the evaluation split is empty")
    texts, labels = list(dataset["text"]), list(dataset["label"])
    demos = None
    if shots:
        if demo_pool is None or len(demo_pool) == 0:
            raise UserError("few-shot evaluation needs a non-empty train split for demonstrations")
        demos = draw_demonstrations(demo_pool["text"], demo_pool["label"], shots, len(texts), seed)
    start = time.perf_counter()
    scored = score_rows(model, task, texts, batch_size=batch_size, demos=demos, progress=progress,
                        focus_on=focus_on, focus_layers=focus_layers)
    seconds = time.perf_counter() - start
    report = scores_from_probabilities(softmax(scored.logits), labels, label_names)
    report.update(
        {
            "examples_per_second": len(texts) / seconds if seconds > 0 else float("inf"),
            "seconds": seconds,
            "shots": shots,
        }
    )
    return report, [scored.focus[i] for i in focus_on]


def scores_from_probabilities(probs: np.ndarray, labels: Sequence[int], label_names: Sequence[str]) -> dict:
    """Predictions (argmax), accuracy, macro-F1, per-class scores, ECE and Brier of per-example class probabilities."""
    predictions = probs.argmax(-1).tolist()
    report = classification_report(labels, predictions, label_names)
    report.update(
        {
            "ece": expected_calibration_error(probs, labels),
            "brier": brier_score(probs, labels),
            "predictions": predictions,
            "labels": [int(y) for y in labels],
            "probabilities": probs.round(6).tolist(),  # softmax of the class logits, per example
        }
    )
    return report
