"""An ``afa-llm eval`` report: which rows, the scores (with ACT and a label-prior correction where asked),
the share of texts cut to the text budget, and the focus metrics."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from afa_llm.defaults import FAITHFULNESS_ROWS, FOCUS_METRIC_ROWS, LEXICON_THRESHOLD, TRUNCATION_WARN_SHARE
from afa_llm.data.loading import SentimentData, check_splits_nonempty, load_data
from afa_llm.specs import Resolved

if TYPE_CHECKING:
    import torch
    from datasets import Dataset

    from afa_llm.model.task import PromptTask


@dataclass
class EvalRequest:
    resolved: Resolved
    split: str = "test"
    limit: int | None = None
    batch_size: int = 32
    shots: int = 0
    seed: int = 0
    act: str | None = None  # an act.json (afa-llm calibrate)
    prior_from: str | None = None
    prior_correction: str | None = None
    focus_n: int = FOCUS_METRIC_ROWS  # rows for the focus metrics (0: none)
    faithfulness_n: int = FAITHFULNESS_ROWS
    lexicon_threshold: float = LEXICON_THRESHOLD
    progress: bool = True
    loaded: torch.nn.Module | None = None  # a model already loaded from the scorer (the Python API's), reused


def rows_to_score(data: SentimentData, split_name: str, limit: int | None, data_name: str,
                  split_seed: int) -> tuple[Dataset, dict]:
    """The rows that are scored, and a record of which they are (for the report)."""
    check_splits_nonempty(data, [split_name], data_name, "score every row with --split all")
    split = data.split(split_name)
    if limit:
        split = split.select(range(min(limit, len(split))))
    given = data.given_splits.get(split_name)  # a split file of your own (validation_data, test_data)
    which = ("all rows" if split_name == "all" else f"the {split_name} split as given: {given}" if given
             else f"the seeded {split_name} split (split seed {split_seed})")
    which += f", the first {len(split)} (--limit)" if limit else ""
    return split, {"rows": which, "n": len(split), "of": len(data.split("all")), "limit": limit,
                   **({"file": given} if given else {})}


def warn_if_truncated(share: float, n: int, max_text_tokens: int) -> None:
    """A warning on stderr, naming the flag, when more than `TRUNCATION_WARN_SHARE` of the texts were cut."""
    if share > TRUNCATION_WARN_SHARE:
        print(f"warning: {share:.0%} of the {n} texts are longer than max_text_tokens={max_text_tokens} tokens and "
              "were cut; pass --max-text-tokens N to score more of each text", file=sys.stderr)


def truncation_record(task: PromptTask, texts: Sequence[str]) -> dict:
    """The share of ``texts`` cut to the text budget (warned about past `TRUNCATION_WARN_SHARE`)."""
    share = task.truncated_share(texts)
    warn_if_truncated(share, len(texts), task.max_text_tokens)
    return {"truncated_share": share, "max_text_tokens": task.max_text_tokens}


def truncation_note(cut: int, n: int, max_text_tokens: int) -> None:
    """For a stream (`afa-llm predict`): the count of texts cut, on stderr, and the warning."""
    share = cut / n if n else 0.0
    print(f"truncated: {cut} of {n} texts ({share:.1%}) exceed max_text_tokens={max_text_tokens}", file=sys.stderr)
    warn_if_truncated(share, n, max_text_tokens)


def evaluate_request(request: EvalRequest) -> tuple[dict, str]:
    """Score the request's rows; returns the report and its title."""
    from afa_llm.act.calibration import act_enabled, load_act
    from afa_llm.evaluation.evaluate import evaluate_with_focus
    from afa_llm.evaluation.focus_metrics import focus_metrics
    from afa_llm.evaluation.prior import correct_report, correction_name, prior_from_report
    from afa_llm.model.adapters import load_scorer
    from afa_llm.provenance import machine_record

    r, spec = request, request.resolved.scorer
    act = load_act(r.act) if r.act else None
    data_spec = request.resolved.data
    data = load_data(data_spec)
    split, scored = rows_to_score(data, r.split, r.limit, data_spec.data, data_spec.split_seed)
    record = spec.record(data.label_names, act.summary(r.act) if act else None, data=data_spec.data, split=r.split,
                         split_seed=data_spec.split_seed, shots=r.shots)
    correction = prior_from_report(r.prior_from, r.prior_correction, record) if r.prior_from else None
    model, task = load_scorer(spec, data.label_names, progress=r.progress, loaded=r.loaded)
    focus_n = 0 if act or r.shots else r.focus_n  # focus of the plain prompt: not under ACT, not few-shot
    focus_layers = getattr(request.resolved.config, "focus_layers", None)
    with act_enabled(model, act, r.act):
        report, focus_rows = evaluate_with_focus(model, task, split, data.label_names, batch_size=r.batch_size,
                                                 shots=r.shots, demo_pool=data.split("train"), seed=r.seed,
                                                 progress=r.progress, focus_on=range(min(focus_n, len(split))),
                                                 focus_layers=focus_layers)
    report.update({**record, "scored": scored, **truncation_record(task, list(split["text"])),
                   "machine": machine_record()})
    title = f"{spec.model}{' + ' + spec.adapter if spec.adapter else ''} on {data_spec.data}/{r.split}"
    if spec.adapter_scale != 1:
        title += f" (adapter scale {spec.adapter_scale}: WiSE-FT weight interpolation)"
    if act:
        title += f" + ACT ({act.n_heads} heads, beta {act.beta}, tau {act.tau}: {r.act})"
    title += f"\nscored {scored['n']} of {scored['of']} rows: {scored['rows']}"
    title += "\nhead: " + ("a classification head" if spec.head == "classifier" else
                          "label words " + ", ".join(repr(w) for w in spec.words_for(data.label_names))
                          + (" (log-likelihood per token)" if spec.length_normalize else ""))
    if correction:
        report = correct_report(report, correction, data.label_names)
        uncorrected = report["prior_correction"]["uncorrected"]
        title += (f"\n{correction_name(correction)} (fitted on {correction['fitted_n']} rows: "
                  f"{r.prior_from}); without it: accuracy={uncorrected['accuracy']:.4f}"
                  f"  macro_f1={uncorrected['macro_f1']:.4f}  ece={uncorrected['ece']:.4f}"
                  f"  brier={uncorrected['brier']:.4f}")
    if focus_n:
        report["focus_metrics"] = focus_metrics(
            model, task, list(split["text"][:focus_n]), threshold=r.lexicon_threshold,
            faithfulness_n=r.faithfulness_n, batch_size=r.batch_size, focus_layers=focus_layers, seed=r.seed,
            focus_rows=focus_rows)
    return report, title
