"""``method: lora``: plain LoRA, the baseline, and its masked-input controls.

    L = L_cls                                        (masked_ce: none)
    L = L_cls + w * CE(x with k random words hidden) (masked_ce: random, the word-dropout
                                                      control that AFA has to beat)
    L = L_cls + w * CE(x with the k most-attended words hidden)   (masked_ce: focus, progressive
        attention masking after Tang et al., ACL 2019; its control is masked_ce: random)

The masked CE (`methods.masked_ce`) is the same component that AFA uses, so both hide words alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from afa_llm.attention import masking
from afa_llm.methods.base import MethodContext, TrainingMethod, classification_loss
from afa_llm.methods.masked_ce import MaskedCE, WordDropoutKeys

if TYPE_CHECKING:
    import torch

    from afa_llm.attention.clean_pass import CleanPass
    from afa_llm.model.task import EncodedBatch


class LoRAMethod(TrainingMethod):
    name = "lora"
    Keys = WordDropoutKeys
    summary = ("plain LoRA (the baseline); masked_ce=random adds the word-dropout control, masked_ce=focus "
               "the CE on a copy with the most-attended words hidden")

    def __init__(self, keys: WordDropoutKeys, ctx: MethodContext):
        super().__init__(keys, ctx)
        self.masked = MaskedCE(keys, ctx)

    def loss(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass,
             step: int) -> tuple[torch.Tensor, dict[str, float]]:
        loss_cls = classification_loss(clean, batch, self.ctx.class_weights)
        loss, metrics = loss_cls, {"loss_cls": loss_cls.item()}
        if self.keys.masked_ce != "none":
            k = self.masked.tokens_per_mask(batch)
            mask = self.hidden_words(batch, clean, k)
            loss = loss + self.keys.masked_ce_weight * self.masked.loss(model, batch, mask, metrics)
        return loss, metrics

    def hidden_words(self, batch: EncodedBatch, clean: CleanPass, k: torch.Tensor) -> torch.Tensor:
        """The words the masked CE hides: the top-k of the focus, or k at random."""
        if self.keys.masked_ce == "focus":
            return masking.top_k_masks(clean.focus, batch.text_mask, k)
        return self.masked.random_mask(batch, k)
