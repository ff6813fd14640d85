"""An evaluation request and its report: what ``afa-llm eval`` and the Python API's ``Classifier.evaluate``
run. `evaluate_request` scores the request's rows (`afa_llm.evaluation.evaluate`), with ACT's attention
calibration and a label-prior correction where asked, and adds the report's parts
(`afa_llm.evaluation.report`) and the focus metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from afa_llm.data.loading import load_data
from afa_llm.defaults import FAITHFULNESS_ROWS, FOCUS_METRIC_ROWS, LEXICON_THRESHOLD
from afa_llm.evaluation.report import rows_to_score, truncation_record
from afa_llm.specs import Resolved

if TYPE_CHECKING:
    import torch


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
        title += f" + ACT ({act.n_heads} attention heads, beta {act.beta}, tau {act.tau}: {r.act})"
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
