"""Adversarial training of the attention scores: ``at``, ``vat``, ``attn_rp`` and ``iat``.

After Kitada & Iyatomi (Attention AT/iAT, IEEE Access 2021; Attention VAT, Applied
Intelligence 2022), ported to a decoder LLM with LoRA (docs/ATTENTION_AT.md). A
perturbation ``r`` is added to the pre-softmax attention scores of the answer row (or of
every row) of the ``adv_layers``, for all query heads, through the one attention hook:

    at       r = eps * g / |g|,   g = dL_cls/dr at r = 0;  L = L_cls + lambda * CE(s + r)
    vat      d ~ N(0, I) centred; g = d KL(p^ || p(s + xi d)) / dr  (power iterations);
             r = eps * g / |g|;   L = L_cls + lambda * KL(p^ || p(s + r)), p^ = p(s) fixed
    attn_rp  r = eps * d / |d| with a random centred d: the control of the same norm
    iat      experimental: r = -eps * g / |g|, which is what the released iAT code computes
             (a loss-decreasing direction; the paper's iAT could not be read)

Perturbed passes start at the lowest perturbed layer from the clean pass's hidden state
(`decoder_layers.start_at_layer`): the layers below are unchanged by ``r``, so this is
exact, and the gradient reaches their LoRA weights once through the clean graph. Each
step logs the adversarial CE and KL, the KL of a random direction of the same norm (VAT's
random start when ``adv_xi == adv_eps``, RP's own perturbation; otherwise one more pass), the
perturbation norm, epsilon as the RMS per edited entry, and the share of the squared norm
on the first real token (the attention sink).
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, Optional

import torch
import torch.nn.functional as F

from afa_llm.attention.hook import EDITS_KWARG, ScorePerturbation
from afa_llm.attention.decoder_layers import normalise_layers, start_at_layer, unwrap_model
from afa_llm.model.heads import as_head
from afa_llm.model.scoring import class_kl, forward_scores
from afa_llm.methods import adversarial_math as adv
from afa_llm.methods.base import MethodContext, MethodKeys, TrainingMethod, classification_loss

if TYPE_CHECKING:
    from afa_llm.attention.clean_pass import CleanPass
    from afa_llm.model.task import EncodedBatch


@dataclass
class AdversarialKeys(MethodKeys):
    adv_eps: float = 1.0  # the perturbation's L2 norm (per example, or per row with adv_norm_scope=row)
    adv_xi: float = 1.0  # vat: the finite-difference step of the power iteration
    adv_power_iters: int = 1  # vat
    adv_lambda: float = 1.0  # weight of the adversarial term
    adv_layers: Optional[list] = None  # None: the focus layers
    adv_rows: Literal["answer", "all"] = "answer"
    adv_norm_scope: Literal["example", "row"] = "example"
    adv_exclude: list = field(default_factory=list)  # first_token and/or answer_token

    def checks(self) -> dict[str, bool]:
        return {"adv_eps": self.adv_eps >= 0, "adv_xi": self.adv_xi > 0, "adv_power_iters": self.adv_power_iters >= 1,
                "adv_lambda": self.adv_lambda >= 0, "adv_exclude": set(self.adv_exclude) <= set(adv.EXCLUDABLE)}


class AdversarialAttention(TrainingMethod):
    """The shared step: clean pass -> direction -> normalise -> perturbed pass -> loss."""

    Keys = AdversarialKeys
    edits_attention = True
    adversarial_loss: ClassVar[Literal["ce", "kl"]] = "ce"
    needs_clean_gradient: ClassVar[bool] = False  # at / iat: g comes from the clean pass

    def __init__(self, keys: AdversarialKeys, ctx: MethodContext):
        super().__init__(keys, ctx)
        layers = keys.adv_layers if keys.adv_layers is not None else ctx.focus_layers
        self.layers = normalise_layers(layers, ctx.num_layers)
        self.lowest = min(self.layers)
        self._zero: list[torch.Tensor] | None = None

    # ---- the pieces -----------------------------------------------------------------
    def shapes(self, batch: EncodedBatch) -> list[tuple[int, ...]]:
        b, length = batch.input_ids.shape
        row = (length,) if self.keys.adv_rows == "answer" else (length, length)
        return [(b, self.ctx.num_heads, *row) for _ in self.layers]

    def edits(self, directions: list[torch.Tensor]) -> dict:
        rows = "last" if self.keys.adv_rows == "answer" else "all"
        return {EDITS_KWARG: {layer: ScorePerturbation(rows=rows, r=r) for layer, r in zip(self.layers, directions)}}

    def forward_kwargs(self, batch: EncodedBatch) -> dict:
        if not self.needs_clean_gradient:
            return {}
        device = batch.input_ids.device
        self._zero = [torch.zeros(s, device=device, requires_grad=True) for s in self.shapes(batch)]
        return self.edits(self._zero)

    def perturbed_logits(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass, r: list[torch.Tensor],
                         *, grad: bool) -> torch.Tensor:
        """Class logits with ``r`` added; from layer `lowest` on, unless checkpointing or the head forbids it."""
        base = unwrap_model(model)
        start = clean.layer_inputs[self.lowest]
        # the layers below are skipped unless checkpointing forbids it, or the head reads the prompt's KV cache
        # (label words of several tokens), which skipped layers never fill
        skip = not getattr(base, "is_activation_checkpointing", False) and not as_head(self.ctx.head).reads_cache
        hidden = start if grad else start.detach()
        with torch.set_grad_enabled(grad or any(t.requires_grad for t in r)), \
                (start_at_layer(model, self.lowest, hidden) if skip else contextlib.nullcontext()):
            return forward_scores(model, **batch.model_inputs(), head=self.ctx.head,
                                  **self.edits(r)).class_logits

    def random_direction(self, batch: EncodedBatch, valid: torch.Tensor, step: int,
                         salt: int = 0) -> list[torch.Tensor]:
        lengths = (batch.attention_mask != 0).sum(-1)
        seeds = [zlib.crc32(row[-int(n):].cpu().numpy().tobytes()) ^ (self.ctx.seed * 1_000_003 + step * 7919 + salt)
                 for row, n in zip(batch.input_ids, lengths)]
        return adv.random_directions(self.shapes(batch), valid, lengths, seeds)

    def direction(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass, loss_cls: torch.Tensor,
                  valid: torch.Tensor, step: int) -> list[torch.Tensor]:
        raise NotImplementedError

    # ---- the step -------------------------------------------------------------------
    def loss(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass,
             step: int) -> tuple[torch.Tensor, dict[str, float]]:
        keys = self.keys
        loss_cls = classification_loss(clean, batch, self.ctx.class_weights)
        valid = adv.valid_entries(batch.attention_mask, keys.adv_rows, keys.adv_exclude)
        direction = self.direction(model, batch, clean, loss_cls, valid, step)
        r = [t.detach() for t in adv.normalise(direction, valid, keys.adv_eps, keys.adv_norm_scope)]
        logits = self.perturbed_logits(model, batch, clean, r, grad=True)
        p_hat = clean.class_logits.detach()
        kl = class_kl(p_hat, logits).mean()
        ce = F.cross_entropy(logits, batch.labels, weight=self.ctx.class_weights)
        term = ce if self.adversarial_loss == "ce" else kl
        metrics = {"loss_cls": loss_cls.item(), "adv_ce": ce.item(), "adv_kl": kl.item(),
                   **self.diagnostics(model, batch, clean, r, valid, step, kl)}
        return loss_cls + keys.adv_lambda * term, metrics

    def random_kl(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass, valid: torch.Tensor, step: int,
                  adv_kl: torch.Tensor) -> float:
        """KL(p^ || p(s + r_random)) for a random centred direction of norm eps: one more pass."""
        keys = self.keys
        random = adv.normalise(self.random_direction(batch, valid, step, salt=1), valid, keys.adv_eps,
                               keys.adv_norm_scope)
        with torch.no_grad():
            logits = self.perturbed_logits(model, batch, clean, random, grad=False)
        return class_kl(clean.class_logits.detach(), logits).mean().item()

    def diagnostics(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass, r: list[torch.Tensor],
                    valid: torch.Tensor, step: int, adv_kl: torch.Tensor) -> dict[str, float]:
        keys = self.keys
        random_kl = self.random_kl(model, batch, clean, valid, step, adv_kl)
        first = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
        first[torch.arange(first.shape[0]), adv.first_real_token(batch.attention_mask)] = True
        norm = sum(t.pow(2).flatten(1).sum(1) for t in r).sqrt()
        rms = adv.eps_rms(keys.adv_eps, valid, len(self.layers), self.ctx.num_heads, keys.adv_norm_scope)
        return {"adv_random_kl": random_kl, "adv_norm": norm.mean().item(), "adv_eps_rms": rms.mean().item(),
                "adv_first_token_share": adv.key_share(r, first).mean().item()}


class AttentionAT(AdversarialAttention):
    name = "at"
    summary = "Attention AT: CE under the loss-increasing perturbation of the attention scores"
    needs_clean_gradient = True
    sign: ClassVar[float] = 1.0

    def direction(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass, loss_cls: torch.Tensor,
                  valid: torch.Tensor, step: int) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss_cls, self._zero, retain_graph=True)  # only r: no parameter grads
        self._zero = None
        return [self.sign * g for g in grads]


class AttentionIAT(AttentionAT):
    name = "iat"
    summary = "the released iAT code, i.e. AT with the sign flipped (a loss-decreasing perturbation)"
    experimental = True
    sign = -1.0


class AttentionVAT(AdversarialAttention):
    name = "vat"
    summary = "Attention VAT: KL to the clean prediction under the virtual-adversarial perturbation"
    adversarial_loss = "kl"

    def direction(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass, loss_cls: torch.Tensor,
                  valid: torch.Tensor, step: int) -> list[torch.Tensor]:
        keys = self.keys
        p_hat = clean.class_logits.detach()
        d = self.random_direction(batch, valid, step)
        self._start_kl = None
        for iteration in range(keys.adv_power_iters):
            probe = [t.detach().requires_grad_() for t in adv.normalise(d, valid, keys.adv_xi, keys.adv_norm_scope)]
            kl = class_kl(p_hat, self.perturbed_logits(model, batch, clean, probe, grad=False))
            if iteration == 0 and keys.adv_xi == keys.adv_eps:  # the start is a random direction of norm eps
                self._start_kl = kl.detach().mean().item()
            grads = torch.autograd.grad(kl.sum(), probe)  # only r: the power iteration leaves no parameter grads
            d = adv.keep_where_vanished(list(grads), d)
        return d

    def random_kl(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass, valid: torch.Tensor, step: int,
                  adv_kl: torch.Tensor) -> float:
        if self._start_kl is not None:  # no extra pass: the power iteration's start already measured it
            return self._start_kl
        return super().random_kl(model, batch, clean, valid, step, adv_kl)


class AttentionRP(AdversarialAttention):
    name = "attn_rp"
    summary = "Attention RP: the control; CE under a random centred perturbation of the same norm"

    def direction(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass, loss_cls: torch.Tensor,
                  valid: torch.Tensor, step: int) -> list[torch.Tensor]:
        return self.random_direction(batch, valid, step)

    def random_kl(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass, valid: torch.Tensor, step: int,
                  adv_kl: torch.Tensor) -> float:
        return adv_kl.item()  # its own perturbation is the random direction of norm eps
