"""Carry unfinished grid cells across checkouts: the newest checkpoint into git, and back.

    .venv/bin/python experiments/carry.py save experiments/grids/imdb_converge.yaml [--only afa] [--seeds 0]
    git add -A carry && git commit -m "carry: ..."

runs/ is not in git, and a new checkout need not hold the last one's runs/, so a cell that spans
checkouts would start over. ``save`` copies each
unfinished cell's resume set to ``carry/<grid>/<cell>/``: ``config.yaml``, ``metrics.jsonl``, the
newest complete ``checkpoints/step-N`` and ``checkpoints/best`` (the best validation adapter of
``select_best``). experiments/grid.py puts a carried cell back into runs/ before it trains the cell, when
runs/ has no checkpoint of its own, and deletes the carried copy once the cell has finished (commit
that deletion with the archived cell). On SmolLM2-135M (r=8, four attention projections) a
checkpoint is 11 MB for LoRA and 16 MB for AFA (its discriminator), the best adapter 3.6 MB.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from afa_llm.training.checkpoint import list_checkpoints  # noqa: E402
from afa_llm.errors import UserError  # noqa: E402
from afa_llm.io_utils import atomic_dir  # noqa: E402
from afa_llm.training.validation import BEST_DIR  # noqa: E402

CARRY = Path(__file__).resolve().parents[1] / "carry"
CELL_FILES = ("config.yaml", "metrics.jsonl")


def carried(cell: Path, root: Path = CARRY) -> Path:
    """Where ``runs/grid/<grid>/<cell>`` is carried: ``root/<grid>/<cell>``."""
    return root / cell.parent.name / cell.name


def save_carry(cell: Path, root: Path = CARRY) -> Path | None:
    """Copy the cell's resume set into ``carried(cell)`` (replacing an older copy); None if it has no checkpoint."""
    checkpoints = list_checkpoints(cell)
    if not checkpoints:
        return None
    with atomic_dir(carried(cell, root)) as tmp:
        for name in CELL_FILES:
            if (cell / name).exists():
                shutil.copy2(cell / name, tmp / name)
        shutil.copytree(checkpoints[-1], tmp / "checkpoints" / checkpoints[-1].name)
        if (cell / "checkpoints" / BEST_DIR).is_dir():
            shutil.copytree(cell / "checkpoints" / BEST_DIR, tmp / "checkpoints" / BEST_DIR)
    return carried(cell, root)


def restore_carry(cell: Path, root: Path = CARRY) -> bool:
    """Put a carried copy into ``cell`` when the cell has no checkpoint of its own; True if it did."""
    source = carried(cell, root)
    if list_checkpoints(cell) or not list_checkpoints(source):
        return False
    shutil.copytree(source, cell, dirs_exist_ok=True)
    return True


def drop_carry(cell: Path, root: Path = CARRY) -> None:
    """Delete the carried copy of a cell that has finished (its checkpoints are of no more use)."""
    shutil.rmtree(carried(cell, root), ignore_errors=True)
    for folder in (carried(cell, root).parent, root):  # leave no empty folders behind
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def main(argv: list[str] | None = None) -> int:
    from grid_model import ARCHIVE, cell_dir, load_grid, pending_cells

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["save"], help="save: copy the unfinished cells' newest checkpoints")
    parser.add_argument("grid", help="grid YAML (see experiments/grids/)")
    parser.add_argument("--only", nargs="*", help="only these variants")
    parser.add_argument("--seeds", nargs="*", type=int, help="only these seeds")
    args = parser.parse_args(argv)
    try:
        grid = load_grid(args.grid)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for variant, seed in pending_cells(grid, args.only, args.seeds, ARCHIVE):
        cell = cell_dir(grid, variant, seed)
        target = save_carry(cell)
        step = list_checkpoints(target)[-1].name if target else None
        print(f"{cell}: " + (f"{step} carried to {target}" if target else "no checkpoint to carry"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
