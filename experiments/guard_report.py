"""Training past a planted shortcut: the guard, PoE and weight interpolation on the shortcut grids, as tables and
two plots.

    .venv/bin/python experiments/guard_report.py                     # every grid below that has finished cells
    .venv/bin/python experiments/guard_report.py --plots docs/       # ... and write the two plots there
    .venv/bin/python experiments/guard_report.py --results docs/RESULTS.md   # ... and rewrite its guard tables

Reads the cells of experiments/grids/rt_guard.yaml (the main setting, 3 seeds), rt_guard_pilot.yaml (the guard's
loss, seed 0), rt_guard_p90.yaml and rt_guard_cue2.yaml (the other settings), and rt_guard_clean.yaml (no cue),
from runs/ or from the archive (docs/results_data). Weight interpolation is each lora cell's interpolation.json
(experiments/interpolate_grid.py).

- The main table: clean, aligned and anti accuracy (mean ± std over seeds), the anti view split into its two
  halves (the other class's rows, which carry the cue, and the cue class's, which do not), and the gap.
- The tests: every variant against lora, against its control, and against the weight interpolation with the
  best anti accuracy among the scales whose clean accuracy is at least the variant's (mean over seeds): the
  seed-mean difference in points, the sign-flip test pooled over seeds with the test examples as the units
  (exact, `afa_llm.evaluation.metrics.exact_sign_flip_p`), and the paired t over the seeds.
- Whether a variant lies above the interpolation frontier: its anti accuracy against the frontier's
  (interpolated linearly between scales) at the variant's clean accuracy.
- The guard's flags: the words it hid in the most training rows, and the step it first flagged the cue.
- Plots (drawn by experiments/guard_plots.py): clean against anti accuracy, every variant and seed a point, each
  seed's interpolation curve and their mean (``guard_frontier.png``); the validation gap against training steps
  for lora, guard base and the pilot's sticky forms (``guard_gap_steps.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from focus_tables import mean_std, pooled_p  # noqa: E402
from grid_model import archived_cell, cell_config, cell_dir, load_grid  # noqa: E402
from guard_plots import plot_frontier, plot_gap_steps  # noqa: E402

from afa_llm.evaluation.metrics import paired_t_test, reports_pooled_test  # noqa: E402
from afa_llm.io_utils import atomic_write_text  # noqa: E402
from afa_llm.runs import read_run_config  # noqa: E402

GRIDS = Path(__file__).resolve().parent / "grids"
MAIN, PILOT, CLEAN = "rt_guard", "rt_guard_pilot", "rt_guard_clean"
OTHER_SETTINGS = ("rt_guard_p90", "rt_guard_cue2")  # purity 0.9; a second cue
CONTROLS = {"guard_base": "guard_random", "guard_sticky": "guard_sticky_random"}
ALPHAS = ("0.0", "0.25", "0.5", "0.75", "1.0")
SCALE_ROWS = tuple(f"lora, scale {a}" for a in ALPHAS[:-1]) + ("lora",)  # the interpolation curve, base to adapter
GAP_VARIANTS = ("lora", "guard_base", "guard_sticky", "guard_sticky_ce", "guard_sticky_both")  # in the gap plot


# ---- reading cells ------------------------------------------------------------------------------------------
def cell_path(grid: dict, variant: str, seed: int) -> Path | None:
    for path in (cell_dir(grid, variant, seed), archived_cell(grid, variant, seed)):
        if (path / "results.json").exists():
            return path
    return None


def read_cells(name: str) -> dict[str, dict[int, Path]]:
    """variant -> seed -> the finished cell's folder, for one grid."""
    grid = load_grid(str(GRIDS / f"{name}.yaml"))
    cells = {v: {s: cell_path(grid, v, s) for s in grid["seeds"]} for v in grid["variants"]}
    return {v: {s: p for s, p in seeds.items() if p} for v, seeds in cells.items()}


def stress_views(cell: Path) -> dict:
    return json.loads((cell / "results.json").read_text())["stress"]["adapter"]


def interpolated(cell: Path) -> dict[str, dict]:
    """alpha -> {view: record} of a lora cell (experiments/interpolate_grid.py), where it has been run."""
    path = cell / "interpolation.json"
    return json.loads(path.read_text())["alphas"] if path.exists() else {}


def accuracy_on(view: dict, rows: np.ndarray | None = None) -> float:
    correct = np.asarray(view["predictions"]) == np.asarray(view["labels"])
    return float(correct[rows].mean() if rows is not None else correct.mean())


def cell_metrics(views: dict, cue_class: int) -> dict[str, float]:
    anti = views["anti"]
    cue_rows = np.asarray(anti["labels"]) == cue_class
    out = {"clean": accuracy_on(views["clean"]), "anti": accuracy_on(anti),
           "anti_cued": accuracy_on(anti, ~cue_rows), "anti_uncued": accuracy_on(anti, cue_rows)}
    if "aligned" in views:
        out["aligned"] = accuracy_on(views["aligned"])
    out["gap"] = out["clean"] - out["anti"]
    return out


# ---- the variants of one setting -------------------------------------------------------------------------
def setting_views(cells: dict[str, dict[int, Path]]) -> dict[str, dict[int, dict]]:
    """row name -> seed -> the views: the grid's variants and lora at each interpolation scale."""
    rows: dict[str, dict[int, dict]] = {}
    for variant, seeds in cells.items():
        rows[variant] = {seed: stress_views(path) for seed, path in seeds.items()}
    for alpha in ALPHAS[:-1]:
        scaled = {s: interpolated(p).get(alpha) for s, p in cells.get("lora", {}).items()}
        scaled = {s: v for s, v in scaled.items() if v}
        if scaled:
            rows[f"lora, scale {alpha}"] = scaled
    return {name: seeds for name, seeds in rows.items() if seeds}


def cue_class_of(cell: Path) -> int:
    results = json.loads((cell / "results.json").read_text())
    return results["label_names"].index(results["stress"]["adapter"]["cue_label"])


def main_table(rows: dict[str, dict[int, dict]], cue_class: int) -> list[str]:
    keys = ("clean", "aligned", "anti", "anti_cued", "anti_uncued", "gap")
    lines = ["| variant | seeds | clean | aligned | anti | anti: cued rows (other class) | anti: uncued rows "
             "(cue's class) | gap |", "|---|---|---|---|---|---|---|---|"]
    for name, seeds in rows.items():
        metrics = [cell_metrics(v, cue_class) for v in seeds.values()]
        cells = [mean_std([m.get(k) for m in metrics]) if any(k in m for m in metrics) else "-" for k in keys]
        lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells) + " |")
    return lines


def mean_clean_anti(views: list[dict], cue_class: int) -> tuple[float, float]:
    """Mean clean and mean anti accuracy over a row's views (one per seed)."""
    metrics = [cell_metrics(v, cue_class) for v in views]
    return float(np.mean([m["clean"] for m in metrics])), float(np.mean([m["anti"] for m in metrics]))


def frontier(rows: dict[str, dict[int, dict]], cue_class: int, seeds: set[int] | None = None
             ) -> list[tuple[float, float, str]]:
    """The interpolation curve as (mean clean, mean anti, scale name), averaged over ``seeds`` (default: each
    scale's every seed), so that a variant run on fewer seeds is set against the curve of its own seeds."""
    points = []
    for name in SCALE_ROWS:
        views = [v for s, v in rows.get(name, {}).items() if seeds is None or s in seeds]
        if views:
            points.append((*mean_clean_anti(views, cue_class), name))
    return points


def above_frontier(clean: float, anti: float, curve: list[tuple[float, float, str]]) -> str:
    """The variant's anti accuracy minus the frontier's at its clean accuracy (linear between scales); beyond the
    curve's clean range, minus the anti accuracy of its nearer end."""
    if len(curve) < 2:
        return "-"
    xs, ys = np.array([c for c, _, _ in curve]), np.array([a for _, a, _ in curve])
    order = np.argsort(xs)
    if not xs.min() <= clean <= xs.max():  # no scale reaches its clean accuracy: compare with the nearer end
        end = int(np.argmax(xs) if clean > xs.max() else np.argmin(xs))
        side = "cleaner" if clean > xs.max() else "less clean"
        dominates = ", more accurate on both views than every scale" if side == "cleaner" and anti >= ys.max() else ""
        return f"{side} than every scale: {100 * (anti - ys[end]):+.1f} points over {curve[end][2]}{dominates}"
    return f"{100 * (anti - np.interp(clean, xs[order], ys[order])):+.1f} points"


# ---- paired tests -----------------------------------------------------------------------------------------------
def paired_cell(rows: dict, name: str, other: str, view: str) -> str:
    """``+1.2 (pooled p=0.003, t p=0.04)`` over the seeds both rows have."""
    seeds = sorted(set(rows[name]) & set(rows[other]))
    if not seeds:
        return "-"
    mine, theirs = [rows[name][s][view] for s in seeds], [rows[other][s][view] for s in seeds]
    pooled = reports_pooled_test(mine, theirs)["p_value"]
    t = paired_t_test([m["accuracy"] for m in mine], [o["accuracy"] for o in theirs])["p_value"]
    t_text = f", t p={t:.3f}" if len(seeds) > 1 and t == t else ""
    return f"{100 * pooled_diff(mine, theirs):+.1f} (pooled p{pooled_p(pooled)}{t_text})"


def pooled_diff(mine: list[dict], theirs: list[dict]) -> float:
    return float(np.mean([a["accuracy"] - b["accuracy"] for a, b in zip(mine, theirs)]))


def best_scale_at_clean(rows: dict, name: str, cue_class: int) -> str | None:
    """The interpolation scale with the best mean anti accuracy among those whose mean clean accuracy is at least
    ``name``'s (over the seeds both have); None where no scale is as clean."""
    def means(row: str, seeds: list[int]) -> tuple[float, float]:
        return mean_clean_anti([rows[row][s] for s in seeds], cue_class)

    best = None
    for scale in SCALE_ROWS[1:]:  # the base (scale 0) is not a trained model
        seeds = sorted(set(rows.get(scale, {})) & set(rows[name]))
        if not seeds or scale == name:
            continue
        clean, anti = means(scale, seeds)
        if clean >= means(name, seeds)[0] and (best is None or anti > best[1]):
            best = (scale, anti)
    return best[0] if best else None


def tests_table(rows: dict, cue_class: int) -> list[str]:
    lines = ["| variant | against | clean accuracy, points | anti accuracy, points |", "|---|---|---|---|"]
    for name in rows:
        if name == "lora":
            continue
        others = ["lora", CONTROLS.get(name)]
        if not name.startswith("lora, scale"):
            others.append(best_scale_at_clean(rows, name, cue_class) or "(no scale as clean)")
        for other in dict.fromkeys(o for o in others if o):
            if other not in rows:
                lines.append(f"| {name} | {other} | - | - |")
                continue
            lines.append(f"| {name} | {other} | {paired_cell(rows, name, other, 'clean')} | "
                         f"{paired_cell(rows, name, other, 'anti')} |")
    return lines


def frontier_table(rows: dict, cue_class: int) -> list[str]:
    lines = ["| variant | clean | anti | anti minus the interpolation frontier at its clean accuracy |",
             "|---|---|---|---|"]
    for name, seeds in rows.items():
        if name.startswith("lora"):
            continue
        curve = frontier(rows, cue_class, set(seeds))
        clean, anti = mean_clean_anti(list(seeds.values()), cue_class)
        lines.append(f"| {name} | {clean:.4f} | {anti:.4f} | {above_frontier(clean, anti, curve)} |")
    return lines


# ---- the guard's flags ---------------------------------------------------------------------------------------
def flags_table(cells: dict[str, dict[int, Path]], cue: str) -> list[str]:
    lines = ["| cell | words hidden in the most training rows (rows, first step flagged) | cue first flagged at step |",
             "|---|---|---|"]
    for variant, seeds in cells.items():
        for seed, path in sorted(seeds.items()):
            guard = json.loads((path / "results.json").read_text()).get("guard")
            if not guard:
                continue
            top = ", ".join(f"{w} ({n}, {first})" for w, n, first in guard["top_hidden"][:6]) or "none"
            first = next((first for w, _, first in guard["top_hidden"] if w == cue.lower()), None)
            lines.append(f"| {variant}-seed{seed} | {top} | {first if first is not None else 'never'} |")
    return lines


# ---- in distribution ---------------------------------------------------------------------------------------------
def clean_grid_table(cells: dict[str, dict[int, Path]]) -> list[str]:
    tests = {v: {s: json.loads((p / "results.json").read_text())["test"] for s, p in seeds.items()}
             for v, seeds in cells.items() if seeds}
    lines = ["| variant | seeds | test accuracy | against lora, points |", "|---|---|---|---|"]
    for name, seeds in tests.items():
        acc = mean_std([t["accuracy"] for t in seeds.values()])
        versus = paired_cell({k: {s: {"clean": t} for s, t in v.items()} for k, v in tests.items()}, name, "lora",
                             "clean") if name != "lora" and "lora" in tests else "-"
        lines.append(f"| {name} | {len(seeds)} | {acc} | {versus} |")
    return lines


# ---- the plots' numbers (experiments/guard_plots.py draws them) ------------------------------------------------
def frontier_points(rows: dict, cue_class: int) -> tuple[list, list, dict]:
    """Each seed's interpolation curve, their mean, and every other variant's (clean, anti) per seed."""
    seeds = sorted(set().union(*(rows[s].keys() for s in SCALE_ROWS if s in rows)))

    def point(views: dict) -> tuple[float, float]:
        metrics = cell_metrics(views, cue_class)
        return metrics["clean"], metrics["anti"]

    seed_curves = [[point(rows[s][seed]) for s in SCALE_ROWS if seed in rows.get(s, {})] for seed in seeds]
    mean_curve = [(c, a) for c, a, _ in frontier(rows, cue_class)]
    variants = {n: [point(v) for v in by_seed.values()] for n, by_seed in rows.items()
                if not n.startswith("lora, scale")}
    return seed_curves, mean_curve, variants


def gap_lines(cells: dict[str, dict[int, Path]]) -> dict[str, list[list[tuple[int, float]]]]:
    """The validation gap against steps, per variant of GAP_VARIANTS and seed (empty for a cell from before
    val_gap was logged)."""
    lines = {}
    for variant in (v for v in cells if v in GAP_VARIANTS):
        lines[variant] = []
        for _, cell in sorted(cells[variant].items()):
            records = [json.loads(line) for line in (cell / "metrics.jsonl").read_text().splitlines()]
            lines[variant].append([(r["step"], r["val_gap"]) for r in records if "val_gap" in r])
    return lines


# ---- the report --------------------------------------------------------------------------------------------------
def setting_report(title: str, cells: dict) -> list[str]:
    lora = next(iter(cells.get("lora", {}).values()), None)
    if lora is None:
        return [f"## {title}", "", "no finished lora cell yet", ""]
    cue_class = cue_class_of(lora)
    rows = setting_views(cells)
    cue = json.loads((lora / "results.json").read_text())["stress"]["adapter"]["cue"]
    return [f"## {title}", "", *main_table(rows, cue_class), "", *tests_table(rows, cue_class), "",
            *frontier_table(rows, cue_class), "", *flags_table(cells, cue), ""]


def with_pilot(main_cells: dict, pilot: dict) -> dict:
    """The main setting's cells with the pilot's variants that the main grid does not have (a pilot cell of a
    main-grid variant counts only through ``pilot_runs_of_main``, where its config is the main grid's)."""
    return {**main_cells, **{v: seeds for v, seeds in pilot.items() if v not in main_cells}}


def without_output_dir(config) -> dict:
    """A resolved TrainConfig as a dict, without where its run was written."""
    return {k: v for k, v in config.to_dict().items() if k != "output_dir"}


def pilot_runs_of_main(main_cells: dict, pilot: dict) -> dict:
    """The main setting's cells, with a pilot cell filling a seed the main grid lacks where the main grid has a
    variant of the same name and the pilot's run is that cell's run (the config the main grid resolves for the
    cell): the pilot's ``guard_sticky`` seed 0 is the main grid's ``guard_sticky`` seed 0, not run twice."""
    grid = load_grid(str(GRIDS / f"{MAIN}.yaml"))
    filled = {v: dict(seeds) for v, seeds in main_cells.items()}
    for variant, seeds in pilot.items():
        for seed, cell in seeds.items():
            if variant not in filled or seed in filled[variant] or seed not in grid["seeds"]:
                continue
            expected = cell_config(grid, variant, seed, next(iter(grid["variants"])))[0]
            if without_output_dir(read_run_config(cell)) == without_output_dir(expected):
                filled[variant][seed] = cell
    return filled


def replace_block(text: str, name: str, lines: list[str]) -> str:
    """``text`` with the lines between ``<!-- NAME: experiments/guard_report.py -->`` and ``<!-- end NAME -->``
    replaced by ``lines`` (the setting's heading left out)."""
    start, end = f"<!-- {name}: experiments/guard_report.py -->", f"<!-- end {name} -->"
    if start not in text or end not in text:
        raise SystemExit(f"guard_report.py: no block {start!r} ... {end!r} to replace")
    body = "\n".join(line for line in lines if not line.startswith("## ")).strip()
    return text[:text.index(start) + len(start)] + "\n" + body + "\n" + text[text.index(end):]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plots", default=None, help="write guard_frontier.png and guard_gap_steps.png here")
    parser.add_argument("--results", default=None, help="rewrite the guard blocks of this Markdown file "
                        "(docs/RESULTS.md: 'guard tables', 'guard pilot tables', 'guard p90 tables', "
                        "'guard cue2 tables' and 'guard clean tables')")
    args = parser.parse_args()
    pilot = read_cells(PILOT)
    main_cells = pilot_runs_of_main(read_cells(MAIN), pilot)
    main_lines = setting_report("The main setting: 'Winston', rate 0.5, purity 1.0", main_cells)
    seed0 = {"lora": main_cells.get("lora", {}), "guard_base": main_cells.get("guard_base", {})}
    pilot_lines = setting_report("The guard's loss (seed 0; guard_base is KL)",
                                 {k: {0: v[0]} for k, v in {**seed0, **pilot}.items() if 0 in v})
    blocks = {"guard tables": main_lines, "guard pilot tables": pilot_lines}
    for name in OTHER_SETTINGS:
        blocks[f"guard {name.removeprefix('rt_guard_')} tables"] = setting_report(
            load_grid(str(GRIDS / f"{name}.yaml"))["title"], read_cells(name))
    clean = read_cells(CLEAN)
    blocks["guard clean tables"] = ["## In distribution (no cue)", "", *clean_grid_table(clean), ""]
    if args.results:
        text = Path(args.results).read_text()
        for name, lines in blocks.items():
            text = replace_block(text, name, lines)
        atomic_write_text(args.results, text)
    print("\n".join(line for lines in blocks.values() for line in lines))
    if args.plots and main_cells.get("lora"):
        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        lora = next(iter(main_cells["lora"].values()))
        cells = with_pilot(main_cells, pilot)
        plot_frontier(*frontier_points(setting_views(cells), cue_class_of(lora)), out / "guard_frontier.png")
        plot_gap_steps(gap_lines(cells), out / "guard_gap_steps.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
