"""Adapters on a base, and the scorer that evaluation, prediction, ACT and the focus maps load:
the model (+ adapter) and its bound prompt task, from a `ScorerSpec`."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from afa_llm.errors import UserError
from afa_llm.specs import ScorerSpec


def resolve_adapter_dir(path: str) -> Path:
    """Accept an adapter folder or a run folder that contains ``adapter/``."""
    folder = Path(path)
    for candidate in (folder, folder / "adapter"):
        if (candidate / "adapter_config.json").exists():
            return candidate
    if not folder.exists():
        raise UserError(f"adapter folder not found: {path}")
    raise UserError(f"{path} holds no adapter_config.json (expected a peft adapter or a run folder)")


def attach_adapter(model: torch.nn.Module, adapter: str) -> torch.nn.Module:
    """Load a peft adapter onto ``model`` for evaluation."""
    from peft import PeftModel

    folder = resolve_adapter_dir(adapter)
    try:
        return PeftModel.from_pretrained(model, str(folder))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"adapter {folder} does not fit this model: {str(exc).splitlines()[0]}") from exc


def build_task(spec: ScorerSpec, class_names: Sequence[str], tokenizer):
    """The prompt task of ``spec`` for ``class_names``, bound to ``tokenizer``."""
    from afa_llm.model.task import PromptTask

    task = PromptTask(spec.words_for(class_names), template=spec.template, max_text_tokens=spec.max_text_tokens,
                      truncation=spec.truncation)
    return task.bind(tokenizer)


def load_scorer(spec: ScorerSpec, class_names: Sequence[str], progress: bool = True):
    """The model (+ ``spec.adapter``) and its bound prompt task. The adapter folder and the label words
    are checked before the weights load, so a typo costs no loading time."""
    from afa_llm.model.loading import load_model, load_model_tokenizer

    if spec.adapter:
        resolve_adapter_dir(spec.adapter)
    task = build_task(spec, class_names, load_model_tokenizer(spec.model))
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    model, tokenizer = load_model(spec.model, quantization=spec.quantization, dtype=spec.dtype)
    task.bind(tokenizer)
    if spec.adapter:
        model = attach_adapter(model, spec.adapter)
    return model, task
