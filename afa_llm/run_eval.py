"""What a training run evaluates: periodic validation, early stopping, the best checkpoint,
and the final test results (``results.json``).

- `validate` scores the validation split (``eval_limit`` rows, one batched pass) and gives
  a record ``{"step", "accuracy", "loss"}``; ``loss`` is the mean cross-entropy of the
  label-word probabilities. Every rank gets the main process's record, so all ranks take
  the same early-stopping decision.
- `EarlyStopping` is pure on the list of records (the run's ``validation`` history, which
  checkpoints hold), so resume restores it exactly: the best step is the first one with the
  best value of ``early_stopping_metric``; training stops once ``early_stopping_patience``
  validations in a row did not improve on it.
- With ``select_best``, the adapter of the best validation is kept in
  ``checkpoints/best/adapter`` (written atomically when it improves); at the end the run is
  tested with it and with the last weights, and ``adapter/`` is the best one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .evaluate import evaluate_dataset
from .io_utils import atomic_dir

BEST_DIR = "best"  # under checkpoints/; not a step-N folder, so pruning and resume never touch it


@dataclass
class EarlyStopping:
    metric: str = "val_accuracy"  # or "val_loss"
    patience: int | None = None  # None: never stop early

    def _value(self, record: dict) -> float:
        return record["accuracy"] if self.metric == "val_accuracy" else -record["loss"]

    def best(self, history: list[dict]) -> dict | None:
        """The first record with the best value (higher accuracy, or lower loss)."""
        best = None
        for record in history:
            if best is None or self._value(record) > self._value(best):
                best = record
        return best

    def is_best(self, history: list[dict]) -> bool:
        """Whether the newest record is the best so far."""
        return bool(history) and self.best(history) is history[-1]

    def should_stop(self, history: list[dict]) -> bool:
        if self.patience is None or not history:
            return False
        best = self.best(history)
        since = len(history) - 1 - history.index(best)
        return since >= self.patience


def validation_record(report: dict, step: int) -> dict:
    """``{"step", "accuracy", "loss"}`` from an evaluation report with probabilities."""
    probs = np.asarray(report["probabilities"], dtype=np.float64)
    labels = np.asarray(report["labels"])
    gold = probs[np.arange(len(labels)), labels]
    return {"step": step, "accuracy": report["accuracy"], "loss": float(-np.log(np.clip(gold, 1e-12, 1)).mean())}


def validate(accelerator, peft_model, task, data, cfg, step: int) -> dict:
    """Score the validation split on the main process; every rank returns its record."""
    record = [None]
    if accelerator.is_main_process:
        split = data.split("validation")
        if cfg.eval_limit:
            split = split.select(range(min(cfg.eval_limit, len(split))))
        report = evaluate_dataset(peft_model, task, split, data.label_names, batch_size=cfg.eval_batch_size,
                                  progress=False)
        record = [validation_record(report, step)]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(record)
    return record[0]


def save_best_adapter(peft_model, run_dir: Path) -> Path:
    """Write the adapter to ``checkpoints/best/adapter`` atomically (main process only)."""
    target = run_dir / "checkpoints" / BEST_DIR
    with atomic_dir(target) as tmp:
        peft_model.save_pretrained(tmp / "adapter")
    return target


def selected_test(peft_model, run_dir: Path, history: list[dict], stopper: EarlyStopping, select_best: bool,
                  last_step: int, evaluate: Callable[[], dict]) -> dict:
    """Test the last weights, and with ``select_best`` the best validation's; the model keeps
    the selected weights. Returns the results.json fields."""
    from .checkpoint import load_adapter_weights

    last = evaluate()
    best = stopper.best(history)
    fields = {"test_last": last, "last_step": last_step,
              "best_step": best["step"] if best else None, "selected": "last"}
    if select_best and best is not None and best is not history[-1] and (run_dir / "checkpoints" / BEST_DIR).exists():
        load_adapter_weights(peft_model, run_dir / "checkpoints" / BEST_DIR)
        fields.update(test=evaluate(), selected="best")
    else:
        fields.update(test=last, selected="best" if select_best and best is not None else "last")
    return fields
