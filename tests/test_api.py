"""The Python API (`afa_llm.api`): `import afa_llm` stays light, `load` predicts what `afa-llm predict`
writes, `evaluate` reports what `afa-llm eval` writes, `adapter_scale` moves between the base and the
adapter, and `train` takes the recipe's keys with the CLI's validation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import afa_llm
from afa_llm import api, cli
from afa_llm.config import load_config
from afa_llm.errors import UserError
from afa_llm.model.adapters import scale_adapter
from test_predict import NAMES, TEMPLATE, TEXTS, WORDS, input_frame, read_preds, tiny_run  # noqa: F401 (a fixture)
from test_train import tiny_overrides


def test_import_afa_llm_loads_no_torch():
    code = ("import sys, afa_llm; assert 'torch' not in sys.modules, 'import'; "
            "train, load = afa_llm.train, afa_llm.load; assert 'torch' not in sys.modules, 'names'; "
            "import afa_llm.api as api; assert train is api.train and load is api.load and afa_llm.Run is api.Run")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        afa_llm.nope  # noqa: B018
    assert {"train", "load", "Run", "Classifier"} <= set(dir(afa_llm))


@pytest.fixture(scope="module")
def classifier(tiny_run) -> api.Classifier:
    return afa_llm.load(tiny_run)


def test_predictions_equal_afa_llm_predict(capsys, monkeypatch, tiny_run, classifier, tmp_path):
    """The same texts through the CLI and the API: the same labels, the same probabilities, one function."""
    from afa_llm.inference import predict

    calls = []
    shared = predict.predict_texts
    monkeypatch.setattr(predict, "predict_texts", lambda *a, **k: calls.append(1) or shared(*a, **k))
    source, output = tmp_path / "in.csv", tmp_path / "out.csv"
    input_frame().to_csv(source, index=False)
    assert cli.main(["predict", "--adapter", str(tiny_run), "--data", str(source), "--output", str(output),
                     "--no-progress"]) == 0
    frame = read_preds(output)
    assert len(calls) == 1
    labels, probs = classifier.predict(TEXTS), classifier.predict_proba(TEXTS)
    assert len(calls) == 3
    assert classifier.classes == NAMES
    assert labels == frame["predicted_label"].tolist()
    assert {label for label in labels if label} <= set(NAMES)  # the run's class names, not the defaults
    np.testing.assert_allclose(probs, frame[[f"prob_{name}" for name in NAMES]].to_numpy(float), atol=1e-6)
    empty = [not text.strip() for text in TEXTS]
    assert np.isnan(probs[empty]).all() and not np.isnan(probs[~np.asarray(empty)]).any()


def test_predict_takes_a_list_not_one_string(classifier):
    with pytest.raises(UserError, match=r"\[text\]"):
        classifier.predict("one review")
    with pytest.raises(UserError, match="batch_size"):
        classifier.predict(["one review"], batch_size=0)


def test_evaluate_is_the_eval_report(capsys, tiny_run, classifier, tiny_csv, tmp_path):
    output = tmp_path / "eval.json"
    assert cli.main(["eval", "--adapter", str(tiny_run), "--data", tiny_csv, "--split", "all", "--focus-n", "4",
                     "--output", str(output), "--no-progress"]) == 0
    expected = json.loads(output.read_text())
    report = classifier.evaluate(data=tiny_csv, split="all", focus_n=4)
    for key in ("accuracy", "macro_f1", "n", "label_names", "label_words", "template", "predictions", "scored"):
        assert report[key] == expected[key], key
    np.testing.assert_allclose(report["probabilities"], expected["probabilities"], atol=1e-6)
    assert report["focus_metrics"].keys() == expected["focus_metrics"].keys()
    assert report["template"] == TEMPLATE  # the run's prompt, not the eval default


@pytest.mark.parametrize("kwargs, needle", [({"split": "dev"}, "split"), ({"limit": 0}, "limit"),
                                            ({"text_colum": "body"}, "text_colum")])
def test_evaluate_rejects_bad_options(classifier, tiny_csv, kwargs, needle):
    with pytest.raises(UserError, match=needle):
        classifier.evaluate(data=tiny_csv, **kwargs)


def test_adapter_scale_moves_from_the_base_to_the_adapter(tiny_run, tiny_model_dir, classifier):
    texts = [t for t in TEXTS if t.strip()]
    # the base with the run's prompt: what the adapter scaled to 0 must give
    base = afa_llm.load(tiny_model_dir, template=TEMPLATE, label_words=WORDS, max_text_tokens=5)
    assert base.classes == NAMES
    base_probs, adapter_probs = base.predict_proba(texts), classifier.predict_proba(texts)
    assert np.abs(base_probs - adapter_probs).max() > 1e-3  # the adapter changes the scores
    off = afa_llm.load(tiny_run, adapter_scale=0.0)
    np.testing.assert_allclose(off.predict_proba(texts), base_probs, atol=1e-6)
    half = afa_llm.load(tiny_run, adapter_scale=0.5)
    half_probs = half.predict_proba(texts)
    assert np.abs(half_probs - base_probs).max() > 1e-4 and np.abs(half_probs - adapter_probs).max() > 1e-4
    scale_adapter(half.model, 1.0)  # sets the scale (does not compound): back to the adapter as trained
    np.testing.assert_allclose(half.predict_proba(texts), adapter_probs, atol=1e-6)
    assert "adapter_scale=0.5" in repr(half)


@pytest.mark.parametrize("scale", [1.5, -0.1, True, "0.5"])
def test_adapter_scale_outside_0_1_is_refused(monkeypatch, tiny_run, scale):
    import afa_llm.model.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the weights loaded"))
    with pytest.raises(UserError, match="adapter_scale"):
        afa_llm.load(tiny_run, adapter_scale=scale)


def test_adapter_scale_needs_an_adapter(tiny_model_dir):
    with pytest.raises(UserError, match="adapter_scale"):
        afa_llm.load(tiny_model_dir, adapter_scale=0.5)


def test_load_rejects_unknown_options_and_a_base_for_a_model(tiny_run, tiny_model_dir):
    with pytest.raises(UserError, match="templat"):
        afa_llm.load(tiny_run, templat="{text}")
    with pytest.raises(UserError, match="model="):
        afa_llm.load(tiny_model_dir, model=tiny_model_dir)


def test_python_values_validate_like_overrides():
    from_cli = load_config(None, ["steps=7", "lora_target_modules=[q_proj, v_proj]", "afa.num_masks=3"])
    from_api = load_config(None, values={"steps": 7, "lora_target_modules": ["q_proj", "v_proj"],
                                         "afa": {"num_masks": 3}})
    assert from_api.to_dict() == from_cli.to_dict()
    assert load_config(None, values={"method": "afa", "afa.num_masks": 3}).method_config.num_masks == 3
    for values, needle in [({"stepz": 3}, "stepz"), ({"steps": "many"}, "steps"), ({"steps": 0}, "steps"),
                           ({"afa": {"num_maskz": 2}}, "afa.num_maskz")]:
        with pytest.raises(UserError, match=needle):
            load_config(None, values=values)


def test_train_returns_the_run_and_its_classifier(tiny_model_dir, learnable_csv, tmp_path):
    keys = dict(item.split("=", 1) for item in tiny_overrides(tmp_path / "run", tiny_model_dir, learnable_csv))
    run = afa_llm.train(**keys, method="lora", head="classifier", steps=2, eval_every=0, evaluate_zero_shot=False)
    assert run.path == tmp_path / "run" and run.config.steps == 2 and run.config.head == "classifier"
    assert run.results == json.loads((run.path / "results.json").read_text())
    assert api.Run.from_folder(run.path).config.to_dict() == run.config.to_dict()
    clf = run.classifier()
    assert clf.config.to_dict() == run.config.to_dict()
    assert clf.classes == run.results["label_names"]
    assert set(clf.predict(["the movie was good today", "i found it bad"])) <= set(clf.classes)
    report = clf.evaluate(limit=8, focus_n=0)  # the run's own data and test rows, as `afa-llm eval --adapter RUN`
    assert (report["data"], report["split"], report["head"]) == (learnable_csv, "test", "classifier")
    assert report["accuracy"] == run.results["test"]["accuracy"]


def test_train_refuses_a_bad_key_before_training(tmp_path):
    with pytest.raises(UserError, match="stepz"):
        afa_llm.train(output_dir=str(tmp_path / "run"), stepz=3)
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="not a training run"):
        api.Run.from_folder(tmp_path)
