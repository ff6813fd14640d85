"""``method: lora``: plain LoRA, the baseline, and its word-dropout control.

    L = L_cls                                        (masked_ce: none)
    L = L_cls + w * CE(x with k random words hidden) (masked_ce: random, the word-dropout
                                                      control that AFA has to beat)
    L = L_cls + w * CE(x with the k most-attended words hidden)   (masked_ce: focus, progressive
        attention masking after Tang et al., ACL 2019; its control is masked_ce: random)

k = max(1, round(mask_ratio * n_text)). Hiding follows ``mask_mode`` as in AFA: the
hidden tokens are deleted from the attention (positions kept), or replaced by a filler.
`AFAMethod` extends this class, so both methods hide words in exactly the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from afa_llm.model.scoring import forward_scores
from afa_llm.attention import masking
from afa_llm.methods.base import MethodContext, MethodKeys, TrainingMethod, classification_loss


@dataclass
class WordDropoutKeys(MethodKeys):
    masked_ce: Literal["none", "random", "focus"] = "none"  # random: the word-dropout control
    masked_ce_weight: float = 0.5
    mask_ratio: float = 0.2  # rho: share of the text tokens hidden by a mask
    mask_mode: Literal["attention", "filler"] = "attention"
    filler_token: Optional[str] = None  # mask_mode=filler; default: the pad token

    def checks(self) -> dict[str, bool]:
        return {"masked_ce_weight": self.masked_ce_weight >= 0, "mask_ratio": 0 < self.mask_ratio < 1}


class LoRAMethod(TrainingMethod):
    name = "lora"
    Keys = WordDropoutKeys
    summary = ("plain LoRA (the baseline); masked_ce=random adds the word-dropout control, masked_ce=focus "
               "the CE on a copy with the most-attended words hidden")

    def __init__(self, keys: WordDropoutKeys, ctx: MethodContext):
        super().__init__(keys, ctx)
        self.filler_id = masking.filler_token_id(ctx.tokenizer, keys.filler_token)

    def loss(self, model, batch, clean, step):
        loss_cls = classification_loss(clean, batch)
        loss, metrics = loss_cls, {"loss_cls": loss_cls.item()}
        k = masking.masks_per_example(batch.text_mask.sum(-1), self.keys.mask_ratio)
        extra, hidden_mask = self.extra_terms(model, batch, clean, k, step, metrics)
        loss = loss + extra
        if self.keys.masked_ce != "none":
            loss = loss + self.keys.masked_ce_weight * self.masked_ce(model, batch, hidden_mask(), metrics)
        return loss, metrics

    def extra_terms(self, model, batch, clean, k, step, metrics):
        """A subclass's own loss terms, and how it picks the masked-CE mask (the top-k of the focus, or at random)."""
        if self.keys.masked_ce == "focus":
            return 0.0, lambda: masking.top_k_masks(clean.focus, batch.text_mask, k)
        return 0.0, lambda: masking.uniform_masks(batch.text_mask, k, 1, self.ctx.generator)[:, 0]

    def masked_ce(self, model, batch, mask: torch.Tensor, metrics: dict) -> torch.Tensor:
        masked = masking.hide_tokens(batch, mask.unsqueeze(1), self.keys.mask_mode, self.filler_id)
        logits = forward_scores(model, **masked.model_inputs(), label_token_ids=self.ctx.label_ids).class_logits
        loss = F.cross_entropy(logits, batch.labels)
        metrics["loss_masked_ce"] = loss.item()
        return loss
