"""Learning curves of a grid: validation accuracy against steps, one line per variant, the
mean over seeds with a band from the lowest to the highest seed (over the steps every seed
reached), and each seed as a thin line to its own last validation.

    .venv/bin/python experiments/learning_curves.py experiments/grids/rt_converge.yaml --output docs/curves_rt.png
    .venv/bin/python experiments/learning_curves.py GRID --archive --output FILE.png   # from docs/results_data

Reads each finished or running cell's validation history (``results.json``, else the
``val_accuracy`` records of ``metrics.jsonl``), so it can be drawn while a grid is running.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grid import cell_dir, load_grid  # noqa: E402

from afa_llm.errors import UserError  # noqa: E402
from afa_llm.io_utils import atomic_writer, check_writable_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def validation_curve(cell: Path) -> list[tuple[int, float]]:
    """(step, validation accuracy) of one cell, [] if it has none yet."""
    results = cell / "results.json"
    if results.exists():
        return [(h["step"], h["accuracy"]) for h in json.loads(results.read_text())["validation"]]
    metrics = cell / "metrics.jsonl"
    if not metrics.exists():
        return []
    records = (json.loads(line) for line in metrics.read_text().splitlines() if line)
    return [(r["step"], r["val_accuracy"]) for r in records if "val_accuracy" in r]


def mean_band(curves: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps every seed reached, with the mean, min and max accuracy over seeds there."""
    steps = sorted(set.intersection(*(set(s for s, _ in c) for c in curves)))
    values = np.array([[dict(c)[s] for s in steps] for c in curves])
    return np.array(steps), values.mean(0), values.min(0), values.max(0)


def plot(grid: dict, output: str, title: str | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    drawn = 0
    for variant in grid["variants"]:
        curves = [c for c in (validation_curve(cell_dir(grid, variant, s)) for s in grid["seeds"]) if c]
        if not curves:
            continue
        steps, mean, low, high = mean_band(curves)
        seeds = f"{len(curves)} seed" + ("s" if len(curves) > 1 else "")
        line, = ax.plot(steps, mean, marker="o", markersize=3, label=f"{variant} ({seeds})")
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        for curve in curves:  # each seed to its own end: early stopping ends seeds at different steps
            ax.plot(*zip(*curve), color=line.get_color(), alpha=0.35, linewidth=0.7)
        drawn += 1
    if not drawn:
        raise UserError(f"no cell of {grid['output_root']} has a validation record yet")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation accuracy")
    ax.set_title(textwrap.fill(title or grid.get("title", ""), 90), fontsize=9)  # long grid titles wrap
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()

    with atomic_writer(output, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", help="grid YAML (experiments/grids/)")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--archive", action="store_true", help="read docs/results_data/<grid> instead of runs/")
    args = parser.parse_args(argv)
    try:
        check_writable_file(args.output, "--output")
        grid = load_grid(args.grid)
        if args.archive:
            grid["output_root"] = str(ROOT / "docs" / "results_data" / Path(grid["output_root"]).name)
        drawn = plot(grid, args.output)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{drawn} variants -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
