"""Class scoring: the one function that both training and evaluation use.

Class logits come from the run's head (`afa_llm.model.heads`): the label words' log-likelihood at the
answer position (the last prompt token; prompts are left-padded so that is index -1), or a linear
classifier over the final hidden state there. One forward pass per batch over the prompts; label
words of several tokens add one pass over its KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from afa_llm.model.heads import Head, as_head, prompt_forward
from afa_llm.model.task import EncodedBatch

if TYPE_CHECKING:
    from transformers.utils import ModelOutput


@dataclass
class ScoreOutput:
    class_logits: torch.Tensor  # (B, C)
    answer_hidden: torch.Tensor | None  # (B, D): final hidden state at the answer position
    hidden_states: tuple[torch.Tensor, ...] | None  # every layer's output, when requested


def forward_scores(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    head: Head | Sequence[int],
    *,
    return_hidden: bool = False,
    **forward_kwargs,
) -> ScoreOutput:
    """One forward pass -> class logits (B, C) (+ the answer-position hidden state).

    ``head``: the task's head (a list of token ids: one-token label words). ``forward_kwargs`` reach the
    attention functions (e.g. ``attention_edits``)."""
    head = as_head(head)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    out = prompt_forward(model, inputs, head, return_hidden, **forward_kwargs)
    return score_output(model, out, inputs, head, return_hidden)


def score_output(model: torch.nn.Module, out: ModelOutput, inputs: dict, head: Head,
                 return_hidden: bool) -> ScoreOutput:
    """The class logits (and hidden states) of a prompt pass ``out``."""
    logits = head.class_logits(model, out, inputs)
    if not return_hidden:
        return ScoreOutput(logits, None, None)
    hidden = out.hidden_states
    return ScoreOutput(logits, hidden[-1][:, -1, :], hidden)


def class_logits(model: torch.nn.Module, batch: EncodedBatch, head: Head | Sequence[int]) -> torch.Tensor:
    """Class logits (B, C) for an encoded batch."""
    return forward_scores(model, **batch.model_inputs(), head=head).class_logits


def class_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the classes (last dim) from logits, float32, clamped at 0 against
    rounding; broadcasts (AFA: (B, 1, C) against (B, G, C) -> (B, G))."""
    log_p = torch.log_softmax(p_logits.float(), dim=-1)
    log_q = torch.log_softmax(q_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).clamp_min(0.0)
