"""Leaderboard outputs: ``leaderboard.md`` (ranked tables), ``.csv`` and ``.png`` (bars ± std).

Each row is one (group, data set) aggregate from `afa_llm.reports.leaderboard.aggregate`.
"""

from __future__ import annotations

import csv
from pathlib import Path

from afa_llm.io_utils import atomic_path, atomic_write_text, atomic_writer

CSV_COLUMNS = ["data", "name", "head", "runs", "accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std",
               "examples", "seeds", "focus_share", "truncated_share", "ece", "lexicon_share", "lexicon_auprc",
               "comprehensiveness_gain"]
EXTRA_HEADERS = {"truncated_share": "texts cut", "ece": "ECE", "lexicon_share": "focus on VADER words",
                 "lexicon_auprc": "its AUPRC", "comprehensiveness_gain": "comprehensiveness - random"}


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return ""
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


def write_markdown(rows: list[dict], path: Path, title: str, source: str) -> None:
    focus = any(r["focus_share"] is not None for r in rows)
    extra = [key for key in EXTRA_HEADERS if any(r.get(key) is not None for r in rows)]
    lines = [f"# Leaderboard: {title}", "", f"Test split, {source}. Accuracy and macro-F1 are mean ± sample std "
             "over the runs of a row.", ""]
    for data in dict.fromkeys(r["data"] for r in rows):
        lines += [f"## {data}", "", "| rank | name | head | runs | accuracy | macro-F1 | per-class F1 | examples | seeds |"
                  + (" fake-focus share |" if focus else "") + "".join(f" {EXTRA_HEADERS[k]} |" for k in extra),
                  "|---" * (9 + focus + len(extra)) + "|"]
        for rank, r in enumerate((r for r in rows if r["data"] == data), start=1):
            cells = [str(rank), r["name"], r["head"], str(r["runs"]), _fmt(r["accuracy_mean"], r["accuracy_std"]),
                     _fmt(r["macro_f1_mean"], r["macro_f1_std"]),
                     ", ".join(f"{name} {f1:.3f}" for name, f1 in r.get("per_class_f1", {}).items()),
                     r["examples"], r["seeds"]]
            cells += [_fmt(r["focus_share"], None)] if focus else []
            cells += [_fmt(r.get(k), None) for k in extra]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    atomic_write_text(path, "\n".join(lines))


def write_csv(rows: list[dict], path: Path) -> None:
    """One line per row: CSV_COLUMNS, then ``f1_<class>`` for every class of any row."""
    classes = list(dict.fromkeys(name for r in rows for name in r.get("per_class_f1", {})))
    columns = CSV_COLUMNS + [f"f1_{name}" for name in classes]
    with atomic_writer(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            cells = {k: ("" if r.get(k) is None else r[k]) for k in CSV_COLUMNS}
            cells.update({f"f1_{name}": r.get("per_class_f1", {}).get(name, "") for name in classes})
            writer.writerow(cells)


def write_plot(rows: list[dict], path: Path, title: str) -> None:
    """Bars of mean accuracy per data set, with ±std error bars where a row has n > 1 runs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(r["data"] for r in rows))
    fig = Figure(figsize=(max(4.0, 1.2 * len(rows) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(datasets), sharey=True, squeeze=False)[0]
    colors = {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(r["name"] for r in rows))}
    for ax, data in zip(axes, datasets):
        part = [r for r in rows if r["data"] == data]
        bars = ax.bar(range(len(part)), [r["accuracy_mean"] for r in part], color=[colors[r["name"]] for r in part])
        ax.bar_label(bars, [f"{r['accuracy_mean']:.3f}" for r in part], fontsize=7, label_type="center")
        spread = [(i, r) for i, r in enumerate(part) if r["runs"] > 1 and r["accuracy_std"] is not None]
        if spread:
            ax.errorbar([i for i, _ in spread], [r["accuracy_mean"] for _, r in spread],
                        yerr=[r["accuracy_std"] for _, r in spread], fmt="none", ecolor="black", capsize=4)
        ax.set_xticks(range(len(part)), [f"{r['name']}\n(n={r['runs']})" for r in part], rotation=30,
                      ha="right", fontsize=8, parse_math=False)
        ax.set_title(data, fontsize=10, parse_math=False)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("test accuracy")
    fig.suptitle(title, fontsize=11, parse_math=False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
