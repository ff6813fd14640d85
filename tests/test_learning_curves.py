"""experiments/learning_curves.py: curves from finished and running cells, the seed band, and errors."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
spec = importlib.util.spec_from_file_location("learning_curves", ROOT / "experiments" / "learning_curves.py")
curves = importlib.util.module_from_spec(spec)
spec.loader.exec_module(curves)


def _grid(tmp_path: Path) -> Path:
    root = tmp_path / "cells"
    for seed, values in ((0, [0.6, 0.7, 0.8]), (1, [0.5, 0.8, 0.9])):  # finished cells
        cell = root / f"lora-seed{seed}"
        cell.mkdir(parents=True)
        history = [{"step": 10 * (i + 1), "accuracy": v, "loss": 1 - v} for i, v in enumerate(values)]
        (cell / "results.json").write_text(json.dumps({"validation": history}))
    running = root / "afa-seed0"  # a running cell: only metrics.jsonl, two validations so far
    running.mkdir()
    records = [{"step": 5, "loss_cls": 1.0}, {"step": 10, "val_accuracy": 0.65}, {"step": 20, "val_accuracy": 0.75}]
    (running / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    grid = tmp_path / "g.yaml"
    grid.write_text(f"recipe: r.yaml\noutput_root: {root}\nseeds: [0, 1]\nvariants:\n  lora: []\n  afa: []\n")
    return grid


def test_curves_and_band(tmp_path):
    grid = _grid(tmp_path)
    assert curves.validation_curve(tmp_path / "cells" / "afa-seed0") == [(10, 0.65), (20, 0.75)]
    steps, mean, low, high = curves.mean_band([[(10, 0.6), (20, 0.7)], [(10, 0.5), (20, 0.8), (30, 0.9)]])
    assert steps.tolist() == [10, 20]  # only the steps every seed reached
    np.testing.assert_allclose(mean, [0.55, 0.75])
    np.testing.assert_allclose(low, [0.5, 0.7]) and np.testing.assert_allclose(high, [0.6, 0.8])
    out = tmp_path / "curves.png"
    assert curves.main([str(grid), "--output", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_are_one_line(tmp_path, capsys):
    grid = _grid(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert curves.main([str(grid), "--output", str(blocker / "x.png")]) == 2
    empty = tmp_path / "empty.yaml"
    empty.write_text(f"recipe: r.yaml\noutput_root: {tmp_path / 'none'}\nseeds: [0]\nvariants:\n  lora: []\n")
    assert curves.main([str(empty), "--output", str(tmp_path / "e.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error:") for line in err)


@pytest.mark.parametrize("missing", ["results.json"])
def test_missing_cells_are_skipped(tmp_path, missing):
    grid = _grid(tmp_path)
    (tmp_path / "cells" / "lora-seed1" / missing).unlink()
    assert curves.main([str(grid), "--output", str(tmp_path / "c.png")]) == 0
