"""The training loop (`Trainer`) behind ``afa-llm train``: LoRA with a training method (lora, afa, at, vat, ...) on a (quantized) decoder LLM, with Accelerate.

    afa-llm train recipes/quickstart.yaml method=lora steps=200
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m afa_llm train RECIPE.yaml

Features:
- one YAML recipe (`afa_llm.config.TrainConfig`) + ``key=value`` overrides, validated;
- ``method``: a plug-in from `afa_llm.methods` (lora, afa, at, vat, attn_rp, iat). The loop
  knows none of them by name: a method gives the loss of a step from the batch and its
  clean pass, and its own state for checkpoints; plain LoRA is the same loop with L_cls;
- a LoRA adapter (peft) on an nf4 / int8 / full-precision base;
- focus from the answer-position attention probe (the model stays on SDPA);
- the same scoring as `afa-llm eval` (label words of any length, or a classifier head), so train and
  eval cannot drift;
- one process, several CPU processes, or multi-GPU DDP: the data order is a pure
  function of (seed, step), and each rank takes its own slice of the global batch;
- atomic checkpoints every ``save_every`` steps (adapter, optimiser, scheduler, the method's
  state, RNG states); ``resume_from=latest`` continues exactly;
- ``mixed_precision: bf16`` autocasts the training steps and the evaluations inside the run
  (Accelerate), so a run's numbers come from one precision; `afa-llm eval` uses ``dtype``;
- metrics per step to ``metrics.jsonl`` and Accelerate trackers (TensorBoard), tqdm;
- periodic validation accuracy; at the end ``results.json`` with test accuracy /
  macro-F1 of the adapter and the zero-shot base, and the fake-focus share of both;
- a NaN/inf loss stops training with a one-line error; the last checkpoint is kept.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from afa_llm.attention import focus_math as fm
from afa_llm.attention.clean_pass import clean_pass
from afa_llm.attention.focus_math import frequent_ids
from afa_llm.attention.hook import attention_hook
from afa_llm.attention.probe import AnswerAttentionProbe
from afa_llm.config import TrainConfig
from afa_llm.errors import TrainingDiverged, UserError
from afa_llm.provenance import warn_if_emulated_bf16
from afa_llm.robustness import build_addons
from afa_llm.training.checkpoint import (list_checkpoints, load_adapter_weights, load_trainer_state, rng_state,
                                         save_checkpoint, set_rng_state)
from afa_llm.training.setup import (batch_indices, build_model, check_run_dir, class_weight_values,
                                    load_training_data, make_method)
from afa_llm.training.validation import EarlyStopping, final_results, save_best_adapter, validate


def train(cfg: TrainConfig) -> dict:
    """Train one run from its validated config; returns results.json's content."""
    return Trainer(cfg).train()


class Trainer:
    """One training run: ``setup`` (model, data, optimiser, method, resume), then per step ``step`` and on
    schedule ``validate`` and ``save``, then ``finish`` (the final evaluation, results.json)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg, self.run_dir = cfg, Path(cfg.output_dir)

    # ---- setup ------------------------------------------------------------------------------
    def setup(self) -> None:
        from afa_llm.io_utils import check_writable_dir

        cfg = self.cfg
        check_writable_dir(cfg.output_dir, "output_dir")  # an unwritable output_dir fails before any model loads
        if not cfg.progress:  # progress=false also silences the weight-loading bars
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        # train() runs several times in one process (grids, tests): forget the previous run's precision;
        # the process group (PartialState) is kept
        AcceleratorState._reset_state()
        self.accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                                       mixed_precision=cfg.mixed_precision, log_with=self._tracker(),
                                       project_dir=str(self.run_dir))
        resume = check_run_dir(cfg, self.run_dir)
        warn_if_emulated_bf16(cfg.mixed_precision == "bf16", self.accelerator.device.type)
        set_seed(cfg.seed)
        self._build()
        self.start_step, self.history = 0, []
        if resume is not None:
            self._resume(resume)
        self._init_run_dir(fresh=resume is None)
        self.stopper = EarlyStopping(cfg.early_stopping_metric, cfg.early_stopping_patience)

    def _tracker(self) -> str | None:
        report_to = self.cfg.report_to
        if report_to == "auto":
            report_to = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
        return None if report_to == "none" else report_to

    def _build(self) -> None:
        """Data, model, task, optimiser, scheduler, the mask sampler and the method, in this order (seeded)."""
        cfg, acc = self.cfg, self.accelerator
        self.data, train_split = load_training_data(cfg)
        self.texts, self.labels = train_split["text"], np.asarray(train_split["label"])
        self.class_weights = class_weight_values(cfg.class_weights, self.labels, len(self.data.label_names))
        model, self.task = build_model(cfg, acc, self.data.label_names)
        try:  # an out-of-range focus layer is a config error, not a traceback at the first step
            AnswerAttentionProbe(model, cfg.focus_layers)
        except ValueError as exc:
            raise UserError(f"config key 'focus_layers': {exc}") from exc
        self.frequent = frequent_ids(self.task, list(self.texts))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                       num_training_steps=cfg.steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.generator = torch.Generator(device=acc.device).manual_seed(cfg.seed * 1000 + acc.process_index)
        self.peft_model = acc.unwrap_model(self.model)
        self.method = make_method(cfg, self.peft_model, self.task, self.generator, acc, self.class_weights)
        self.guard, self.bias = build_addons(cfg, self.task, list(self.texts), self.labels.tolist(),
                                             len(self.data.label_names))

    def _resume(self, checkpoint: Path) -> None:
        acc = self.accelerator
        state = load_trainer_state(checkpoint)
        if len(state["rng"]) != acc.num_processes:  # the data slices and mask samplers are per rank
            raise UserError(f"{checkpoint} was written by {len(state['rng'])} process(es); resume it with the same "
                            f"number, not {acc.num_processes}")
        load_adapter_weights(self.peft_model, checkpoint / "adapter")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])
        if self.guard is not None:
            self.guard.load_state_dict(state["guard"])
        set_rng_state(state["rng"][acc.process_index], self.generator)
        self.start_step, self.history = state["step"], state["validation"]
        acc.print(f"resumed from {checkpoint} at step {self.start_step}")

    def _init_run_dir(self, fresh: bool) -> None:
        cfg, run_dir = self.cfg, self.run_dir
        if self.accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            if fresh and (run_dir / "checkpoints").exists():  # overwrite=true: a fresh start; stale
                shutil.rmtree(run_dir / "checkpoints")  # higher-numbered checkpoints would win pruning and resume
            cfg.save(run_dir / "config.yaml")
            truncate_metrics(run_dir / "metrics.jsonl", self.start_step)
        self.accelerator.init_trackers("afa", config={k: str(v) for k, v in cfg.to_dict().items()})

    # ---- one optimisation step ------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float]:
        """Forward, loss, backward and update over the step's micro-batches; returns the step's metrics."""
        cfg, acc, method = self.cfg, self.accelerator, self.method
        started, tokens, step_metrics = time.perf_counter(), 0, {}
        self._refresh_guard(step)
        for micro in range(cfg.gradient_accumulation_steps):
            idx = batch_indices(len(self.texts), cfg.seed, step * cfg.gradient_accumulation_steps + micro,
                                cfg.batch_size, acc.num_processes, acc.process_index)
            texts = [self.texts[i] for i in idx]
            batch = self.task.encode(texts, self.labels[idx].tolist()).to(acc.device)
            if self.bias is not None:  # debias: poe, the bias model's out-of-fold log-probabilities
                batch.bias_log_probs = torch.from_numpy(self.bias.log_probs[idx]).to(acc.device)
            tokens += int(batch.attention_mask.sum())
            # autocast explicitly: the method also forwards through the unwrapped peft model
            with acc.accumulate(self.model), acc.autocast():
                clean = clean_pass(self.model, batch, self.task.head, cfg.focus_layers,
                                   **method.forward_kwargs(batch))
                loss, metrics = method.loss(self.peft_model, batch, clean, step)
                if self.guard is not None:
                    guard_loss, guard_metrics = self.guard.loss(self.peft_model, batch, clean, texts)
                    loss = loss + guard_loss
                    metrics.update(guard_metrics)
                _stop_if_diverged(acc, loss, step, self.run_dir)
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            metrics.update(_focus_metrics(clean, batch, self.frequent))
            for key, value in metrics.items():
                step_metrics[key] = step_metrics.get(key, 0.0) + value / cfg.gradient_accumulation_steps
        self.scheduler.step()
        seconds = time.perf_counter() - started
        step_metrics.update(step_time=seconds, tokens_per_s=tokens * acc.num_processes / seconds,
                            lr=self.scheduler.get_last_lr()[0], train_acc_batch=_batch_accuracy(clean, batch))
        return step_metrics

    def _refresh_guard(self, step: int) -> None:
        """The guard's flags for this step (every guard_every steps), logged to metrics.jsonl as they change."""
        if self.guard is None:
            return
        started = time.perf_counter()
        with self.accelerator.autocast():
            event = self.guard.refresh(self.peft_model, step)
        if event is not None and self.accelerator.is_main_process:
            event["guard_refresh_s"] = round(time.perf_counter() - started, 3)  # part of this step's step_time
            with open(self.run_dir / "metrics.jsonl", "a") as handle:  # labelled with the step it applies to
                handle.write(json.dumps({**event, "step": step + 1}) + "\n")

    # ---- validation and checkpoints ---------------------------------------------------------------
    def validate(self, done: int) -> dict[str, float]:
        """Score the validation split, keep the best adapter (select_best); the record's metrics."""
        with self.accelerator.autocast():  # evaluate in the training precision, like HF Trainer
            record = validate(self.accelerator, self.peft_model, self.task, self.data, self.cfg, done)
        if self.guard is not None and (start := self.guard.selectable_from()):
            record["selectable_from"] = start
        self.history.append(record)
        if self.cfg.select_best and self.stopper.is_best(self.history) and self.accelerator.is_main_process:
            save_best_adapter(self.peft_model, self.run_dir)
        return {"val_accuracy": record["accuracy"], "val_loss": record["loss"],
                **{f"val_{key}": record[key] for key in ("clean_accuracy", "anti_accuracy", "gap") if key in record}}

    def save(self, step: int) -> None:
        """An atomic checkpoint: adapter, optimiser, scheduler, the method's state, every rank's RNG."""
        acc = self.accelerator
        states = [rng_state(self.generator)]
        if acc.num_processes > 1:  # every rank's RNG state, so each resumes exactly
            from accelerate.utils import gather_object

            states = gather_object(states)
        if acc.is_main_process:
            state = {"step": step, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "method": self.method.state_dict(), "rng": states, "validation": self.history,
                     "guard": self.guard.state_dict() if self.guard is not None else None}
            save_checkpoint(self.run_dir, step, self.peft_model, state, self.cfg, self.cfg.keep_checkpoints)
        acc.wait_for_everyone()

    # ---- the loop ---------------------------------------------------------------------------------
    def train(self) -> dict:
        self.setup()
        cfg, acc = self.cfg, self.accelerator
        stopped = self.stopper.should_stop(self.history)  # a run that stopped early resumes as finished
        bar = tqdm(range(self.start_step, self.start_step if stopped else cfg.steps), initial=self.start_step,
                   total=cfg.steps, desc=cfg.method, disable=not (cfg.progress and acc.is_local_main_process))
        done = self.start_step
        self.model.train()
        # a method that edits attention trains under the hook; validation inside it is unaffected
        # (no edits: the same SDPA call), and the final evaluation runs on plain SDPA again
        with attention_hook(self.model) if self.method.edits_attention else contextlib.nullcontext():
            for step in bar:
                metrics = self.step(step)
                done = step + 1
                if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
                    metrics.update(self.validate(done))
                    stopped = self.stopper.should_stop(self.history)
                _log(acc, self.run_dir, done, metrics, cfg.log_every)
                bar.set_postfix({k: f"{metrics[k]:.3g}" for k in ("loss_cls", "loss_pg", "val_accuracy")
                                 if k in metrics})
                if stopped:
                    acc.print(f"early stopping at step {done}: no better {cfg.early_stopping_metric} in "
                              f"{cfg.early_stopping_patience} validations (best at step "
                              f"{self.stopper.best(self.history)['step']})")
                    break
                if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps:
                    self.save(done)
        bar.close()
        self.save(done)
        return self.finish(done)

    def finish(self, done: int) -> dict:
        with self.accelerator.autocast():
            results = final_results(self.accelerator, self.peft_model, self.task, self.data, self.cfg, self.frequent,
                                    self.history, self.stopper, done, extra=self._extra_results())
        self.accelerator.end_training()
        return results


    def _extra_results(self) -> dict:
        extra = {"class_weights": self.class_weights}
        if self.guard is not None:
            extra["guard"] = self.guard.record()
        if self.bias is not None:
            extra["debias"] = self.bias.record
        return extra


# ---- helpers ----------------------------------------------------------------------------------
def _stop_if_diverged(accelerator: Accelerator, loss: torch.Tensor, step: int, run_dir: Path) -> None:
    bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=accelerator.device)
    if accelerator.gather(bad).sum() > 0:  # every rank stops together
        last = list_checkpoints(run_dir)
        kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint had been written yet"
        raise TrainingDiverged(f"loss became {loss.item()} at step {step + 1}; training stopped, {kept}")


def _focus_metrics(clean, batch, frequent: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        focus = clean.focus.detach()
        shares = fm.frequent_shares(focus, batch.input_ids, batch.text_mask, frequent)
        entropy = fm.focus_entropy(focus, batch.text_mask).mean()
    return {"fake_focus_share": fm.fake_focus_ratio(*shares), "focus_entropy": entropy.item()}


def _batch_accuracy(clean, batch) -> float:
    return (clean.class_logits.argmax(-1) == batch.labels).float().mean().item()


def _log(accelerator, run_dir: Path, step: int, metrics: dict, every: int) -> None:
    if step % every and "val_accuracy" not in metrics:
        return
    accelerator.log(metrics, step=step)
    if accelerator.is_main_process:
        with open(run_dir / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop records logged after the checkpoint (they will be logged again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in keep))
