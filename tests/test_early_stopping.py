"""Early stopping and best-checkpoint selection (afa_llm.training.validation and the trainer).

Pure: the best record, the patience rule and the validation loss on hand-made histories.
Trainer (tiny model, scripted validation accuracies so the best step is known): the run
stops after `patience` validations without improvement; with select_best, adapter/ is the
best validation's weights, results.json has the best and the last test scores; a run
resumed mid-way stops at the same step with the same adapters (within 1e-6), and a stopped
run resumes as finished.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_train import adapter_state, max_diff, tiny_overrides

from afa_llm.config import load_config
from afa_llm.errors import UserError
from afa_llm.training.validation import EarlyStopping, validation_record


def _h(*accuracies, losses=None):
    losses = losses or [1.0] * len(accuracies)
    return [{"step": 2 * (i + 1), "accuracy": a, "loss": l} for i, (a, l) in enumerate(zip(accuracies, losses))]


def test_best_is_the_first_best_and_patience_counts_validations():
    stop = EarlyStopping("val_accuracy", 2)
    history = _h(0.5, 0.8, 0.8, 0.7)
    assert stop.best(history)["step"] == 4  # a tie is no improvement
    assert not stop.should_stop(history[:3]) and stop.should_stop(history)
    assert stop.is_best(history[:2]) and not stop.is_best(history[:3])
    assert not EarlyStopping("val_accuracy", None).should_stop(history)
    by_loss = EarlyStopping("val_loss", 1)
    history = _h(0.5, 0.5, 0.5, losses=[0.9, 0.4, 0.6])
    assert by_loss.best(history)["step"] == 4 and by_loss.should_stop(history)


def test_records_before_the_newest_selectable_from_do_not_count():
    """The guard's sticky flags: a new flag at step 5 makes the steps before 7 unselectable (seed 1 of the
    shortcut grid: its best cued validation came the step the cue was flagged, and won the selection)."""
    stop = EarlyStopping("val_accuracy", 2)
    history = _h(0.7, 0.9, 0.8)
    assert stop.best(history)["step"] == 4
    history[-1]["selectable_from"] = 7  # the record at step 6: nothing selectable yet, so no stopping
    assert stop.best(history) is None and not stop.is_best(history) and not stop.should_stop(history)
    history += [{"step": s, "accuracy": a, "loss": 1.0, "selectable_from": 7} for s, a in ((8, 0.75), (10, 0.7))]
    assert stop.best(history)["step"] == 8 and stop.is_best(history[:4])  # 0.75 at 8, below the old best 0.9
    history += [{"step": 12, "accuracy": 0.6, "loss": 1.0, "selectable_from": 7}]
    assert not stop.should_stop(history[:5]) and stop.should_stop(history)  # patience counts from step 8


def test_validation_record_loss_is_the_mean_gold_cross_entropy():
    report = {"accuracy": 0.5, "probabilities": [[0.8, 0.2], [0.25, 0.75]], "labels": [0, 0]}
    record = validation_record(report, 10)
    assert record["step"] == 10 and record["accuracy"] == 0.5
    assert record["loss"] == pytest.approx(-(np.log(0.8) + np.log(0.25)) / 2)


def test_config_needs_validations_and_a_positive_patience():
    with pytest.raises(UserError, match="early_stopping_patience"):
        load_config(None, ["early_stopping_patience=0"])
    with pytest.raises(UserError, match="needs validations"):
        load_config(None, ["select_best=true", "eval_every=0"])


SCRIPT = [0.50, 0.75, 0.60, 0.55, 0.90]  # step 2, 4, 6, 8, (10): best at 4, patience 2 stops at 8


class Interrupted(Exception):
    pass


@pytest.fixture
def scripted_validation(monkeypatch):
    """Validation accuracies from SCRIPT (the loss falls with them), so the best step is known;
    ``control["interrupt_at"] = N`` makes the validation at step N crash the run."""
    import afa_llm.training.trainer as trainer

    control = {"interrupt_at": None}

    def validate(accelerator, peft_model, task, data, cfg, step):
        if step == control["interrupt_at"]:
            raise Interrupted(step)
        accuracy = SCRIPT[step // 2 - 1]
        return {"step": step, "accuracy": accuracy, "loss": 1.0 - accuracy}

    monkeypatch.setattr(trainer, "validate", validate)
    return control


def _overrides(run, tiny_model_dir, csv, *extra):
    return tiny_overrides(run, tiny_model_dir, csv, "method=lora", "eval_every=2", "save_every=2",
                          "early_stopping_patience=2", "select_best=true", "evaluate_zero_shot=false",
                          "keep_checkpoints=5", *extra)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_stops_early_and_selects_the_best_checkpoint(scripted_validation, tiny_model_dir, learnable_csv, tmp_path,
                                                     precision):
    from afa_llm.training.trainer import train

    run = tmp_path / "run"
    results = train(load_config(None, _overrides(run, tiny_model_dir, learnable_csv, "steps=20",
                                                 f"mixed_precision={precision}")))
    assert results["stopped_early"] and (results["best_step"], results["last_step"]) == (4, 8)
    assert results["selected"] == "best" and {"test", "test_last"} <= set(results)
    # the two tests saw different weights (bf16: autocast's weight cache once hid the best's load)
    assert results["test"]["probabilities"] != results["test_last"]["probabilities"]
    assert [r["step"] for r in results["validation"]] == [2, 4, 6, 8]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 8 and "val_loss" in metrics[-1]
    final = adapter_state(run / "adapter")
    assert max_diff(final, adapter_state(run / "checkpoints" / "step-000004" / "adapter")) == 0
    assert max_diff(final, adapter_state(run / "checkpoints" / "step-000008" / "adapter")) > 0


def test_resume_stops_at_the_same_step_with_the_same_adapters(scripted_validation, tiny_model_dir, learnable_csv,
                                                              tmp_path):
    from afa_llm.training.trainer import train

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(load_config(None, _overrides(straight, tiny_model_dir, learnable_csv, "steps=20")))
    scripted_validation["interrupt_at"] = 6  # a crash after step 6's update; the newest checkpoint is step 4
    with pytest.raises(Interrupted):
        train(load_config(None, _overrides(resumed, tiny_model_dir, learnable_csv, "steps=20")))
    scripted_validation["interrupt_at"] = None
    results = train(load_config(None, _overrides(resumed, tiny_model_dir, learnable_csv, "steps=20",
                                                 "resume_from=latest")))
    assert (results["best_step"], results["last_step"]) == (4, 8)
    for name in ("adapter", "checkpoints/best/adapter"):
        assert max_diff(adapter_state(straight / name), adapter_state(resumed / name)) <= 1e-6
    again = train(load_config(None, _overrides(resumed, tiny_model_dir, learnable_csv, "steps=20",
                                               "resume_from=latest")))  # a stopped run resumes as finished
    assert again["last_step"] == 8 and again["test"]["predictions"] == results["test"]["predictions"]
