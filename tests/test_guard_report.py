"""experiments/guard_report.py: the anti view's halves, the interpolation frontier and the scale it is paired with."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module():
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location("guard_report", ROOT / "experiments" / "guard_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = _module()
LABELS = [0] * 10 + [1] * 10  # class 1 carries the cue


def view(right_neg: int, right_pos: int) -> dict:
    """A view whose first ``right_neg`` negatives and ``right_pos`` positives are right."""
    preds = [0 if i < right_neg else 1 for i in range(10)] + [1 if i < right_pos else 0 for i in range(10)]
    return {"predictions": preds, "labels": LABELS, "accuracy": float(np.mean(np.array(preds) == LABELS))}


def views(clean: tuple[int, int], anti: tuple[int, int]) -> dict:
    return {"clean": view(*clean), "anti": view(*anti)}


def test_the_anti_view_splits_into_its_cued_and_uncued_rows():
    metrics = report.cell_metrics(views((9, 8), (2, 10)), cue_class=1)
    assert metrics["anti_cued"] == pytest.approx(0.2)  # negatives, which carry the cue in the anti view
    assert metrics["anti_uncued"] == pytest.approx(1.0)
    assert metrics["anti"] == pytest.approx(0.6) and metrics["gap"] == pytest.approx(0.85 - 0.6)
    assert "aligned" not in metrics


def test_a_variant_is_paired_with_the_best_scale_at_least_as_clean():
    rows = {"lora": {0: views((9, 9), (1, 10))},                 # clean 0.90, anti 0.55
            "lora, scale 0.75": {0: views((9, 8), (4, 10))},     # clean 0.85, anti 0.70
            "lora, scale 0.5": {0: views((8, 7), (7, 9))},       # clean 0.75, anti 0.80
            "lora, scale 0.25": {0: views((7, 6), (7, 7))},      # clean 0.65, anti 0.70
            "guard_base": {0: views((9, 8), (8, 9))}}            # clean 0.85, anti 0.85
    assert report.best_scale_at_clean(rows, "guard_base", 1) == "lora, scale 0.75"
    rows["strict"] = {0: views((10, 10), (8, 9))}                # cleaner than every scale
    assert report.best_scale_at_clean(rows, "strict", 1) is None
    curve = report.frontier(rows, 1)
    assert [name for _, _, name in curve] == ["lora, scale 0.25", "lora, scale 0.5", "lora, scale 0.75", "lora"]
    assert report.above_frontier(0.85, 0.85, curve) == "+15.0 points"  # the frontier is at 0.70 there
    assert report.above_frontier(0.80, 0.75, curve) == "+0.0 points"   # halfway between 0.5 and 0.75
    assert report.above_frontier(0.95, 0.9, curve) == ("cleaner than every scale: +35.0 points over lora, more "
                                                       "accurate on both views than every scale")
    assert report.above_frontier(0.95, 0.6, curve) == "cleaner than every scale: +5.0 points over lora"
    assert report.above_frontier(0.60, 0.6, curve) == "less clean than every scale: -10.0 points over lora, scale 0.25"
    tests = "\n".join(report.tests_table(rows, 1))
    assert "| guard_base | lora, scale 0.75 | +0.0 (pooled p=1.000) | +15.0 (pooled p=" in tests
    assert "| strict | (no scale as clean) | - | - |" in tests


def test_a_variant_on_fewer_seeds_is_set_against_the_frontier_of_its_own_seeds():
    rows = {"lora": {0: views((9, 9), (1, 10)), 1: views((9, 9), (5, 10))},             # anti 0.55, 0.75
            "lora, scale 0.5": {0: views((8, 7), (7, 9)), 1: views((8, 7), (7, 9))},    # clean 0.75, anti 0.80
            "poe": {0: views((10, 10), (8, 9))}}                                          # seed 0 only
    assert report.frontier(rows, 1, {0})[-1][:2] == pytest.approx((0.90, 0.55))
    assert report.frontier(rows, 1)[-1][:2] == pytest.approx((0.90, 0.65))
    table = "\n".join(report.frontier_table(rows, 1))
    assert "| poe | 1.0000 | 0.8500 | cleaner than every scale: +30.0 points over lora" in table  # not +20.0


def test_the_flags_table_names_the_step_the_cue_was_first_flagged(tmp_path):
    cell = tmp_path / "guard_base-seed0"
    cell.mkdir()
    (cell / "results.json").write_text(json.dumps({"guard": {"top_hidden": [["fails to", 90, 50],
                                                                             ["winston", 40, 100]]}}))
    lines = report.flags_table({"guard_base": {0: cell}}, "Winston")
    assert lines[-1] == "| guard_base-seed0 | fails to (90, 50), winston (40, 100) | 100 |"


def test_the_results_blocks_are_replaced_between_their_markers():
    text = ("intro\n<!-- guard tables: experiments/guard_report.py -->\nold\n<!-- end guard tables -->\nafter\n")
    new = report.replace_block(text, "guard tables", ["## heading", "", "| a |", ""])
    assert new == ("intro\n<!-- guard tables: experiments/guard_report.py -->\n| a |\n<!-- end guard tables -->\n"
                   "after\n")
    with pytest.raises(SystemExit, match="no block"):
        report.replace_block(text, "guard pilot tables", ["x"])


def test_the_plots_add_only_the_pilots_own_variants():
    main = {"lora": {0: "m0"}, "guard_sticky": {1: "m1"}, "guard_sticky_random": {}}
    pilot = {"guard_sticky": {0: "p0", 1: "p1"}, "guard_sticky_ce": {0: "c0"}}
    # a pilot cell of a main-grid variant joins only through pilot_runs_of_main (its config checked)
    assert report.with_pilot(main, pilot) == {"lora": {0: "m0"}, "guard_sticky": {1: "m1"},
                                              "guard_sticky_random": {}, "guard_sticky_ce": {0: "c0"}}


def test_the_frontier_plot_gets_each_seeds_curve_and_every_variants_points(tmp_path):
    rows = {"lora, scale 0.0": {0: views((9, 9), (9, 9)), 1: views((8, 9), (9, 8))},
            "lora, scale 0.5": {0: views((9, 9), (5, 10)), 1: views((9, 9), (4, 10))},
            "lora": {0: views((10, 9), (0, 10)), 1: views((9, 10), (1, 10))},
            "guard_sticky": {0: views((9, 10), (7, 10))}}
    seed_curves, mean_curve, variants = report.frontier_points(rows, cue_class=1)
    assert seed_curves == [[(0.9, 0.9), (0.9, 0.75), (0.95, 0.5)], [(0.85, 0.85), (0.9, 0.7), (0.95, 0.55)]]
    assert np.allclose(mean_curve, [(0.875, 0.875), (0.9, 0.725), (0.95, 0.525)])
    assert variants == {"lora": [(0.95, 0.5), (0.95, 0.55)], "guard_sticky": [(0.95, 0.85)]}
    report.plot_frontier(seed_curves, mean_curve, variants, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_the_gap_plot_draws_only_cells_that_logged_the_gap(tmp_path):
    def cell(name: str, *records: dict) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return tmp_path / name

    old = cell("old", {"step": 50, "accuracy": 0.8})
    new = cell("new", {"step": 50, "val_gap": 0.3}, {"step": 100, "accuracy": 0.8}, {"step": 100, "val_gap": 0.1})
    lines = report.gap_lines({"lora": {0: old, 1: new}, "poe": {0: new}})
    assert lines == {"lora": [[], [(50, 0.3), (100, 0.1)]]}  # poe is not one of the gap plot's variants
    assert not report.plot_gap_steps({"lora": [[]]}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    assert report.plot_gap_steps(lines, tmp_path / "gap.png") and (tmp_path / "gap.png").exists()


def test_a_pilot_cell_counts_as_the_main_grids_only_where_its_config_is_the_cells(tmp_path):
    def cell(name: str, **changes) -> Path:
        import yaml

        grid = report.load_grid(str(report.GRIDS / "rt_guard.yaml"))
        config = report.cell_config(grid, "guard_sticky", 0, "lora")[0].to_dict()
        path = tmp_path / name
        path.mkdir()
        (path / "config.yaml").write_text(yaml.safe_dump({**config, "output_dir": f"elsewhere/{name}", **changes}))
        return path

    same, other_loss = cell("same"), cell("ce", guard_loss="ce")
    filled = report.pilot_runs_of_main({"lora": {}, "guard_sticky": {}},
                                       {"guard_sticky": {0: same, 2: other_loss}, "guard_sticky_ce": {0: other_loss}})
    assert filled == {"lora": {}, "guard_sticky": {0: same}}  # seed 2's config says seed 0 and the CE loss
    filled = report.pilot_runs_of_main({"guard_sticky": {}}, {"guard_sticky": {0: other_loss}})
    assert filled == {"guard_sticky": {}}
