"""One AFA training step, composed from the pure functions in `afa_math`.

`TrainingObjective` turns a batch and its clean pass into the masker-LoRA loss:

    L = L_cls + lambda_pg(step) * (L_pg + beta * H(focus)) + w_masked * L_masked_ce

Steps 2-5 of docs/AFA.md happen here: Gumbel-top-k masks from the focus, the
masked passes (one batched no-grad forward), the measured effect, the significance
labels, the discriminator update (its own optimiser), the rewards and the
leave-one-out advantages. With ``method=lora`` only ``L_cls`` (and the optional
masked-input CE, e.g. the ``random`` word-dropout control) remain.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from . import afa_math as am
from .config import TrainConfig
from .focus import CleanPass
from .scoring import forward_scores
from .task import EncodedBatch, drop_unattended


def hide_tokens(batch: EncodedBatch, masks: torch.Tensor, mode: str, filler_id: int) -> EncodedBatch:
    """Expand a (B, L) batch to B*G copies (row b*G + g: example b under mask g).

    ``attention`` deletes the masked tokens and keeps the original position ids of the
    rest: the same result as zeroing their attention-mask entries, on ~rho fewer columns.
    ``filler`` replaces them with ``filler_id`` (shape (B*G, L)).
    """
    groups = masks.shape[1]
    flat = masks.reshape(-1, masks.shape[-1])

    def expand(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(groups, dim=0)

    input_ids, attention_mask = expand(batch.input_ids), expand(batch.attention_mask)
    if mode == "attention":
        attention_mask = attention_mask.masked_fill(flat, 0)
    else:
        input_ids = input_ids.masked_fill(flat, filler_id)
    hidden = EncodedBatch(input_ids, attention_mask, expand(batch.position_ids), expand(batch.text_mask) & ~flat)
    return drop_unattended(hidden, filler_id) if mode == "attention" else hidden


def masked_scores(model, batch, masks, label_ids, mode, filler_id, need_hidden):
    """Class logits (B, G, C) and answer states (B, G, D) of the masked inputs, no grad."""
    b, g = masks.shape[:2]
    with torch.no_grad():
        out = forward_scores(model, **hide_tokens(batch, masks, mode, filler_id).model_inputs(),
                             label_token_ids=label_ids, return_hidden=need_hidden)
    hidden = out.answer_hidden.view(b, g, -1) if need_hidden else None
    return out.class_logits.view(b, g, -1), hidden


class TrainingObjective:
    """Computes the loss of one step and updates the discriminator as a side effect."""

    def __init__(self, cfg: TrainConfig, label_ids: list[int], filler_id: int, discriminator=None,
                 discriminator_optimizer=None, backward: Callable = torch.Tensor.backward,
                 gather: Callable = lambda t: t, generator: torch.Generator | None = None):
        self.cfg, self.label_ids, self.filler_id = cfg, label_ids, filler_id
        self.disc, self.disc_opt = discriminator, discriminator_optimizer
        self.backward, self.gather, self.generator = backward, gather, generator
        self.median = am.RunningMedian(cfg.median_window)

    def __call__(self, model, batch: EncodedBatch, clean: CleanPass, step: int):
        cfg = self.cfg
        loss_cls = F.cross_entropy(clean.class_logits, batch.labels)
        loss, metrics = loss_cls, {"loss_cls": loss_cls.item()}
        k = am.masks_per_example(batch.text_mask.sum(-1), cfg.mask_ratio)
        masks = effect = None
        if cfg.method == "afa":
            pg_loss, masks, effect, pg_metrics = self.policy_gradient(model, batch, clean, k, step)
            lam = am.lambda_pg_schedule(step, cfg.lambda_pg_warmup_steps, cfg.lambda_pg)
            loss = loss + lam * pg_loss
            metrics.update(pg_metrics, lambda_pg=lam)
        if cfg.masked_ce != "none":
            hidden_mask = self.masked_ce_mask(batch, k, masks, effect)
            masked = hide_tokens(batch, hidden_mask.unsqueeze(1), cfg.mask_mode, self.filler_id)
            logits = forward_scores(model, **masked.model_inputs(), label_token_ids=self.label_ids).class_logits
            loss_masked = F.cross_entropy(logits, batch.labels)
            loss = loss + cfg.masked_ce_weight * loss_masked
            metrics["loss_masked_ce"] = loss_masked.item()
        return loss, metrics

    # ---- AFA steps 2-5 -------------------------------------------------------------
    def policy_gradient(self, model, batch, clean, k, step):
        cfg = self.cfg
        probs = am.mix_uniform(clean.focus, batch.text_mask, cfg.uniform_mix)
        masks = am.gumbel_top_k_masks(probs.detach(), batch.text_mask, k, cfg.num_masks, self.generator)
        log_probs = am.mask_log_prob(probs, masks)
        if cfg.discriminator == "pair":
            effect, reward, metrics = self.pair_rewards(model, batch, clean, masks)
            measured_masks, measured_effect = masks, effect
        else:
            measured = max(1, round(cfg.measure_frac * cfg.num_masks))
            effect, reward, metrics = self.surrogate_rewards(model, batch, clean, masks, measured)
            measured_masks, measured_effect = masks[:, :measured], effect
        advantage = am.leave_one_out_advantage(reward, cfg.advantage_norm)
        entropy = am.focus_entropy(probs, batch.text_mask)
        loss = am.policy_gradient_loss(advantage, log_probs) + cfg.entropy_coef * entropy.mean()
        metrics.update(loss_pg=loss.item(), reward_mean=reward.mean().item(),
                       reward_std=reward.std(dim=1).mean().item(), effect_mean=effect.mean().item())
        return loss, measured_masks, measured_effect, metrics

    def _threshold(self, effect: torch.Tensor) -> float:
        if self.cfg.significance == "fixed":
            return self.cfg.significance_threshold
        return self.median.update(self.gather(effect.detach().flatten()).cpu())

    def _update_discriminator(self, loss: torch.Tensor) -> None:
        self.disc_opt.zero_grad(set_to_none=True)
        self.backward(loss)
        self.disc_opt.step()

    def pair_rewards(self, model, batch, clean, masks):
        cfg = self.cfg
        masked_logits, masked_hidden = masked_scores(model, batch, masks, self.label_ids, cfg.mask_mode,
                                                     self.filler_id, need_hidden=True)
        effect = am.mask_effect(clean.class_logits.detach(), masked_logits)
        target = am.significance_labels(effect, self._threshold(effect))
        logits = self.disc(clean.answer_hidden.detach().float(), masked_hidden.float())
        disc_loss = F.binary_cross_entropy_with_logits(logits, target)
        accuracy = ((logits > 0).float() == target).float().mean().item()  # before its update
        self._update_discriminator(disc_loss)
        belief = torch.sigmoid(logits.detach())
        reward = am.combine_rewards(effect, belief, cfg.reward, cfg.reward_mix_weight)
        return effect, reward, {"disc_loss": disc_loss.item(), "disc_acc": accuracy}

    def surrogate_rewards(self, model, batch, clean, masks, measured: int):
        """Measure ``measured`` masks per example; the surrogate scores all of them."""
        cfg = self.cfg
        masked_logits, _ = masked_scores(model, batch, masks[:, :measured], self.label_ids, cfg.mask_mode,
                                         self.filler_id, need_hidden=False)
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
        reward = am.combine_rewards(estimate, belief, cfg.reward, cfg.reward_mix_weight)
        return effect, reward, {"disc_loss": disc_loss.item(), "disc_acc": agree.float().mean().item()}

    def masked_ce_mask(self, batch, k, masks, effect) -> torch.Tensor:
        mode = self.cfg.masked_ce
        if mode == "random" or masks is None:  # the word-dropout control
            return am.uniform_masks(batch.text_mask, k, 1, self.generator)[:, 0]
        if mode == "fake":
            return am.lowest_effect_mask(masks, effect)
        return masks[:, 0]  # "focus": a mask drawn from the focus distribution

    def state_dict(self) -> dict:
        return {"median": self.median.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.median.load_state_dict(state["median"])
