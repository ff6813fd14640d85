"""experiments/trl_baseline.py: TRL's SFTTrainer as the ecosystem's LoRA baseline, on the tiny model.

- the rows are our prompt tokens plus the label word, in the LoRA loop's exact order;
- the first logged loss is the label word's cross-entropy over the vocabulary on the LoRA
  loop's first batch (so: completion-only loss, our tokens, our data order);
- the run folder reads like any run: results.json (method trl_sft, validation history),
  config.yaml, an adapter that PeftModel loads; a bad key is one line and exit 2.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from afa_llm.config import load_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
spec = importlib.util.spec_from_file_location("trl_baseline", ROOT / "experiments" / "trl_baseline.py")
trl_baseline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(trl_baseline)


def _cfg(tmp_path, model_dir, data, *extra):
    return load_config(None, [f"output_dir={tmp_path / 'trl'}", f"model={model_dir}", f"data={data}",
                              "quantization=none", "method=lora", "steps=4", "batch_size=4", "max_text_tokens=32",
                              "eval_every=2", "eval_limit=8", "test_limit=8", "focus_eval_limit=8",
                              "evaluate_zero_shot=false", "progress=false", "report_to=none", *extra])


def _task(cfg, tiny_model):
    from afa_llm.data.loading import load_classification_data
    from afa_llm.training.setup import build_task

    data = load_classification_data(cfg.data, split_seed=cfg.split_seed)
    return build_task(cfg, data.label_names, tiny_model[1]), data.split("train")


def test_rows_are_our_prompts_in_our_order(tmp_path, tiny_model, tiny_model_dir, learnable_csv):
    from afa_llm.training.setup import batch_indices

    cfg = _cfg(tmp_path, tiny_model_dir, learnable_csv)
    task, train = _task(cfg, tiny_model)
    rows = trl_baseline.ordered_examples(cfg, task, list(train["text"]), list(train["label"]))
    assert len(rows) == cfg.steps * cfg.batch_size
    order = [i for step in range(cfg.steps) for i in batch_indices(len(train), cfg.seed, step, cfg.batch_size, 1, 0)]
    for row, i in zip(rows, order):
        prompt = task.prompt_ids(train["text"][i])[0]
        assert row["input_ids"] == [*prompt, task.label_token_ids[train["label"][i]]]
        assert row["completion_mask"] == [0] * len(prompt) + [1]


def test_trains_completion_only_and_writes_a_run(tmp_path, tiny_model, tiny_model_dir, learnable_csv, capsys):
    from peft import PeftModel

    from afa_llm.model.loading import load_model
    from afa_llm.training.setup import batch_indices

    cfg = _cfg(tmp_path, tiny_model_dir, learnable_csv)
    results = trl_baseline.train_trl(cfg)
    run = Path(cfg.output_dir)
    assert results["method"] == "trl_sft" and json.loads((run / "results.json").read_text())["method"] == "trl_sft"
    assert [h["step"] for h in results["validation"]] == [2, 4] and results["test"]["n"] == 8
    assert load_config(str(run / "config.yaml"), saved=True).lora_r == cfg.lora_r
    PeftModel.from_pretrained(load_model(tiny_model_dir)[0], str(run / "adapter"))
    assert "'loss'" not in capsys.readouterr().out  # no log dict per step on stdout (progress off)

    # step 1's loss: the label word's CE over the vocabulary on our first batch (the adapter starts at 0)
    task, train = _task(cfg, tiny_model)
    first = batch_indices(len(train), cfg.seed, 0, cfg.batch_size, 1, 0)
    batch = task.encode([train["text"][i] for i in first])
    with torch.no_grad():
        logits = tiny_model[0](**batch.model_inputs()).logits[:, -1].float()
    gold = torch.tensor([task.label_token_ids[train["label"][i]] for i in first])
    expected = torch.nn.functional.cross_entropy(logits, gold).item()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert next(m for m in logged if m["step"] == 1 and "loss" in m)["loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_checkpointing_follows_our_config_not_trls_default(tmp_path, checkpointing, recwarn):
    """TRL turns activation checkpointing on by default (~20% slower); the baseline must match `method=lora`,
    and be set through transformers 5's name so that no deprecation warning is printed per run."""
    cfg = _cfg(tmp_path, "tiny", "data.csv", f"gradient_checkpointing={str(checkpointing).lower()}")
    args = trl_baseline.sft_config(cfg, tmp_path / "checkpoints")
    assert args.activation_checkpointing is checkpointing and args.gradient_checkpointing is checkpointing
    assert not [w for w in recwarn if "deprecated" in str(w.message) and "checkpointing" in str(w.message)]


def test_bad_key_is_one_line(capsys):
    assert trl_baseline.main(["steps=4", "no_such_key=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no_such_key" in err and "\n" not in err


def _adapter(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def _killed_on_save(when):
    """trl_baseline._callback whose checkpoint save raises KeyboardInterrupt once ``when(control)``."""
    real = trl_baseline._callback

    def patched(*args):
        callback, stopper = real(*args)

        class Killed(type(callback)):
            def on_save(self, args, state, control, **kwargs):
                super().on_save(args, state, control, **kwargs)
                if when(control):
                    raise KeyboardInterrupt

        return Killed(), stopper

    return patched


def test_killed_and_resumed_equals_uninterrupted(tmp_path, tiny_model_dir, learnable_csv, monkeypatch):
    """A kill after step 2's checkpoint, then resume_from=latest: the same adapter and history."""
    extra = ("steps=4", "save_every=2", "keep_checkpoints=1", "lora_dropout=0.1")
    straight = trl_baseline.train_trl(_cfg(tmp_path / "a", tiny_model_dir, learnable_csv, *extra))

    real = trl_baseline._callback
    cfg = _cfg(tmp_path / "b", tiny_model_dir, learnable_csv, *extra)
    monkeypatch.setattr(trl_baseline, "_callback", _killed_on_save(lambda control: True))  # at the first save
    with pytest.raises(KeyboardInterrupt):
        trl_baseline.train_trl(cfg)
    run = Path(cfg.output_dir)
    assert trl_baseline.latest_checkpoint(run).name == "checkpoint-2" and not (run / "results.json").exists()
    monkeypatch.setattr(trl_baseline, "_callback", real)
    with pytest.raises(Exception, match="resume_from=latest"):  # no silent restart over a run's checkpoints
        trl_baseline.train_trl(cfg)
    resumed = trl_baseline.train_trl(_cfg(tmp_path / "b", tiny_model_dir, learnable_csv, *extra,
                                          "resume_from=latest"))

    assert resumed["validation"] == straight["validation"]
    a, b = _adapter(tmp_path / "a" / "trl"), _adapter(run)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert any(a[k].abs().max() > 0 for k in a if "lora_B" in k)  # it trained
    assert not (run / trl_baseline.CHECKPOINTS).exists()
    def logged(folder):
        return [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()]

    assert logged(run) == logged(tmp_path / "a" / "trl")  # nothing the killed run logged is doubled


def test_killed_after_stopping_early_resumes_without_training(tmp_path, tiny_model_dir, learnable_csv, monkeypatch):
    """A kill between the early stop's checkpoint and results.json: the resume trains no further
    and ends with the uninterrupted run's adapter, history and test scores."""
    extra = ("steps=8", "eval_every=1", "save_every=1", "keep_checkpoints=1", "early_stopping_patience=1",
             "early_stopping_metric=val_loss", "select_best=true", "learning_rate=0.5")
    straight = trl_baseline.train_trl(_cfg(tmp_path / "a", tiny_model_dir, learnable_csv, *extra))
    assert straight["stopped_early"], straight["validation"]  # the setting must stop before step 8

    real = trl_baseline._callback
    monkeypatch.setattr(trl_baseline, "_callback", _killed_on_save(lambda control: control.should_training_stop))
    cfg = _cfg(tmp_path / "b", tiny_model_dir, learnable_csv, *extra)
    with pytest.raises(KeyboardInterrupt):
        trl_baseline.train_trl(cfg)
    monkeypatch.setattr(trl_baseline, "_callback", real)
    import trl

    monkeypatch.setattr(trl.SFTTrainer, "train", lambda *a, **k: pytest.fail("a run that had stopped trained on"))
    resumed = trl_baseline.train_trl(_cfg(tmp_path / "b", tiny_model_dir, learnable_csv, *extra, "resume_from=latest"))

    for key in ("validation", "stopped_early", "best_step", "last_step"):
        assert resumed.get(key) == straight.get(key), key
    for key in ("test", "test_last"):
        for field in ("accuracy", "predictions", "probabilities"):
            assert resumed[key].get(field) == straight[key].get(field), (key, field)
    a, b = _adapter(tmp_path / "a" / "trl"), _adapter(tmp_path / "b" / "trl")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
