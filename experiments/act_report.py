"""The ACT result table: each model without ACT, with the searched heads, and the controls.

    .venv/bin/python experiments/act_report.py act_results [--archive docs/results_data/act]

``act_results/<name>/`` is what experiments/act_rows.sh writes: ``test.json`` (no ACT),
``test-<act file>.json`` per calibration and the ``act*.json`` files. Each row gives the
heads, the calibration-set accuracy before and after (N labelled validation examples), the
test accuracy, the paired difference against the same model without ACT with an exact
McNemar p-value, and for the search its cost (candidates, full-forward equivalents per
example, minutes). A second table pairs each searched row with its controls (all eligible
heads; the random heads of the same count per layer), so that a gain can be attributed to the
search. ``--archive`` copies the JSON files (and the search logs) into the repository first.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from afa_llm.evaluation.metrics import reports_mcnemar_p, reports_pooled_test  # noqa: E402

ROWS = [("act", "ACT, searched heads (faithful rule)"), ("act-strict", "ACT, searched heads (strict rule)"),
        ("act-random-0", "control for faithful: random heads, draw 0"),
        ("act-random-1", "control for faithful: random heads, draw 1"),
        ("act-random-2", "control for faithful: random heads, draw 2"),
        *((f"act-strict-random-{k}", f"control for strict: random heads, draw {k}") for k in range(3)),
        ("act-all", "control: all eligible heads")]


def folder_rows(folder: Path, model: str) -> list[str]:
    base_file = folder / "test.json"
    if not base_file.exists():
        return []
    base = json.loads(base_file.read_text())
    lines = [f"| {model} | no ACT | - | - | {base['accuracy']:.4f} | - | - |"]
    for name, label in ROWS:
        act_file, test_file = folder / f"{name}.json", folder / f"test-{name}.json"
        if not (act_file.exists() and test_file.exists()):
            continue
        act, test = json.loads(act_file.read_text()), json.loads(test_file.read_text())
        info = act["info"]
        n_heads = sum(len(h) for h in act["heads"].values())
        calib = f"{info['baseline']['accuracy']:.4f} → {info['selected']['accuracy']:.4f}"
        p = reports_mcnemar_p(test, base)
        cost = "-"
        if name == "act":
            cost = search_cost(info)
        lines.append(f"| {model} | {label} | {n_heads} | {calib} (N={act['calibration']['n']}) | "
                     f"{test['accuracy']:.4f} | {test['accuracy'] - base['accuracy']:+.4f} (p={p:.2f}) | {cost} |")
    return lines


def search_cost(info: dict) -> str:
    """Candidates, forwards per example and minutes of a search, its earlier (resumed) runs included."""
    minutes = (info["seconds"] + info.get("resumed_seconds", 0.0)) / 60
    cost = f"{info.get('candidates', '-')} candidates, {info['forwards_per_example']} fwd/ex, {minutes:.0f} min"
    if info.get("workers", 1) > 1:
        cost += f" with {info['workers']} workers"
    resumed = info.get("resumed_candidates", 0)
    if resumed:  # act.json files from before the log kept each candidate's cost have no resumed_seconds
        unlogged = info.get("resumed_without_cost", 0 if "resumed_seconds" in info else resumed)
        cost += f" ({resumed} candidates scored by an earlier run"
        cost += f", the time of {unlogged} of them not counted)" if unlogged else ")"
    return cost


SEARCHED = {"act": "faithful", "act-strict": "strict"}  # the searched rows; "<name>-random-K" are their controls


def read_test(folder: Path, name: str) -> dict | None:
    """The test report of one calibration (``test-<name>.json``), or None where it was not evaluated."""
    file = folder / f"test-{name}.json"
    return json.loads(file.read_text()) if file.exists() else None


def _paired(a: dict, b: dict | None) -> str:
    return "-" if b is None else f"{a['accuracy'] - b['accuracy']:+.4f} (p={reports_mcnemar_p(a, b):.2f})"


def control_rows(folder: Path, model: str) -> list[str]:
    """Each searched row paired with its controls on the same test examples: does the search beat chance?"""
    lines = []
    for name, rule in SEARCHED.items():
        searched = read_test(folder, name)
        if searched is None:
            continue
        randoms = [_paired(searched, read_test(folder, f"{name}-random-{k}")) for k in range(3)]
        lines.append(f"| {model} | {rule} | {_paired(searched, read_test(folder, 'act-all'))} | {' | '.join(randoms)} |")
    return lines


def with_and_without(folder: Path) -> dict[str, tuple[dict, dict]]:
    """Per row name present: its test report and the same model's without ACT."""
    base = json.loads((folder / "test.json").read_text())
    return {name: (report, base) for name, _ in ROWS if (report := read_test(folder, name)) is not None}


def summary_rows(groups: dict[str, list[Path]]) -> list[str]:
    """Per group of folders (e.g. the calibration draws of one model), each row's mean Δ over them and
    the folders' pooled p (afa_llm.evaluation.metrics.reports_pooled_test: the test examples are the units)."""
    lines = []
    for group, members in groups.items():
        per_folder = [with_and_without(f) for f in members]
        for name, label in ROWS:
            pairs = [d[name] for d in per_folder if name in d]
            if not pairs:
                continue
            values = [a["accuracy"] - b["accuracy"] for a, b in pairs]
            listed = ", ".join(f"{v:+.4f}" for v in values)
            spread = f" ± {np.std(values, ddof=1):.4f}" if len(values) > 1 else ""
            pooled = reports_pooled_test(*zip(*pairs))["p_value"]
            lines.append(f"| {group} | {label} | {len(values)} | {np.mean(values):+.4f}{spread} | {pooled:.3f} | "
                         f"{listed} |")
    return lines


def report(root: Path) -> str:
    lines = ["| model | row | heads | calibration acc before → after | test acc | Δ vs no ACT (McNemar p) | "
             "search cost |", "|---|---|---|---|---|---|---|"]
    folders = sorted(p for p in root.rglob("*") if (p / "test.json").exists()) if root.is_dir() else []
    groups: dict[str, list[Path]] = {}
    for folder in folders:
        lines += folder_rows(folder, str(folder.relative_to(root)))
        groups.setdefault(str(folder.parent.relative_to(root)), []).append(folder)
    controls = [line for folder in folders for line in control_rows(folder, str(folder.relative_to(root)))]
    if controls:
        lines += ["", "Searched heads against their controls (same test examples; Δ accuracy, exact McNemar p):", "",
                  "| model | rule | vs all eligible heads | vs random draw 0 | vs random draw 1 | vs random draw 2 |",
                  "|---|---|---|---|---|---|", *controls]
    groups = {g: members for g, members in groups.items() if len(members) > 1 and g != "."}
    if groups:  # draws of one model's calibration, or seeds of one adapter: their mean
        lines += ["", "Mean over the folders of each group (calibration draws, or adapter seeds):", "",
                  "| group | row | folders | mean Δ vs no ACT (± std) | pooled p | per folder |", "|---|---|---|---|---|---|",
                  *summary_rows(groups)]
    return "\n".join(lines) if folders else "no ACT rows yet"


def archive(root: Path, target: Path) -> int:
    copied = 0
    for file in sorted([*root.rglob("*.json"), *root.rglob("*.jsonl")]):  # .jsonl: the search logs, to resume
        dest = target / file.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, dest)
        copied += 1
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="the folder experiments/act_rows.sh wrote into (e.g. act_results)")
    parser.add_argument("--archive", help="copy the JSON files here first (e.g. docs/results_data/act)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if not root.is_dir():
        print(f"error: {root} is not a folder", file=sys.stderr)
        return 2
    if args.archive:
        print(f"archived {archive(root, Path(args.archive))} files into {args.archive}", file=sys.stderr)
    print(report(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
