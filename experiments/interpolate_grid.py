"""Weight interpolation (WiSE-FT, Wortsman et al. CVPR 2022) of a shortcut grid's cells, with no training: each
finished cell of one variant scored at several adapter scales on the clean and anti views of its test split.

    .venv/bin/python experiments/interpolate_grid.py experiments/grids/rt_guard.yaml              # variant lora
    .venv/bin/python experiments/interpolate_grid.py experiments/grids/rt_guard.yaml --alphas 0.5 1

Writes ``<cell>/interpolation.json``: ``{"alphas": {"0.5": {"clean": view, "anti": view}, ...}}`` with each view's
accuracy, per-class scores and predictions, as the cell's own ``stress`` record has them
(experiments/refresh_results.py archives the file). The views are the ones the run's final evaluation built:
the cue slots drawn by the test split's seed, scored in the run's mixed precision. Scale 1 reproduces the
run's own clean and anti accuracy, and the script says whether it does. Scales already in the file are kept.
Adapters are not archived (runs/ is not in git), so a cell is interpolated in the checkout that trained it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_grid import maybe_locked  # noqa: E402
from grid_model import cell_dir, load_grid  # noqa: E402

INTERPOLATION_FILE = "interpolation.json"
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
VIEWS = ("clean", "anti")


def scale_views(cell: Path, alphas: list[float], batch_size: int | None) -> dict[str, dict]:
    """{alpha: {view: record}} of one cell, loading its model once."""
    import torch

    from afa_llm.api import load
    from afa_llm.data.loading import load_data
    from afa_llm.data.shortcut import split_seed_for
    from afa_llm.evaluation.stress import view_record, view_reports
    from afa_llm.model.adapters import scale_adapter

    clf = load(cell)
    cfg = clf.config
    data = load_data(clf.resolved.data)
    test = data.split("test")
    texts, labels = list(test["text"]), list(test["label"])
    precision = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.mixed_precision == "bf16" \
        else contextlib.nullcontext()
    batch_size = batch_size or cfg.eval_batch_size  # as the run's final evaluation batched its rows
    out = {}
    for alpha in alphas:
        scale_adapter(clf.model, alpha)
        with precision:
            reports = view_reports(clf.model, clf.task, texts, labels, data.label_names, cfg.shortcut_cue,
                                   data.label_names.index(cfg.shortcut_label), views=VIEWS,
                                   position=cfg.shortcut_position, seed=split_seed_for(cfg.split_seed, "test"),
                                   batch_size=batch_size)
        out[str(alpha)] = {name: view_record(report) for name, report in reports.items()}
        print(f"{cell.name} alpha {alpha}: clean {out[str(alpha)]['clean']['accuracy']:.4f} "
              f"anti {out[str(alpha)]['anti']['accuracy']:.4f}", flush=True)
    return out


def interpolate_cell(cell: Path, alphas: list[float], batch_size: int | None) -> None:
    from afa_llm.io_utils import write_json

    path = cell / INTERPOLATION_FILE
    record = json.loads(path.read_text()) if path.exists() else {"alphas": {}}
    todo = [a for a in alphas if str(a) not in record["alphas"]]
    if not todo:
        return
    record["alphas"].update(scale_views(cell, todo, batch_size))
    write_json(path, record)
    if "1.0" in record["alphas"]:
        own = json.loads((cell / "results.json").read_text())["stress"]["adapter"]
        same = all(record["alphas"]["1.0"][v]["predictions"] == own[v]["predictions"] for v in VIEWS)
        print(f"{cell.name}: scale 1 {'reproduces' if same else 'does NOT reproduce'} the run's own clean and "
              f"anti predictions", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid")
    parser.add_argument("--variant", default="lora", help="the variant whose cells are interpolated")
    parser.add_argument("--alphas", type=float, nargs="+", default=list(DEFAULT_ALPHAS))
    parser.add_argument("--seeds", type=int, nargs="*", default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's eval_batch_size")
    parser.add_argument("--lock", default=None, help="flock this file around each cell")
    args = parser.parse_args()
    grid = load_grid(args.grid)
    for seed in args.seeds if args.seeds is not None else grid["seeds"]:
        cell = cell_dir(grid, args.variant, seed)
        if not (cell / "results.json").exists():
            print(f"{cell}: not finished here, skipped", flush=True)
            continue
        with maybe_locked(args.lock):
            interpolate_cell(cell, args.alphas, args.batch_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
