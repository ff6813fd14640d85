"""AFA's own math as small, pure torch functions, with no model involved (docs/AFA.md).

Shapes: B = batch, G = masks per example, L = sequence length (left-padded), C = classes.
Masks are bool (B, G, L); drawing them is shared with word dropout (`afa_llm.attention.masking`),
the focus itself with every method (`afa_llm.attention.focus_math`).

Step 2, the masking policy:
    mix_uniform(focus, text_mask, epsilon) -> (B, L)            (1-eps)*focus + eps*uniform
    mask_log_prob(probs, masks) -> (B, G)                       log pi(m_g|x), differentiable
Step 3, effect of a mask:
    mask_effect(clean_logits, masked_logits) -> (B, G)          KL(p(.|x) || p(.|x~_g))
    significance_labels(effect, threshold) -> (B, G) float      1[delta > tau]
    RunningMedian(window)                                       tau as running median
Step 5, policy gradient:
    combine_rewards(effect, discriminator_prob, source, mix_weight) -> (B, G)
    leave_one_out_advantage(rewards, normalize) -> (B, G)
    policy_gradient_loss(advantages, mask_log_probs) -> scalar
Step 6 / extras:
    lambda_pg_schedule(step, warmup_steps, target) -> float
    lowest_effect_mask(masks, effect) -> (B, L)                 for masked_ce="fake"
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping
from typing import Any, Literal

import torch

from afa_llm.attention.focus_math import LOG_FLOOR, _text_counts
from afa_llm.model.scoring import class_kl

RewardSource = Literal["delta", "discriminator", "mix"]


def mix_uniform(focus: torch.Tensor, text_mask: torch.Tensor, epsilon: float) -> torch.Tensor:
    """(1 - eps) * focus + eps * uniform-over-text, so that varied words get masked."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    n_text = _text_counts(text_mask)
    uniform = text_mask.to(focus.dtype) / n_text.unsqueeze(-1).to(focus.dtype)
    return (1.0 - epsilon) * focus + epsilon * uniform


def mask_log_prob(probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """log pi(m_g|x) = sum of log probs of the masked tokens -> (B, G), differentiable in probs.

    probs should be the mixed distribution the masks were drawn from.
    """
    log_p = probs.clamp_min(LOG_FLOOR).log()
    return torch.einsum("bgl,bl->bg", masks.to(log_p.dtype), log_p)


def mask_effect(clean_logits: torch.Tensor, masked_logits: torch.Tensor) -> torch.Tensor:
    """delta_g = KL(p(.|x) || p(.|x~_g)) from class logits (B, C) and (B, G, C) -> (B, G).

    Computed in float32 from log_softmax; clamped at 0 against rounding.
    """
    return class_kl(clean_logits.unsqueeze(1), masked_logits)


def significance_labels(effect: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """s_g = 1[delta_g > tau] as float {0, 1}, the discriminator's BCE target."""
    return (effect.detach() > threshold).float()


class RunningMedian:
    """Median of the most recent ``window`` effects: the running threshold tau."""

    def __init__(self, window: int = 1024) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._values: deque[float] = deque(maxlen=window)

    def __len__(self) -> int:
        return len(self._values)

    def update(self, values: torch.Tensor) -> float:
        """Add the new effects, then return the median of the buffer."""
        self._values.extend(values.detach().float().flatten().tolist())
        if not self._values:
            raise ValueError("RunningMedian has no values yet")
        return float(statistics.median(self._values))

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "values": list(self._values)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # Keeps this object's window; a longer saved buffer keeps its most recent values.
        self._values = deque((float(v) for v in state["values"]), maxlen=self.window)


def combine_rewards(effect: torch.Tensor, discriminator_prob: torch.Tensor | None,
                    source: RewardSource, mix_weight: float = 0.5) -> torch.Tensor:
    """Reward r_g (B, G) for each mask, detached.

    - "delta": the measured effect delta_g, raw (leave_one_out_advantage can normalise).
    - "discriminator": D's probability that the mask mattered.
    - "mix": w * delta_g / max_g(delta) + (1 - w) * D. Dividing by the group's largest effect
      puts delta on D's [0, 1] scale and makes it comparable across examples, whose KL
      magnitudes differ by orders, so that w means what it says.
    """
    if source == "delta":
        return effect.detach()
    if discriminator_prob is None:
        raise ValueError(f"reward source {source!r} needs discriminator_prob")
    if source == "discriminator":
        return discriminator_prob.detach()
    if source == "mix":
        if not 0.0 <= mix_weight <= 1.0:
            raise ValueError(f"mix_weight must be in [0, 1], got {mix_weight}")
        effect = effect.detach()
        scaled = effect / (effect.amax(dim=-1, keepdim=True) + 1e-8)
        return mix_weight * scaled + (1.0 - mix_weight) * discriminator_prob.detach()
    raise ValueError(f"reward source must be delta, discriminator or mix; got {source!r}")


def leave_one_out_advantage(rewards: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """A_g = r_g - mean of the other G-1 rewards of the same example -> (B, G).

    Equals G/(G-1) * (r_g - group mean), so it sums to 0 per group. With normalize=True it is
    divided by the group's (unbiased) std + 1e-6, as GRPO does. Needs G >= 2.
    """
    group = rewards.shape[-1]
    if group < 2:
        raise ValueError(f"leave-one-out advantage needs G >= 2 masks per example, got {group}")
    rewards = rewards.detach().float()
    others_mean = (rewards.sum(dim=-1, keepdim=True) - rewards) / (group - 1)
    advantages = rewards - others_mean
    if normalize:
        advantages = advantages / (rewards.std(dim=-1, keepdim=True) + 1e-6)
    return advantages


def policy_gradient_loss(advantages: torch.Tensor, mask_log_probs: torch.Tensor) -> torch.Tensor:
    """L_pg = -mean(A * log pi(m|x)); advantages are constants (detached)."""
    return -(advantages.detach() * mask_log_probs).mean()


def lambda_pg_schedule(step: int, warmup_steps: int, target: float) -> float:
    """lambda_pg: linear warm-up from 0 (step 0) to target (step >= warmup_steps)."""
    if step < 0 or warmup_steps < 0:
        raise ValueError(f"step and warmup_steps must be >= 0, got {step}, {warmup_steps}")
    if warmup_steps == 0:
        return float(target)
    return float(target) * min(1.0, step / warmup_steps)


def lowest_effect_mask(masks: torch.Tensor, effect: torch.Tensor) -> torch.Tensor:
    """Per example, the mask with the smallest effect (fake focus) -> bool (B, L)."""
    best = effect.argmin(dim=-1)
    return masks[torch.arange(masks.shape[0], device=masks.device), best]
