"""Run a grid of training runs (variants x seeds) and report them with paired statistics.

    .venv/bin/python experiments/grid.py experiments/grids/rt_smollm2.yaml            # run what is missing, then report
    .venv/bin/python experiments/grid.py experiments/grids/rt_smollm2.yaml --only afa  # one variant
    .venv/bin/python experiments/grid.py experiments/grids/rt_smollm2.yaml --report-only

A grid YAML names a recipe, seeds, common overrides and variants (name -> overrides);
the first variant is the baseline that the others are compared with; a variant with
``runner=trl`` is trained by experiments/trl_baseline.py (TRL's SFTTrainer) with the same keys. Each cell trains
into ``output_root/<variant>-seed<N>``; finished cells are skipped and interrupted ones
resume from their last checkpoint, so a long grid can be completed in pieces. A cell archived in
``docs/results_data/<output_root's name>/`` (experiments/refresh_results.py) counts as finished too: runs/ is
not in git, so a fresh clone goes on with the cells that are missing instead of training the grid
again (``--ignore-archive`` retrains them). A cell interrupted in a checkout that is gone starts over, unless
its newest checkpoint was carried in git (experiments/carry.py): then it resumes from that; the carried copy
is deleted once the cell has finished, here or in the archive. A process
claims a cell (``<cell>/.grid-claim``: host, pid and the pid's start time) before training it,
so the same command started twice side by side shares the grid, each process training the
cells the other has not claimed (on 2 cores: ``OMP_NUM_THREADS=1`` each); a claim whose
process has died is taken over, also where a new process has since been given its pid.
The report (Markdown) gives, per variant, test accuracy and macro-F1 as mean ± std over
seeds, the paired difference against the baseline per seed with a McNemar p-value on
the same test examples (over several seeds also their pooled sign-flip p, the test examples
as the units: afa_llm.evaluation.metrics.reports_pooled_test), the steps needed to reach the baseline's final validation
accuracy, and the fake-focus share of the adapter (base in brackets). Grids of more than two classes, or
whose runs differ in head or class weights, add per-class F1 (and the macro-F1 and minority-class F1 against
the baseline); the latter also calibration (ECE, Brier). Cells with a planted shortcut add the stress table,
and cells with focus metrics the focus table (experiments/focus_tables.py); ``controls:``
(variant -> its control variant) adds each method against its own control on the test split and, with a
cue, on the anti view.

A cell imports parts of the package only when it reaches them (validation, the final evaluation), so a
grid that runs for hours must not run from a checkout whose code is being edited: run it from a worktree of
a commit, sharing runs/ (``git worktree add --detach ../gridwt HEAD && ln -s $PWD/runs ../gridwt/runs``,
then the command above from ../gridwt), and archive from the main checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from carry import CARRY, carried, drop_carry, restore_carry  # noqa: E402
from grid_model import (ARCHIVE, archived_cell, archived_grid, cell_config, cell_dir, cell_overrides,  # noqa: E402,F401
                        finished, load_grid, pending_cells, selected_cells)
from focus_tables import calibration_table, control_table, focus_table, per_class_table, pooled_p, stress_table  # noqa: E402

from afa_llm.errors import TrainingDiverged, UserError  # noqa: E402
from afa_llm.evaluation.metrics import reports_mcnemar_p, reports_pooled_test  # noqa: E402

CLAIM_FILE = ".grid-claim"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux ``/proc``); "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": comm may hold spaces
    return fields[19] if len(fields) > 19 else ""  # field 22 of stat(5); state is field 3


def _holds(pid: str, started: str) -> bool:
    """Whether the claim's process still runs: alive, and not a later process that reused its pid."""
    if not pid.isdigit() or not _alive(int(pid)):
        return False
    now = _start_time(int(pid))
    return not (started and now and now != started)


def claim_cell(cell: Path) -> bool:
    """Claim ``cell`` for this process; False if a live process on this host (or any on another) holds it.

    The claim reads ``host pid start-time``; the start time tells a dead owner from a new process
    that was given its pid (claims written without one are judged by the pid alone)."""
    cell.mkdir(parents=True, exist_ok=True)
    claim, host, pid = cell / CLAIM_FILE, socket.gethostname(), str(os.getpid())
    for _ in range(2):  # the second try follows the removal of a dead process's claim
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            held_host, held_pid, held_start = (claim.read_text().split() + ["", "", ""])[:3]
            if held_host != host:
                return False  # another host's pid cannot be checked from here
            if held_pid == pid:
                return True  # ours already
            if not _holds(held_pid, held_start):
                claim.unlink(missing_ok=True)  # its process died: take the cell over (it resumes)
                continue
            return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{host} {pid} {_start_time(os.getpid())}".rstrip())
        return True
    return False


def release_cell(cell: Path) -> None:
    (cell / CLAIM_FILE).unlink(missing_ok=True)


def run_grid(grid: dict, only: list[str] | None, seeds: list[int] | None = None,
             archive: Path | None = ARCHIVE, carry_root: Path = CARRY) -> None:
    from afa_llm.training.trainer import train

    baseline = next(iter(grid["variants"]))
    for variant, seed in selected_cells(grid, only, seeds):  # finished elsewhere (e.g. archived, then lost)
        if finished(grid, variant, seed, archive):
            drop_carry(cell_dir(grid, variant, seed), carry_root)
    for variant, seed in pending_cells(grid, only, seeds, archive):
        cell = cell_dir(grid, variant, seed)
        cfg, uses_trl = cell_config(grid, variant, seed, baseline)  # a bad cell fails before claiming
        if not claim_cell(cell):
            print(f"=== {variant} seed {seed}: skipped, a live process holds {cell / CLAIM_FILE}", flush=True)
            continue
        if (cell / "results.json").exists():  # finished by a process beside this one since the list was made
            release_cell(cell)
            continue
        print(f"=== {variant} seed {seed}", flush=True)
        if restore_carry(cell, carry_root):  # an earlier checkout's checkpoint, carried in git (experiments/carry.py)
            print(f"resuming from the copy carried in {carried(cell, carry_root)}", flush=True)
        runner = train
        if uses_trl:  # the ecosystem's baseline: TRL's SFTTrainer (experiments/trl_baseline.py)
            from trl_baseline import train_trl

            runner = train_trl
        try:
            runner(cfg)
            if (cell / "results.json").exists():
                drop_carry(cell, carry_root)
        except TrainingDiverged as exc:  # record it and go on: every run is reported
            print(f"diverged: {exc}", flush=True)
            (cell / "DIVERGED").write_text(str(exc))
        finally:
            release_cell(cell)


def steps_to_reach(history: list[dict], target: float) -> int | None:
    return next((h["step"] for h in history if h["accuracy"] >= target), None)


def _mean_std(values: list[float]) -> str:
    arr = np.asarray(values)
    return f"{arr.mean():.4f}" + (f" ± {arr.std(ddof=1):.4f}" if len(arr) > 1 else "")


def converged_cells(done: dict) -> str:
    """For runs with select_best: the last checkpoint's test accuracy and macro-F1, and per seed
    the best / last step (the table's own columns are the best checkpoint's)."""
    last = [r.get("test_last", r["test"])["accuracy"] for r in done.values()]  # older runs: test is the last
    f1 = [r.get("test_last", r["test"])["macro_f1"] for r in done.values()]
    steps = ", ".join(f"{r.get('best_step')}/{r.get('last_step')}" for r in done.values())
    return f"{_mean_std(last)} | {np.mean(f1):.4f} | {steps}"


def report(grid: dict) -> str:
    baseline = next(iter(grid["variants"]))
    results = {v: {s: _load(cell_dir(grid, v, s)) for s in grid["seeds"]} for v in grid["variants"]}
    first = next((r for runs in results.values() for r in runs.values() if r), None)
    if first is None:
        return "no finished runs yet"
    lines = [f"## {grid.get('title', grid['recipe'])}", "",
             f"model `{first['model']}`, data `{first['data']}` (split seed {first['split_seed']}), "
             f"{first['steps']} steps, test n={first['test']['n']}, seeds {grid['seeds']}. "
             f"Cells: `{grid['output_root']}/<variant>-seed<N>`. Recipe `{grid['recipe']}`, common overrides "
             f"`{' '.join(grid.get('common') or []) or '-'}`.", ""]
    zero = results[baseline].get(grid["seeds"][0]) or {}
    if "zero_shot" in zero:
        lines.append(f"Zero-shot base: accuracy {zero['zero_shot']['accuracy']:.4f}, "
                     f"macro-F1 {zero['zero_shot']['macro_f1']:.4f}, fake-focus share "
                     f"{zero['fake_focus_share'].get('base', float('nan')):.3f}.")
        lines.append("")
    # grids with select_best (runs whose test is the best validation's): the best checkpoint's test in the main
    # columns, the last one's beside it, and the steps to the baseline's BEST validation accuracy
    converged = any(r.get("selected") == "best" for runs in results.values() for r in runs.values() if r)
    which = "best" if converged else "final"
    extra_head = " last-checkpoint test acc | its macro-F1 | best/last step per seed |" if converged else ""
    lines += ["| variant | overrides | n seeds | test acc (mean ± std) | macro-F1 | Δ acc vs "
              f"{baseline} per seed (McNemar p) | steps to {baseline}'s {which} val acc | fake-focus share |"
              + extra_head, "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if converged else "")]
    for variant, runs in results.items():
        done = {s: r for s, r in runs.items() if r}
        if not done:
            lines.append(f"| {variant} | `{' '.join(grid['variants'][variant])}` | 0 | not run (yet) | | | | |")
            continue
        acc = np.array([r["test"]["accuracy"] for r in done.values()])
        f1 = np.array([r["test"]["macro_f1"] for r in done.values()])
        paired, reach, share, delta, pairs = [], [], [], [], []
        for seed, r in done.items():
            base = runs_of(results, baseline, seed)
            share.append(r["fake_focus_share"]["adapter"])
            if base and variant != baseline:
                p = reports_mcnemar_p(r["test"], base["test"])
                delta.append(r['test']['accuracy'] - base['test']['accuracy'])
                pairs.append((r["test"], base["test"]))
                paired.append(f"{delta[-1]:+.4f} (p={p:.2f})")
                accuracies = [h["accuracy"] for h in base["validation"]]
                target = (max(accuracies) if converged else accuracies[-1]) if accuracies else None
                hit = steps_to_reach(r["validation"], target) if target is not None else None
                reach.append(str(hit) if hit else "not reached")
        std = f" ± {acc.std(ddof=1):.4f}" if len(acc) > 1 else ""
        if len(delta) > 1:
            pooled_pvalue = reports_pooled_test(*zip(*pairs))["p_value"]
            paired = [f"mean {np.mean(delta):+.4f} (pooled p{pooled_p(pooled_pvalue)}): " + ", ".join(paired)]
        tail = f" {converged_cells(done)} |" if converged else ""
        lines.append(f"| {variant} | `{' '.join(grid['variants'][variant]) or '-'}` | {len(acc)} | "
                     f"{acc.mean():.4f}{std} | {f1.mean():.4f} | {', '.join(paired) or '-'} | "
                     f"{', '.join(reach) or '-'} | {np.mean(share):.3f} |" + tail)
    lines += control_table(results, grid.get("controls") or {})
    lines += per_class_table(results, baseline)
    lines += calibration_table(results, baseline)
    lines += stress_table(results, baseline, grid.get("controls") or {})
    lines += focus_table(results, baseline)
    return "\n".join(lines)


def runs_of(results: dict, variant: str, seed: int) -> dict | None:
    return results.get(variant, {}).get(seed)


def _load(folder: Path) -> dict | None:
    path = folder / "results.json"
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", help="grid YAML (see experiments/grids/)")
    parser.add_argument("--only", nargs="*", help="run only these variants")
    parser.add_argument("--seeds", nargs="*", type=int, help="run only these seeds of the grid")
    parser.add_argument("--report-only", action="store_true", help="do not train; report finished cells")
    parser.add_argument("--ignore-archive", action="store_true",
                        help=f"retrain cells archived in {ARCHIVE.parent.name}/{ARCHIVE.name} (by default they count as finished)")
    parser.add_argument("--output", help="also write the Markdown report here")
    args = parser.parse_args(argv)
    try:
        grid = load_grid(args.grid)
        if not args.report_only:
            run_grid(grid, args.only, args.seeds, None if args.ignore_archive else ARCHIVE)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = report(grid)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
