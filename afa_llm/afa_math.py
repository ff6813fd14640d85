"""AFA's math as small, pure torch functions, with no model involved (design: AFA.md).

Shapes: B = batch, G = masks per example, L = sequence length (left-padded), C = classes.
``text_mask`` is bool (B, L), True on the example's *text* tokens (template, special and
padding tokens excluded). Masks are bool (B, G, L).

Step 1, focus:
    focus_distribution(answer_attention, text_mask) -> (B, L)   mean over layers/heads,
        renormalised over the text; raises ValueError on a row without text tokens.
Step 2, dynamic masking:
    mix_uniform(focus, text_mask, epsilon) -> (B, L)            (1-eps)*focus + eps*uniform
    masks_per_example(n_text, rho) -> (B,) long                 k = clamp(round(rho*n), 1, n)
    gumbel_top_k_masks(probs, text_mask, k, num_masks) -> (B, G, L)   k[b] distinct tokens
    uniform_masks(text_mask, k, num_masks) -> (B, G, L)         the word-dropout control
    mask_log_prob(probs, masks) -> (B, G)                       log pi(m_g|x), differentiable
Step 3, effect of a mask:
    mask_effect(clean_logits, masked_logits) -> (B, G)          KL(p(.|x) || p(.|x~_g))
    significance_labels(effect, threshold) -> (B, G) float      1[delta > tau]
    RunningMedian(window)                                       tau as running median
Step 5, policy gradient:
    combine_rewards(effect, discriminator_prob, source, mix_weight) -> (B, G)
    leave_one_out_advantage(rewards, normalize) -> (B, G)
    policy_gradient_loss(advantages, mask_log_probs) -> scalar
    focus_entropy(probs, text_mask) -> (B,)
Step 6 / extras:
    lambda_pg_schedule(step, warmup_steps, target) -> float
    lowest_effect_mask(masks, effect) -> (B, L)                 for masked_ce="fake"
    frequent_token_ids / frequent_focus_share / frequent_token_share   "fake focus" metric
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Mapping
from typing import Any, Literal

import torch

# Floor before log: keeps log finite (no -inf, no NaN grads) for zero-probability tokens.
LOG_FLOOR = 1e-12

RewardSource = Literal["delta", "discriminator", "mix"]


def _text_counts(text_mask: torch.Tensor) -> torch.Tensor:
    """Number of text tokens per example (B,); raises if an example has none."""
    n_text = text_mask.sum(dim=-1)
    if bool((n_text == 0).any()):
        raise ValueError("every example needs at least one text token (text_mask row is empty)")
    return n_text


def focus_distribution(answer_attention: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Focus a(i|x): attention from the answer position, restricted to the text.

    answer_attention: (B, n_layers, H, L), the answer-position attention rows of the chosen
    layers. Averaged over layers and heads, zeroed outside the text and renormalised over the
    text tokens -> (B, L) float32, summing to 1 per row. Differentiable. Raises ValueError on
    an example with no text tokens (empty texts are rejected upstream, so this is a bug).
    """
    _text_counts(text_mask)
    mean_row = answer_attention.float().mean(dim=(1, 2))
    on_text = mean_row * text_mask
    # The floor only matters if all text attention underflowed to 0; then focus is all 0 and
    # mix_uniform still yields a valid distribution.
    return on_text / on_text.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(on_text.dtype).tiny)


def mix_uniform(focus: torch.Tensor, text_mask: torch.Tensor, epsilon: float) -> torch.Tensor:
    """(1 - eps) * focus + eps * uniform-over-text, so that varied words get masked."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    n_text = _text_counts(text_mask)
    uniform = text_mask.to(focus.dtype) / n_text.unsqueeze(-1).to(focus.dtype)
    return (1.0 - epsilon) * focus + epsilon * uniform


def masks_per_example(n_text: torch.Tensor, rho: float) -> torch.Tensor:
    """Tokens per mask: k = max(1, round(rho * n_text)), clamped to n_text -> (B,) long."""
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    n_text = n_text.long()
    k = torch.round(n_text.double() * rho).long().clamp_min(1)
    return torch.minimum(k, n_text)


def _gumbel_noise(shape: tuple[int, ...], device: torch.device,
                  generator: torch.Generator | None) -> torch.Tensor:
    uniform = torch.rand(shape, device=device, generator=generator)
    # Clamp keeps -log(-log(u)) finite at u == 0.
    uniform = uniform.clamp(torch.finfo(uniform.dtype).tiny, 1.0 - 1e-7)
    return -torch.log(-torch.log(uniform))


def gumbel_top_k_masks(probs: torch.Tensor, text_mask: torch.Tensor, k: torch.Tensor,
                       num_masks: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw G masks per example, each k[b] distinct text tokens, without replacement.

    Gumbel-top-k: the top-k of log p + Gumbel noise is a sample without replacement from p
    (for k = 1 exactly a draw from p). Per-example k is handled by ranking the perturbed
    scores and keeping rank < k[b]. Non-text tokens score -inf, so they are never chosen.
    A sample has no gradient; use mask_log_prob for the policy's log-probability.
    The generator, if given, must live on probs' device. Returns bool (B, G, L).
    """
    if num_masks < 1:
        raise ValueError(f"num_masks must be >= 1, got {num_masks}")
    n_text = _text_counts(text_mask)
    k = k.to(device=probs.device, dtype=torch.long)
    if bool((k < 1).any()) or bool((k > n_text.to(k.device)).any()):
        raise ValueError("k must satisfy 1 <= k <= number of text tokens for every example")
    with torch.no_grad():
        batch, length = probs.shape
        log_p = probs.detach().float().clamp_min(LOG_FLOOR).log()
        noise = _gumbel_noise((batch, num_masks, length), probs.device, generator)
        scores = (log_p.unsqueeze(1) + noise).masked_fill(~text_mask.unsqueeze(1), float("-inf"))
        order = scores.argsort(dim=-1, descending=True)
        positions = torch.arange(length, device=probs.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(-1, order, positions)
        return rank < k.view(batch, 1, 1)


def uniform_masks(text_mask: torch.Tensor, k: torch.Tensor, num_masks: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random control (word dropout): k[b] text tokens drawn uniformly -> bool (B, G, L)."""
    n_text = _text_counts(text_mask)
    uniform = text_mask.float() / n_text.unsqueeze(-1).float()
    return gumbel_top_k_masks(uniform, text_mask, k, num_masks, generator)


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
    log_p = torch.log_softmax(clean_logits.float(), dim=-1).unsqueeze(1)
    log_q = torch.log_softmax(masked_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).clamp_min(0.0)


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


def focus_entropy(probs: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
    """Entropy of the focus over the text tokens, in nats -> (B,).

    Zero-probability entries contribute 0 with zero gradient (no NaN). Not trl's
    entropy_from_logits: importing trl costs ~10 s (it pulls in transformers and
    bitsandbytes), it routes CUDA inputs to a fused Triton kernel, and it would need log(p)
    with a finite fill for non-text tokens; three lines of torch are simpler.
    """
    p = probs * text_mask
    p_log_p = torch.where(p > 0, p * p.clamp_min(LOG_FLOOR).log(), torch.zeros_like(p))
    return -p_log_p.sum(dim=-1)


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


def frequent_token_ids(token_counts: Mapping[int, int], top_fraction: float = 0.01) -> torch.Tensor:
    """Ids of the most frequent token types: the top round(fraction * n_types), at least 1.

    Types with count 0 are ignored; ties break by the smaller id, so the result is stable.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    seen = [(token, count) for token, count in token_counts.items() if count > 0]
    if not seen:
        raise ValueError("token_counts is empty")
    n_frequent = max(1, round(top_fraction * len(seen)))
    ranked = sorted(seen, key=lambda item: (-item[1], item[0]))
    return torch.tensor([token for token, _ in ranked[:n_frequent]], dtype=torch.long)


def frequent_focus_share(focus: torch.Tensor, input_ids: torch.Tensor,
                         frequent_ids: torch.Tensor) -> torch.Tensor:
    """Share of each example's focus mass on frequent token ids -> (B,)."""
    is_frequent = torch.isin(input_ids, frequent_ids.to(input_ids.device))
    on_frequent = (focus * is_frequent).sum(dim=-1)
    return on_frequent / focus.sum(dim=-1).clamp_min(torch.finfo(focus.dtype).tiny)


def frequent_token_share(input_ids: torch.Tensor, text_mask: torch.Tensor,
                         frequent_ids: torch.Tensor) -> torch.Tensor:
    """Share of each example's text tokens that are frequent -> (B,).

    Its mean over examples is what a uniform focus would score on frequent_focus_share, so
    report mean(focus share) / mean(this): 1 means no preference for frequent words.
    """
    n_text = _text_counts(text_mask)
    is_frequent = torch.isin(input_ids, frequent_ids.to(input_ids.device)) & text_mask
    return is_frequent.sum(dim=-1).float() / n_text.float()


def frequent_shares(focus: torch.Tensor, input_ids: torch.Tensor, text_mask: torch.Tensor,
                    frequent_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: (focus share on frequent ids, their share of the text tokens), each (B,)."""
    return (frequent_focus_share(focus, input_ids, frequent_ids),
            frequent_token_share(input_ids, text_mask, frequent_ids))


def fake_focus_ratio(focus_shares: torch.Tensor, token_shares: torch.Tensor) -> float:
    """The fake-focus share: mean focus share / mean token share (1 = no preference)."""
    return (focus_shares.float().mean() / token_shares.float().mean().clamp(min=1e-8)).item()
