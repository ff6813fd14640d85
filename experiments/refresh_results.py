"""Archive finished grid cells into docs/results_data and refresh the tables of docs/RESULTS.md.

    .venv/bin/python experiments/refresh_results.py            # archive runs/grid/*, then rewrite the tables
    .venv/bin/python experiments/refresh_results.py --no-archive   # tables from docs/results_data only (fresh clone)

runs/ is not in git, so every finished cell's results.json (with per-example test
predictions), metrics.jsonl and config.yaml are copied to docs/results_data/<grid>/<cell>/.
In docs/RESULTS.md, each block between ``<!-- grid: experiments/grids/NAME.yaml -->`` and
``<!-- end grid -->`` is replaced by `experiments/grid.py`'s report of that grid, computed from
the archived copies; the prose around the blocks is left alone. Each ``<!-- act: FOLDER -->`` ... ``<!-- end act -->``
block gets experiments/act_report.py's table of that (archived) folder.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grid import ARCHIVE, archived_grid, load_grid, report  # noqa: E402

from afa_llm.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEPT_FILES = ("results.json", "metrics.jsonl", "config.yaml", "validation_full.json",  # experiments/pick_setting.py
              "audit.json",  # experiments/audit_grid.py
              "interpolation.json")  # experiments/interpolate_grid.py
BLOCK = re.compile(r"<!-- grid: (\S+) -->\n.*?<!-- end grid -->", re.S)
# the ACT rows (experiments/act_report.py over an archived act_results folder)
ACT_BLOCK = re.compile(r"<!-- act: (\S+) -->\n.*?<!-- end act -->", re.S)


def archive_target(cell: Path, target: Path) -> Path:
    """Where a finished cell is archived: ``target``, unless that holds a different finished run.

    A fresh checkout that retrains an archived cell (experiments/act_rows.sh `cell` needs its adapter)
    makes a second run of it; the archive keeps the first, which the tables were computed from,
    and files the retrain beside it as ``rerun-K`` (the same rerun is found again, not copied twice).
    To replace an archived cell, delete its folder first.
    """
    new = (cell / "results.json").read_bytes()
    folder, k = target, 0
    while (folder / "results.json").exists() and (folder / "results.json").read_bytes() != new:
        k += 1
        folder = target / f"rerun-{k}"
    return folder


def archive_runs(grid_root: Path = ROOT / "runs" / "grid", archive: Path = ARCHIVE) -> int:
    """Copy the kept files of every finished cell; returns how many cells were copied."""
    copied = 0
    for results in sorted(grid_root.glob("*/*/results.json")):
        cell = results.parent
        target = archive_target(cell, archive / cell.parent.name / cell.name)
        if target.name.startswith("rerun-"):
            print(f"{cell}: kept the archived first run; this retrain goes to {target}", file=sys.stderr)
        target.mkdir(parents=True, exist_ok=True)
        for name in KEPT_FILES:
            if (cell / name).exists():
                shutil.copyfile(cell / name, target / name)  # follows the demo-run symlinks
        copied += 1
    return copied


def grid_table(grid_file: str, archive: Path = ARCHIVE) -> str:
    grid = load_grid(str(ROOT / grid_file))
    cells = archived_grid(grid, archive)
    grid["output_root"] = str(cells.relative_to(ROOT) if cells.is_relative_to(ROOT) else cells)
    text = report(grid)
    return "#" + text if text.startswith("## ") else text  # a sub-heading under the document's own


def act_table(folder: str) -> str:
    from act_report import report as act_report

    return act_report(ROOT / folder)


def refresh(doc: Path, archive: Path = ARCHIVE) -> int:
    text, count = BLOCK.subn(lambda m: f"<!-- grid: {m.group(1)} -->\n{grid_table(m.group(1), archive)}\n"
                                       "<!-- end grid -->", doc.read_text())
    text, acts = ACT_BLOCK.subn(lambda m: f"<!-- act: {m.group(1)} -->\n{act_table(m.group(1))}\n"
                                          "<!-- end act -->", text)
    doc.write_text(text)
    return count + acts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-archive", action="store_true", help="do not copy runs/grid into docs/results_data")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "RESULTS.md"))
    args = parser.parse_args(argv)
    try:
        if not args.no_archive:
            print(f"archived {archive_runs()} finished cells into {ARCHIVE.relative_to(ROOT)}")
        print(f"refreshed {refresh(Path(args.doc))} grid tables in {args.doc}")
    except (UserError, FileNotFoundError) as exc:  # a missing document or grid file
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
