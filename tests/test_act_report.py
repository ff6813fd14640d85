"""eval/act_report.py: the ACT table from hand-made result files, with the paired test."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("act_report", ROOT / "eval" / "act_report.py")
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
    assert act_report.main([str(tmp_path / "act_results"), "--archive", str(tmp_path / "archive")]) == 0
    out = capsys.readouterr().out
    assert "| zs/draw0 | no ACT | - | - | 0.5000 |" in out
    assert ("| zs/draw0 | ACT, searched heads (faithful rule) | 3 | 0.7000 → 0.7500 (N=500) | 1.0000 | +0.5000 (p=0.00) | "
            "243 candidates, 120.5 fwd/ex, 30 min |") in out
    assert (tmp_path / "archive" / "zs" / "draw0" / "act.json").exists()
    assert act_report.main([str(tmp_path / "missing")]) == 2
