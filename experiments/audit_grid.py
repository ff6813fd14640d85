"""Audit every finished cell of a planted-cue grid (experiments/grids/rt_audit.yaml) and score the audit.

    .venv/bin/python experiments/audit_grid.py experiments/grids/rt_audit.yaml            # audit what is missing
    .venv/bin/python experiments/audit_grid.py experiments/grids/rt_audit.yaml --wait     # ... until the grid is done
    .venv/bin/python experiments/audit_grid.py experiments/grids/rt_audit.yaml --report   # the tables (archive)

Each cell's training split is audited as the run saw it (`afa-llm audit --adapter CELL`, its defaults) and the
report is written to ``<cell>/audit.json`` (experiments/refresh_results.py archives it). Beside the audit's
own numbers, each measured candidate gets the two rankings that salience methods would give
(experiments/audit_rankings.py): the trained model's focus (answer-position attention) on it, and
gradient x input. The report ranks the planted cue (a phrase counts through itself or one of its words)
under six rankings: label skew alone, focus, gradient x input (toward the skewed class, and its absolute
value), effect_model alone, and the audit's score,
with recall at 1 and 3 over the cued runs, each run's stress gap, and the top of the cue-free runs.

Adapters are not archived (runs/ is not in git), so a cell is audited in the checkout that trained it.
``--lock FILE`` takes an flock on FILE around each cell's audit (to share a core with other jobs).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from grid_model import archived_cell, cell_dir, load_grid, selected_cells  # noqa: E402

AUDIT_FILE = "audit.json"
RANKINGS = {"skew": "label skew alone", "focus": "focus (attention)", "grad_input": "gradient x input",
            "grad_input_abs": "abs(gradient x input)",
            "effect_model": "effect_model alone", "score": "the audit's score"}


@contextlib.contextmanager
def maybe_locked(path: str | None):
    if path is None:
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def audit_cell(cell: Path, args: argparse.Namespace) -> None:
    from audit_rankings import add_salience

    from afa_llm.evaluation.audit import AuditRequest, audit_request
    from afa_llm.io_utils import write_json
    from afa_llm.runs import resolve_scorer

    resolved = resolve_scorer(str(cell), None)
    request = AuditRequest(resolved, split="train", progress=False)  # afa-llm audit's defaults
    report = audit_request(request)
    write_json(cell / "audit-only.json", report)  # kept if the salience rankings fail
    add_salience(report, resolved)
    write_json(cell / AUDIT_FILE, report)
    (cell / "audit-only.json").unlink()
    print(f"{cell.name}: {report['candidates'][0]['word']!r} first; {report['seconds']:.0f} s of masked passes",
          flush=True)


def claim(cell: Path) -> bool:
    """Take ``<cell>/.audit-claim`` (this pid), so that two audit processes share a grid; a dead owner's claim
    is taken over."""
    path = cell / ".audit-claim"
    try:
        owner = int(path.read_text())
        os.kill(owner, 0)
        return owner == os.getpid()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        path.write_text(str(os.getpid()))
        return int(path.read_text()) == os.getpid()


def run_audits(grid: dict, args: argparse.Namespace) -> int:
    """Audit the cells that have finished training and lack an audit; returns how many cells are still pending."""
    pending = 0
    for variant, seed in selected_cells(grid, None, args.seeds):
        cell = cell_dir(grid, variant, seed)
        if (cell / AUDIT_FILE).exists() or (archived_cell(grid, variant, seed) / AUDIT_FILE).exists():
            continue
        if not (cell / "results.json").exists() or not claim(cell):
            pending += 1
            continue
        with maybe_locked(args.lock):
            if not (cell / AUDIT_FILE).exists():
                audit_cell(cell, args)
        (cell / ".audit-claim").unlink(missing_ok=True)
    return pending


# ---- the report ------------------------------------------------------------------------------
def read_audits(grid: dict) -> dict[tuple[str, int], tuple[dict, dict]]:
    """(variant, seed) -> (audit, results) from runs/ or the archive."""
    out = {}
    for variant, seed in selected_cells(grid, None, None):
        for folder in (cell_dir(grid, variant, seed), archived_cell(grid, variant, seed)):
            if (folder / AUDIT_FILE).exists() and (folder / "results.json").exists():
                out[(variant, seed)] = (json.loads((folder / AUDIT_FILE).read_text()),
                                        json.loads((folder / "results.json").read_text()))
                break
    return out


def cue_ranks(audit: dict, cue: str) -> dict[str, int | None]:
    """The cue's rank under each ranking (1 = first; None: not among the measured candidates)."""
    from afa_llm.evaluation.audit_stats import mentions

    rows = audit["candidates"]
    keys = {"skew": lambda c: c["skew"]["z"], "focus": lambda c: c.get("focus", float("nan")),
            "grad_input": lambda c: c.get("grad_input", float("nan")),
            "grad_input_abs": lambda c: abs(c.get("grad_input", float("nan"))), "effect_model": lambda c: c["effect_model"],
            "score": lambda c: c["score"]}
    ranks = {}
    for name, key in keys.items():
        order = sorted(rows, key=lambda c: (-_finite(key(c)), c["rank"]))
        ranks[name] = next((i + 1 for i, c in enumerate(order) if mentions(c["word"].split(), cue)), None)
    return ranks


def _finite(value: float) -> float:
    return value if value == value else float("-inf")


def report(grid: dict) -> str:
    audits = read_audits(grid)
    lines = ["| run | cue | stress gap | " + " | ".join(RANKINGS.values()) + " |",
             "|---|---|---|" + "---|" * len(RANKINGS)]
    hits = {name: [0, 0] for name in RANKINGS}
    cued = 0
    for (variant, seed), (audit, results) in audits.items():
        cue = (results.get("shortcut") or {}).get("shortcut_cue")
        if not cue:
            continue
        cued += 1
        ranks = cue_ranks(audit, cue)
        gap = results["stress"]["adapter"]["gap"]
        for name, rank in ranks.items():
            hits[name][0] += rank == 1
            hits[name][1] += rank is not None and rank <= 3
        lines.append(f"| {variant} seed {seed} | {cue} | {gap * 100:+.1f} | "
                     + " | ".join(str(ranks[n] or "-") for n in RANKINGS) + " |")
    lines.append(f"| recall at 1 / at 3 over {cued} cued runs | | | "
                 + " | ".join(f"{h1}/{cued} · {h3}/{cued}" for h1, h3 in hits.values()) + " |")
    lines += ["", "Cue-free runs, the audit's top 5 (score):"]
    for (variant, seed), (audit, results) in audits.items():
        if not (results.get("shortcut") or {}).get("shortcut_cue"):
            top = ", ".join(f"{c['word']} {c['score']:.1f}" for c in audit["candidates"][:5])
            lines.append(f"- {variant} seed {seed}: {top}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid")
    parser.add_argument("--wait", action="store_true", help="poll until every cell of the grid is audited")
    parser.add_argument("--report", action="store_true", help="print the tables only")
    parser.add_argument("--lock", default=None, help="flock this file around each cell's audit")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="only these seeds (default: all)")
    args = parser.parse_args()
    grid = load_grid(args.grid)
    if not args.report:
        while run_audits(grid, args) and args.wait:
            time.sleep(60)
    print(report(grid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
