"""What every training method shares, and the one interface each method implements.

A method is a plug-in: one module (or folder) under ``afa_llm/methods/`` with
- a ``Keys`` dataclass: the config keys it brings (validated at load time, each error
  naming the key), and
- a `TrainingMethod` subclass: the loss of one step from the batch and its clean pass,
  plus the method's own state, which checkpoints save and resume restores.

The training loop (`afa_llm.training.trainer`) never branches on a method's name. Per micro-batch:

    kwargs = method.forward_kwargs(batch)                  # e.g. attention edits at r = 0
    clean  = clean_pass(model, batch, head, focus_layers, **kwargs)   # shared
    loss, metrics = method.loss(peft_model, batch, clean, step)
    accelerator.backward(loss)

What all methods share: the label-word scoring (`afa_llm.model.scoring`), the clean pass with
its focus probe (`afa_llm.attention.clean_pass`), the masked passes (`afa_llm.attention.masking`) and the one
attention hook (`afa_llm.attention.hook`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from afa_llm.errors import UserError
from afa_llm.attention.clean_pass import CleanPass
from afa_llm.model.task import EncodedBatch


@dataclass
class MethodKeys:
    """Base of a method's own config keys. Subclasses add fields and range checks."""

    def checks(self) -> dict[str, bool]:
        """``{key: is_valid}`` for the keys with a range; a False names the key in the error."""
        return {}

    def validate(self) -> "MethodKeys":
        for key, ok in self.checks().items():
            if not ok:
                raise UserError(f"config key {key!r} has an invalid value: {getattr(self, key)!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class MethodContext:
    """What the loop hands a method: the model's shape, the task, and Accelerate's verbs."""

    head: Any  # the task's head (afa_llm.model.heads): label words or a classifier
    tokenizer: Any
    hidden_size: int
    num_layers: int
    num_heads: int
    focus_layers: list[int]  # resolved (non-negative) indices
    seed: int
    generator: torch.Generator  # this rank's sampler (masks); checkpointed by the loop
    backward: Callable = torch.Tensor.backward  # accelerator.backward
    gather: Callable = lambda t: t  # accelerator.gather
    prepare: Callable = lambda *objs: objs if len(objs) > 1 else objs[0]  # accelerator.prepare
    unwrap: Callable = lambda m: m  # accelerator.unwrap_model
    class_weights: torch.Tensor | None = None  # (C,) weights of every classification CE (``class_weights``)


def classification_loss(clean: CleanPass, batch: EncodedBatch, weight: torch.Tensor | None = None) -> torch.Tensor:
    """L_cls: cross-entropy of the class logits of the clean pass; with ``weight`` (C,), PyTorch's weighted
    mean: sum_i w[y_i] * CE_i / sum_i w[y_i]. A batch with a bias model's log-probabilities (``debias: poe``)
    is scored through the product of experts, log_softmax(logits + log p_bias) (`afa_llm.robustness.poe`)."""
    logits = clean.class_logits
    bias = getattr(batch, "bias_log_probs", None)  # a plain (texts, labels) batch has none
    if bias is not None:  # the product of experts: the bias model's log-probabilities added
        logits = logits + bias.to(logits.dtype)
    return F.cross_entropy(logits, batch.labels, weight=weight)


class TrainingMethod:
    """One training method. Subclasses set ``name``, ``Keys``, ``summary`` and ``loss``."""

    name: ClassVar[str]
    Keys: ClassVar[type[MethodKeys]] = MethodKeys
    summary: ClassVar[str] = ""
    experimental: ClassVar[bool] = False  # shown as such in `afa-llm train --help` and the docs
    edits_attention: ClassVar[bool] = False  # True: the loop trains under `afa_llm.attention.hook.attention_hook`

    def __init__(self, keys: MethodKeys, ctx: MethodContext):
        self.keys, self.ctx = keys, ctx

    def forward_kwargs(self, batch: EncodedBatch) -> dict[str, Any]:
        """Extra keyword arguments for the clean forward pass (default: none)."""
        return {}

    def loss(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass,
             step: int) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
