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

import argparse
import contextlib
import html
from pathlib import Path

import numpy as np
import torch

from afa_llm.errors import UserError
from afa_llm.io_utils import atomic_path, atomic_write_text, check_writable_dir, write_json

PNG_MAX_TOKENS = 60
SIDE_TITLES = {"base": "base (adapter disabled)", "adapter": "adapter", "act": "with ACT calibration"}
CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.4em 0.6em; vertical-align: top; text-align: left; }
td.side { max-width: 40em; }
.text { white-space: pre-wrap; line-height: 1.9; font-family: ui-monospace, monospace; font-size: 0.9em; }
.tok { border-radius: 2px; }
.pred { font-size: 0.85em; color: #555; margin-bottom: 0.3em; }
.meta { color: #555; font-size: 0.9em; }
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from afa_llm.cli import add_focus_metric_arguments, add_scorer_arguments

    # a run's model, prompt and (for its own --data) split seed, as in eval; --data is one of two sources
    add_scorer_arguments(parser, data_help="texts to render (instead of --text): rotten_tomatoes, imdb, tweets, a "
                         ".csv/.jsonl/.parquet file or hub:NAME[:CONFIG]; the run's own data set uses the run's "
                         "split seed")
    parser.add_argument("--text", action="append", default=None, help="a text to render (repeat for several)")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"],
                        help="split the --data texts come from (default: %(default)s)")
    parser.add_argument("--n", type=int, default=8, help="texts of --data to render (default: %(default)s)")
    parser.add_argument("--metric-n", type=int, default=256,
                        help="texts of --data for the fake-focus share (default: %(default)s)")
    parser.add_argument("--focus-layers", default=None,
                        help="comma-separated layer indices, negative from the end (default: the run's "
                             "focus_layers, else the last third of the layers)")
    parser.add_argument("--batch-size", type=int, default=16, help="texts per forward pass (default: %(default)s)")
    parser.add_argument("--output", required=True, help="folder for focus.html, focus.png and focus.json")
    parser.add_argument("--act", default=None, metavar="ACT.json",
                        help="add a side with this ACT calibration on (afa-llm calibrate)")
    add_focus_metric_arguments(parser, focus_n=None)


# ---- computing ----------------------------------------------------------------------
def calibrated_pass(model, batch, label_token_ids, layers, edits: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Class logits and focus with ACT on: the probe's answer rows, with the calibrated heads'
    rows replaced by what the ACT edits computed (the probe recomputes plain softmax rows)."""
    from afa_llm.attention.probe import AnswerAttentionProbe
    from afa_llm.attention.focus_math import focus_distribution
    from afa_llm.model.scoring import forward_scores

    with AnswerAttentionProbe(model, layers, batch.attention_mask) as probe:
        logits = forward_scores(model, **batch.model_inputs(), label_token_ids=label_token_ids).class_logits
        rows = probe.answer_attention()
    for slot, layer in enumerate(layers):
        if layer in edits:
            rows[:, slot, list(edits[layer].heads)] = edits[layer].last_rows.to(rows.dtype)
    return logits, focus_distribution(rows, batch.text_mask)


def side_passes(model, task, texts: list[str], layers, batch_size: int, frequent: torch.Tensor | None,
                act_edits: dict | None = None) -> dict:
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
                clean = clean_pass(model, batch, task.label_token_ids, layers)
                logits, focus = clean.class_logits, clean.focus
            else:
                logits, focus = calibrated_pass(model, batch, task.label_token_ids, layers, act_edits)
        out["probs"] += logits.softmax(-1).tolist()
        out["focus"] += [row[mask].tolist() for row, mask in zip(focus, batch.text_mask)]
        if frequent is not None:
            share, token_share = am.frequent_shares(focus, batch.input_ids, batch.text_mask, frequent)
            out["share"] += share.tolist()
            out["token_share"] += token_share.tolist()
    return out


def compute(model, task, texts: list[str], layers, batch_size: int, has_adapter: bool,
            frequent: torch.Tensor | None = None, act=None) -> dict[str, dict]:
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


def focus_metric_summary(model, task, texts: list[str], sides: dict[str, dict], layers, args) -> dict[str, dict]:
    """Per side: the lexicon metrics of its focus on ``texts`` and (base and adapter sides) faithfulness."""
    from afa_llm.evaluation.faithfulness import faithfulness
    from afa_llm.evaluation.word_focus import lexicon_metrics

    offsets = [task.text_offsets(t) for t in texts]
    out = {}
    for side, values in sides.items():
        out[side] = lexicon_metrics([np.asarray(f) for f in values["focus"]], offsets, texts, args.lexicon_threshold)
        if args.faithfulness_n and side != "act":  # ACT's focus is read off captured rows, not its own pass
            scope = model.disable_adapter() if side == "base" and "adapter" in sides else contextlib.nullcontext()
            with scope:
                out[side].update(faithfulness(model, task, texts[: args.faithfulness_n], focus_layers=layers))
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


# ---- rendering ----------------------------------------------------------------------
def _prediction(probs: list[float], names: list[str]) -> str:
    best = int(np.argmax(probs))
    detail = ", ".join(f"{html.escape(n)} {p:.2f}" for n, p in zip(names, probs))
    return f"predicted <b>{html.escape(names[best])}</b> ({detail})"


def render_html(report: dict) -> str:
    """The page: one table row per text, one column per side; tokens shaded by focus."""
    names, sides = report["label_names"], list(report["sides"])
    meta = (f"model <code>{html.escape(report['model'])}</code>"
            + (f", adapter <code>{html.escape(report['adapter'])}</code>" if report["adapter"] else "")
            + f"; focus layers {report['focus_layers']}; template <code>{html.escape(repr(report['template']))}</code>")
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8"><title>Focus map</title>',
             f"<style>{CSS}</style></head><body>", "<h1>Focus map</h1>", f'<p class="meta">{meta}</p>',
             '<p class="meta">Shading: attention from the answer position to each text token, averaged over '
             "heads and the focus layers, renormalised over the text (darkest = the row's largest value; hover "
             "for the value).</p>"]
    metrics = report.get("focus_metrics")
    if metrics:
        parts += ["<h2>Focus on human-rated words and its faithfulness</h2>", "<table><tr><th>side</th>"
                  + "".join(f"<th>{c}</th>" for c in METRIC_COLUMNS) + "</tr>"]
        parts += [f"<tr><td>{html.escape(side)}</td>" + "".join(f"<td>{_metric(m.get(c))}</td>" for c in METRIC_COLUMNS)
                  + "</tr>" for side, m in metrics.items()]
        parts.append("</table>")
    summary = report.get("fake_focus")
    if summary:
        parts += ["<h2>Fake-focus share</h2>", "<table><tr><th>data</th><th>examples</th><th>frequent types</th>"
                  "<th>their token share</th>" + "".join(f"<th>{s} focus share (normalised)</th>" for s in sides)
                  + "</tr>", f"<tr><td>{html.escape(summary['data'])}</td><td>{summary['examples']}</td>"
                  f"<td>{summary['frequent_token_types']}</td><td>{summary['frequent_token_share']:.3f}</td>"
                  + "".join(f"<td>{summary[s]['focus_share']:.3f} ({summary[s]['normalised']:.3f})</td>"
                            for s in sides) + "</tr></table>"]
    header = "".join(f"<th>{SIDE_TITLES.get(s, s)}</th>" for s in sides)
    parts.append(f'<table class="focus"><tr><th>#</th>{header}</tr>')
    for i, item in enumerate(report["texts"], start=1):
        label = f"<br>label: {html.escape(names[item['label']])}" if item.get("label") is not None else ""
        scale = max(max(item[s]["focus"]) for s in sides) or 1.0
        cells = []
        for side in sides:
            spans = "".join(
                f'<span class="tok" style="background: rgba(214, 39, 40, {f / scale:.3f})" '
                f'title="{f:.4f}" data-focus="{f:.8g}">{html.escape(tok)}</span>'
                for tok, f in zip(item["tokens"], item[side]["focus"]))
            cells.append(f'<td class="side"><div class="pred">{_prediction(item[side]["probs"], names)}</div>'
                         f'<div class="text">{spans}</div></td>')
        parts.append(f'<tr class="row"><td>{i}{label}</td>{"".join(cells)}</tr>')
    parts += ["</table>", "</body></html>"]
    return "\n".join(parts) + "\n"


METRIC_COLUMNS = ("lexicon_share", "lexicon_lift", "lexicon_auprc", "comprehensiveness_gain", "sufficiency_gain")


def _metric(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_png(report: dict, path: Path) -> None:
    """One heat strip per text (rows: base / adapter), token labels below; long texts cut."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sides, items = list(report["sides"]), report["texts"]
    width = min(PNG_MAX_TOKENS, max(len(item["tokens"]) for item in items))
    fig = Figure(figsize=(max(6.0, 0.28 * width + 2), 1.3 * len(items) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(items), 1, squeeze=False)[:, 0]
    for ax, item in zip(axes, items):
        n = min(width, len(item["tokens"]))
        grid = np.full((len(sides), width), np.nan)
        for row, side in enumerate(sides):
            grid[row, :n] = item[side]["focus"][:n]
        ax.imshow(grid, aspect="auto", cmap="Reds", vmin=0, interpolation="nearest")
        ax.set_yticks(range(len(sides)), sides, fontsize=7)
        labels = [tok.replace("\n", "\\n") for tok in item["tokens"][:n]]
        ax.set_xticks(range(n), labels, rotation=90, fontsize=6, parse_math=False)
        preds = " | ".join(f"{s}: {report['label_names'][int(np.argmax(item[s]['probs']))]}" for s in sides)
        cut = f" (first {n} of {len(item['tokens'])} tokens)" if n < len(item["tokens"]) else ""
        ax.set_title(f"{item['text'][:80]!r}{cut}  [{preds}]", fontsize=7, loc="left", parse_math=False)
    fig.savefig(path, dpi=110)


# ---- CLI ------------------------------------------------------------------------------
def run(args) -> int:
    from afa_llm.attention.decoder_layers import default_focus_layers, find_decoder_layers
    from afa_llm.cli import build_task, check_focus_metric_args, class_names_for, load_data_from_args
    from afa_llm.evaluation.evaluate import attach_adapter
    from afa_llm.inference.merge import find_run
    from afa_llm.model.loading import load_model
    from afa_llm.inference.predict import resolve_run_args

    from afa_llm.act.calibration import load_act

    check_writable_dir(args.output, "--output")
    act = load_act(args.act) if args.act else None
    if bool(args.text) == bool(args.data):
        raise UserError("give the texts to render: --text \"...\" (repeatable) or --data SPEC --n N, not both")
    if args.n <= 0 or args.metric_n < 0 or args.batch_size <= 0:
        raise UserError("--n and --batch-size must be positive, --metric-n must not be negative")
    check_focus_metric_args(args)
    if args.text and not all(t.strip() for t in args.text):
        raise UserError("--text must not be empty")
    run_info = find_run(args.adapter) if args.adapter else None
    resolve_run_args(args)  # options left out: the run's (model, prompt, its data's columns and split seed)
    if args.text:
        args.data = None  # resolve_run_args fills the run's data set; --text replaces it
    layers = getattr(run_info.config, "focus_layers", None) if run_info and run_info.config else None
    if args.focus_layers:
        try:
            layers = [int(v) for v in args.focus_layers.split(",")]
        except ValueError as exc:
            raise UserError(f"--focus-layers must be comma-separated integers, got {args.focus_layers!r}") from exc

    data = load_data_from_args(args) if args.data else None
    label_names = data.label_names if data else class_names_for(run_info and run_info.label_names, args.label_words)
    model, tokenizer = load_model(args.model, quantization=args.quantization, dtype=args.dtype)
    if args.adapter:
        model = attach_adapter(model, str(run_info.adapter_dir))
    n_layers = len(find_decoder_layers(model))
    if layers and any(not -n_layers <= i < n_layers for i in layers):
        raise UserError(f"--focus-layers {layers} out of range for a model with {n_layers} layers")
    layers = sorted(i % n_layers for i in layers) if layers else default_focus_layers(n_layers)
    task = build_task(args, label_names, tokenizer)

    frequent, labels = None, None
    if data is not None:
        from afa_llm.training.trainer import frequent_ids

        split = data.split(args.split)
        texts = list(split["text"][: max(args.n, args.metric_n)])
        labels = list(split["label"][: args.n])
        frequent = frequent_ids(task, list(data.split("train")["text"]))
    else:
        texts = list(args.text)
    sides = compute(model, task, texts, layers, args.batch_size, bool(args.adapter), frequent, act)
    shown = texts[: args.n] if data is not None else texts
    report = {
        "model": args.model, "adapter": str(run_info.adapter_dir) if run_info else None, "focus_layers": layers,
        "template": task.template, "label_words": task.label_words, "label_names": label_names,
        "sides": list(sides), "act": act.summary(args.act) if act else None,
        "texts": [{"text": text, "label": labels[i] if labels else None,
                   "tokens": [tokenizer.decode([t]) for t in task.text_ids(text)],
                   **{s: {"focus": v["focus"][i], "probs": v["probs"][i]} for s, v in sides.items()}}
                  for i, text in enumerate(shown)],
    }
    if frequent is not None:
        report["fake_focus"] = fake_focus_summary(sides, args.data, len(frequent))
    report["focus_metrics"] = focus_metric_summary(model, task, texts, sides, layers, args)
    out = Path(args.output)
    atomic_write_text(out / "focus.html", render_html(report))
    write_json(out / "focus.json", report, indent=1)
    with atomic_path(out / "focus.png") as tmp:
        render_png(report, tmp)
    print(f"wrote {out / 'focus.html'}, focus.png and focus.json ({len(shown)} texts, layers {layers})")
    return 0
