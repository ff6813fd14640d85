"""The tables a grid report adds below its main one (experiments/grid.py appends them).

- Controls (grids with ``controls:``): each method against its own control on the test split, accuracy per
  seed (McNemar) and pooled over seeds, and macro-F1 (approximate randomization).
- Per class (every grid with more than two classes, or whose runs differ in head or class weights): the
  test F1 of each class, mean ± std over seeds, with the class's share of the test split: the minority
  class's F1 is what class weights are for; then the macro-F1's difference from the baseline and, where the
  classes are imbalanced, the minority class F1's, pooled over the seeds both ran (approximate
  randomization over the examples, `afa_llm.evaluation.metrics.seed_pooled_f1_test`).
- Calibration (grids whose runs differ in head or class weights): test ECE and Brier score, mean ± std over
  seeds, and the Brier score's difference from the baseline, pooled over seeds (sign flips per example).

- Stress (cells trained with ``shortcut_cue``): per variant, mean ± std over seeds of the clean,
  aligned and anti accuracy of the clean test split's views (`afa-llm stress`), the gap (clean - anti),
  and the focus on the cue in the anti view; then the paired McNemar p of the anti view against the
  baseline and against the variant's own control (the grid's ``controls``), per seed and pooled over
  seeds (`afa_llm.evaluation.metrics.reports_pooled_test`); and the gap's difference from the baseline's,
  pooled the same way (per example: clean correct minus anti correct): a method can raise the anti accuracy
  by raising the clean one, and only the gap tells whether it leans on the cue less.
- Focus metrics (every cell that has them): the lexicon share, lift and AUPRC against the VADER
  words, and the comprehensiveness and sufficiency gains over random tokens (above 0: the focus
  beats chance); the zero-shot base's row first; then the lexicon share's and the comprehensiveness
  gain's difference from the baseline, paired by seed (Student's paired t over the seeds both ran).
"""

from __future__ import annotations

import numpy as np

from afa_llm.evaluation.metrics import (brier_by_example, paired_t_test, report_correct, reports_mcnemar_p,
                                        reports_pooled_test, seed_pooled_f1_test, seed_pooled_test)

FOCUS_COLUMNS = ("lexicon_share", "lexicon_lift", "lexicon_auprc", "comprehensiveness_gain", "sufficiency_gain")
PAIRED_FOCUS = ("lexicon_share", "comprehensiveness_gain")  # compared with the baseline seed by seed


def pooled_p(p: float) -> str:
    """A pooled p-value for a table: three decimals, or ``<0.001`` (never a bare 0.000)."""
    return "<0.001" if p < 0.001 else f"={p:.3f}"


def mean_std(values: list[float], fmt: str = ".4f") -> str:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(arr):
        return "-"
    return f"{arr.mean():{fmt}}" + (f" ± {arr.std(ddof=1):{fmt}}" if len(arr) > 1 else "")


def per_class_table(results: dict, baseline: str) -> list[str]:
    """Markdown lines of the per-class F1 table ([] for two classes trained alike), with each variant's
    macro-F1 difference from the baseline and, where the classes are imbalanced, its minority class's."""
    done = [r for runs in results.values() for r in runs.values() if r and "per_class" in r.get("test", {})]
    if not done:
        return []
    names = list(done[0]["test"]["per_class"])
    if len(names) <= 2 and not _settings_differ(done):
        return []
    support = {c: done[0]["test"]["per_class"][c]["support"] for c in names}
    total = sum(support.values()) or 1
    minority = min(names, key=support.get) if len(set(support.values())) > 1 else None
    deltas = {"macro-F1": None} | ({f"F1 {minority}": names.index(minority)} if minority else {})
    lines = ["", "Test F1 per class (its share of the test split), mean ± std over seeds; Δ: the difference from "
             f"{baseline}, mean over the seeds both ran, with an approximate-randomization p pooled over them "
             "(`afa_llm.evaluation.metrics.seed_pooled_f1_test`).", "",
             "| variant | n | " + " | ".join(f"F1 {c} ({support[c] / total:.0%})" for c in names)
             + "".join(f" | Δ {d} vs {baseline}" for d in deltas) + " |",
             "|---|---|" + "---|" * (len(names) + len(deltas))]
    for variant, runs in results.items():
        tests = [r["test"]["per_class"] for r in runs.values() if r and "per_class" in r.get("test", {})]
        if tests:
            cells = [mean_std([t[c]["f1"] for t in tests]) for c in names]
            cells += [_paired_f1(runs, results.get(baseline, {}), len(names), index) if variant != baseline else "-"
                      for index in deltas.values()]
            lines.append(f"| {variant} | {len(tests)} | " + " | ".join(cells) + " |")
    return lines


def _test_pairs(runs: dict, other: dict, key: str = "predictions") -> list[tuple[dict, dict]]:
    """The test reports of each seed that both ``runs`` and ``other`` finished with ``key``, paired."""
    return [(r["test"], other[seed]["test"]) for seed, r in runs.items()
            if r and other.get(seed) and key in r["test"] and key in other[seed]["test"]]


def _paired_f1(runs: dict, base_runs: dict, num_classes: int, class_index: int | None) -> str:
    pairs = _test_pairs(runs, base_runs)
    if not pairs:
        return ""
    result = seed_pooled_f1_test([a["predictions"] for a, _ in pairs], [b["predictions"] for _, b in pairs],
                                 pairs[0][0]["labels"], num_classes, class_index)
    return f"{result['diff']:+.4f} ({len(pairs)} seed{'s' * (len(pairs) > 1)}, p{pooled_p(result['p_value'])})"


def _settings_differ(done: list[dict]) -> bool:
    """Whether the finished runs differ in head or class weights (the grids that compare them)."""
    return len({(r.get("head") or "label_words", str(r.get("class_weights") or "none")) for r in done}) > 1


def calibration_table(results: dict, baseline: str) -> list[str]:
    """Markdown lines of test calibration (ECE, Brier score) for grids whose runs differ in head or class
    weights ([] otherwise): a head or a class weighting can change the probabilities more than the labels."""
    done = [r for runs in results.values() for r in runs.values() if r and "probabilities" in r.get("test", {})]
    if not done or not _settings_differ(done):
        return []
    lines = ["", "Test confidence calibration, mean ± std over seeds: expected calibration error (15 bins) and the Brier score "
             f"(lower is better); Δ Brier: the difference from {baseline}, mean over the seeds both ran, the "
             "examples the units (sign-flip p, `afa_llm.evaluation.metrics.seed_pooled_test`).", "",
             f"| variant | n | ECE | Brier | Δ Brier vs {baseline} |", "|---|---|---|---|---|"]
    for variant, runs in results.items():
        tests = {seed: r["test"] for seed, r in runs.items() if r and "probabilities" in r.get("test", {})}
        if not tests:
            continue
        delta = "-"
        pairs = _test_pairs(runs, results.get(baseline, {}), "probabilities")
        if variant != baseline and pairs:
            terms = [[brier_by_example(t["probabilities"], t["labels"]) for t in pair] for pair in pairs]
            test = seed_pooled_test(*zip(*terms))
            delta = f"{test['diff']:+.4f} ({len(pairs)} seed{'s' * (len(pairs) > 1)}, p{pooled_p(test['p_value'])})"
        lines.append(f"| {variant} | {len(tests)} | {mean_std([t['ece'] for t in tests.values()])} | "
                     f"{mean_std([t['brier'] for t in tests.values()])} | {delta} |")
    return lines


def control_table(results: dict, controls: dict) -> list[str]:
    """Markdown lines of each method against its own control on the test split ([] without controls or
    before both have a seed in common): accuracy per seed (McNemar p) and pooled, and macro-F1."""
    rows = []
    for variant, control in controls.items():
        pairs = _test_pairs(results.get(variant, {}), results.get(control, {}))
        if not pairs:
            continue
        cells = [f"{a['accuracy'] - b['accuracy']:+.4f} (p={reports_mcnemar_p(a, b):.2g})" for a, b in pairs]
        if len(pairs) > 1:
            pooled = reports_pooled_test(*zip(*pairs))
            cells = [f"mean {pooled['diff']:+.4f} (pooled p{pooled_p(pooled['p_value'])}): " + ", ".join(cells)]
        classes = len(pairs[0][0]["per_class"]) if "per_class" in pairs[0][0] else None
        f1 = "-"
        if classes:
            test = seed_pooled_f1_test([a["predictions"] for a, _ in pairs], [b["predictions"] for _, b in pairs],
                                       pairs[0][0]["labels"], classes)
            f1 = f"{test['diff']:+.4f} (p{pooled_p(test['p_value'])})"
        rows.append(f"| {variant} | {control} | {len(pairs)} | {', '.join(cells)} | {f1} |")
    if not rows:
        return []
    return ["", "Each method against its own control on the test split, over the seeds both ran: accuracy per seed "
            "(McNemar p) and pooled (sign-flip p); macro-F1 (approximate randomization, pooled).", "",
            "| variant | its control | n | Δ acc | Δ macro-F1 |", "|---|---|---|---|---|"] + rows


def _shared_stress(runs: dict, other: dict) -> list[tuple[dict, dict]]:
    """The adapter's stress views of each seed that both ``runs`` and ``other`` finished, paired."""
    return [(r["stress"]["adapter"], other[seed]["stress"]["adapter"]) for seed, r in runs.items()
            if r and "stress" in r and (other.get(seed) or {}).get("stress")]


def _anti_pairs(runs: dict, other: dict) -> tuple[list[str], list[tuple[dict, dict]]]:
    pairs = [(mine["anti"], theirs["anti"]) for mine, theirs in _shared_stress(runs, other)]
    cells = [f"{a['accuracy'] - b['accuracy']:+.4f} (p={reports_mcnemar_p(a, b):.2g})" for a, b in pairs]
    return cells, pairs


def _paired(runs: dict, other: dict | None) -> str:
    if other is None:
        return "-"
    cells, pairs = _anti_pairs(runs, other)
    if len(pairs) > 1:
        pooled = reports_pooled_test(*zip(*pairs))
        return f"mean {pooled['diff']:+.4f} (pooled p{pooled_p(pooled['p_value'])}): " + ", ".join(cells)
    return ", ".join(cells) or "-"


def _gap_by_example(stress: dict) -> np.ndarray:
    """Per example: correct on the clean view minus correct on the anti view (1: the cue flipped it)."""
    return report_correct(stress["clean"]).astype(float) - report_correct(stress["anti"]).astype(float)


def _paired_gap(runs: dict, base_runs: dict) -> str:
    """The gap's difference from the baseline's, pooled over the shared seeds with the examples as the
    units (`seed_pooled_test`, as the anti view's pooled sign-flip test)."""
    shared = _shared_stress(runs, base_runs)
    if not shared:
        return "-"
    test = seed_pooled_test(np.stack([_gap_by_example(mine) for mine, _ in shared]),
                            np.stack([_gap_by_example(base) for _, base in shared]))
    return f"{test['diff']:+.4f} ({len(shared)} seed{'s' if len(shared) > 1 else ''}, p{pooled_p(test['p_value'])})"


def stress_table(results: dict, baseline: str, controls: dict) -> list[str]:
    """Markdown lines of the stress table ([] if no cell has stress views)."""
    if not any(r and "stress" in r for runs in results.values() for r in runs.values()):
        return []
    lines = ["", "Stress views of the clean test split (the cue inserted into the cue class's sentences: aligned; "
                 "into every other sentence: anti), mean ± std over seeds; Δ anti accuracy per seed (McNemar p); "
                 "Δ gap: the gap's difference from the baseline's over the seeds both ran, the examples the units "
                 "(sign-flip p; below 0: less reliance on the cue, whatever the clean accuracy does).", "",
             f"| variant | n | clean acc | aligned acc | anti acc | gap (clean - anti) | cue focus (anti) | "
             f"Δ anti vs {baseline} | Δ anti vs own control | Δ gap vs {baseline} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    base_row = next((r for r in results[baseline].values() if r and "base" in r.get("stress", {})), None)
    if base_row:
        s = base_row["stress"]["base"]
        lines.append(f"| zero-shot base | 1 | {s['clean']['accuracy']:.4f} | {s['aligned']['accuracy']:.4f} | "
                     f"{s['anti']['accuracy']:.4f} | {s['gap']:+.4f} | {s['cue_focus']['anti']:.3f} | | | |")
    for variant, runs in results.items():
        done = {seed: r for seed, r in runs.items() if r and "stress" in r}
        if not done:
            lines.append(f"| {variant} | 0 | not run (yet) | | | | | | | |")
            continue
        views = [r["stress"]["adapter"] for r in done.values()]
        control = controls.get(variant)
        lines.append(
            f"| {variant} | {len(done)} | {mean_std([v['clean']['accuracy'] for v in views])} | "
            f"{mean_std([v['aligned']['accuracy'] for v in views])} | {mean_std([v['anti']['accuracy'] for v in views])} | "
            f"{mean_std([v['gap'] for v in views])} | {mean_std([v['cue_focus']['anti'] for v in views], '.3f')} | "
            f"{_paired(done, results[baseline]) if variant != baseline else '-'} | "
            f"{_paired(done, results.get(control)) if control else '-'}{f' ({control})' if control else ''} | "
            f"{'-' if variant == baseline else _paired_gap(done, results[baseline])} |")
    return lines


def _focus_by_seed(runs: dict) -> dict:
    return {seed: r["focus_metrics"]["adapter"] for seed, r in runs.items() if r and "focus_metrics" in r}


def _paired_focus(runs: dict, base_runs: dict, column: str) -> str:
    """The difference from the baseline in ``column``, mean over the shared seeds, with the paired t p."""
    mine, base = _focus_by_seed(runs), _focus_by_seed(base_runs)
    seeds = [s for s in mine if s in base and mine[s].get(column) is not None and base[s].get(column) is not None]
    if not seeds:
        return "-"
    test = paired_t_test([mine[s][column] for s in seeds], [base[s][column] for s in seeds])
    p = f", p={test['p_value']:.2g}" if test["p_value"] == test["p_value"] else ""
    return f"{test['diff']:+.3f} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}{p})"


def focus_table(results: dict, baseline: str) -> list[str]:
    """Markdown lines of the focus-metric table ([] if no cell has them)."""
    if not any(r and "focus_metrics" in r for runs in results.values() for r in runs.values()):
        return []
    paired = [f"Δ {c} vs {baseline}" for c in PAIRED_FOCUS]
    lines = ["", "Focus against human-rated words (VADER |valence| >= 1: share, lift, AUPRC) and its faithfulness "
                 "(ERASER AOPC over 1-50% of the tokens, minus random tokens: above 0 beats chance), "
                 "mean ± std over seeds; Δ: the difference from the baseline, mean over the seeds both ran "
                 "(paired t-test over seeds).", "",
             "| variant | n | " + " | ".join(FOCUS_COLUMNS + tuple(paired)) + " |",
             "|---|---|" + "---|" * (len(FOCUS_COLUMNS) + len(paired))]
    base_row = next((r for r in results[baseline].values() if r and "base" in r.get("focus_metrics", {})), None)
    if base_row:
        m = base_row["focus_metrics"]["base"]
        lines.append("| zero-shot base | 1 | " + " | ".join(mean_std([m.get(c)], ".3f") for c in FOCUS_COLUMNS)
                     + " |" * (len(paired) + 1))
    for variant, runs in results.items():
        done = list(_focus_by_seed(runs).values())
        if done:
            deltas = ["-"] * len(paired) if variant == baseline else \
                [_paired_focus(runs, results[baseline], c) for c in PAIRED_FOCUS]
            lines.append(f"| {variant} | {len(done)} | "
                         + " | ".join([mean_std([m.get(c) for m in done], ".3f") for c in FOCUS_COLUMNS] + deltas)
                         + " |")
    return lines
