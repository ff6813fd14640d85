"""``--adapter-scale ALPHA`` (WiSE-FT weight interpolation): at 0 the scores are the base's, at 1 the
adapter's; a folder merged at ALPHA scores as the adapter loaded at ALPHA; a classifier head is not
scaled; every report records the scale; bad values are one-line errors before any model loads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import afa_llm
from afa_llm import cli
from afa_llm.config import load_config
from afa_llm.errors import UserError
from afa_llm.model.adapters import load_scorer
from afa_llm.model.scoring import class_logits
from afa_llm.runs import MERGE_INFO
from afa_llm.specs import ScorerSpec
from tiny_runs import make_run

NAMES = ["negative", "positive"]
TEXTS = ["a warm, funny and moving film", "a dull and lifeless mess", "I loved every minute of it",
         "clumsy writing and flat jokes", "the worst movie of the year", "charming and beautifully shot"]
QUIET = ["--no-progress", "--focus-n", "0", "--faithfulness-n", "0"]


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "run", tiny_model_dir)


def _eval(capsys, output: Path, *args: str) -> dict:
    code = cli.main(["eval", *args, *QUIET, "--output", str(output)])
    assert code == 0, capsys.readouterr().err
    return json.loads(output.read_text())


def _logits(spec: ScorerSpec) -> torch.Tensor:
    model, task = load_scorer(spec, NAMES, progress=False)
    with torch.no_grad():
        return class_logits(model.eval(), task.encode(TEXTS), task.head)


def test_eval_at_0_scores_as_the_base_and_at_1_as_the_adapter(run, tiny_model_dir, tiny_csv, tmp_path, capsys):
    cfg = load_config(str(run / "config.yaml"))
    run_prompt = ["--template", cfg.template.replace("\n", "\\n"), "--max-text-tokens", str(cfg.max_text_tokens),
                  "--truncation", cfg.truncation]
    data = ["--data", tiny_csv, "--split", "all"]
    base = _eval(capsys, tmp_path / "base.json", "--model", tiny_model_dir, *run_prompt, *data)
    adapter = _eval(capsys, tmp_path / "adapter.json", "--adapter", str(run), *data)
    reports = {alpha: _eval(capsys, tmp_path / f"{alpha}.json", "--adapter", str(run), "--adapter-scale", alpha, *data)
               for alpha in ("0", "0.5", "1")}
    probs = {name: np.asarray(r["probabilities"]) for name, r in
             (("base", base), ("adapter", adapter), *((alpha, r) for alpha, r in reports.items()))}
    assert np.abs(probs["base"] - probs["adapter"]).max() > 1e-3  # the adapter changes the scores
    assert reports["0"]["predictions"] == base["predictions"]
    np.testing.assert_allclose(probs["0"], probs["base"], atol=1e-6)
    assert reports["1"]["predictions"] == adapter["predictions"]
    np.testing.assert_allclose(probs["1"], probs["adapter"], atol=1e-6)
    assert min(np.abs(probs["0.5"] - probs[other]).max() for other in ("base", "adapter")) > 1e-4  # in between
    assert [r["adapter_scale"] for r in (base, adapter, *reports.values())] == [1.0, 1.0, 0.0, 0.5, 1.0]
    assert "(adapter scale 0.5: WiSE-FT" in capsys.readouterr().out


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_a_folder_merged_at_alpha_scores_as_the_adapter_at_alpha(run, tiny_model_dir, tmp_path, capsys, alpha):
    out = tmp_path / "merged"
    assert cli.main(["merge", "--adapter", str(run), "--output", str(out), "--adapter-scale", str(alpha)]) == 0
    assert f"adapter scale {alpha}" in capsys.readouterr().out
    assert json.loads((out / MERGE_INFO).read_text())["adapter_scale"] == alpha
    card = (out / "README.md").read_text()
    assert f"| adapter scale | {alpha} (WiSE-FT" in card and "at scale 1, not this folder's" not in card  # no metrics
    expected = _logits(ScorerSpec(model=tiny_model_dir, adapter=str(run), adapter_scale=alpha))
    assert (expected - _logits(ScorerSpec(model=tiny_model_dir, adapter=str(run)))).abs().max() > 1e-3
    torch.testing.assert_close(_logits(ScorerSpec(model=str(out))), expected, atol=1e-5, rtol=0)


def test_a_classifier_head_is_merged_as_trained_at_every_scale(tiny_model_dir, learnable_csv, tmp_path, capsys):
    """At 0 the LoRA update is gone but the trained ``score`` stays: the merged folder is the base's weights
    with the trained head, and scores as the classifier adapter loaded at 0."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from test_heads import _train_classifier

    run, out = tmp_path / "run", tmp_path / "merged"
    _train_classifier(run, tiny_model_dir, learnable_csv, "method=lora")
    assert cli.main(["merge", "--adapter", str(run), "--output", str(out), "--adapter-scale", "0"]) == 0
    merged = AutoModelForSequenceClassification.from_pretrained(out)
    trained = next(v for k, v in load_file(run / "adapter" / "adapter_model.safetensors").items()
                   if k.endswith("score.weight"))
    assert torch.equal(merged.score.weight, trained)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).model.state_dict()
    body = merged.model.state_dict()
    assert base.keys() == body.keys() and all(torch.equal(body[key], base[key]) for key in base)
    spec = ScorerSpec(model=tiny_model_dir, adapter=str(run), head="classifier", max_text_tokens=32)
    at_zero = _logits(replace(spec, adapter_scale=0.0))
    assert (at_zero - _logits(spec)).abs().max() > 1e-4  # the LoRA update did change the scores
    merged_spec = ScorerSpec(model=str(out), head="classifier", max_text_tokens=32)
    torch.testing.assert_close(_logits(merged_spec), at_zero, atol=1e-5, rtol=0)


def test_predict_stress_and_audit_take_and_record_the_scale(run, tiny_csv, tmp_path, capsys):
    source, output = tmp_path / "in.csv", tmp_path / "out.csv"
    source.write_text("text\n" + "\n".join(f'"{t}"' for t in TEXTS) + "\n")
    assert cli.main(["predict", "--adapter", str(run), "--adapter-scale", "0.5", "--data", str(source),
                     "--output", str(output), "--no-progress"]) == 0
    import pandas as pd

    written = pd.read_csv(output)[[f"prob_{name}" for name in NAMES]].to_numpy(float)
    np.testing.assert_allclose(written, afa_llm.load(run, adapter_scale=0.5).predict_proba(TEXTS), atol=1e-6)
    data = ["--adapter", str(run), "--adapter-scale", "0.5", "--data", tiny_csv, "--no-progress"]
    assert cli.main(["stress", *data, "--cue", "Bob", "--cue-label", "positive", "--split", "all",
                     "--output", str(tmp_path / "stress.json")]) == 0
    assert cli.main(["audit", *data, "--split", "all", "--min-count", "2", "--max-candidates", "3", "--sample", "2",
                     "--output", str(tmp_path / "audit.json")]) == 0
    for name in ("stress", "audit"):
        assert json.loads((tmp_path / f"{name}.json").read_text())["adapter_scale"] == 0.5, name
    capsys.readouterr()


def _one_line_error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:  # argparse's own (one line: cli.OneLineErrorParser)
        raise SystemExit(cli.main(argv))
    err = capsys.readouterr().err
    assert exited.value.code == 2 and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("command", ["eval", "predict", "stress", "audit", "merge"])
@pytest.mark.parametrize("value", ["-0.1", "1.5", "half", "nan"])
def test_a_scale_outside_0_1_is_refused_by_every_command(capsys, command, value):
    err = _one_line_error(capsys, [command, "--adapter-scale", value])
    assert "--adapter-scale" in err and "[0, 1]" in err


@pytest.mark.parametrize("argv", [["eval"], ["stress", "--cue", "Bob"], ["audit"], ["predict", "--data", "in.csv"]])
def test_a_scale_without_an_adapter_is_refused_before_any_model_loads(monkeypatch, capsys, tiny_model_dir, argv):
    import afa_llm.model.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the weights loaded"))
    err = _one_line_error(capsys, [*argv, "--model", tiny_model_dir, "--adapter-scale", "0.5"])
    assert "adapter_scale (--adapter-scale)" in err and "has none" in err


def test_the_scale_is_a_scoring_choice_not_a_training_key(run):
    with pytest.raises(UserError, match="adapter_scale"):
        load_config(None, values={"adapter_scale": 0.5})
    from afa_llm.runs import resolve_scorer

    assert resolve_scorer(str(run), None).scorer.adapter_scale == 1.0  # never read from the run


def test_an_act_calibration_fits_one_scale(run, tiny_model_dir):
    from afa_llm.act.calibration import ACTConfig, check_fingerprint, model_fingerprint
    from afa_llm.model.adapters import scale_adapter

    model, _ = load_scorer(ScorerSpec(model=tiny_model_dir, adapter=str(run)), NAMES, progress=False)
    act = ACTConfig(heads={0: [0]}, fingerprint=model_fingerprint(model))
    assert "adapter_scale" not in act.fingerprint  # calibrations made before the scale existed stay valid
    scale_adapter(model, 0.5)
    with pytest.raises(UserError, match="at adapter_scale 1.0, this model scales it by 0.5"):
        check_fingerprint(act, model)
    check_fingerprint(ACTConfig(heads={0: [0]}, fingerprint=model_fingerprint(model)), model)


def test_leaderboard_entries_take_the_scale(run, tiny_model_dir, tmp_path):
    import yaml

    from afa_llm.reports.leaderboard import build_jobs, cache_key, read_config

    config = tmp_path / "board.yaml"
    entries = [{"name": "full", "run": str(run), "data": "d.csv"},
               {"name": "half", "run": str(run), "data": "d.csv", "adapter_scale": 0.5}]
    config.write_text(yaml.safe_dump({"entries": entries}))
    full, half = build_jobs(read_config(str(config)), str(config), None)
    assert (full.scorer.adapter_scale, half.scorer.adapter_scale) == (1.0, 0.5)
    assert "adapter_scale" not in cache_key(full) and cache_key(half)["adapter_scale"] == 0.5
    refusals = [({"run": str(run), "adapter_scale": 2}, "entry x: adapter_scale must be a number in [0, 1]"),
                ({"model": tiny_model_dir, "adapter_scale": 0.5}, "entry x: adapter_scale (--adapter-scale)")]
    for source, needle in refusals:
        config.write_text(yaml.safe_dump({"entries": [{"name": "x", "data": "d.csv", **source}]}))
        with pytest.raises(UserError) as refused:
            build_jobs(read_config(str(config)), str(config), None)
        assert needle in str(refused.value)
