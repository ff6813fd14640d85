"""Scoring ACT configurations on calibration batches: the engine of ``afa-llm calibrate``.

`HeadSearch` scores a set of calibrated heads by label-word accuracy and the mean gold margin.
The plain way is one full forward per configuration. The fast way (``fast=True``) is exact too:

- the clean pass keeps each eligible layer's input per batch, and a configuration whose
  edits start at layer l runs only layers >= l from it (layers below l are unchanged by an
  edit of layer l; `afa_llm.attention.decoder_layers.start_at_layer`);
- with ``skip_unchanged``, an edit of one layer l runs layer l alone first, and only the
  examples whose output it changed run the layers above, as a sub-batch: where ACT finds no
  sink in the edited heads it leaves the layer's output bit-identical
  (`afa_llm.act.calibration.ACTEdit.keep_unchanged_rows`), so the other examples' logits are the clean
  pass's. Each example computes the same numbers in a sub-batch as in its batch (same width,
  same explicit mask; tested), except in the LM head, whose fp32 matrix-vector kernels round
  a row differently with another row count: the sub-batch's final states go back into a
  batch of the full size for it (`afa_llm.attention.decoder_layers.replace_stack_output`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from afa_llm.act.calibration import DEFAULT_BETA, DEFAULT_TAU, ACTConfig
from afa_llm.attention.hook import attention_hook, set_module_edits
from afa_llm.attention.decoder_layers import find_decoder_layers, replace_stack_output, start_at_layer

if TYPE_CHECKING:
    from afa_llm.model.task import PromptTask


def accuracy_and_margin(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Label-word accuracy and the mean gold margin of class logits (N, C)."""
    logits = logits.float()
    gold = logits.gather(1, labels[:, None])[:, 0]
    other = logits.scatter(1, labels[:, None], float("-inf")).max(-1).values
    return {"accuracy": (logits.argmax(-1) == labels).float().mean().item(),
            "margin": (gold - other).mean().item(), "n": len(labels)}


def sub_batch_rows(attention_mask: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
    """The rows of a batch to re-run: the changed ones, plus one padded row where the batch has padding
    and they have none, so that the sub-batch gets the same explicit attention mask as the batch (an
    unpadded batch may take SDPA's causal shortcut instead, with other rounding)."""
    rows = changed.nonzero().flatten()
    padded = (attention_mask == 0).any(-1)
    if len(rows) and padded.any() and not padded[rows].any():
        rows = torch.cat([rows, padded.nonzero().flatten()[:1]]).sort().values
    return rows


class _StopForward(Exception):
    """Raised by a forward hook to end a forward pass after the layer it hooks."""


@dataclass
class HeadSearch:
    """Scores ACT configurations on calibration batches (see the module doc)."""

    model: torch.nn.Module
    batches: list  # EncodedBatch, on the model's device
    labels: torch.Tensor  # in batch order
    head: object  # afa_llm.model.heads.Head (or one-token label ids)
    beta: float = DEFAULT_BETA
    tau: float = DEFAULT_TAU
    fast: bool = True
    bf16: bool = False
    skip_unchanged: bool = True  # with ``fast``
    layer_inputs: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    base_logits: list[torch.Tensor] = field(default_factory=list)  # per batch, with ``fast``
    forwards: float = 0.0  # full-forward equivalents run so far (per example)
    skipped: int = 0  # examples whose clean logits a one-layer edit reused

    @property
    def n_layers(self) -> int:
        return len(find_decoder_layers(self.model))

    def _autocast(self):
        device = self.labels.device.type
        return torch.autocast(device, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def _class_logits(self, inputs: dict, start: int = 0, hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits of ``inputs``; ``start`` > 0 feeds ``hidden`` to that layer instead of the lower ones."""
        from afa_llm.model.scoring import forward_scores

        with start_at_layer(self.model, start, hidden) if start else contextlib.nullcontext():
            return forward_scores(self.model, **inputs, head=self.head).class_logits

    def _layer_outputs(self, inputs: dict, start: int, hidden: torch.Tensor, stop: int) -> torch.Tensor:
        """The output of layer ``stop`` when ``hidden`` enters layer ``start`` (the forward ends there)."""
        captured = []

        def capture(module, args, output):
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        handle = find_decoder_layers(self.model)[stop].register_forward_hook(capture)
        try:
            self._class_logits(inputs, start, hidden)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured[0]

    @torch.no_grad()
    def baseline(self, layers: list[int]) -> dict:
        """The uncalibrated scores; with ``fast``, also keeps the inputs of ``layers`` (and of the
        layers above them, for ``skip_unchanged``) per batch."""
        from afa_llm.model.scoring import forward_scores

        cached = set(layers) | ({l + 1 for l in layers if l + 1 < self.n_layers} if self.skip_unchanged else set())
        self.layer_inputs = {layer: [] for layer in sorted(cached)} if self.fast else {}
        logits = []
        with attention_hook(self.model), self._autocast():
            for batch in self.batches:
                out = forward_scores(self.model, **batch.model_inputs(), head=self.head,
                                     return_hidden=self.fast)
                logits.append(out.class_logits)
                for layer in self.layer_inputs:
                    self.layer_inputs[layer].append(out.hidden_states[layer])
        self.base_logits = logits if self.fast else []
        self.forwards += 1
        return accuracy_and_margin(torch.cat(logits), self.labels)

    def _skipping_logits(self, index: int, layer: int) -> tuple[torch.Tensor, int]:
        """Class logits of batch ``index`` under an edit of ``layer`` alone, and how many rows ran above it."""
        inputs = self.batches[index].model_inputs()
        out = self._layer_outputs(inputs, layer, self.layer_inputs[layer][index], stop=layer)
        changed = (out != self.layer_inputs[layer + 1][index]).flatten(1).any(1)
        self.skipped += int((~changed).sum())
        logits = self.base_logits[index].clone()
        rows = sub_batch_rows(inputs["attention_mask"], changed)
        if not len(rows):
            return logits, 0
        top = self._layer_outputs({k: v[rows] for k, v in inputs.items()}, layer + 1, out[rows],
                                  stop=self.n_layers - 1)
        final = torch.zeros_like(out, dtype=top.dtype).index_copy(0, rows, top)  # the LM head sees a whole batch
        with replace_stack_output(self.model, final):
            logits[changed] = self._class_logits(inputs)[changed]
        return logits, len(rows)

    @torch.no_grad()
    def score(self, heads: dict[int, list[int]]) -> dict:
        """Accuracy and margin with ``heads`` calibrated (all at once)."""
        edits = ACTConfig(heads=heads, beta=self.beta, tau=self.tau).edits()
        start = min(edits) if self.fast and edits and all(l in self.layer_inputs for l in edits) else 0
        skip = bool(start) and self.skip_unchanged and len(edits) == 1 and start + 1 in self.layer_inputs
        with attention_hook(self.model), self._autocast():
            set_module_edits(self.model, edits)
            try:
                if skip:
                    logits, rerun = zip(*(self._skipping_logits(i, start) for i in range(len(self.batches))))
                    above = (self.n_layers - start - 1) * sum(rerun) / len(self.labels)
                    self.forwards += (1 + above) / self.n_layers
                else:
                    logits = [self._class_logits(batch.model_inputs(), start,
                                                 self.layer_inputs[start][i] if start else None)
                              for i, batch in enumerate(self.batches)]
                    self.forwards += self.cost_from(start)
            finally:
                set_module_edits(self.model, None)
        return accuracy_and_margin(torch.cat(logits), self.labels)

    def cost_from(self, layer: int) -> float:
        """Full-forward equivalents of a pass that starts at ``layer`` (the layers below it are cached)."""
        return (self.n_layers - layer) / self.n_layers

    def candidate(self, layer: int, head: int) -> dict:
        return {"layer": layer, "head": head, **self.score({layer: [head]})}


def prepare_batches(task: PromptTask, texts: list[str], labels: list[int], batch_size: int,
                    device: torch.device | str) -> tuple[list, torch.Tensor]:
    """Length-sorted encoded batches and the labels in the same order."""
    from afa_llm.model.task import length_batches

    groups = length_batches(task, texts, batch_size)
    batches = [task.encode([texts[i] for i in idx]).to(device) for idx in groups]
    order = np.concatenate(groups) if groups else np.zeros(0, dtype=int)
    return batches, torch.as_tensor(np.asarray(labels)[order], device=device)
