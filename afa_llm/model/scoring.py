"""Label-word scoring: the one function that both training and evaluation use.

Class logits are the next-token logits of the label words at the answer position
(the last prompt token; prompts are left-padded so that is index -1). One forward
pass per batch; ``logits_to_keep=1`` makes the LM head run on the last position only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from afa_llm.model.task import EncodedBatch


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
    label_token_ids: list[int] | torch.Tensor,
    *,
    return_hidden: bool = False,
    **forward_kwargs,
) -> ScoreOutput:
    """One forward pass -> class logits (B, C) (+ the answer-position hidden state).

    ``forward_kwargs`` reach the attention functions (e.g. ``attention_edits``)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=1,
        output_hidden_states=return_hidden,
        use_cache=False,
        **forward_kwargs,
    )
    ids = torch.as_tensor(label_token_ids, device=out.logits.device)
    class_logits = out.logits[:, -1, :].index_select(-1, ids).float()
    if not return_hidden:
        return ScoreOutput(class_logits, None, None)
    hidden = out.hidden_states
    return ScoreOutput(class_logits, hidden[-1][:, -1, :], hidden)


def class_logits(model: torch.nn.Module, batch: EncodedBatch, label_token_ids) -> torch.Tensor:
    """Class logits (B, C) for an encoded batch."""
    return forward_scores(model, **batch.model_inputs(), label_token_ids=label_token_ids).class_logits


def class_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the classes (last dim) from logits, float32, clamped at 0 against
    rounding; broadcasts (AFA: (B, 1, C) against (B, G, C) -> (B, G))."""
    log_p = torch.log_softmax(p_logits.float(), dim=-1)
    log_q = torch.log_softmax(q_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).clamp_min(0.0)
