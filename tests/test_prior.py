"""afa_llm.evaluation.prior: the label-prior correction's math without a model, and `afa-llm eval --prior-from`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from afa_llm import cli
from afa_llm.errors import UserError
from afa_llm.evaluation.metrics import softmax
from afa_llm.evaluation.prior import (apply_correction, check_fit_report, fit_correction, fitted_offset,
                                     fitted_temperature, log_odds, mean_nll, prior_weights, tempered)


# ---- the math ------------------------------------------------------------------------------
def test_prior_weights_equalise_the_class_means():
    probs = np.array([[0.1, 0.9], [0.3, 0.7], [0.2, 0.8]])
    weighted = probs * prior_weights(probs)
    assert np.allclose(weighted.mean(0), [1.0, 1.0])


def test_fitted_offset_fixes_a_biased_threshold_and_prefers_no_shift_among_ties():
    labels = np.array([0, 0, 1, 1])
    assert fitted_offset(np.array([1.0, 2.0, 3.0, 4.0]), labels) == -2.5  # all say 1: the cut moves between 2 and 3
    assert fitted_offset(np.array([-1.0, -0.5, 0.5, 1.0]), labels) == 0.0  # already right: no shift
    margins = np.random.default_rng(0).normal(size=50) + 1.5  # the returned offset really reaches the best accuracy
    y = (np.random.default_rng(1).random(50) < 0.5).astype(int)
    b = fitted_offset(margins, y)
    best = max(((margins + c > 0) == y).mean() for c in np.linspace(-6, 6, 2001))
    assert ((margins + b > 0) == y).mean() == best


def test_normalize_gives_probabilities_with_equal_class_means_on_the_fitting_rows():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1.0, 3.0, 0.5], size=40)  # 3 classes, biased to class 1
    correction = fit_correction(probs, np.zeros(40, dtype=int), "normalize")
    corrected = apply_correction(probs, correction)
    assert np.allclose(corrected.sum(1), 1.0)
    weighted = probs * np.asarray(correction["weights"])
    assert np.allclose(weighted.mean(0), 1.0)
    assert np.array_equal(corrected.argmax(1), weighted.argmax(1))
    assert (corrected.argmax(1) != probs.argmax(1)).any()  # it moves decisions


def test_offset_shifts_the_log_odds_by_exactly_the_fitted_constant():
    probs = np.array([[0.3, 0.7], [0.2, 0.8], [0.45, 0.55], [0.1, 0.9]])
    labels = np.array([0, 1, 0, 1])
    correction = fit_correction(probs, labels, "offset")
    corrected = apply_correction(probs, correction)
    assert np.allclose(log_odds(corrected), log_odds(probs) + correction["offset"])
    assert np.allclose(corrected.sum(1), 1.0)
    assert (corrected.argmax(1) == labels).all()  # the two negatives were said positive before


def test_offset_needs_two_classes():
    with pytest.raises(UserError, match="two classes"):
        fit_correction(np.full((4, 3), 1 / 3), np.zeros(4, dtype=int), "offset")


def _sampled(temperature: float, n: int = 4000, classes: int = 3, seed: int = 0):
    """Logits z and labels drawn from softmax(z / temperature): softmax(z) is off by that temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, classes))
    truth = softmax(logits / temperature)
    labels = np.array([rng.choice(classes, p=row) for row in truth])
    return softmax(logits), labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.0])
def test_fitted_temperature_recovers_the_temperature_that_drew_the_labels(true_t):
    probs, labels = _sampled(true_t)
    assert fitted_temperature(probs, labels) == pytest.approx(true_t, rel=0.1)


def test_temperature_minimises_the_nll_and_keeps_every_prediction():
    probs, labels = _sampled(2.0, n=500, classes=2, seed=1)
    correction = fit_correction(probs, labels, "temperature")
    corrected = apply_correction(probs, correction)
    assert np.allclose(corrected.sum(1), 1.0)
    assert np.array_equal(corrected.argmax(1), probs.argmax(1))
    best = min(mean_nll(tempered(probs, t), labels) for t in np.exp(np.linspace(-4, 4, 801)))
    assert mean_nll(corrected, labels) <= best + 1e-6
    assert mean_nll(corrected, labels) < mean_nll(probs, labels) - 0.01  # the overconfident input really improves
    assert np.allclose(tempered(probs, 1.0), probs, atol=1e-9)


def test_a_report_of_another_scorer_or_of_the_same_rows_is_refused():
    scorer = {"model": "m", "adapter": "runs/a", "template": "T {text}", "data": "d", "split": "test", "split_seed": 0}
    check_fit_report({**scorer, "adapter": "runs/a/", "split": "validation"}, scorer, "v.json")  # same adapter
    with pytest.raises(UserError, match="template='U {text}'"):
        check_fit_report({**scorer, "template": "U {text}", "split": "validation"}, scorer, "v.json")
    with pytest.raises(UserError, match="same rows"):
        check_fit_report(dict(scorer), scorer, "v.json")


def test_every_scorer_field_must_match_so_a_new_field_is_checked_too():
    from afa_llm.specs import ScorerSpec

    scorer = ScorerSpec(adapter="runs/a").record(["negative", "positive"], data="d", split="test", split_seed=0)
    for key, other in (("length_normalize", True), ("head", "classifier"), ("dtype", "bf16")):
        with pytest.raises(UserError, match=f"{key}="):
            check_fit_report({**scorer, key: other, "split": "validation"}, scorer, "v.json")


# ---- afa-llm eval --prior-from ----------------------------------------------------------------
def _eval(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["eval", *args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _val_plain_corrected(capsys, data: str, model: str, tmp_path, method: str) -> tuple[dict, dict, dict, str]:
    """Eval reports of the validation split, the test split, and the test split corrected by ``method``
    fitted on the first; with what the corrected eval printed."""
    common = ["--model", model, "--data", data, "--batch-size", "4"]
    val, plain, corrected = (tmp_path / f"{n}.json" for n in ("val", "test", "corrected"))
    assert _eval(capsys, *common, "--split", "validation", "--output", str(val))[0] == 0
    assert _eval(capsys, *common, "--output", str(plain))[0] == 0
    code, out, err = _eval(capsys, *common, "--prior-from", str(val), "--prior-correction", method,
                           "--output", str(corrected))
    assert code == 0, err
    return (*(json.loads(p.read_text()) for p in (val, plain, corrected)), out)


def test_eval_applies_the_correction_fitted_on_a_validation_report(capsys, tiny_csv, tiny_model_dir, tmp_path):
    val_r, plain_r, corr_r, out = _val_plain_corrected(capsys, tiny_csv, tiny_model_dir, tmp_path, "normalize")
    weights = prior_weights(np.asarray(val_r["probabilities"]))
    expected = (np.asarray(plain_r["probabilities"]) * weights).argmax(1)
    assert corr_r["predictions"] == expected.tolist()
    assert corr_r["predictions"] != plain_r["predictions"]  # the tiny model is biased: the test can fail
    assert corr_r["accuracy"] == pytest.approx(np.mean(expected == np.asarray(plain_r["labels"])))
    record = corr_r["prior_correction"]
    assert record["correction"] == "normalize" and record["fitted_n"] == val_r["n"]
    assert record["fitted_on"]["split"] == "validation" and record["uncorrected"]["accuracy"] == plain_r["accuracy"]
    assert "label-prior correction, normalize (fitted on" in out


def test_eval_temperature_scaling_changes_confidence_not_predictions(capsys, tiny_csv, tiny_model_dir, tmp_path):
    val_r, plain_r, scaled_r, out = _val_plain_corrected(capsys, tiny_csv, tiny_model_dir, tmp_path, "temperature")
    t = fitted_temperature(np.asarray(val_r["probabilities"]), np.asarray(val_r["labels"]))
    assert abs(t - 1.0) > 1e-3  # the tiny model is not calibrated: scaling really moves the probabilities
    assert scaled_r["prior_correction"]["temperature"] == pytest.approx(t)
    assert np.allclose(scaled_r["probabilities"], tempered(np.asarray(plain_r["probabilities"]), t), atol=2e-6)
    assert scaled_r["predictions"] == plain_r["predictions"]
    assert scaled_r["prior_correction"]["uncorrected"]["ece"] == plain_r["ece"]
    assert "temperature scaling, T = " in out


@pytest.mark.parametrize("extra, needle", [
    (["--template", "Text: {text}\\nLabel:"], "template="),  # another prompt than the fitting report's
    (["--split", "validation"], "same rows"),  # fitted on the rows it would score
])
def test_eval_refuses_a_mismatched_fitting_report(capsys, tiny_csv, tiny_model_dir, tmp_path, extra, needle):
    common = ["--model", tiny_model_dir, "--data", tiny_csv, "--batch-size", "4"]
    val = tmp_path / "val.json"
    assert _eval(capsys, *common, "--split", "validation", "--output", str(val))[0] == 0
    code, out, err = _eval(capsys, *common, *extra, "--prior-from", str(val))
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and needle in err, err


def test_eval_prior_flags_bad_input_before_the_data_loads(capsys, tmp_path):
    """The data path does not exist: each error must name the prior flag, so it came first."""
    data = str(tmp_path / "no-such-data.csv")
    code, _, err = _eval(capsys, "--data", data, "--prior-correction", "offset")
    assert code == 2 and "needs --prior-from" in err
    code, _, err = _eval(capsys, "--data", data, "--prior-from", str(tmp_path / "missing.json"))
    assert code == 2 and "no such file" in err and len(err.splitlines()) == 1
    (tmp_path / "other.json").write_text(json.dumps({"accuracy": 0.5}))
    code, _, err = _eval(capsys, "--data", data, "--prior-from", str(tmp_path / "other.json"))
    assert code == 2 and "not an `afa-llm eval --output` report" in err
    (tmp_path / "three.json").write_text(json.dumps({"probabilities": [[0.2, 0.3, 0.5]], "labels": [2]}))
    code, _, err = _eval(capsys, "--data", data, "--prior-from", str(tmp_path / "three.json"),
                         "--prior-correction", "offset")
    assert code == 2 and "offset needs two classes" in err and len(err.splitlines()) == 1


def test_prior_command_corrects_a_stored_report_without_a_model(tmp_path, capsys):
    from afa_llm import deprecations

    deprecations._told.clear()  # the --method notice below is the first of this process

    def main(argv):
        return cli.main(["prior", *argv])

    def report(probs, labels, split):
        probs = np.asarray(probs)
        return {"probabilities": probs.tolist(), "labels": labels, "predictions": probs.argmax(1).tolist(),
                "accuracy": float((probs.argmax(1) == labels).mean()), "macro_f1": 0.0, "label_names": ["neg", "pos"],
                "model": "m", "data": "d", "split": split, "split_seed": 0}

    fit = report([[0.4, 0.6], [0.1, 0.9]] * 3, [0, 1] * 3, "validation")
    test = report([[0.45, 0.55], [0.2, 0.8]] * 2, [0, 1] * 2, "test")
    (tmp_path / "fit.json").write_text(json.dumps(fit))
    (tmp_path / "test.json").write_text(json.dumps(test))
    assert main([str(tmp_path / "fit.json"), str(tmp_path / "test.json"), "--correction", "offset"]) == 0
    out, err = capsys.readouterr()
    assert "accuracy 0.5000 -> 1.0000" in out and err == ""
    # --method, the old name, still works for one release, with one line on stderr
    assert main([str(tmp_path / "fit.json"), str(tmp_path / "test.json"), "--method", "temperature"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == ["deprecated: --method is now --correction; the old name works until the next release"]
    assert "accuracy 0.5000 -> 0.5000" in out and "(temperature scaling, T = " in out and "ECE n/a -> " in out
    assert main([str(tmp_path / "test.json"), str(tmp_path / "test.json")]) == 2  # fitted on the rows it scores
    err = capsys.readouterr().err
    assert "same rows" in err and err.startswith("error: afa-llm prior: ") and len(err.splitlines()) == 1
