"""What a training run is built from: the model with its LoRA, the prompt task, the data (with a planted
shortcut, if the recipe has one), the data order, the training method, and the run folder's state.

`batch_indices` is a pure function of (seed, step): each rank takes its own slice of the global batch
and a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from accelerate import Accelerator

from afa_llm.attention.probe import AnswerAttentionProbe
from afa_llm.config import TrainConfig
from afa_llm.data.loading import ClassificationData, check_splits_nonempty, load_data
from afa_llm.defaults import lora_targets
from afa_llm.errors import UserError
from afa_llm.methods import MethodContext, TrainingMethod, build_method
from afa_llm.model.adapters import build_task as scorer_task
from afa_llm.model.heads import as_sequence_classifier
from afa_llm.model.loading import load_model
from afa_llm.model.task import PromptTask
from afa_llm.runs import plant_run_shortcut
from afa_llm.specs import DATA_KEYS, DataSpec, ScorerSpec, class_names_for
from afa_llm.training.checkpoint import list_checkpoints, resolve_resume

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase



def build_model(cfg: TrainConfig, accelerator: Accelerator,
                label_names: list[str] | None = None) -> tuple[PeftModel, PromptTask]:
    """The base model (quantized per config; with ``head: classifier`` its sequence-classification twin,
    `afa_llm.model.heads`) with the LoRA attached, and the run's prompt task for ``label_names`` (default:
    the recipe's, else from its label words)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    device_map = {"": accelerator.device} if cfg.quantization != "none" else None
    model, tokenizer = load_model(cfg.model, quantization=cfg.quantization, dtype=cfg.dtype, device_map=device_map)
    task = build_task(cfg, label_names or class_names_for(cfg.label_names, cfg.label_words), tokenizer)
    if cfg.gradient_checkpointing and task.head.reads_cache:
        raise UserError("config key 'gradient_checkpointing': label words of several tokens read the prompt's KV "
                        "cache, which gradient checkpointing turns off; use head=classifier or one-token words")
    if cfg.head == "classifier":
        model = as_sequence_classifier(model, task.num_classes, task.classifier_init_rows(), seed=cfg.seed)
    if cfg.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    targets = lora_targets(cfg.lora_target_modules, cfg.lora_on_mlp)
    head_keys = dict(task_type="SEQ_CLS", modules_to_save=["score"]) if cfg.head == "classifier" else \
        dict(task_type="CAUSAL_LM")
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, **head_keys)
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise UserError(f"config key 'lora_target_modules': {str(exc).splitlines()[0]}") from exc
    return model, task


def build_task(cfg: TrainConfig, label_names: list[str], tokenizer: PreTrainedTokenizerBase) -> PromptTask:
    """The run's prompt task: the scorer's (`afa_llm.model.adapters.build_task`) with the recipe's prompt keys."""
    words = cfg.label_words or None
    if words is not None and len(words) != len(label_names):
        raise UserError(f"config key 'label_words' has {len(words)} words for {len(label_names)} classes")
    spec = ScorerSpec(template=cfg.template, label_words=words, max_text_tokens=cfg.max_text_tokens,
                      truncation=cfg.truncation, head=cfg.head, length_normalize=cfg.length_normalize)
    return scorer_task(spec, label_names, tokenizer)


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


def load_training_data(cfg: TrainConfig) -> tuple[ClassificationData, object]:
    """The run's data set and its training split (the first ``train_limit`` rows, if set)."""
    data = load_data(DataSpec(**{key: getattr(cfg, key) for key in DATA_KEYS}))  # validation/test files too
    # the final test, and the validations if any, need their splits: refuse before training, not after
    check_splits_nonempty(data, ["train", "test"] + (["validation"] if cfg.eval_every else []), cfg.data)
    if cfg.shortcut_cue:
        data = plant_run_shortcut(cfg, data)
    train_split = data.split("train")
    if cfg.train_limit:
        train_split = train_split.select(range(min(cfg.train_limit, len(train_split))))
    return data, train_split


def class_weight_values(setting: str | list[float] | None, labels: Sequence[int] | np.ndarray,
                        num_classes: int) -> list[float] | None:
    """The ``class_weights`` of a run: None, balanced ones from the training labels (n / (C * n_c)), or the
    given list, checked against the number of classes."""
    if setting in (None, "none"):
        return None
    if setting == "balanced":
        counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(float)
        if (counts == 0).any():
            raise UserError(f"config key 'class_weights': balanced needs every class in the training split "
                            f"(counts {counts.astype(int).tolist()})")
        return (counts.sum() / (num_classes * counts)).tolist()
    if len(setting) != num_classes:
        raise UserError(f"config key 'class_weights' has {len(setting)} weights for {num_classes} classes")
    return [float(w) for w in setting]


def make_method(cfg: TrainConfig, peft_model: PeftModel, task: PromptTask, generator: torch.Generator,
                accelerator: Accelerator | None = None, class_weights: list[float] | None = None) -> TrainingMethod:
    """The configured training method for ``peft_model`` (Accelerate's verbs when given)."""
    text_config = peft_model.get_base_model().config.get_text_config()
    verbs = {} if accelerator is None else dict(backward=accelerator.backward, gather=accelerator.gather,
                                                prepare=accelerator.prepare, unwrap=accelerator.unwrap_model)
    ctx = MethodContext(head=task.head, tokenizer=task.tokenizer, hidden_size=text_config.hidden_size,
                        num_layers=text_config.num_hidden_layers, num_heads=text_config.num_attention_heads,
                        focus_layers=AnswerAttentionProbe(peft_model, cfg.focus_layers).layers, seed=cfg.seed,
                        generator=generator, **verbs,
                        class_weights=None if class_weights is None else torch.tensor(class_weights,
                                                                                      device=generator.device))
    return build_method(cfg.method, cfg.method_config, ctx)


def check_run_dir(cfg: TrainConfig, run_dir: Path) -> Path | None:
    resume = resolve_resume(run_dir, cfg.resume_from)
    if resume is None and list_checkpoints(run_dir) and not cfg.overwrite:
        raise UserError(f"{run_dir} already holds checkpoints; pass resume_from=latest to continue, "
                        "overwrite=true to start over, or another output_dir")
    return resume
