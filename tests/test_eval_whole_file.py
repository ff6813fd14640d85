"""`afa-llm eval --split all` (whole-file evaluation), the scored-rows record, calibration in the report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from afa_llm import cli
from afa_llm.data.loading import load_classification_data
from afa_llm.evaluation.metrics import brier_score, expected_calibration_error
from conftest import TINY_ROWS

FOUR = [("a fine film", 1), ("a dull film", 0), ("a fine film", 1), ("truly awful", 0)]  # one duplicate text


def run_eval(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["eval", *args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_split_all_keeps_every_row_in_file_order(make_csv):
    data = load_classification_data(make_csv(FOUR))
    rows = data.split("all")
    assert list(zip(rows["text"], rows["label"])) == FOUR  # duplicates kept, unlike the seeded splits
    assert sum(len(data.split(s)) for s in ("train", "validation", "test")) == 3


def test_too_small_file_suggests_split_all(capsys, make_csv, tiny_model_dir):
    code, out, err = run_eval(capsys, "--model", tiny_model_dir, "--data", make_csv(FOUR))
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert "the seeded test split is empty: 4 rows are too few" in err and "--split all" in err


def test_eval_split_all_scores_the_whole_file(capsys, make_csv, tiny_model_dir, tmp_path):
    path = make_csv(FOUR)
    report_file, plot = tmp_path / "r.json", tmp_path / "plots" / "reliability.png"
    code, out, err = run_eval(capsys, "--model", tiny_model_dir, "--data", path, "--split", "all",
                              "--output", str(report_file), "--reliability-plot", str(plot))
    assert code == 0, err
    report = json.loads(report_file.read_text())
    assert report["n"] == 4 and report["labels"] == [y for _, y in FOUR]
    assert report["scored"] == {"rows": "all rows", "n": 4, "of": 4, "limit": None}
    assert "scored 4 of 4 rows: all rows" in out
    probs = np.asarray(report["probabilities"])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert report["predictions"] == probs.argmax(1).tolist()
    assert probs[0] == pytest.approx(probs[2])  # the duplicate row is scored again, identically
    assert report["ece"] == pytest.approx(expected_calibration_error(probs, report["labels"]), abs=1e-5)
    assert report["brier"] == pytest.approx(brier_score(probs, report["labels"]), abs=1e-5)
    assert f"ece={report['ece']:.4f}  brier={report['brier']:.4f}" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in plot.parent.iterdir()) == ["reliability.png"]


def test_default_eval_says_it_scored_the_seeded_test_slice(capsys, tiny_csv, tiny_model_dir, tmp_path):
    code, out, err = run_eval(capsys, "--model", tiny_model_dir, "--data", tiny_csv, "--limit", "5",
                              "--output", str(tmp_path / "r.json"))
    assert code == 0, err
    scored = json.loads((tmp_path / "r.json").read_text())["scored"]
    assert scored == {"rows": "the seeded test split (split seed 0), the first 5 (--limit)", "n": 5,
                      "of": len(TINY_ROWS), "limit": 5}
    assert f"scored 5 of {len(TINY_ROWS)} rows: the seeded test split (split seed 0)" in out


@pytest.mark.parametrize("args, needle", [
    (["--split", "all", "--shots", "2"], "--shots draws demonstrations from the train split"),
    (["--reliability-plot", "plot.gif"], "--reliability-plot must end in .png, .pdf, .svg"),
    (["--focus-n", "-1"], "--focus-n and --faithfulness-n must be 0 (skip) or a positive number"),
    (["--lexicon-threshold", "5"], "--lexicon-threshold must be in [0, 4]"),
])
def test_eval_option_errors(capsys, tiny_csv, args, needle):
    code, out, err = run_eval(capsys, "--data", tiny_csv, *args)
    assert code == 2 and needle in err and err.count("\n") == 1
