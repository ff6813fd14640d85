"""The grid model that experiments/grid.py and experiments/carry.py share: a grid YAML read and checked,
its cells (variant x seed), their folders and overrides, and which are finished (here or archived)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from afa_llm.config import load_config  # noqa: E402
from afa_llm.errors import UserError  # noqa: E402

ARCHIVE = Path(__file__).resolve().parents[1] / "docs" / "results_data"  # finished cells, in git
GRID_KEYS = {"recipe", "output_root", "seeds", "common", "variants", "title", "controls"}
TRL_RUNNER = "runner=trl"  # a variant trained by TRL's SFTTrainer instead of afa_llm.training.trainer



def load_grid(path: str) -> dict:
    try:
        grid = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise UserError(f"grid file not found: {path}") from exc
    unknown = sorted(set(grid) - GRID_KEYS)
    if unknown:
        raise UserError(f"unknown grid key {unknown[0]!r} in {path} (known: {', '.join(sorted(GRID_KEYS))})")
    if not grid.get("variants"):
        raise UserError(f"grid {path} has no variants")
    for variant, control in (grid.get("controls") or {}).items():
        if variant not in grid["variants"] or control not in grid["variants"]:
            raise UserError(f"grid {path}: controls maps {variant!r} to {control!r}, but both must be variants")
    return grid


def cell_dir(grid: dict, variant: str, seed: int) -> Path:
    return Path(grid["output_root"]) / f"{variant}-seed{seed}"


def cell_overrides(grid: dict, variant: str, seed: int, baseline: str) -> list[str]:
    """The cell's key=value overrides; ``{seed}`` in a variant's value becomes the cell's seed (e.g. the path of
    the same seed's audit in ``guard_words_from``)."""
    own = [o.replace("{seed}", str(seed)) for o in grid["variants"][variant]]
    return [*grid.get("common", []), *own, f"seed={seed}",
            f"output_dir={cell_dir(grid, variant, seed)}", "resume_from=latest", "progress=false",
            f"evaluate_zero_shot={variant == baseline and seed == grid['seeds'][0]}"]


def cell_config(grid: dict, variant: str, seed: int, baseline: str):
    """The cell's validated TrainConfig, and whether TRL's SFTTrainer trains it (``runner=trl``)."""
    overrides = cell_overrides(grid, variant, seed, baseline)
    uses_trl = TRL_RUNNER in overrides
    if uses_trl:
        overrides = [o for o in overrides if o != TRL_RUNNER] + ["method=lora"]
    return load_config(grid["recipe"], overrides), uses_trl


def archived_grid(grid: dict, archive: Path = ARCHIVE) -> Path:
    """Where experiments/refresh_results.py keeps this grid's finished cells."""
    return archive / Path(grid["output_root"]).name


def archived_cell(grid: dict, variant: str, seed: int, archive: Path = ARCHIVE) -> Path:
    return archived_grid(grid, archive) / f"{variant}-seed{seed}"


def finished(grid: dict, variant: str, seed: int, archive: Path | None = ARCHIVE) -> bool:
    """Trained here (results.json in the cell) or archived from an earlier checkout (``archive=None``: not looked at)."""
    return ((cell_dir(grid, variant, seed) / "results.json").exists()
            or (archive is not None and (archived_cell(grid, variant, seed, archive) / "results.json").exists()))


def selected_cells(grid: dict, only: list[str] | None, seeds: list[int] | None) -> list[tuple[str, int]]:
    """The (variant, seed) cells picked by ``--only`` and ``--seeds``: seeds outer, variants in the grid's order."""
    return [(variant, seed) for seed in seeds or grid["seeds"] for variant in grid["variants"]
            if not (only and variant not in only)]


def pending_cells(grid: dict, only: list[str] | None, seeds: list[int] | None,
                  archive: Path | None = ARCHIVE) -> list[tuple[str, int]]:
    """Unfinished selected cells, in run order."""
    return [cell for cell in selected_cells(grid, only, seeds) if not finished(grid, *cell, archive)]
