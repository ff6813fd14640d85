"""Adapters on a base, and the scorer that evaluation, prediction, ACT and the focus maps load:
the model (+ adapter) and its bound prompt task, from a `ScorerSpec`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from afa_llm.errors import UserError
from afa_llm.specs import ScorerSpec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from afa_llm.model.task import PromptTask


def resolve_adapter_dir(path: str) -> Path:
    """Accept an adapter folder or a run folder that contains ``adapter/``."""
    folder = Path(path)
    for candidate in (folder, folder / "adapter"):
        if (candidate / "adapter_config.json").exists():
            return candidate
    if not folder.exists():
        raise UserError(f"adapter folder not found: {path}")
    raise UserError(f"{path} holds no adapter_config.json (expected a peft adapter or a run folder)")


def adapter_classes(adapter: str | Path) -> int | None:
    """The class count of a classifier adapter (``score`` in ``modules_to_save``, read off its saved weight);
    None for a label-word adapter."""
    import json

    from safetensors import safe_open

    folder = resolve_adapter_dir(str(adapter))
    config = json.loads((folder / "adapter_config.json").read_text())
    if "score" not in (config.get("modules_to_save") or []):
        return None
    weights = folder / "adapter_model.safetensors"
    if weights.is_file():
        with safe_open(str(weights), "pt") as f:
            for key in f.keys():
                if key.endswith("score.weight"):
                    return int(f.get_slice(key).get_shape()[0])
    raise UserError(f"{folder} lists 'score' in modules_to_save but holds no score weight")


def attach_adapter(model: torch.nn.Module, adapter: str) -> torch.nn.Module:
    """Load a peft adapter onto ``model`` for evaluation."""
    from peft import PeftModel

    folder = resolve_adapter_dir(adapter)
    try:
        return PeftModel.from_pretrained(model, str(folder))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"adapter {folder} does not fit this model: {str(exc).splitlines()[0]}") from exc


def build_task(spec: ScorerSpec, class_names: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> PromptTask:
    """The prompt task of ``spec`` for ``class_names``, bound to ``tokenizer``."""
    from afa_llm.model.task import PromptTask

    task = PromptTask(spec.words_for(class_names), template=spec.template, max_text_tokens=spec.max_text_tokens,
                      truncation=spec.truncation, head_kind=spec.head, length_normalize=spec.length_normalize)
    return task.bind(tokenizer)


def load_scorer(spec: ScorerSpec, class_names: Sequence[str], progress: bool = True,
                loaded: torch.nn.Module | None = None) -> tuple[torch.nn.Module, PromptTask]:
    """The model (+ ``spec.adapter``, its LoRA update scaled by ``spec.adapter_scale``: `scale_adapter`) and
    its bound prompt task. The adapter folder, the scale and the label words are checked before the weights
    load, so a typo costs no loading time. ``loaded``: a model already loaded from ``spec`` (the Python
    API's classifier), reused as it is; only the prompt task is built, for ``class_names``."""
    from afa_llm.model.loading import load_model, load_model_tokenizer
    from afa_llm.provenance import warn_if_emulated_bf16

    check_adapter_scale(spec.adapter_scale, spec.adapter)
    if spec.adapter:
        resolve_adapter_dir(spec.adapter)
    task = build_task(spec, class_names, load_model_tokenizer(spec.model))
    if loaded is not None:
        check_class_count(loaded, task.num_classes)
        return loaded, task
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model, _ = load_model(spec.model, quantization=spec.quantization, dtype=spec.dtype, tokenizer=task.tokenizer)
    warn_if_emulated_bf16(spec.dtype == "bf16", next(model.parameters()).device.type, fix="use --dtype fp32")
    return with_head(model, spec, task.num_classes), task


def check_adapter_scale(scale: float, adapter: str | None) -> None:
    """``adapter_scale`` is a number in [0, 1], and other than 1 only where there is an adapter to scale."""
    _check_scale_range(scale)
    if scale != 1 and not adapter:
        raise UserError("adapter_scale (--adapter-scale) scales a LoRA adapter, and this model has none: give "
                        "a run or adapter folder (a merged folder has its update folded in: merge --adapter-scale)")


def scale_adapter(model: torch.nn.Module, scale: float) -> None:
    """Scale the LoRA update of every LoRA layer of ``model`` to ``scale`` times the trained one (peft's
    ``LoraLayer.set_scale``: scale * alpha / r, so calling it again sets, not compounds): 0 scores as the
    base model, 1 as the adapter. A classifier head (``modules_to_save``) is a trained copy, not an update:
    it stays as trained."""
    from peft.tuners.lora import LoraLayer

    _check_scale_range(scale)
    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    if not layers:
        raise UserError("adapter_scale: the model holds no LoRA layer to scale")
    for layer in layers:
        for name in list(layer.scaling):
            layer.set_scale(name, scale)


def adapter_scale_of(model: torch.nn.Module) -> float:
    """The scale `scale_adapter` set on ``model``'s LoRA update (1.0 as trained, and for a model without one)."""
    import math

    from peft.tuners.lora import LoraLayer

    for layer in (module for module in model.modules() if isinstance(module, LoraLayer)):
        for name, scaling in layer.scaling.items():
            rank = math.sqrt(layer.r[name]) if layer.use_rslora.get(name, False) else layer.r[name]
            return round(scaling / (layer.lora_alpha[name] / rank), 6)
    return 1.0


def _check_scale_range(scale: float) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale <= 1:
        raise UserError(f"adapter_scale must be a number in [0, 1] (0: the base model, 1: the adapter), "
                        f"got {scale!r}")


def with_head(model: torch.nn.Module, spec: ScorerSpec, num_classes: int) -> torch.nn.Module:
    """``model`` with ``spec``'s head and adapter, its LoRA update scaled by ``spec.adapter_scale`` (a classifier
    head is a trained copy, not an update: never scaled). A classifier adapter's ``score`` goes onto a NaN
    placeholder, so a folder without a trained head is refused instead of scoring with a random one."""
    from afa_llm.model.heads import as_sequence_classifier, check_head_loaded, is_sequence_classifier

    check_adapter_scale(spec.adapter_scale, spec.adapter)
    if spec.head == "classifier" and not is_sequence_classifier(model):
        if not spec.adapter:
            raise UserError("head=classifier needs a run trained with it (--adapter) or a merged classifier folder")
        classes = adapter_classes(spec.adapter)
        if classes is None:
            raise UserError(f"{spec.adapter} holds no trained classifier head ('score' in modules_to_save); "
                            "was it trained with head=label_words?")
        model = as_sequence_classifier(model, classes, fill=float("nan"))
    check_class_count(model, num_classes)
    if spec.adapter:
        model = attach_adapter(model, spec.adapter)
        if spec.adapter_scale != 1:
            scale_adapter(model, spec.adapter_scale)
    if spec.head == "classifier":
        check_head_loaded(model, spec.adapter or spec.model)
    return model


def check_class_count(model: torch.nn.Module, num_classes: int) -> None:
    """A classifier head must have one output per class of the data."""
    from afa_llm.model.heads import is_sequence_classifier

    if is_sequence_classifier(model) and model.config.num_labels != num_classes:
        raise UserError(f"the classifier has {model.config.num_labels} classes, the data {num_classes}")
