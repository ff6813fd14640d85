"""The masked-input cross-entropy that plain LoRA's controls and AFA share: CE on a copy of the batch
with k words hidden, k = max(1, round(mask_ratio * n_text)).

Which words: at random (word dropout, the control every masking method is compared with), the
most-attended ones (``focus``), or for AFA a mask from its policy. Hiding follows ``mask_mode``: the
tokens are deleted from the attention (positions kept), or replaced by a filler token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

import torch
import torch.nn.functional as F

from afa_llm.attention import masking
from afa_llm.methods.base import MethodContext, MethodKeys
from afa_llm.model.scoring import forward_scores

if TYPE_CHECKING:
    from afa_llm.model.task import EncodedBatch


@dataclass
class WordDropoutKeys(MethodKeys):
    masked_ce: Literal["none", "random", "focus"] = "none"  # random: the word-dropout control
    masked_ce_weight: float = 0.5
    mask_ratio: float = 0.2  # rho: share of the text tokens hidden by a mask
    mask_mode: Literal["attention", "filler"] = "attention"
    filler_token: Optional[str] = None  # mask_mode=filler; default: the pad token

    def checks(self) -> dict[str, bool]:
        return {"masked_ce_weight": self.masked_ce_weight >= 0, "mask_ratio": 0 < self.mask_ratio < 1}


class MaskedCE:
    """CE of the class logits on a copy of the batch with one mask's tokens hidden."""

    def __init__(self, keys: WordDropoutKeys, ctx: MethodContext):
        self.keys, self.ctx = keys, ctx
        self.filler_id = masking.filler_token_id(ctx.tokenizer, keys.filler_token)

    def tokens_per_mask(self, batch: EncodedBatch) -> torch.Tensor:
        return masking.masks_per_example(batch.text_mask.sum(-1), self.keys.mask_ratio)

    def random_mask(self, batch: EncodedBatch, k: torch.Tensor) -> torch.Tensor:
        """k[b] text tokens drawn uniformly (the method's sampler) -> (B, L)."""
        return masking.uniform_masks(batch.text_mask, k, 1, self.ctx.generator)[:, 0]

    def loss(self, model: torch.nn.Module, batch: EncodedBatch, mask: torch.Tensor, metrics: dict) -> torch.Tensor:
        masked = masking.hide_tokens(batch, mask.unsqueeze(1), self.keys.mask_mode, self.filler_id)
        logits = forward_scores(model, **masked.model_inputs(), head=self.ctx.head).class_logits
        loss = F.cross_entropy(logits, batch.labels, weight=self.ctx.class_weights)
        metrics["loss_masked_ce"] = loss.item()
        return loss
