"""Paired per-seed differences between variants of an archived grid, with exact McNemar p-values.

    .venv/bin/python experiments/paired.py GRID_FOLDER VARIANT --against OTHER [OTHER ...] [--seeds 0 1 2]
    .venv/bin/python experiments/paired.py docs/results_data/tweets_smollm2 at_eps3 vat_eps3 --against afa attn_rp_eps3

One markdown row per variant: for each OTHER (but itself), the test-accuracy difference in points per seed
and its McNemar p on the same test examples (from the cells' per-example predictions), led by
the mean ± std over the seeds where there are several, and the seeds' pooled test: the mean
difference with its 95% bootstrap interval over test examples and a sign-flip permutation p,
the examples as the units (afa_llm.evaluation.metrics.reports_pooled_test).
``--f1`` adds a table of the seed-mean differences in macro-F1 and in the F1 of the test split's smallest
class, each with an approximate-randomization p pooled over the seeds
(afa_llm.evaluation.metrics.seed_pooled_f1_test), as the grid report's per-class table has them.
The grid report (experiments/grid.py) pairs every variant with its baseline only; this pairs any two.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from afa_llm.evaluation.metrics import reports_mcnemar_p, reports_pooled_test, seed_pooled_f1_test  # noqa: E402


def _test(folder: Path, variant: str, seed: int, key: str = "test") -> dict:
    """The cell's test report: ``test`` (with select_best, the best validation checkpoint's) or ``test_last``."""
    path = folder / f"{variant}-seed{seed}" / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (no finished cell)")
    results = json.loads(path.read_text())
    if key not in results:
        raise FileNotFoundError(f"{path} has no {key!r} (a run without select_best)")
    return results[key]


def read_reports(folder: Path, names: list[str], seeds: list[int], key: str = "test") -> dict[str, list[dict]]:
    """Each named variant's test reports, one per seed in the order of ``seeds``; each file read once."""
    return {name: [_test(folder, name, seed, key) for seed in seeds] for name in dict.fromkeys(names)}


def paired(a: dict, b: dict) -> tuple[float, float]:
    """Accuracy difference a - b in points and the McNemar p on the same examples."""
    if a["labels"] != b["labels"]:
        raise ValueError("the two runs were scored on different test examples")
    return 100 * (a["accuracy"] - b["accuracy"]), reports_mcnemar_p(a, b)


def pooled(reports_a: list[dict], reports_b: list[dict]) -> str:
    """``"mean +0.50 ± 0.20, pooled +0.50 [-0.1, +1.1] p 0.09: "`` over several seeds, nothing for one."""
    if len(reports_a) < 2:
        return ""
    points = [100 * (a["accuracy"] - b["accuracy"]) for a, b in zip(reports_a, reports_b)]
    test = reports_pooled_test(reports_a, reports_b)
    low, high = (100 * x for x in test["ci95"])
    return (f"mean {statistics.mean(points):+.2f} ± {statistics.stdev(points):.2f}, "
            f"pooled [{low:+.2f}, {high:+.2f}] p {_p(test['p_value'])}: ")


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"  # the permutation p's floor is 1/(samples + 1)


def table(reports: dict[str, list[dict]], variants: list[str], others: list[str]) -> str:
    lines = ["| variant | " + " | ".join(f"vs `{o}`: points (p) per seed" for o in others) + " |",
             "|---|" + "---|" * len(others)]
    for variant in variants:
        cells = []
        for other in others:
            if other == variant:
                cells.append("-")
                continue
            mine, theirs = reports[variant], reports[other]
            pairs = [paired(a, b) for a, b in zip(mine, theirs)]
            cells.append(pooled(mine, theirs) + ", ".join(f"{d:+.2f} (p {_p(p)})" for d, p in pairs))
        lines.append(f"| `{variant}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def f1_cells(mine: list[dict], theirs: list[dict]) -> tuple[str, str]:
    """Macro-F1 and smallest-class F1 differences in points, pooled over the seeds, with their p."""
    labels = mine[0]["labels"]
    if any(r["labels"] != labels for r in (*mine, *theirs)):
        raise ValueError("the runs were scored on different test examples")
    names = list(mine[0]["per_class"])
    smallest = int(np.argmin(np.bincount(labels, minlength=len(names))))
    a, b = (np.array([r["predictions"] for r in reports]) for reports in (mine, theirs))
    cells = []
    for index in (None, smallest):
        test = seed_pooled_f1_test(a, b, labels, len(names), class_index=index)
        cells.append(f"{100 * test['diff']:+.2f} (p {_p(test['p_value'])})")
    return cells[0], f"{names[smallest]}: {cells[1]}"


def f1_table(reports: dict[str, list[dict]], variants: list[str], others: list[str]) -> str:
    lines = ["| variant | against | seeds | Δ macro-F1, points (p) | Δ smallest class's F1, points (p) |",
             "|---|---|---|---|---|"]
    for variant in variants:
        for other in (o for o in others if o != variant):
            mine, theirs = reports[variant], reports[other]
            lines.append(f"| `{variant}` | `{other}` | {len(mine)} | " + " | ".join(f1_cells(mine, theirs)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="an archived grid, e.g. docs/results_data/rt_gemma")
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--against", nargs="+", required=True, help="the variants to pair each with")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--last", action="store_true",
                        help="pair the last checkpoints' test predictions (test_last) instead of the selected ones")
    parser.add_argument("--f1", action="store_true", help="add the macro-F1 and smallest-class F1 differences")
    args = parser.parse_args(argv)
    key = "test_last" if args.last else "test"
    try:
        reports = read_reports(Path(args.folder), args.variants + args.against, args.seeds, key)
        print(table(reports, args.variants, args.against))
        if args.f1:
            print("\n" + f1_table(reports, args.variants, args.against))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
