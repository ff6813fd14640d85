"""Pick a grid's best setting per method on the whole validation split, never on test.

    .venv/bin/python experiments/pick_setting.py experiments/grids/rt_attention_at.yaml

A grid's cells validate on ``eval_limit`` rows only (200 in the quickstart recipe: steps of
0.5 points, so settings tie). This scores every finished cell's final adapter on the whole
seeded validation split with the evaluator of ``afa-llm eval --split validation``, keeps the
score in the cell (``validation_full.json``, reused on re-runs and archived by
experiments/refresh_results.py), and prints one table: per method (the ``method=`` of the variant),
the variants ranked by validation accuracy, ties broken by the lower validation loss (mean
cross-entropy of the gold label). The baseline variant (the grid's first) is shown for scale.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from grid import cell_dir, load_grid  # noqa: E402

from afa_llm.errors import UserError  # noqa: E402
from afa_llm.io_utils import write_json  # noqa: E402
from afa_llm.training.validation import validation_record  # noqa: E402

SCORE_FILE = "validation_full.json"


def variant_method(overrides: list[str]) -> str:
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("method=")), "lora")


def score_cell(cell: Path) -> dict:
    """The cell's whole-validation-split accuracy, macro-F1 and loss (cached in the cell)."""
    from afa_llm.cli import build_parser

    cached = cell / SCORE_FILE
    if cached.exists():
        return json.loads(cached.read_text())
    report_file = cell / ".validation_report.json"
    args = build_parser("eval").parse_args(["eval", "--adapter", str(cell), "--split", "validation",
                                            "--output", str(report_file), "--no-progress"])
    with contextlib.redirect_stdout(io.StringIO()):  # its table; a UserError reaches main() as one line
        args.handler(args)
    report = json.loads(report_file.read_text())
    report_file.unlink()
    record = validation_record(report, step=-1)
    score = {"n": report["n"], "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
             "loss": record["loss"]}
    write_json(cached, score)
    return score


def ranking(grid: dict, scores: dict[str, dict]) -> str:
    baseline = next(iter(grid["variants"]))
    lines = ["| method | variant | validation acc | macro-F1 | loss | n |", "|---|---|---|---|---|---|"]
    by_method: dict[str, list[str]] = {}
    for variant in scores:
        by_method.setdefault(variant_method(grid["variants"][variant]), []).append(variant)
    for method, variants in by_method.items():
        ranked = sorted(variants, key=lambda v: (-scores[v]["accuracy"], scores[v]["loss"]))
        for rank, variant in enumerate(ranked):
            s = scores[variant]
            mark = " (baseline)" if variant == baseline else (" **best**" if rank == 0 and len(ranked) > 1 else "")
            lines.append(f"| {method} | {variant}{mark} | {s['accuracy']:.4f} | {s['macro_f1']:.4f} | "
                         f"{s['loss']:.4f} | {s['n']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", help="grid YAML (see experiments/grids/)")
    parser.add_argument("--seed", type=int, default=None, help="which seed's cells (default: the grid's first)")
    args = parser.parse_args(argv)
    try:
        grid = load_grid(args.grid)
        seed = grid["seeds"][0] if args.seed is None else args.seed
        scores = {v: score_cell(cell_dir(grid, v, seed)) for v in grid["variants"]
                  if (cell_dir(grid, v, seed) / "results.json").exists()}
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(ranking(grid, scores) if scores else "no finished cells yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
