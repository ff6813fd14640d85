"""The shortcut audit (`afa-llm audit`): which words does a trained classifier lean on beyond what the
zero-shot base would? The twin of `afa_llm.evaluation.stress`: stress tests a named cue, audit finds one.

    afa-llm audit --adapter runs/cued-lora                      # the run's own training split, as it saw it
    afa-llm audit --adapter runs/my-classifier --data reviews.csv --split all --top 30 --html audit.html

For every candidate (a word type, or a collocated pair, with at least ``min_count`` occurrences;
`afa_llm.evaluation.audit_stats`) the audit counts its occurrences per class and their label skew, and,
for the ``max_candidates`` most skewed, hides it (every occurrence, at every layer: its tokens are
deleted from the attention, as the package's masked passes do; `afa_llm.attention.masking.hide_tokens`)
in up to ``sample`` texts that hold it. Its ``effect`` on a model is the mean drop in the log-odds of the
class it is skewed toward when it is hidden; ``effect_model`` for the audited classifier,
``effect_base`` for the zero-shot base (the adapter switched off), scored by label words even when the
run has a classifier head. The ``score`` ranks what the model relies on beyond what the base would
(`afa_llm.evaluation.audit_stats.audit_scores`). Only skewed words can have been learned from the data as
shortcuts, hence the skew pre-selection.

Cost: one clean pass per sampled text and one masked pass per (text, candidate), for each of the two
models; texts of similar length share a batch.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from afa_llm.errors import UserError
from afa_llm.evaluation.audit_stats import (Candidate, audit_scores, class_word_totals, find_candidates,
                                            log_odds_skew, occurrence_spans, rank_order)
from afa_llm.specs import Resolved

if TYPE_CHECKING:
    import torch

    from afa_llm.model.heads import Head
    from afa_llm.model.task import PromptTask

EXAMPLES_PER_CANDIDATE = 3  # training texts shown per candidate in the JSON and the HTML page


@dataclass
class AuditRequest:
    resolved: Resolved
    split: str = "train"
    limit: int | None = None
    top: int = 20
    min_count: int = 5
    sample: int = 8  # texts per candidate whose hiding is measured
    max_candidates: int = 200  # the most skewed candidates are measured
    batch_size: int = 64
    seed: int = 0
    # "bf16": the passes under bf16 autocast (as a run's own evaluations); "auto": bf16 where the device has
    # bf16 instructions (emulated bf16 is 6-12x slower), else "no"
    mixed_precision: str = "auto"
    progress: bool = True

    def check(self) -> None:
        if self.mixed_precision not in ("no", "bf16", "auto"):
            raise UserError(f"--mixed-precision must be no, bf16 or auto, got {self.mixed_precision!r}")
        checks = {"--limit": self.limit is None or self.limit > 0, "--top": self.top > 0,
                  "--min-count": self.min_count >= 1, "--sample": self.sample >= 1,
                  "--max-candidates": self.max_candidates >= 1, "--batch-size": self.batch_size >= 1}
        for flag, ok in checks.items():
            if not ok:
                raise UserError(f"{flag} must be a positive number")


@dataclass
class Scorer:
    """One model's view of the texts: the module, its head, and the context it scores in."""

    name: str
    model: torch.nn.Module
    head: Head
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


# ---- the rows ---------------------------------------------------------------------------
def audit_rows(request: AuditRequest) -> tuple[list[str], list[int], list[str], dict]:
    """The audited texts, labels and class names, and the record of which rows they are. A run's own
    data is read as the run saw it: its planted cue in train and validation, its ``train_limit``."""
    from afa_llm.data.loading import load_data
    from afa_llm.evaluation.report import rows_to_score
    from afa_llm.runs import plant_run_shortcut

    resolved, cfg = request.resolved, request.resolved.config
    data = load_data(resolved.data)
    own = resolved.own_data and cfg is not None
    if own and cfg.shortcut_cue:
        data = plant_run_shortcut(cfg, data)
    limit = request.limit
    if own and request.split == "train" and cfg.train_limit:
        limit = min(limit or cfg.train_limit, cfg.train_limit)
    split, scored = rows_to_score(data, request.split, limit, resolved.data.data, resolved.data.split_seed)
    return list(split["text"]), list(split["label"]), data.label_names, scored


def skewed_candidates(texts: Sequence[str], labels: Sequence[int], num_classes: int, min_count: int,
                      max_candidates: int) -> tuple[list[Candidate], list[dict], int]:
    """The ``max_candidates`` most skewed candidates with their skews, and how many reached ``min_count``."""
    found = find_candidates(texts, labels, num_classes, min_count)
    if not found:
        raise UserError(f"no word occurs at least --min-count {min_count} times in the {len(texts)} audited texts; "
                        "lower --min-count or audit more rows")
    totals = class_word_totals(texts, labels, num_classes)
    skews = [log_odds_skew(c.counts, totals) for c in found]
    order = sorted(range(len(found)), key=lambda i: (-skews[i]["z"], i))[:max_candidates]
    return [found[i] for i in order], [skews[i] for i in order], len(found)


def sample_jobs(candidates: Sequence[Candidate], sample: int, seed: int) -> list[tuple[int, int]]:
    """(row, candidate index) pairs: up to ``sample`` rows per candidate, drawn by ``seed``."""
    rng = np.random.default_rng(seed)
    jobs = []
    for i, cand in enumerate(candidates):
        rows = cand.rows if len(cand.rows) <= sample else sorted(rng.choice(cand.rows, sample, replace=False))
        jobs += [(int(r), i) for r in rows]
    return jobs


# ---- the masked passes --------------------------------------------------------------------
def occurrence_tokens(task: PromptTask, text: str, words: Sequence[str]) -> list[int]:
    """The indices (among the text's kept tokens) of the tokens that overlap an occurrence of ``words``."""
    spans = occurrence_spans(text, words)
    return [k for k, (start, end) in enumerate(task.text_offsets(text)) if any(s < end and start < e for s, e in spans)]


def hidden_token_mask(task: PromptTask, text: str, words: Sequence[str], text_positions: torch.Tensor,
                      width: int) -> torch.Tensor:
    """(width,) bool: the prompt positions of the tokens that overlap an occurrence of ``words``."""
    import torch

    mask = torch.zeros(width, dtype=torch.bool)
    mask[text_positions[occurrence_tokens(task, text, words)]] = True
    return mask


def skew_log_odds(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """log p(c) - log(1 - p(c)) of class ``classes[i]`` in row i of (N, C) class logits."""
    import torch

    picked = logits.gather(1, classes.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, classes.view(-1, 1), float("-inf"))
    return picked - torch.logsumexp(others, dim=1)


def measure_effects(scorers: Sequence[Scorer], task: PromptTask, texts: Sequence[str],
                    jobs: Sequence[tuple[int, int]], candidates: Sequence[Candidate], skew_class: Sequence[int],
                    batch_size: int, progress: bool = False) -> np.ndarray:
    """(len(jobs), len(scorers)): the drop in the skewed class's log-odds when the job's candidate is
    hidden in the job's text (NaN where truncation cut every occurrence)."""
    import torch
    from tqdm.auto import tqdm

    from afa_llm.attention.masking import hide_tokens
    from afa_llm.model.scoring import forward_scores

    out = np.full((len(jobs), len(scorers)), np.nan)
    by_row: dict[int, list[int]] = {}
    for j, (row, _) in enumerate(jobs):
        by_row.setdefault(row, []).append(j)
    rows = sorted(by_row, key=lambda r: (len(task.text_ids(texts[r])), r))
    device = next(scorers[0].model.parameters()).device
    bar = tqdm(total=len(jobs), desc="audit", unit="mask", disable=not progress)
    for chunk in _row_chunks(rows, by_row, batch_size):
        batch = task.encode([texts[r] for r in chunk])
        slot = {r: i for i, r in enumerate(chunk)}
        job_ids = [j for r in chunk for j in by_row[r]]
        masks = torch.stack([hidden_token_mask(task, texts[jobs[j][0]], candidates[jobs[j][1]].words,
                                               batch.text_mask[slot[jobs[j][0]]].nonzero().squeeze(1),
                                               batch.input_ids.shape[1]) for j in job_ids])
        keep = masks.any(dim=1)
        job_ids = [j for j, k in zip(job_ids, keep.tolist()) if k]
        if job_ids:
            index = torch.tensor([slot[jobs[j][0]] for j in job_ids])
            sub = type(batch)(batch.input_ids[index], batch.attention_mask[index], batch.position_ids[index],
                              batch.text_mask[index])
            hidden = hide_tokens(sub, masks[keep].unsqueeze(1), "attention", task.tokenizer.pad_token_id or 0)
            classes = torch.tensor([skew_class[jobs[j][1]] for j in job_ids], device=device)
            for s, scorer in enumerate(scorers):
                with torch.no_grad(), scorer.context():
                    clean = forward_scores(scorer.model, **batch.to(device).model_inputs(), head=scorer.head)
                    masked = forward_scores(scorer.model, **hidden.to(device).model_inputs(), head=scorer.head)
                drop = (skew_log_odds(clean.class_logits[index.to(device)], classes)
                        - skew_log_odds(masked.class_logits, classes))
                out[job_ids, s] = drop.float().cpu().numpy()
        bar.update(len(keep))
    bar.close()
    return out


def _row_chunks(rows: Sequence[int], by_row: dict[int, list[int]], batch_size: int) -> list[list[int]]:
    """Rows in order, grouped so that each group has about ``batch_size`` masked passes."""
    chunks, current, count = [], [], 0
    for r in rows:
        current.append(r)
        count += len(by_row[r])
        if count >= batch_size:
            chunks.append(current)
            current, count = [], 0
    return chunks + ([current] if current else [])


def resolve_mixed_precision(setting: str) -> str:
    """``auto`` -> ``bf16`` where the device computes bf16 natively, else ``no``."""
    if setting != "auto":
        return setting
    import torch

    from afa_llm.provenance import cpu_bf16_native

    native = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else cpu_bf16_native()
    return "bf16" if native else "no"


def autocast(mixed_precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the scorers' device type for ``"bf16"``, else nothing (weights keep their dtype)."""
    if mixed_precision != "bf16":
        return contextlib.nullcontext()
    import torch

    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)


# ---- the models ---------------------------------------------------------------------------
def audit_scorers(resolved: Resolved, class_names: Sequence[str], progress: bool) -> tuple[list[Scorer], PromptTask]:
    """The audited model and, where it has one, its zero-shot base scored by label words."""
    from dataclasses import replace

    from afa_llm.model.adapters import load_scorer
    from afa_llm.model.heads import LabelWordHead

    model, task = load_scorer(resolved.scorer, class_names, progress=progress)
    model.eval()
    scorers = [Scorer("model", model, task.head)]
    words = LabelWordHead(tuple(tuple(t) for t in task.label_token_seqs), task.length_normalize)
    if resolved.scorer.adapter and resolved.scorer.head == "label_words":
        scorers.append(Scorer("base", model, words, model.disable_adapter))
    elif resolved.scorer.adapter:  # a classifier run: the base is the causal LM under the same adapter's base
        base, _ = load_scorer(replace(resolved.scorer, adapter=None, adapter_scale=1.0, head="label_words"),
                              class_names, progress=progress)
        scorers.append(Scorer("base", base.eval(), words))
    return scorers, task


# ---- the report ---------------------------------------------------------------------------
def audit_request(request: AuditRequest) -> dict:
    """The audit report: every measured candidate, ranked by its score, with the run, data and settings."""
    from afa_llm.evaluation.report import truncation_record
    from afa_llm.provenance import machine_record

    request.check()
    resolved = request.resolved
    texts, labels, class_names, scored = audit_rows(request)
    candidates, skews, n_found = skewed_candidates(texts, labels, len(class_names), request.min_count,
                                                   request.max_candidates)
    record = resolved.scorer.record(class_names, None, data=resolved.data.data, split=request.split,
                                    split_seed=resolved.data.split_seed)
    scorers, task = audit_scorers(resolved, class_names, request.progress)
    jobs = sample_jobs(candidates, request.sample, request.seed)
    precision = resolve_mixed_precision(request.mixed_precision)
    start = time.perf_counter()
    with autocast(precision):
        effects = measure_effects(scorers, task, texts, jobs, candidates, [s["class"] for s in skews],
                                  request.batch_size, request.progress)
    seconds = time.perf_counter() - start
    rows, scales = candidate_rows(candidates, skews, jobs, effects, texts, labels, class_names, [s.name for s in scorers])
    return {"candidates": rows, **record, "scored": scored, **truncation_record(task, texts),
            "settings": {"min_count": request.min_count, "sample": request.sample,
                         "max_candidates": request.max_candidates, "top": request.top, "seed": request.seed,
                         "batch_size": request.batch_size, "mixed_precision": precision,
                         "base": len(scorers) > 1},
            "scales": scales, "candidates_found": n_found, "candidates_measured": len(candidates),
            "passes": {"clean": len({r for r, _ in jobs}) * len(scorers), "masked": len(jobs) * len(scorers)},
            "seconds": seconds, "machine": machine_record()}


def candidate_rows(candidates: Sequence[Candidate], skews: Sequence[dict], jobs: Sequence[tuple[int, int]],
                   effects: np.ndarray, texts: Sequence[str], labels: Sequence[int], class_names: Sequence[str],
                   scorer_names: Sequence[str]) -> tuple[list[dict], dict]:
    """One JSON row per candidate, sorted by rank (score, then occurrences), and the effect scales."""
    per_cand = jobs_by_candidate(jobs)
    mean = mean_effects(jobs, effects, len(candidates))
    has_base = len(scorer_names) > 1
    score, scales = audit_scores(mean[:, 0], mean[:, 1] if has_base else None)
    order = rank_order(score, [sum(c.counts) for c in candidates])
    out = []
    for rank, i in enumerate(order, start=1):
        cand, skew = candidates[i], skews[i]
        examples = [{"text": texts[jobs[j][0]], "label": class_names[labels[jobs[j][0]]],
                     **{f"effect_{n}": _finite(effects[j, s]) for s, n in enumerate(scorer_names)}}
                    for j in per_cand.get(i, [])[:EXAMPLES_PER_CANDIDATE]]
        out.append({"word": cand.text, "rank": rank, "score": score[i],
                    "counts": dict(zip(class_names, cand.counts)),
                    "skew": {**skew, "class": class_names[skew["class"]]},
                    "effect_model": float(mean[i, 0]), "effect_base": float(mean[i, 1]) if has_base else None,
                    "n_measured": int(np.isfinite(effects[per_cand.get(i, []), 0]).sum()), "examples": examples})
    return out, scales


def jobs_by_candidate(jobs: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    """candidate index -> the indices of its jobs, in job order."""
    per_cand: dict[int, list[int]] = {}
    for j, (_, i) in enumerate(jobs):
        per_cand.setdefault(i, []).append(j)
    return per_cand


def mean_effects(jobs: Sequence[tuple[int, int]], effects: np.ndarray, n_candidates: int) -> np.ndarray:
    """(n_candidates, scorers): each candidate's mean effect over its measured jobs (0 where none was measured)."""
    per_cand = jobs_by_candidate(jobs)
    mean = np.zeros((n_candidates, effects.shape[1]))
    for i, rows in per_cand.items():
        values = effects[rows]
        for s in range(effects.shape[1]):
            if np.isfinite(values[:, s]).any():
                mean[i, s] = np.nanmean(values[:, s])
    return mean


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def format_audit(report: dict, top: int, title: str) -> str:
    """The terminal table of the top ``top`` candidates."""
    lines = [title, f"{report['candidates_measured']} most skewed of {report['candidates_found']} candidates "
                    f"(min count {report['settings']['min_count']}) measured on up to "
                    f"{report['settings']['sample']} texts each; {report['passes']['masked']} masked passes", "",
             f"{'rank':>4}  {'word':<22} {'score':>7} {'effect':>7} {'base':>7} {'skew z':>7} {'toward':<10} counts"]
    for row in report["candidates"][:top]:
        base = f"{row['effect_base']:7.3f}" if row["effect_base"] is not None else f"{'-':>7}"
        counts = " ".join(f"{n}" for n in row["counts"].values())
        lines.append(f"{row['rank']:>4}  {row['word'][:22]:<22} {row['score']:7.2f} {row['effect_model']:7.3f} "
                     f"{base} {row['skew']['z']:7.2f} {row['skew']['class'][:10]:<10} {counts}")
    lines.append("\nscore = effect / the model's median |effect| - base effect / the base's median |effect|; "
                 "effect: drop in the skewed class's log-odds when the word is hidden")
    return "\n".join(lines)
