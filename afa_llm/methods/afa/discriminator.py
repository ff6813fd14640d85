"""AFA's discriminator heads (docs/AFA.md, step 4), each a small MLP with its own optimiser.

- `PairDiscriminator` ("pair"): sees the clean and the masked answer states,
  D(h(x), h(x~), h(x) - h(x~)), and predicts whether the mask mattered (s_g).
- `SurrogateDiscriminator` ("surrogate"): sees only the clean pass: h(x) and the mean
  clean hidden state of the masked tokens, and regresses the mask's effect
  (log1p(delta)). Masks it scores need no masked forward pass, which is the
  expensive part of an AFA step.

Both take detached hidden states: the discriminator never sends gradients into the LLM.
"""

from __future__ import annotations

import torch
from torch import nn


def _mlp(in_features: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(in_features), nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, 1))


class PairDiscriminator(nn.Module):
    def __init__(self, hidden_size: int, hidden: int = 256):
        super().__init__()
        self.net = _mlp(3 * hidden_size, hidden)

    def forward(self, clean: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """clean (B, D), masked (B, G, D) -> logits (B, G) that the mask was significant."""
        clean = clean.unsqueeze(1).expand_as(masked)
        return self.net(torch.cat([clean, masked, clean - masked], dim=-1)).squeeze(-1)


class SurrogateDiscriminator(nn.Module):
    def __init__(self, hidden_size: int, hidden: int = 256):
        super().__init__()
        self.net = _mlp(2 * hidden_size, hidden)

    def forward(self, answer: torch.Tensor, token_states: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """answer (B, D), token_states (B, L, D), masks (B, G, L) -> predicted log1p(effect) (B, G)."""
        weights = masks.float() / masks.float().sum(-1, keepdim=True).clamp(min=1)
        pooled = torch.einsum("bgl,bld->bgd", weights, token_states)
        answer = answer.unsqueeze(1).expand_as(pooled)
        return self.net(torch.cat([answer, pooled], dim=-1)).squeeze(-1)


def build_discriminator(kind: str, hidden_size: int, hidden: int) -> nn.Module:
    return PairDiscriminator(hidden_size, hidden) if kind == "pair" else SurrogateDiscriminator(hidden_size, hidden)
