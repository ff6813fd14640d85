"""The focus map's page and picture: ``focus.html`` (inline CSS, no scripts, no external URLs; token
text html-escaped) and ``focus.png`` (one heat strip per text), from a report of `afa_llm.reports.focus_map`."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

PNG_MAX_TOKENS = 60
SIDE_TITLES = {"base": "base (adapter disabled)", "adapter": "adapter", "act": "with ACT attention calibration"}
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
