"""What a training run evaluates: periodic validation, early stopping, the best checkpoint,
and the final test results (``results.json``).

- `validate` scores the validation split (``eval_limit`` rows, one batched pass) and gives
  a record ``{"step", "accuracy", "loss"}``; ``loss`` is the mean cross-entropy of the
  label-word probabilities. Every rank gets the main process's record, so all ranks take
  the same early-stopping decision.
- `EarlyStopping` is pure on the list of records (the run's ``validation`` history, which
  checkpoints hold), so resume restores it exactly: the best step is the first one with the
  best value of ``early_stopping_metric``; training stops once ``early_stopping_patience``
  validations in a row did not improve on it. A record may carry ``selectable_from``: the guard's
  flags changed, and earlier records no longer count (their weights leaned on a word now hidden).
- With ``select_best``, the adapter of the best validation is kept in
  ``checkpoints/best/adapter`` (written atomically when it improves); at the end the run is
  tested with it and with the last weights, and ``adapter/`` is the best one.
- `final_results` tests the run at its end (the selected checkpoint, the last one, the base
  if asked, and the fake-focus share) and writes ``adapter/`` and ``results.json``; our loop
  and experiments/trl_baseline.py both end with it, so their run folders read alike. The
  fake-focus share and the lexicon metrics read the focus of the first ``focus_eval_limit``
  test rows off the test pass itself (`evaluate_with_focus`); faithfulness, opt-in
  (``faithfulness_eval_limit``), scores masked copies of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from afa_llm.attention import focus_math as fm
from afa_llm.evaluation.evaluate import evaluate_dataset, evaluate_with_focus
from afa_llm.io_utils import atomic_dir, write_json
from afa_llm.provenance import machine_record

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset
    from peft import PeftModel

    from afa_llm.config import TrainConfig
    from afa_llm.data.loading import ClassificationData
    from afa_llm.model.task import PromptTask

# validation rows whose clean and anti views give a run with a planted cue its gap at every validation (the
# gap-against-steps curve); a fixed, small share so that validation stays cheap
GAP_ROWS = 256
BEST_DIR = "best"  # under checkpoints/; not a step-N folder, so pruning and resume never touch it


@dataclass
class EarlyStopping:
    metric: str = "val_accuracy"  # or "val_loss"
    patience: int | None = None  # None: never stop early

    def _value(self, record: dict) -> float:
        return record["accuracy"] if self.metric == "val_accuracy" else -record["loss"]

    def best(self, history: list[dict]) -> dict | None:
        """The first record with the best value (higher accuracy, or lower loss), among those from the newest
        record's ``selectable_from`` step on (set by the guard: see `afa_llm.robustness.guard`); None where none is."""
        start = history[-1].get("selectable_from", 0) if history else 0
        best = None
        for record in history:
            if record["step"] < start:
                continue
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
        if best is None:  # nothing selectable yet: patience counts from the first selectable record
            return False
        since = len(history) - 1 - history.index(best)
        return since >= self.patience


def validation_record(report: dict, step: int) -> dict:
    """``{"step", "accuracy", "loss"}`` from an evaluation report with probabilities."""
    probs = np.asarray(report["probabilities"], dtype=np.float64)
    labels = np.asarray(report["labels"])
    gold = probs[np.arange(len(labels)), labels]
    return {"step": step, "accuracy": report["accuracy"], "loss": float(-np.log(np.clip(gold, 1e-12, 1)).mean())}


def validate(accelerator: Accelerator, peft_model: PeftModel, task: PromptTask, data: ClassificationData, cfg: TrainConfig,
             step: int) -> dict:
    """Score the validation split on the main process; every rank returns its record."""
    record = [None]
    if accelerator.is_main_process:
        split = data.split("validation")
        if cfg.eval_limit:
            split = split.select(range(min(cfg.eval_limit, len(split))))
        report = evaluate_dataset(peft_model, task, split, data.label_names, batch_size=cfg.eval_batch_size,
                                  progress=False)
        record = [validation_record(report, step)]
        if cfg.shortcut_cue:
            record[0].update(shortcut_gap(peft_model, task, data, cfg))
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(record)
    return record[0]


def shortcut_gap(model: torch.nn.Module, task: PromptTask, data: ClassificationData, cfg: TrainConfig) -> dict:
    """Clean and anti accuracy (the cue in every text of the other classes) of the first GAP_ROWS validation
    rows as they were before the cue was planted, and their gap."""
    from afa_llm.data.shortcut import UNPLANTED_VALIDATION, split_seed_for
    from afa_llm.evaluation.stress import view_reports

    split = data.split(UNPLANTED_VALIDATION)
    split = split.select(range(min(GAP_ROWS, len(split))))
    reports = view_reports(model, task, split["text"], split["label"], data.label_names, cfg.shortcut_cue,
                           data.label_names.index(cfg.shortcut_label), position=cfg.shortcut_position,
                           seed=split_seed_for(cfg.split_seed, "validation"), batch_size=cfg.eval_batch_size)
    accuracy = {name: report["accuracy"] for name, report in reports.items()}
    return {"clean_accuracy": accuracy["clean"], "anti_accuracy": accuracy["anti"],
            "gap": accuracy["clean"] - accuracy["anti"]}


def save_best_adapter(peft_model: PeftModel, run_dir: Path) -> Path:
    """Write the adapter to ``checkpoints/best/adapter`` atomically (main process only)."""
    target = run_dir / "checkpoints" / BEST_DIR
    with atomic_dir(target) as tmp:
        peft_model.save_pretrained(tmp / "adapter")
    return target


def selected_test(peft_model: PeftModel, run_dir: Path, history: list[dict], stopper: EarlyStopping, select_best: bool,
                  last_step: int, evaluate: Callable[[], dict]) -> dict:
    """Test the last weights, and with ``select_best`` the best validation's; the model keeps
    the selected weights. Returns the results.json fields."""
    from afa_llm.training.checkpoint import load_adapter_weights

    last = evaluate()
    best = stopper.best(history)
    fields = {"test_last": last, "last_step": last_step,
              "best_step": best["step"] if best else None, "selected": "last"}
    if select_best and best is not None and best is not history[-1] and (run_dir / "checkpoints" / BEST_DIR).exists():
        load_adapter_weights(peft_model, run_dir / "checkpoints" / BEST_DIR / "adapter")
        fields.update(test=evaluate(), selected="best")
    else:
        fields.update(test=last, selected="best" if select_best and best is not None else "last")
    return fields


def fake_focus_share_of(task: PromptTask, texts: list[str], focus_rows: list[np.ndarray],
                        frequent: torch.Tensor) -> float:
    """The fake-focus share (`focus_math.fake_focus_ratio`) of each text's focus over its text tokens."""
    shares, bases = [], []
    for text, focus in zip(texts, focus_rows):
        ids = torch.tensor([task.text_ids(text)])
        share, base = fm.frequent_shares(torch.from_numpy(focus)[None], ids, torch.ones_like(ids, dtype=torch.bool),
                                         frequent)
        shares.append(share)
        bases.append(base)
    return fm.fake_focus_ratio(torch.cat(shares), torch.cat(bases))


def focus_metrics_on(model: torch.nn.Module, task: PromptTask, texts: list[str], focus_rows: list[np.ndarray],
                     cfg: TrainConfig) -> dict:
    """`afa_llm.evaluation.focus_metrics.focus_metrics` of ``focus_rows`` (``texts``' focus, read off a test pass)
    with the run's keys (threshold, example counts, layers, seed)."""
    from afa_llm.evaluation.focus_metrics import focus_metrics

    return focus_metrics(model, task, texts, threshold=cfg.lexicon_threshold,
                         faithfulness_n=cfg.faithfulness_eval_limit, batch_size=cfg.eval_batch_size,
                         focus_layers=cfg.focus_layers, seed=cfg.seed, focus_rows=focus_rows)


class FocusedTest:
    """The run's test pass, keeping the focus of its first ``focus_eval_limit`` rows from the latest call
    (the weights the model holds: after `selected_test`, the selected ones)."""

    def __init__(self, model: torch.nn.Module, task: PromptTask, test: Dataset, label_names: list[str],
                 cfg: TrainConfig) -> None:
        self.model, self.task, self.test, self.label_names, self.cfg = model, task, test, label_names, cfg
        self.texts = list(test["text"][: cfg.focus_eval_limit])
        self.focus_on = range(len(self.texts))
        self.focus_rows: list[np.ndarray] = []

    def __call__(self) -> dict:
        report, self.focus_rows = evaluate_with_focus(
            self.model, self.task, self.test, self.label_names, batch_size=self.cfg.eval_batch_size,
            progress=self.cfg.progress, focus_on=self.focus_on, focus_layers=self.cfg.focus_layers)
        return report

    def focus_records(self, frequent: torch.Tensor) -> tuple[float, dict]:
        """The fake-focus share and the focus metrics of the latest test pass."""
        return (fake_focus_share_of(self.task, self.texts, self.focus_rows, frequent),
                focus_metrics_on(self.model, self.task, self.texts, self.focus_rows, self.cfg))


def stress_on(model: torch.nn.Module, task: PromptTask, test: Dataset, label_names: list[str], cfg: TrainConfig,
              clean_report: dict) -> dict:
    """The stress views of the test split with the run's own cue (`afa_llm.evaluation.stress`)."""
    from afa_llm.data.shortcut import split_seed_for
    from afa_llm.evaluation.stress import stress_test

    return stress_test(model, task, list(test["text"]), list(test["label"]), label_names, cfg.shortcut_cue,
                       label_names.index(cfg.shortcut_label), position=cfg.shortcut_position,
                       seed=split_seed_for(cfg.split_seed, "test"), batch_size=cfg.eval_batch_size,
                       focus_layers=cfg.focus_layers, focus_n=cfg.focus_eval_limit, clean_report=clean_report)


def shortcut_record(cfg: TrainConfig) -> dict | None:
    keys = ("shortcut_cue", "shortcut_label", "shortcut_rate", "shortcut_purity", "shortcut_position")
    return {key: getattr(cfg, key) for key in keys} if cfg.shortcut_cue else None


def head_record(task: PromptTask, cfg: TrainConfig) -> dict:
    """How the run scored its classes: the head, how a classifier started, length normalisation."""
    init = None
    if task.head_kind == "classifier":
        init = "label_word_rows" if task.classifier_init_rows() else "random"
    return {"head": task.head_kind, "head_init": init, "length_normalize": task.length_normalize,
            "label_tokens": [len(t) for t in task.label_token_seqs]}


def final_results(accelerator: Accelerator, peft_model: PeftModel, task: PromptTask, data: ClassificationData,
                  cfg: TrainConfig, frequent: torch.Tensor, history: list[dict], stopper: EarlyStopping, last_step: int,
                  name: str | None = None, extra: dict | None = None) -> dict:
    """Test the run (the selected checkpoint, the base), save adapter/ and results.json.
    ``name`` labels the run when another trainer made it (experiments/trl_baseline.py)."""
    results: dict = {}
    if accelerator.is_main_process:
        test = data.split("test")
        if cfg.test_limit:
            test = test.select(range(min(cfg.test_limit, len(test))))
        peft_model.eval()
        evaluate = FocusedTest(peft_model, task, test, data.label_names, cfg)
        results = {"method": name or cfg.method, "model": cfg.model, "quantization": cfg.quantization, "data": cfg.data,
                   "validation_data": cfg.validation_data, "test_data": cfg.test_data,  # your own splits, if given
                   "split_seed": cfg.split_seed, "seed": cfg.seed, "steps": cfg.steps,
                   "num_processes": accelerator.num_processes,  # a silently single-process launch shows here
                   "global_batch_size": cfg.batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes,
                   "label_names": data.label_names, "label_words": task.label_words, "template": task.template,
                   **head_record(task, cfg), "validation": history, "stopped_early": last_step < cfg.steps,
                   **selected_test(peft_model, Path(cfg.output_dir), history, stopper, cfg.select_best, last_step,
                                   evaluate)}
        share, metrics = evaluate.focus_records(frequent)
        results.update({"fake_focus_share": {"adapter": share}, "focus_metrics": {"adapter": metrics},
                        "shortcut": shortcut_record(cfg), **(extra or {}), "machine": machine_record()})
        if cfg.shortcut_cue:
            results["stress"] = {"adapter": stress_on(peft_model, task, test, data.label_names, cfg, results["test"])}
        if cfg.evaluate_zero_shot and results["head_init"] != "random":  # a random head has no zero-shot
            with peft_model.disable_adapter():
                results["zero_shot"] = evaluate()
                results["fake_focus_share"]["base"], results["focus_metrics"]["base"] = evaluate.focus_records(frequent)
                if cfg.shortcut_cue:
                    results["stress"]["base"] = stress_on(peft_model, task, test, data.label_names, cfg,
                                                          results["zero_shot"])
        run_dir = Path(cfg.output_dir)
        peft_model.save_pretrained(run_dir / "adapter")
        write_json(run_dir / "results.json", results)
        summary = f"test accuracy {results['test']['accuracy']:.4f} (macro-F1 {results['test']['macro_f1']:.4f})"
        if "zero_shot" in results:
            summary += f"; zero-shot base {results['zero_shot']['accuracy']:.4f}"
        accelerator.print(f"[{name or cfg.method}] {summary} -> {run_dir / 'results.json'}")
    accelerator.wait_for_everyone()
    return results
