"""The clean pass: class logits, focus and hidden states from ONE forward.

Training (AFA's step 1), the focus report and the fake-focus metric all take focus
from here, so "focus" means one thing everywhere: the answer position's attention
over the text tokens, averaged over heads and the focus layers, renormalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from afa_llm.attention.focus_math import focus_distribution
from afa_llm.attention.probe import AnswerAttentionProbe
from afa_llm.model.scoring import forward_scores
from afa_llm.model.task import EncodedBatch


@dataclass
class CleanPass:
    class_logits: torch.Tensor  # (B, C)
    focus: torch.Tensor  # (B, L), sums to 1 over text tokens
    answer_hidden: torch.Tensor  # (B, D)
    last_hidden: torch.Tensor  # (B, L, D): final-layer hidden states (surrogate discriminator)
    layer_inputs: tuple[torch.Tensor, ...] = ()  # [i]: the input of decoder layer i, in the graph


def clean_pass(
    model: torch.nn.Module,
    batch: EncodedBatch,
    label_token_ids: Sequence[int],
    focus_layers: Sequence[int] | None = None,
    **forward_kwargs,
) -> CleanPass:
    """Forward ``batch`` once, recording the answer-position attention rows.

    ``forward_kwargs`` reach the attention functions (a method's ``attention_edits``)."""
    with AnswerAttentionProbe(model, focus_layers, batch.attention_mask) as probe:
        scores = forward_scores(model, **batch.model_inputs(), label_token_ids=label_token_ids, return_hidden=True,
                                **forward_kwargs)
        rows = probe.answer_attention()
    return CleanPass(
        class_logits=scores.class_logits,
        focus=focus_distribution(rows, batch.text_mask),
        answer_hidden=scores.answer_hidden,
        last_hidden=scores.hidden_states[-1],
        layer_inputs=scores.hidden_states,
    )
