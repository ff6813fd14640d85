"""experiments/act_report.py: the ACT table from hand-made result files, with the paired test."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("act_report", ROOT / "experiments" / "act_report.py")
act_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(act_report)


def _report(preds, labels):
    return {"accuracy": sum(p == y for p, y in zip(preds, labels)) / len(labels), "predictions": preds,
            "labels": labels}


def test_table_rows_and_mcnemar(tmp_path, capsys):
    folder = tmp_path / "act_results" / "zs" / "draw0"
    folder.mkdir(parents=True)
    labels = [0, 1] * 10
    (folder / "test.json").write_text(json.dumps(_report([0] * 20, labels)))  # 0.5
    (folder / "test-act.json").write_text(json.dumps(_report(labels, labels)))  # 1.0: 10 discordant, all for ACT
    act = {"heads": {"3": [1, 2], "5": [0]}, "calibration": {"n": 500},
           "info": {"baseline": {"accuracy": 0.7}, "selected": {"accuracy": 0.75}, "candidates": 243,
                    "forwards_per_example": 120.5, "seconds": 1800}}
    (folder / "act.json").write_text(json.dumps(act))
    (folder / "search.jsonl").write_text('{"layer": 3, "head": 1}\n')  # the search log: archived so a row resumes
    assert act_report.main([str(tmp_path / "act_results"), "--archive", str(tmp_path / "archive")]) == 0
    out = capsys.readouterr().out
    assert "| zs/draw0 | no ACT | - | - | 0.5000 |" in out
    assert ("| zs/draw0 | ACT, searched heads (faithful rule) | 3 | 0.7000 → 0.7500 (N=500) | 1.0000 | +0.5000 (p=0.00) | "
            "243 candidates, 120.5 fwd/ex, 30 min |") in out
    assert (tmp_path / "archive" / "zs" / "draw0" / "act.json").exists()
    assert (tmp_path / "archive" / "zs" / "draw0" / "search.jsonl").read_text() == '{"layer": 3, "head": 1}\n'
    assert act_report.main([str(tmp_path / "missing")]) == 2


def test_groups_of_draws_get_their_mean(tmp_path, capsys):
    labels = [0, 1] * 10
    for draw, right in enumerate((12, 16)):  # ACT right on 12 and 16 of 20; 10 without
        folder = tmp_path / "act_results" / "zs" / f"draw{draw}"
        folder.mkdir(parents=True)
        (folder / "test.json").write_text(json.dumps(_report([0] * 20, labels)))
        preds = labels[:right] + [1 - y for y in labels[right:]]
        (folder / "test-act.json").write_text(json.dumps(_report(preds, labels)))
        (folder / "act.json").write_text(json.dumps({"heads": {"3": [1]}, "calibration": {"n": 500},
                                                     "info": {"baseline": {"accuracy": 0.7}, "selected":
                                                              {"accuracy": 0.8}, "forwards_per_example": 1,
                                                              "seconds": 60}}))
    single = tmp_path / "act_results" / "lora-seed0"  # a group of one gets no summary line
    single.mkdir()
    (single / "test.json").write_text(json.dumps(_report([0] * 20, labels)))
    assert act_report.main([str(tmp_path / "act_results")]) == 0
    out = capsys.readouterr().out
    # pooled over the draws, per example: 6 gained in both (d = 1), 2 in one (0.5), 2 lost in one (-0.5), 2 in
    # both (-1); sign flips of those 12 reach |sum| >= 4 about a quarter of the time
    assert "| zs | ACT, searched heads (faithful rule) | 2 | +0.2000 ± 0.1414 | 0.248 | +0.1000, +0.3000 |" in out
    assert "| lora-seed0 |" in out and not any(line.startswith("| . |") for line in out.splitlines())


def test_searched_heads_are_paired_with_their_controls(tmp_path, capsys):
    folder = tmp_path / "act_results" / "gemma"
    folder.mkdir(parents=True)
    labels = [0, 1] * 10
    (folder / "test.json").write_text(json.dumps(_report([0] * 20, labels)))
    (folder / "test-act.json").write_text(json.dumps(_report(labels, labels)))  # right on all 20
    (folder / "test-act-all.json").write_text(json.dumps(_report(labels[:16] + [1, 0, 1, 0], labels)))  # 16
    (folder / "test-act-random-1.json").write_text(json.dumps(_report(labels, labels)))  # equal to the search
    assert act_report.main([str(tmp_path / "act_results")]) == 0
    out = capsys.readouterr().out
    # 4 discordant pairs, all for the search: exact two-sided p = 2 * 0.5**4 = 0.125
    assert "| gemma | faithful | +0.2000 (p=0.12) | - | +0.0000 (p=1.00) | - |" in out
    assert "| gemma | strict |" not in out  # no strict row was evaluated


def test_search_cost_adds_the_earlier_runs():
    info = {"candidates": 243, "forwards_per_example": 97.2, "seconds": 600}
    assert act_report.search_cost(info) == "243 candidates, 97.2 fwd/ex, 10 min"
    resumed = {**info, "resumed_candidates": 200, "resumed_seconds": 2400}
    assert act_report.search_cost(resumed) == "243 candidates, 97.2 fwd/ex, 50 min (200 candidates scored by an earlier run)"
    unlogged = {**resumed, "resumed_seconds": 0, "resumed_without_cost": 200}
    assert act_report.search_cost(unlogged).endswith("10 min (200 candidates scored by an earlier run, the time of "
                                                     "200 of them not counted)")
    old_file = {**info, "resumed_candidates": 4}  # from before the log kept the cost: no resumed_seconds
    assert act_report.search_cost(old_file).endswith("(4 candidates scored by an earlier run, the time of 4 of them "
                                                     "not counted)")
