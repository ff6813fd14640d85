"""experiments/act_prior_control.py: ACT paired with the label-prior corrections (afa_llm.evaluation.prior), without a model."""

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("act_prior_control", ROOT / "experiments" / "act_prior_control.py")
prior = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prior)


def _report(probs, labels):
    probs = np.asarray(probs)
    return {"probabilities": probs.tolist(), "labels": labels, "predictions": probs.argmax(1).tolist(), "split": "validation"}


def test_table_row_pairs_the_corrections_with_act(tmp_path, capsys):
    # the model says "1" too often: on validation everything leans to class 1
    val_labels = [0, 1] * 4
    validation = _report([[0.4, 0.6] if y == 0 else [0.1, 0.9] for y in val_labels], val_labels)
    (tmp_path / "validation.json").write_text(json.dumps(validation))
    folder = tmp_path / "draw0"
    folder.mkdir()
    test_labels = [0, 1] * 5
    (folder / "test.json").write_text(json.dumps(_report([[0.45, 0.55] if y == 0 else [0.2, 0.8] for y in test_labels],
                                                         test_labels)))
    (folder / "test-act.json").write_text(json.dumps({"predictions": test_labels}))
    (folder / "act.json").write_text(json.dumps({"calibration": {"ids": [0, 1, 2, 3, 4, 5], "split": "validation", "of": 8}}))
    assert prior.main([str(tmp_path / "validation.json"), str(folder)]) == 0
    out = capsys.readouterr().out
    # no correction: 5 of 10; both corrections separate the classes, as ACT does (no discordant pairs: p = 1)
    assert "| draw0 | faithful | 1.0000 | 0.5000: ACT +0.5000 (p=0.06) | 1.0000: ACT +0.0000 (p=1.00) | 1.0000: ACT +0.0000 (p=1.00) |" in out
    assert "strict" not in out  # no strict row was evaluated


def test_calibration_ids_of_another_split_are_refused(tmp_path, capsys):
    (tmp_path / "validation.json").write_text(json.dumps(_report([[0.5, 0.5]] * 4, [0, 1, 0, 1])))
    folder = tmp_path / "draw0"
    folder.mkdir()
    (folder / "act.json").write_text(json.dumps({"calibration": {"ids": [0], "split": "validation", "of": 852}}))
    (folder / "test.json").write_text(json.dumps(_report([[0.5, 0.5]], [0])))
    assert prior.main([str(tmp_path / "validation.json"), str(folder)]) == 2
    assert "another split" in capsys.readouterr().err
