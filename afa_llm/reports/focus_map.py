"""``afa-llm focus``: where the model looks, as a self-contained HTML page and a PNG.

Focus is the trainer's definition (`afa_llm.attention.clean_pass.clean_pass`): the answer position's
attention over the text tokens, averaged over heads and the focus layers (default: the
last third; a run's ``focus_layers`` when ``--adapter`` is a run folder), renormalised to
sum to 1 over the text. With ``--adapter`` the base (the adapter disabled with peft's
``disable_adapter()``) and the adapter are shown side by side, each with its predicted
label and class probabilities.

With ``--act FILE`` (from ``afa-llm calibrate``) one more side shows the model with the ACT
calibration on (the adapter too, if given); in the calibrated heads of the focus layers its focus
uses the calibrated attention rows.

With ``--data``, the page also reports the fake-focus share per data set: the focus on
the most frequent 1% of token types of the train split, divided by those tokens' share
of the text (1 = no preference for frequent words), for the base and the adapter.

Every page also reports, per side, the focus against human-rated words (VADER: lexicon share, lift and
AUPRC, `afa_llm.evaluation.word_focus`) over the rendered (or ``--metric-n``) texts, and its faithfulness
(comprehensiveness and sufficiency against random tokens, `afa_llm.evaluation.faithfulness`) on the first
``--faithfulness-n`` of them.

Outputs in ``--output``: ``focus.html`` (inline CSS, no scripts, no external URLs; token
text is html-escaped), ``focus.png`` and ``focus.json`` (all numbers).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from afa_llm.defaults import FOCUS_FAITHFULNESS_ROWS, FOCUS_METRIC_ROWS, LEXICON_THRESHOLD
from afa_llm.data.loading import load_data
from afa_llm.errors import UserError
from afa_llm.io_utils import atomic_path, atomic_write_text, write_json
from afa_llm.specs import Resolved

if TYPE_CHECKING:
    from afa_llm.act.calibration import ACTConfig
    from afa_llm.model.heads import Head
    from afa_llm.model.task import EncodedBatch, PromptTask


# ---- computing ----------------------------------------------------------------------
def calibrated_pass(model: torch.nn.Module, batch: EncodedBatch, head: Head, layers: list[int],
                    edits: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Class logits and focus with ACT on: the probe's answer rows, with the calibrated heads'
    rows replaced by what the ACT edits computed (the probe recomputes plain softmax rows)."""
    from afa_llm.attention.probe import AnswerAttentionProbe
    from afa_llm.attention.focus_math import focus_distribution
    from afa_llm.model.scoring import forward_scores

    with AnswerAttentionProbe(model, layers, batch.attention_mask) as probe:
        logits = forward_scores(model, **batch.model_inputs(), head=head).class_logits
        rows = probe.answer_attention()
    for slot, layer in enumerate(layers):
        if layer in edits:
            rows[:, slot, list(edits[layer].heads)] = edits[layer].last_rows.to(rows.dtype)
    return logits, focus_distribution(rows, batch.text_mask)


def side_passes(model: torch.nn.Module, task: PromptTask, texts: list[str], layers: list[int], batch_size: int,
                frequent: torch.Tensor | None, act_edits: dict | None = None) -> dict:
    """Class probabilities, per-text focus over its text tokens, and fake-focus shares
    (``act_edits``: the capturing edits of an active ACT calibration)."""
    from afa_llm.attention import focus_math as am
    from afa_llm.attention.clean_pass import clean_pass

    device = next(model.parameters()).device
    out: dict[str, list] = {"probs": [], "focus": [], "share": [], "token_share": []}
    for start in range(0, len(texts), batch_size):
        batch = task.encode(texts[start : start + batch_size]).to(device)
        with torch.no_grad():
            if act_edits is None:
                clean = clean_pass(model, batch, task.head, layers)
                logits, focus = clean.class_logits, clean.focus
            else:
                logits, focus = calibrated_pass(model, batch, task.head, layers, act_edits)
        out["probs"] += logits.softmax(-1).tolist()
        out["focus"] += [row[mask].tolist() for row, mask in zip(focus, batch.text_mask)]
        if frequent is not None:
            share, token_share = am.frequent_shares(focus, batch.input_ids, batch.text_mask, frequent)
            out["share"] += share.tolist()
            out["token_share"] += token_share.tolist()
    return out


def compute(model: torch.nn.Module, task: PromptTask, texts: list[str], layers: list[int], batch_size: int,
            has_adapter: bool, frequent: torch.Tensor | None = None, act: ACTConfig | None = None) -> dict[str, dict]:
    """``{"base": ..., "adapter": ..., "act": ...}`` ("adapter" only with an adapter, "act" only with ``act``)."""
    from afa_llm.act.calibration import act_enabled

    model.eval()
    if has_adapter:
        with model.disable_adapter():
            base = side_passes(model, task, texts, layers, batch_size, frequent)
        sides = {"base": base, "adapter": side_passes(model, task, texts, layers, batch_size, frequent)}
    else:
        sides = {"base": side_passes(model, task, texts, layers, batch_size, frequent)}
    if act is not None:
        with act_enabled(model, act, "--act", capture=True) as edits:
            sides["act"] = side_passes(model, task, texts, layers, batch_size, frequent, act_edits=edits)
    return sides


def focus_metric_summary(model: torch.nn.Module, task: PromptTask, texts: list[str], sides: dict[str, dict],
                         layers: list[int], threshold: float = LEXICON_THRESHOLD,
                         faithfulness_n: int = FOCUS_FAITHFULNESS_ROWS) -> dict[str, dict]:
    """Per side: the lexicon metrics of its focus on ``texts`` and (base and adapter sides) faithfulness."""
    from afa_llm.evaluation.faithfulness import faithfulness
    from afa_llm.evaluation.word_focus import lexicon_metrics

    offsets = [task.text_offsets(t) for t in texts]
    out = {}
    for side, values in sides.items():
        out[side] = lexicon_metrics([np.asarray(f) for f in values["focus"]], offsets, texts, threshold)
        if faithfulness_n and side != "act":  # ACT's focus is read off captured rows, not its own pass
            scope = model.disable_adapter() if side == "base" and "adapter" in sides else contextlib.nullcontext()
            with scope:
                out[side].update(faithfulness(model, task, texts[:faithfulness_n], focus_layers=layers))
    return out


def fake_focus_summary(sides: dict[str, dict], data: str, n_frequent: int) -> dict:
    from afa_llm.attention import focus_math as am

    token_shares = torch.tensor(next(iter(sides.values()))["token_share"])
    summary = {"data": data, "examples": len(token_shares), "frequent_token_types": n_frequent,
               "frequent_token_share": token_shares.mean().item()}
    for side, values in sides.items():
        shares = torch.tensor(values["share"])
        summary[side] = {"focus_share": shares.mean().item(), "normalised": am.fake_focus_ratio(shares, token_shares)}
    return summary




@dataclass
class FocusRequest:
    resolved: Resolved
    output: str  # folder for focus.html, focus.png and focus.json
    texts: list[str] | None = None  # render these; None: the first ``n`` rows of the data set's ``split``
    split: str = "test"
    n: int = 8
    metric_n: int = FOCUS_METRIC_ROWS  # rows of the data set for the fake-focus share and the focus metrics
    focus_layers: list[int] | None = None  # None: the run's, else the last third
    batch_size: int = 16
    act: str | None = None
    faithfulness_n: int = FOCUS_FAITHFULNESS_ROWS
    lexicon_threshold: float = LEXICON_THRESHOLD


def focus_layers_of(model: torch.nn.Module, layers: list[int] | None) -> list[int]:
    """Resolved (non-negative) focus layers; out-of-range indices are a UserError."""
    from afa_llm.attention.decoder_layers import default_focus_layers, find_decoder_layers

    n_layers = len(find_decoder_layers(model))
    if layers and any(not -n_layers <= i < n_layers for i in layers):
        raise UserError(f"--focus-layers {layers} out of range for a model with {n_layers} layers")
    return sorted(i % n_layers for i in layers) if layers else default_focus_layers(n_layers)


def focus_report(request: FocusRequest) -> dict:
    """Compute the focus map's report (every number of focus.json)."""
    from afa_llm.act.calibration import load_act
    from afa_llm.attention.focus_math import frequent_ids
    from afa_llm.model.adapters import load_scorer

    r, cfg = request, request.resolved.config
    act = load_act(r.act) if r.act else None
    data = load_data(r.resolved.data) if r.texts is None else None
    names = data.label_names if data else r.resolved.class_names
    model, task = load_scorer(r.resolved.scorer, names)
    layers = focus_layers_of(model, r.focus_layers or (cfg.focus_layers if cfg is not None else None))
    frequent, labels = None, None
    if data is not None:
        split = data.split(r.split)
        texts = list(split["text"][: max(r.n, r.metric_n)])
        labels = list(split["label"][: r.n])
        frequent = frequent_ids(task, list(data.split("train")["text"]))
    else:
        texts = list(r.texts)
    sides = compute(model, task, texts, layers, r.batch_size, bool(r.resolved.scorer.adapter), frequent, act)
    shown = texts[: r.n] if data is not None else texts
    report = {
        "model": r.resolved.scorer.model, "adapter": r.resolved.scorer.adapter, "focus_layers": layers,
        "template": task.template, "label_words": task.label_words, "label_names": names,
        "sides": list(sides), "act": act.summary(r.act) if act else None,
        "texts": [{"text": text, "label": labels[i] if labels else None,
                   "tokens": [task.tokenizer.decode([t]) for t in task.text_ids(text)],
                   **{s: {"focus": v["focus"][i], "probs": v["probs"][i]} for s, v in sides.items()}}
                  for i, text in enumerate(shown)],
    }
    if frequent is not None:
        report["fake_focus"] = fake_focus_summary(sides, r.resolved.data.data, len(frequent))
    report["focus_metrics"] = focus_metric_summary(model, task, texts, sides, layers, r.lexicon_threshold,
                                                   r.faithfulness_n)
    return report


def write_focus(report: dict, output: str) -> None:
    """focus.html, focus.json and focus.png in ``output``, each written atomically."""
    from afa_llm.reports.focus_render import render_html, render_png

    out = Path(output)
    atomic_write_text(out / "focus.html", render_html(report))
    write_json(out / "focus.json", report, indent=1)
    with atomic_path(out / "focus.png") as tmp:
        render_png(report, tmp)
