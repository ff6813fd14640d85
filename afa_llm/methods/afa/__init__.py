"""``method: afa``: Adversarial Feedback for Attention (docs/AFA.md).

    L = L_cls + lambda_pg(t) * (L_pg + beta * H(focus)) + w_masked * L_masked_ce

Steps 2-5 of docs/AFA.md happen here: Gumbel-top-k masks from the focus, the masked
passes (one batched no-grad forward), the measured effect, the significance labels, the
discriminator update (its own optimiser), the rewards and the leave-one-out advantages.
The formulas are pure functions in `methods.afa.math`; the discriminator heads are in
`methods.afa.discriminator`. The whole loss is written in `AFAMethod.loss`; the masked-input CE is the
component that plain LoRA's word-dropout control uses (`methods.masked_ce`), so both hide words alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from afa_llm.attention.focus_math import focus_entropy
from afa_llm.attention import masking
from afa_llm.methods.base import MethodContext, TrainingMethod, classification_loss
from afa_llm.methods.masked_ce import MaskedCE, WordDropoutKeys
from afa_llm.methods.afa import math as am
from afa_llm.methods.afa.discriminator import build_discriminator

if TYPE_CHECKING:
    from afa_llm.attention.clean_pass import CleanPass
    from afa_llm.model.task import EncodedBatch


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


class AFAMethod(TrainingMethod):
    name = "afa"
    Keys = AFAKeys
    summary = "AFA: masker policy gradient on the focus + discriminator (docs/AFA.md)"

    def __init__(self, keys: AFAKeys, ctx: MethodContext):
        super().__init__(keys, ctx)
        self.masked = MaskedCE(keys, ctx)
        disc = build_discriminator(keys.discriminator, ctx.hidden_size, keys.discriminator_hidden)
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=keys.discriminator_lr)
        self.disc, self.disc_opt = ctx.prepare(disc, disc_opt)
        self.median = am.RunningMedian(keys.median_window)

    def loss(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass,
             step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """L = L_cls + lambda_pg(t) * (L_pg + beta * H) [+ w * L_masked_ce]; the discriminator learns on the way."""
        keys = self.keys
        loss_cls = classification_loss(clean, batch, self.ctx.class_weights)
        metrics = {"loss_cls": loss_cls.item()}
        k = self.masked.tokens_per_mask(batch)
        # steps 2-3: masks drawn from the focus, and what hiding them does to the judgment
        probs = am.mix_uniform(clean.focus, batch.text_mask, keys.uniform_mix)
        masks = masking.gumbel_top_k_masks(probs.detach(), batch.text_mask, k, keys.num_masks, self.ctx.generator)
        effect, reward, disc_loss, reward_metrics = self.rewards(model, batch, clean, masks)
        # step 4: the discriminator's own update (its optimiser; the task model's gradients are untouched)
        self.update_discriminator(disc_loss)
        # step 5: the policy gradient that moves the focus towards the masks that mattered
        pg_loss = self.policy_gradient_loss(probs, masks, reward, batch)
        lam = am.lambda_pg_schedule(step, keys.lambda_pg_warmup_steps, keys.lambda_pg)
        metrics.update(reward_metrics, loss_pg=pg_loss.item(), reward_mean=reward.mean().item(),
                       reward_std=reward.std(dim=1).mean().item(), effect_mean=effect.mean().item(), lambda_pg=lam)
        loss = loss_cls + lam * pg_loss
        if keys.masked_ce != "none":
            measured = masks if keys.discriminator == "pair" else masks[:, :self.measured_masks()]
            mask = self.masked_ce_mask(batch, k, measured, effect)
            loss = loss + keys.masked_ce_weight * self.masked.loss(model, batch, mask, metrics)
        return loss, metrics

    # ---- AFA steps 2-5 -------------------------------------------------------------
    def measured_masks(self) -> int:
        """Masks per example whose effect is measured (all of them for the pair discriminator)."""
        if self.keys.discriminator == "pair":
            return self.keys.num_masks
        return max(1, round(self.keys.measure_frac * self.keys.num_masks))

    def rewards(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass,
                masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
        """The masks' measured effect, their rewards, the discriminator's loss and metrics."""
        if self.keys.discriminator == "pair":
            return self.pair_rewards(model, batch, clean, masks)
        return self.surrogate_rewards(model, batch, clean, masks, self.measured_masks())

    def policy_gradient_loss(self, probs: torch.Tensor, masks: torch.Tensor, reward: torch.Tensor,
                             batch: EncodedBatch) -> torch.Tensor:
        """REINFORCE with leave-one-out advantages over the G masks, plus beta * H(focus)."""
        log_probs = am.mask_log_prob(probs, masks)
        advantage = am.leave_one_out_advantage(reward, self.keys.advantage_norm)
        entropy = focus_entropy(probs, batch.text_mask)
        return am.policy_gradient_loss(advantage, log_probs) + self.keys.entropy_coef * entropy.mean()

    def _threshold(self, effect: torch.Tensor) -> float:
        if self.keys.significance == "fixed":
            return self.keys.significance_threshold
        return self.median.update(self.ctx.gather(effect.detach().flatten()).cpu())

    def update_discriminator(self, loss: torch.Tensor) -> None:
        self.disc_opt.zero_grad(set_to_none=True)
        self.ctx.backward(loss)
        self.disc_opt.step()

    def _masked_scores(self, model, batch, masks, need_hidden):
        return masking.masked_scores(model, batch, masks, self.ctx.head, self.keys.mask_mode,
                                     self.masked.filler_id, need_hidden=need_hidden)

    def pair_rewards(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass,
                     masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
        """Measure every mask; the pair discriminator classifies (clean, masked) answer states."""
        keys = self.keys
        masked_logits, masked_hidden = self._masked_scores(model, batch, masks, need_hidden=True)
        effect = am.mask_effect(clean.class_logits.detach(), masked_logits)
        target = am.significance_labels(effect, self._threshold(effect))
        logits = self.disc(clean.answer_hidden.detach().float(), masked_hidden.float())
        disc_loss = F.binary_cross_entropy_with_logits(logits, target)
        accuracy = ((logits > 0).float() == target).float().mean().item()  # before its update
        belief = torch.sigmoid(logits.detach())
        reward = am.combine_rewards(effect, belief, keys.reward, keys.reward_mix_weight)
        return effect, reward, disc_loss, {"disc_loss": disc_loss.item(), "disc_acc": accuracy}

    def surrogate_rewards(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass, masks: torch.Tensor,
                          measured: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
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
        surrogate_effect = torch.expm1(predicted.detach()).clamp(min=0)
        estimate = torch.cat([effect, surrogate_effect[:, measured:]], dim=1)
        belief = torch.sigmoid((predicted.detach() - torch.log1p(torch.tensor(threshold))) * 10)
        reward = am.combine_rewards(estimate, belief, keys.reward, keys.reward_mix_weight)
        return effect, reward, disc_loss, {"disc_loss": disc_loss.item(), "disc_acc": agree.float().mean().item()}

    def masked_ce_mask(self, batch: EncodedBatch, k: torch.Tensor, masks: torch.Tensor,
                       effect: torch.Tensor) -> torch.Tensor:
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
