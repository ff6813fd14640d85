"""experiments/pick_setting.py: settings ranked per method on the whole validation split, cached per cell."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import yaml

from tiny_runs import make_run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
spec = importlib.util.spec_from_file_location("pick_setting", ROOT / "experiments" / "pick_setting.py")
pick = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pick)


def test_ranks_per_method_and_breaks_ties_on_loss():
    grid = {"variants": {"lora": ["method=lora"], "at_a": ["method=at", "adv_eps=1"],
                         "at_b": ["method=at", "adv_eps=3"], "vat_a": ["method=vat"]}}
    scores = {"lora": {"accuracy": 0.8, "loss": 0.5}, "at_a": {"accuracy": 0.82, "loss": 0.45},
              "at_b": {"accuracy": 0.82, "loss": 0.40}, "vat_a": {"accuracy": 0.7, "loss": 0.6}}
    scores = {k: dict(v, macro_f1=v["accuracy"], n=100) for k, v in scores.items()}
    rows = [line.split(" | ")[:2] for line in pick.ranking(grid, scores).splitlines()[2:]]
    assert rows == [["| lora", "lora (baseline)"], ["| at", "at_b **best**"], ["| at", "at_a"],
                    ["| vat", "vat_a"]]


def test_scores_the_validation_split_and_reuses_the_score(tmp_path, tiny_model_dir, learnable_csv, capsys):
    root = tmp_path / "cells"
    for variant, seed in (("lora", 0), ("at_x", 1)):
        make_run(root / f"{variant}-seed0", tiny_model_dir, data=learnable_csv, seed=seed, method="lora")
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({"recipe": "recipes/quickstart.yaml", "output_root": str(root),
                                         "seeds": [0], "variants": {"lora": ["method=lora"],
                                                                    "at_x": ["method=at"]}}, sort_keys=False))
    assert pick.main([str(grid_file)]) == 0
    first = capsys.readouterr().out
    score = json.loads((root / "lora-seed0" / pick.SCORE_FILE).read_text())
    from afa_llm.data.loading import load_classification_data

    assert score["n"] == len(load_classification_data(learnable_csv, split_seed=0).split("validation"))
    assert 0 <= score["accuracy"] <= 1 and score["loss"] > 0
    (root / "at_x-seed0" / pick.SCORE_FILE).write_text(json.dumps(dict(score, accuracy=1.0)))  # cached: not re-run
    assert pick.main([str(grid_file)]) == 0
    assert "| at | at_x | 1.0000 |" in capsys.readouterr().out and "| at | at_x | 1.0000 |" not in first


def test_a_cell_that_cannot_be_scored_is_one_line(tmp_path, capsys):
    cell = tmp_path / "cells" / "lora-seed0"
    cell.mkdir(parents=True)
    (cell / "results.json").write_text("{}")  # finished, but its adapter is gone
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({"recipe": "r.yaml", "output_root": str(tmp_path / "cells"), "seeds": [0],
                                         "variants": {"lora": ["method=lora"]}}))
    assert pick.main([str(grid_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "adapter" in err
