"""``method: afa``: Adversarial Feedback for Attention (docs/AFA.md).

    L = L_cls + lambda_pg(t) * (L_pg + beta * H(focus)) + w_masked * L_masked_ce

Steps 2-5 of docs/AFA.md happen here: Gumbel-top-k masks from the focus, the masked
passes (one batched no-grad forward), the measured effect, the significance labels, the
discriminator update (its own optimiser), the rewards and the leave-one-out advantages.
The formulas are pure functions in `methods.afa.math`; the discriminator heads are in
`methods.afa.discriminator`. The masked-input CE and the word hiding are inherited from
`LoRAMethod`, so AFA and the word-dropout control hide words the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from afa_llm.attention.focus_math import focus_entropy
from afa_llm.attention import masking
from afa_llm.methods.base import MethodContext
from afa_llm.methods.lora import LoRAMethod, WordDropoutKeys
from afa_llm.methods.afa import math as am
from afa_llm.methods.afa.discriminator import build_discriminator


@dataclass
class AFAKeys(WordDropoutKeys):
    masked_ce: Literal["none", "focus", "fake", "random"] = "none"
    num_masks: int = 4  # G
    uniform_mix: float = 0.1  # epsilon
    significance: Literal["median", "fixed"] = "median"
    significance_threshold: float = 0.01  # tau, when significance=fixed
    median_window: int = 512
    reward: Literal["delta", "discriminator", "mix"] = "delta"
    reward_mix_weight: float = 0.5
    advantage_norm: bool = True
    entropy_coef: float = 0.0  # beta: + beta * H(focus) is added to the loss (negative favours spread)
    lambda_pg: float = 0.5
    lambda_pg_warmup_steps: int = 20
    discriminator: Literal["pair", "surrogate"] = "pair"
    discriminator_hidden: int = 256
    discriminator_lr: float = 1e-3
    measure_frac: float = 0.25  # surrogate: share of masks whose effect is measured

    def checks(self) -> dict[str, bool]:
        return {**super().checks(),
                "num_masks": self.num_masks >= 2, "uniform_mix": 0 <= self.uniform_mix <= 1,
                "measure_frac": 0 < self.measure_frac <= 1, "lambda_pg": self.lambda_pg >= 0,
                "reward_mix_weight": 0 <= self.reward_mix_weight <= 1, "median_window": self.median_window >= 1,
                "significance_threshold": self.significance_threshold >= 0,
                "lambda_pg_warmup_steps": self.lambda_pg_warmup_steps >= 0,
                "discriminator_hidden": self.discriminator_hidden >= 1, "discriminator_lr": self.discriminator_lr > 0}


class AFAMethod(LoRAMethod):
    name = "afa"
    Keys = AFAKeys
    summary = "AFA: masker policy gradient on the focus + discriminator (docs/AFA.md)"

    def __init__(self, keys: AFAKeys, ctx: MethodContext):
        super().__init__(keys, ctx)
        disc = build_discriminator(keys.discriminator, ctx.hidden_size, keys.discriminator_hidden)
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=keys.discriminator_lr)
        self.disc, self.disc_opt = ctx.prepare(disc, disc_opt)
        self.median = am.RunningMedian(keys.median_window)

    def extra_terms(self, model, batch, clean, k, step, metrics):
        keys = self.keys
        pg_loss, masks, effect, pg_metrics = self.policy_gradient(model, batch, clean, k)
        lam = am.lambda_pg_schedule(step, keys.lambda_pg_warmup_steps, keys.lambda_pg)
        metrics.update(pg_metrics, lambda_pg=lam)
        return lam * pg_loss, lambda: self.masked_ce_mask(batch, k, masks, effect)

    # ---- AFA steps 2-5 -------------------------------------------------------------
    def policy_gradient(self, model, batch, clean, k):
        keys = self.keys
        probs = am.mix_uniform(clean.focus, batch.text_mask, keys.uniform_mix)
        masks = masking.gumbel_top_k_masks(probs.detach(), batch.text_mask, k, keys.num_masks, self.ctx.generator)
        log_probs = am.mask_log_prob(probs, masks)
        if keys.discriminator == "pair":
            effect, reward, metrics = self.pair_rewards(model, batch, clean, masks)
            measured_masks, measured_effect = masks, effect
        else:
            measured = max(1, round(keys.measure_frac * keys.num_masks))
            effect, reward, metrics = self.surrogate_rewards(model, batch, clean, masks, measured)
            measured_masks, measured_effect = masks[:, :measured], effect
        advantage = am.leave_one_out_advantage(reward, keys.advantage_norm)
        entropy = focus_entropy(probs, batch.text_mask)
        loss = am.policy_gradient_loss(advantage, log_probs) + keys.entropy_coef * entropy.mean()
        metrics.update(loss_pg=loss.item(), reward_mean=reward.mean().item(),
                       reward_std=reward.std(dim=1).mean().item(), effect_mean=effect.mean().item())
        return loss, measured_masks, measured_effect, metrics

    def _threshold(self, effect: torch.Tensor) -> float:
        if self.keys.significance == "fixed":
            return self.keys.significance_threshold
        return self.median.update(self.ctx.gather(effect.detach().flatten()).cpu())

    def _update_discriminator(self, loss: torch.Tensor) -> None:
        self.disc_opt.zero_grad(set_to_none=True)
        self.ctx.backward(loss)
        self.disc_opt.step()

    def _masked_scores(self, model, batch, masks, need_hidden):
        return masking.masked_scores(model, batch, masks, self.ctx.label_ids, self.keys.mask_mode,
                                     self.filler_id, need_hidden=need_hidden)

    def pair_rewards(self, model, batch, clean, masks):
        keys = self.keys
        masked_logits, masked_hidden = self._masked_scores(model, batch, masks, need_hidden=True)
        effect = am.mask_effect(clean.class_logits.detach(), masked_logits)
        target = am.significance_labels(effect, self._threshold(effect))
        logits = self.disc(clean.answer_hidden.detach().float(), masked_hidden.float())
        disc_loss = F.binary_cross_entropy_with_logits(logits, target)
        accuracy = ((logits > 0).float() == target).float().mean().item()  # before its update
        self._update_discriminator(disc_loss)
        belief = torch.sigmoid(logits.detach())
        reward = am.combine_rewards(effect, belief, keys.reward, keys.reward_mix_weight)
        return effect, reward, {"disc_loss": disc_loss.item(), "disc_acc": accuracy}

    def surrogate_rewards(self, model, batch, clean, masks, measured: int):
        """Measure ``measured`` masks per example; the surrogate scores all of them."""
        keys = self.keys
        masked_logits, _ = self._masked_scores(model, batch, masks[:, :measured], need_hidden=False)
        effect = am.mask_effect(clean.class_logits.detach(), masked_logits)
        threshold = self._threshold(effect)
        predicted = self.disc(clean.answer_hidden.detach().float(), clean.last_hidden.detach().float(), masks)
        target = torch.log1p(effect)
        disc_loss = F.mse_loss(predicted[:, :measured], target)
        # held-out: predictions were made before this update saw these measured deltas
        agree = (predicted[:, :measured].detach() > torch.log1p(torch.tensor(threshold))) == (effect > threshold)
        self._update_discriminator(disc_loss)
        surrogate_effect = torch.expm1(predicted.detach()).clamp(min=0)
        estimate = torch.cat([effect, surrogate_effect[:, measured:]], dim=1)
        belief = torch.sigmoid((predicted.detach() - torch.log1p(torch.tensor(threshold))) * 10)
        reward = am.combine_rewards(estimate, belief, keys.reward, keys.reward_mix_weight)
        return effect, reward, {"disc_loss": disc_loss.item(), "disc_acc": agree.float().mean().item()}

    def masked_ce_mask(self, batch, k, masks, effect) -> torch.Tensor:
        mode = self.keys.masked_ce
        if mode == "random":  # the word-dropout control, on top of AFA
            return masking.uniform_masks(batch.text_mask, k, 1, self.ctx.generator)[:, 0]
        if mode == "fake":
            return am.lowest_effect_mask(masks, effect)
        return masks[:, 0]  # "focus": a mask drawn from the focus distribution

    # ---- checkpointed state ----------------------------------------------------------
    def state_dict(self) -> dict:
        return {"median": self.median.state_dict(), "discriminator": self.ctx.unwrap(self.disc).state_dict(),
                "discriminator_optimizer": self.disc_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.median.load_state_dict(state["median"])
        self.ctx.unwrap(self.disc).load_state_dict(state["discriminator"])
        self.disc_opt.load_state_dict(state["discriminator_optimizer"])
