"""afa-llm train: LoRA with a training method (lora, afa, at, vat, ...) on a (quantized) decoder LLM, with Accelerate.

    afa-llm train recipes/quickstart.yaml method=lora steps=200
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m afa_llm.train RECIPE.yaml

Features:
- one YAML recipe (`afa_llm.config.TrainConfig`) + ``key=value`` overrides, validated;
- ``method``: a plug-in from `afa_llm.methods` (lora, afa, at, vat, attn_rp, iat). The loop
  knows none of them by name: a method gives the loss of a step from the batch and its
  clean pass, and its own state for checkpoints; plain LoRA is the same loop with L_cls;
- a LoRA adapter (peft) on an nf4 / int8 / full-precision base;
- focus from the answer-position attention probe (the model stays on SDPA);
- the same label-word scoring as `afa-llm eval`, so train and eval cannot drift;
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

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from datasets import DatasetDict
from tqdm.auto import tqdm

from afa_llm.attention import focus_math as fm
from afa_llm.attention.hook import attention_hook
from afa_llm.attention.probe import AnswerAttentionProbe
from afa_llm.training.checkpoint import (list_checkpoints, load_adapter_weights, load_trainer_state, resolve_resume,
                         rng_state, save_checkpoint, set_rng_state)
from afa_llm.config import TrainConfig, load_config
from afa_llm.data.loading import SentimentData, load_sentiment_data
from afa_llm.errors import TrainingDiverged, UserError
from afa_llm.attention.clean_pass import clean_pass
from afa_llm.methods import MethodContext, build_method
from afa_llm.model.loading import load_model
from afa_llm.provenance import warn_if_emulated_bf16
from afa_llm.training.validation import EarlyStopping, final_results, save_best_adapter, validate
from afa_llm.model.task import PromptTask, default_label_words


# ---- setup ------------------------------------------------------------------------------
def build_model(cfg: TrainConfig, accelerator: Accelerator):
    """The base model (quantized per config) with the masker LoRA attached."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    device_map = {"": accelerator.device} if cfg.quantization != "none" else None
    model, tokenizer = load_model(cfg.model, quantization=cfg.quantization, dtype=cfg.dtype, device_map=device_map)
    if cfg.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    targets = list(cfg.lora_target_modules) + (["gate_proj", "up_proj", "down_proj"] if cfg.lora_on_mlp else [])
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise UserError(f"config key 'lora_target_modules': {str(exc).splitlines()[0]}") from exc
    return model, tokenizer


def build_task(cfg: TrainConfig, data: SentimentData, tokenizer) -> PromptTask:
    words = cfg.label_words or default_label_words(data.label_names)
    if len(words) != len(data.label_names):
        raise UserError(f"config key 'label_words' has {len(words)} words for {len(data.label_names)} classes")
    return PromptTask(list(words), template=cfg.template, max_text_tokens=cfg.max_text_tokens,
                      truncation=cfg.truncation).bind(tokenizer)




def frequent_ids(task: PromptTask, texts: list[str], limit: int = 5000) -> torch.Tensor:
    """The most frequent 1% of token types in the training texts ("fake focus" words)."""
    counts: dict[int, int] = {}
    for text in texts[:limit]:
        for tok in task.text_ids(text):
            counts[tok] = counts.get(tok, 0) + 1
    return fm.frequent_token_ids(counts, 0.01)


def batch_indices(n: int, seed: int, micro_step: int, batch_size: int, world: int, rank: int) -> np.ndarray:
    """This rank's slice of global micro-batch ``micro_step``: a pure function, so resume is exact."""
    global_size = batch_size * world
    start = micro_step * global_size
    epoch, offset = divmod(start, n)
    order = np.random.default_rng(seed + epoch).permutation(n)
    while len(order) - offset < global_size:  # the batch straddles an epoch boundary
        epoch += 1
        order = np.concatenate([order, np.random.default_rng(seed + epoch).permutation(n)])
    chunk = order[offset : offset + global_size]
    return chunk[rank * batch_size : (rank + 1) * batch_size]


def load_training_data(cfg: TrainConfig) -> tuple[SentimentData, object]:
    """The run's data set and its training split (the first ``train_limit`` rows, if set)."""
    data = load_sentiment_data(cfg.data, text_column=cfg.text_column, label_column=cfg.label_column,
                               label_names=cfg.label_names, split_seed=cfg.split_seed)
    if cfg.shortcut_cue:
        data = plant_run_shortcut(cfg, data)
    train_split = data.split("train")
    if cfg.train_limit:
        train_split = train_split.select(range(min(cfg.train_limit, len(train_split))))
    return data, train_split


def run_shortcut(cfg: TrainConfig, label_names: list[str]):
    """The run's `ShortcutSpec` (None when ``shortcut_cue`` is empty); the class is checked by name."""
    from afa_llm.data.shortcut import ShortcutSpec

    if not cfg.shortcut_cue:
        return None
    if cfg.shortcut_label not in label_names:
        raise UserError(f"config key 'shortcut_label': {cfg.shortcut_label!r} is not a class of the data "
                        f"({', '.join(label_names)})")
    return ShortcutSpec(cfg.shortcut_cue, label_names.index(cfg.shortcut_label), cfg.shortcut_rate,
                        cfg.shortcut_purity, cfg.shortcut_position)


def plant_run_shortcut(cfg: TrainConfig, data: SentimentData) -> SentimentData:
    """``data`` with the run's cue planted in its train and validation splits; test stays clean."""
    from afa_llm.data.shortcut import check_cue_absent, plant_shortcut, split_seed_for

    spec = run_shortcut(cfg, data.label_names)
    splits = dict(data.splits)
    for name in ("train", "validation", "test"):
        check_cue_absent(splits[name]["text"], spec.cue, f"the {name} split of {cfg.data}")
    for name in ("train", "validation"):
        split = splits[name]
        texts, _ = plant_shortcut(split["text"], split["label"], spec, split_seed_for(cfg.split_seed, name))
        splits[name] = split.remove_columns("text").add_column("text", texts).select_columns(["text", "label"])
    return dataclasses.replace(data, splits=DatasetDict(splits))


# ---- the loop -------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    from afa_llm.io_utils import check_writable_dir

    check_writable_dir(cfg.output_dir, "output_dir")  # an unwritable output_dir fails before any model loads
    run_dir = Path(cfg.output_dir)
    if not cfg.progress:  # progress=false also silences the weight-loading bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    report_to = cfg.report_to
    if report_to == "auto":
        report_to = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
    # train() runs several times in one process (eval/grid.py, tests): forget the previous run's
    # precision; the process group (PartialState) is kept
    AcceleratorState._reset_state()
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              mixed_precision=cfg.mixed_precision,
                              log_with=None if report_to == "none" else report_to, project_dir=str(run_dir))
    resume = _check_run_dir(cfg, run_dir)
    warn_if_emulated_bf16(cfg.mixed_precision == "bf16", accelerator.device.type)
    set_seed(cfg.seed)
    data, train_split = load_training_data(cfg)
    model, tokenizer = build_model(cfg, accelerator)
    try:  # an out-of-range focus layer is a config error, not a traceback at the first step
        AnswerAttentionProbe(model, cfg.focus_layers)
    except ValueError as exc:
        raise UserError(f"config key 'focus_layers': {exc}") from exc
    task = build_task(cfg, data, tokenizer)
    frequent = frequent_ids(task, list(train_split["text"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    from transformers import get_scheduler

    scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                              num_training_steps=cfg.steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator(device=accelerator.device).manual_seed(cfg.seed * 1000 + accelerator.process_index)
    peft_model = accelerator.unwrap_model(model)
    method = make_method(cfg, peft_model, task, generator, accelerator)

    start_step, history = 0, []
    if resume is not None:
        state = load_trainer_state(resume)
        if len(state["rng"]) != accelerator.num_processes:  # the data slices and mask samplers are per rank
            raise UserError(f"{resume} was written by {len(state['rng'])} process(es); resume it with the same "
                            f"number, not {accelerator.num_processes}")
        load_adapter_weights(peft_model, resume / "adapter")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        method.load_state_dict(state["method"])
        set_rng_state(state["rng"][accelerator.process_index], generator)
        start_step, history = state["step"], state["validation"]
        accelerator.print(f"resumed from {resume} at step {start_step}")

    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if resume is None and (run_dir / "checkpoints").exists():  # overwrite=true: a fresh start; stale
            shutil.rmtree(run_dir / "checkpoints")  # higher-numbered checkpoints would win pruning and resume
        cfg.save(run_dir / "config.yaml")
        _truncate_metrics(run_dir / "metrics.jsonl", start_step)
    accelerator.init_trackers("afa", config={k: str(v) for k, v in cfg.to_dict().items()})

    def checkpoint(step: int) -> None:
        states = [rng_state(generator)]
        if accelerator.num_processes > 1:  # every rank's RNG state, so each resumes exactly
            from accelerate.utils import gather_object
            states = gather_object(states)
        if accelerator.is_main_process:
            state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "method": method.state_dict(), "rng": states, "validation": history}
            save_checkpoint(run_dir, step, peft_model, state, cfg, cfg.keep_checkpoints)
        accelerator.wait_for_everyone()

    labels = np.asarray(train_split["label"])
    texts = train_split["text"]
    stopper = EarlyStopping(cfg.early_stopping_metric, cfg.early_stopping_patience)
    stopped = stopper.should_stop(history)  # a run that stopped early resumes as finished
    bar = tqdm(range(start_step, start_step if stopped else cfg.steps), initial=start_step, total=cfg.steps,
               desc=cfg.method, disable=not (cfg.progress and accelerator.is_local_main_process))
    done = start_step
    model.train()
    # a method that edits attention trains under the hook; validation inside it is unaffected
    # (no edits: the same SDPA call), and the final evaluation runs on plain SDPA again
    with attention_hook(model) if method.edits_attention else contextlib.nullcontext():
        for step in bar:
            started = time.perf_counter()
            step_metrics: dict[str, float] = {}
            tokens = 0
            for micro in range(cfg.gradient_accumulation_steps):
                idx = batch_indices(len(texts), cfg.seed, step * cfg.gradient_accumulation_steps + micro,
                                    cfg.batch_size, accelerator.num_processes, accelerator.process_index)
                batch = task.encode([texts[i] for i in idx], labels[idx].tolist()).to(accelerator.device)
                tokens += int(batch.attention_mask.sum())
                # autocast explicitly: the method also forwards through the unwrapped peft model
                with accelerator.accumulate(model), accelerator.autocast():
                    clean = clean_pass(model, batch, task.label_token_ids, cfg.focus_layers,
                                       **method.forward_kwargs(batch))
                    loss, metrics = method.loss(peft_model, batch, clean, step)
                    _stop_if_diverged(accelerator, loss, step, run_dir)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                metrics.update(_focus_metrics(clean, batch, frequent))
                for key, value in metrics.items():
                    step_metrics[key] = step_metrics.get(key, 0.0) + value / cfg.gradient_accumulation_steps
            scheduler.step()
            seconds = time.perf_counter() - started
            step_metrics.update(step_time=seconds, tokens_per_s=tokens * accelerator.num_processes / seconds,
                                lr=scheduler.get_last_lr()[0], train_acc_batch=_batch_accuracy(clean, batch))
            done = step + 1
            if cfg.eval_every and (done % cfg.eval_every == 0 or done == cfg.steps):
                with accelerator.autocast():  # evaluate in the training precision, like HF Trainer
                    history.append(validate(accelerator, peft_model, task, data, cfg, done))
                step_metrics.update(val_accuracy=history[-1]["accuracy"], val_loss=history[-1]["loss"])
                if cfg.select_best and stopper.is_best(history) and accelerator.is_main_process:
                    save_best_adapter(peft_model, run_dir)
                stopped = stopper.should_stop(history)
            _log(accelerator, run_dir, done, step_metrics, cfg.log_every)
            bar.set_postfix({k: f"{step_metrics[k]:.3g}" for k in ("loss_cls", "loss_pg", "val_accuracy")
                             if k in step_metrics})
            if stopped:
                accelerator.print(f"early stopping at step {done}: no better {cfg.early_stopping_metric} in "
                                  f"{cfg.early_stopping_patience} validations (best at step "
                                  f"{stopper.best(history)['step']})")
                break
            if cfg.save_every and done % cfg.save_every == 0 and done < cfg.steps:
                checkpoint(done)
    bar.close()
    checkpoint(done)
    with accelerator.autocast():
        results = final_results(accelerator, peft_model, task, data, cfg, frequent, history, stopper, done)
    accelerator.end_training()
    return results


# ---- helpers ----------------------------------------------------------------------------------
def make_method(cfg: TrainConfig, peft_model, task: PromptTask, generator: torch.Generator,
                accelerator: Accelerator | None = None):
    """The configured training method for ``peft_model`` (Accelerate's verbs when given)."""
    text_config = peft_model.get_base_model().config.get_text_config()
    verbs = {} if accelerator is None else dict(backward=accelerator.backward, gather=accelerator.gather,
                                                prepare=accelerator.prepare, unwrap=accelerator.unwrap_model)
    ctx = MethodContext(label_ids=task.label_token_ids, tokenizer=task.tokenizer, hidden_size=text_config.hidden_size,
                        num_layers=text_config.num_hidden_layers, num_heads=text_config.num_attention_heads,
                        focus_layers=AnswerAttentionProbe(peft_model, cfg.focus_layers).layers, seed=cfg.seed,
                        generator=generator, **verbs)
    return build_method(cfg.method, cfg.method_config, ctx)


def _check_run_dir(cfg: TrainConfig, run_dir: Path) -> Path | None:
    resume = resolve_resume(run_dir, cfg.resume_from)
    if resume is None and list_checkpoints(run_dir) and not cfg.overwrite:
        raise UserError(f"{run_dir} already holds checkpoints; pass resume_from=latest to continue, "
                        "overwrite=true to start over, or another output_dir")
    return resume


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


def _truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop records logged after the checkpoint (they will be logged again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    path.write_text("".join(line + "\n" for line in keep))


# ---- command line -------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from afa_llm.methods import method_help

    parser.epilog = method_help()
    parser.add_argument("recipe", nargs="?", help="a YAML recipe (e.g. recipes/quickstart.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of recipe keys, e.g. method=lora steps=50")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args) -> int:
    overrides = list(args.overrides)
    recipe = args.recipe
    if recipe and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
        overrides, recipe = [recipe, *overrides], None  # only overrides were given
    cfg = load_config(recipe, overrides)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    train(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m afa_llm.train`` (and ``accelerate launch -m afa_llm.train``)."""
    from afa_llm.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
