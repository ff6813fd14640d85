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
from afa_llm.model.heads import Head, as_head, prompt_forward
from afa_llm.model.scoring import score_output
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
    head: Head | Sequence[int],
    focus_layers: Sequence[int] | None = None,
    **forward_kwargs,
) -> CleanPass:
    """Forward ``batch`` once, recording the answer-position attention rows.

    ``forward_kwargs`` reach the attention functions (a method's ``attention_edits``). The probe sees the
    prompt's pass only; label words of several tokens read their later tokens after it."""
    head, inputs = as_head(head), batch.model_inputs()
    with AnswerAttentionProbe(model, focus_layers, batch.attention_mask) as probe:
        out = prompt_forward(model, inputs, head, True, **forward_kwargs)
        rows = probe.answer_attention()
    scores = score_output(model, out, inputs, head, True)
    return CleanPass(
        class_logits=scores.class_logits,
        focus=focus_distribution(rows, batch.text_mask),
        answer_hidden=scores.answer_hidden,
        last_hidden=scores.hidden_states[-1],
        layer_inputs=scores.hidden_states,
    )
