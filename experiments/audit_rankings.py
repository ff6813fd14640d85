"""The salience rankings that `afa-llm audit` is compared with (experiments/audit_grid.py): for each measured
candidate, the trained model's focus on it and its gradient x input, on the same sampled texts as the audit.

- ``focus``: the answer position's attention on the candidate's tokens (the clean pass's focus,
  `afa_llm.evaluation.word_focus.text_focus`, averaged over the run's focus layers), summed over its tokens,
  mean over the texts.
- ``grad_input``: the gradient of the skewed class's log-odds with respect to the input embeddings, dotted
  with the embeddings, summed over the candidate's tokens, mean over the texts (Bastings et al. 2022
  scored this family of salience methods on planted shortcuts).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from afa_llm.evaluation.audit import (AuditRequest, audit_rows, autocast, occurrence_tokens, sample_jobs,
                                      skew_log_odds, skewed_candidates)
from afa_llm.model.task import length_batches
from afa_llm.model.scoring import forward_scores


def grad_input(model: torch.nn.Module, task, texts: Sequence[str], classes: Sequence[int],
               batch_size: int = 16) -> list[np.ndarray]:
    """Per text, gradient x input of class ``classes[i]``'s log-odds for each kept text token."""
    embed = model.get_input_embeddings()
    captured = {}

    def keep(_module, _inputs, output):  # the embeddings are frozen: a leaf copy that collects the gradient
        leaf = output.detach().requires_grad_(True)
        captured["emb"] = leaf
        return leaf

    rows: list[np.ndarray] = [np.zeros(0)] * len(texts)
    handle = embed.register_forward_hook(keep)
    try:
        for idx in length_batches(task, texts, batch_size):
            batch = task.encode([texts[i] for i in idx])
            with torch.enable_grad():
                logits = forward_scores(model, **batch.model_inputs(), head=task.head).class_logits
                skew_log_odds(logits, torch.tensor([classes[i] for i in idx])).sum().backward()
            emb = captured["emb"]
            saliency = (emb.grad * emb).sum(-1).detach().float()
            for row, i in enumerate(idx):
                rows[i] = saliency[row][batch.text_mask[row]].numpy()
            model.zero_grad(set_to_none=True)
    finally:
        handle.remove()
    return rows


def add_salience(report: dict, resolved) -> None:
    """Add ``focus`` and ``grad_input`` to each candidate of an audit ``report`` (same rows, same samples)."""
    from afa_llm.evaluation.word_focus import text_focus
    from afa_llm.model.adapters import load_scorer

    settings = report["settings"]
    request = AuditRequest(resolved, split=report["split"], min_count=settings["min_count"], sample=settings["sample"],
                           max_candidates=settings["max_candidates"], seed=settings["seed"], progress=False)
    texts, labels, names, _ = audit_rows(request)
    candidates, skews, _ = skewed_candidates(texts, labels, len(names), request.min_count, request.max_candidates)
    jobs = sample_jobs(candidates, request.sample, request.seed)
    model, task = load_scorer(resolved.scorer, names, progress=False)
    model.eval()
    rows = sorted({r for r, _ in jobs})
    focus_layers = getattr(resolved.config, "focus_layers", None)
    with autocast(settings["mixed_precision"]):
        focus, _ = text_focus(model, task, [texts[r] for r in rows], focus_layers=focus_layers)
        classes = sorted({s["class"] for s in skews}) if len(names) > 2 else [1]
        per_class = {c: grad_input(model, task, [texts[r] for r in rows], [c] * len(rows)) for c in classes}
    if len(names) == 2:  # two classes: class 0's log-odds is minus class 1's, and so is its gradient
        per_class[0] = [-g for g in per_class[1]]
    focus_of = dict(zip(rows, focus))
    grads = {c: dict(zip(rows, g)) for c, g in per_class.items()}
    values: dict[int, list[tuple[float, float]]] = {}
    for r, i in jobs:
        tokens = occurrence_tokens(task, texts[r], candidates[i].words)
        if tokens:
            values.setdefault(i, []).append((float(focus_of[r][tokens].sum()),
                                             float(grads[skews[i]["class"]][r][tokens].sum())))
    by_word = {row["word"]: row for row in report["candidates"]}
    for i, cand in enumerate(candidates):
        pairs = values.get(i)
        by_word[cand.text]["focus"] = float(np.mean([p[0] for p in pairs])) if pairs else float("nan")
        by_word[cand.text]["grad_input"] = float(np.mean([p[1] for p in pairs])) if pairs else float("nan")
