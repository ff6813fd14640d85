"""The baseline users would run instead of ``method=lora``: TRL's SFTTrainer with a LoRA
``peft_config``, the loss on the label word only (completion-only), evaluated by afa-llm.

    .venv/bin/python experiments/trl_baseline.py recipes/quickstart.yaml [key=value ...] output_dir=runs/trl
    # in a grid: a variant with `runner=trl` (experiments/grids/*.yaml) is trained by this script

Everything but the trainer is `method=lora`'s: the same base (and quantization), LoRA rank,
alpha, dropout and targets; learning rate, linear schedule, no warm-up, AdamW, gradient
clipping, batch and steps; the same prompt tokens (our `PromptTask`, so truncation inside
the text is identical) followed by the label word, as a pre-tokenized prompt-completion set
whose rows are laid out in the exact order `afa_llm.training.setup.batch_indices` visits them, read
sequentially. What differs is TRL's own: its loop, its initialisation of the adapter under
the same seed, and its loss, the cross-entropy of the label word over the whole vocabulary
(ours is over the label words only). Validation, early stopping, best-checkpoint selection
and the final test go through afa-llm's own `afa_llm.training.validation.validate` and
`afa_llm.training.validation.final_results`, so the
run folder (config.yaml, adapter/, results.json, metrics.jsonl) reads like any other run's.

Checkpoints are TRL's own (``trl_checkpoints/checkpoint-N`` every ``save_every`` steps, the
newest ``keep_checkpoints`` kept); each also holds our validation history, written last, so a
checkpoint without it (a kill mid-save) is never resumed. ``resume_from=latest`` continues the
newest complete one through ``Trainer.train(resume_from_checkpoint=...)``, which restores the
adapter, optimizer, schedule, RNG states and the data position; the folder is removed once
results.json is written.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from afa_llm.config import TrainConfig, load_config  # noqa: E402
from afa_llm.errors import UserError  # noqa: E402
from afa_llm.io_utils import atomic_write_text, check_writable_dir  # noqa: E402
from afa_llm.training.validation import EarlyStopping, final_results, save_best_adapter, validate  # noqa: E402

RUNNER = "trl_sft"
CHECKPOINTS = "trl_checkpoints"  # TRL's checkpoint-N folders, under the run folder
HISTORY_FILE = "afa_validation.json"  # our validation history, in each complete checkpoint


def ordered_examples(cfg: TrainConfig, task, texts: list[str], labels: list[int]) -> list[dict]:
    """One pre-tokenized row per example the LoRA loop would see, in its order."""
    from afa_llm.training.setup import batch_indices

    rows = []
    for micro in range(cfg.steps * cfg.gradient_accumulation_steps):
        for i in batch_indices(len(texts), cfg.seed, micro, cfg.batch_size, 1, 0):
            prompt, _, _ = task.prompt_ids(texts[i])
            rows.append({"input_ids": [*prompt, task.label_token_ids[labels[i]]],
                         "completion_mask": [0] * len(prompt) + [1]})
    return rows


def sft_config(cfg: TrainConfig, checkpoints: Path):
    from trl import SFTConfig

    saving = {"save_strategy": "steps", "save_steps": cfg.save_every, "save_total_limit": cfg.keep_checkpoints} \
        if cfg.save_every else {"save_strategy": "no"}
    return SFTConfig(output_dir=str(checkpoints), **saving, max_steps=cfg.steps,
                     per_device_train_batch_size=cfg.batch_size,
                     gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
                     lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.lr_warmup_steps,
                     weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, optim="adamw_torch",
                     seed=cfg.seed, completion_only_loss=True, max_length=None, report_to=[],
                     logging_steps=cfg.log_every, use_cpu=not torch.cuda.is_available(),
                     bf16=cfg.mixed_precision == "bf16", fp16=cfg.mixed_precision == "fp16",
                     activation_checkpointing=cfg.gradient_checkpointing, disable_tqdm=not cfg.progress,
                     dataloader_drop_last=False)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete TRL checkpoint (one whose validation history was written)."""
    found = [p for p in (run_dir / CHECKPOINTS).glob("checkpoint-*") if (p / HISTORY_FILE).exists()]
    return max(found, key=step_of, default=None)


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def _resume_point(cfg: TrainConfig, run_dir: Path) -> Path | None:
    """Where to resume (None: a fresh start), refusing to start over a run's checkpoints unasked."""
    resume = None
    if cfg.resume_from == "latest":
        resume = latest_checkpoint(run_dir)
    elif cfg.resume_from:
        resume = Path(cfg.resume_from)
        if not (resume / HISTORY_FILE).exists():
            raise UserError(f"resume_from: {cfg.resume_from} is not a complete TRL checkpoint (no {HISTORY_FILE})")
    if resume is None and (run_dir / CHECKPOINTS).exists():
        if not cfg.overwrite:
            raise UserError(f"{run_dir} already holds TRL checkpoints; pass resume_from=latest to continue, "
                            "or overwrite=true to start over")
        shutil.rmtree(run_dir / CHECKPOINTS)
    return resume


def _callback(cfg: TrainConfig, task, data, history: list[dict], accelerator):
    from transformers import TrainerCallback

    stopper = EarlyStopping(cfg.early_stopping_metric, cfg.early_stopping_patience)
    run_dir = Path(cfg.output_dir)

    class AfaValidation(TrainerCallback):
        """Our validation (same split, rows and scorer) every eval_every steps, and our early stopping."""

        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            with open(run_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps({"step": state.global_step, **(logs or {})}) + "\n")

        def on_step_end(self, args, state, control, model=None, **kwargs):
            step = state.global_step
            if not cfg.eval_every or (step % cfg.eval_every and step != cfg.steps):
                return
            with accelerator.autocast():  # the training precision, as afa_llm.training.trainer validates
                history.append(validate(accelerator, model, task, data, cfg, step))
            with open(run_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps({"step": step, "val_accuracy": history[-1]["accuracy"],
                                         "val_loss": history[-1]["loss"]}) + "\n")
            if cfg.select_best and stopper.is_best(history):
                save_best_adapter(model, run_dir)
            if stopper.should_stop(history):
                control.should_training_stop = True

        def on_save(self, args, state, control, **kwargs):  # written last: marks the checkpoint complete
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            atomic_write_text(folder / HISTORY_FILE, json.dumps(history))

    return AfaValidation(), stopper


def train_trl(cfg: TrainConfig) -> dict:
    """Train ``cfg`` (read as method=lora) with TRL's SFTTrainer; returns results.json's content."""
    from accelerate import Accelerator
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTTrainer

    from afa_llm.attention.focus_math import frequent_ids
    from afa_llm.training import setup
    from afa_llm.training.trainer import truncate_metrics
    from afa_llm.defaults import lora_targets
    from afa_llm.model.loading import load_model

    run_dir = check_writable_dir(cfg.output_dir, "output_dir")
    if (run_dir / "results.json").exists() and not cfg.overwrite:
        raise UserError(f"{run_dir} already holds a finished run; pass overwrite=true or another output_dir")
    data, train_split = setup.load_training_data(cfg)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(cfg.model, quantization=cfg.quantization, dtype=cfg.dtype)
    task = setup.build_task(cfg, data.label_names, tokenizer)
    rows = ordered_examples(cfg, task, list(train_split["text"]), list(train_split["label"]))
    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=lora_targets(cfg.lora_target_modules, cfg.lora_on_mlp),
                             task_type="CAUSAL_LM")
    resume = _resume_point(cfg, run_dir)
    history: list[dict] = json.loads((resume / HISTORY_FILE).read_text()) if resume else []
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").touch()
    truncate_metrics(run_dir / "metrics.jsonl", step_of(resume) if resume else 0)
    cfg.save(run_dir / "config.yaml")
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=cfg.mixed_precision)
    callback, stopper = _callback(cfg, task, data, history, accelerator)

    class InOrder(SFTTrainer):  # our data order: the rows are already laid out step by step
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

    sft = InOrder(model=model, args=sft_config(cfg, run_dir / CHECKPOINTS), train_dataset=Dataset.from_list(rows),
                  processing_class=tokenizer, peft_config=peft_config, callbacks=[callback])
    if not cfg.progress:  # without tqdm, Trainer prints each log dict; metrics.jsonl already holds them
        from transformers.trainer_callback import PrinterCallback

        sft.remove_callback(PrinterCallback)
    if resume and stopper.should_stop(history):  # it had stopped early: take its weights, train no further
        from afa_llm.training.checkpoint import load_adapter_weights

        load_adapter_weights(sft.model, resume)  # TRL saves the adapter at the checkpoint's top level
        last_step = step_of(resume)
    else:
        sft.train(resume_from_checkpoint=str(resume) if resume else None)
        last_step = sft.state.global_step
    frequent = frequent_ids(task, list(train_split["text"]))
    with accelerator.autocast():
        results = final_results(accelerator, sft.model, task, data, cfg, frequent, history, stopper,
                                last_step, name=RUNNER)
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)  # results.json is written: nothing to resume
    return results


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    recipe = args[0] if args and not ("=" in args[0] and not args[0].endswith((".yaml", ".yml"))) else None
    overrides = args[1:] if recipe else args
    try:
        cfg = load_config(recipe, [*overrides, "method=lora"])
        train_trl(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
