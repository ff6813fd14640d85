"""Answer-position attention ("focus") without ``output_attentions``.

AFA needs, for a few decoder layers, the attention row of the answer position
(the LAST position of a left-padded prompt batch) over all keys, per head, with
gradients flowing into the LoRA adapters on ``q_proj``/``k_proj``.

``output_attentions=True`` is the wrong tool for that: it needs eager attention
in every layer, stores B x H x L x L per layer, and with ``sdpa`` (the default)
transformers only logs a warning and returns an empty tuple (a silent failure,
see docs/STACK_NOTES.md). :class:`AnswerAttentionProbe` leaves the model on its
attention implementation (sdpa, flash, ...) and recomputes only the last row of
the chosen layers from tensors captured during the model's own forward:

- the outputs of the layer's own ``q_proj``/``k_proj`` modules (captured with
  forward hooks, so a peft LoRA wrapper, its dropout sample and a 4-bit base are
  exactly those of the forward; nothing is projected twice);
- ``q_norm``/``k_norm`` where the module has them (Qwen3, Gemma3; per head, or
  over all heads as in OLMo2);
- the ``position_embeddings`` (cos, sin) that the decoder layer passes to the
  attention module, applied with the modeling file's own
  ``apply_rotary_pos_emb``;
- GQA (query head ``h`` reads key head ``h // (H / H_kv)``, as ``repeat_kv``),
  the module's ``scaling`` (Gemma3: ``query_pre_attn_scalar ** -0.5``);
- attention-logit soft-capping where the module really applies it (Gemma2 does;
  Gemma3 in transformers 5.23 stores ``attn_logit_softcapping`` but never passes
  it to the attention function, so it is not applied, and neither is it here);
- key masking: keys where the 2D ``attention_mask`` is 0 (left padding, or a
  token AFA hides while keeping its position id), and, for sliding-window
  layers, keys at sequence index ``<= L - 1 - sliding_window`` (the window is
  counted in sequence indices, as transformers' masks do, not in position ids).
  The last query sees every earlier key, so no other causal masking is needed.

Public API
----------
``default_focus_layers`` and ``find_decoder_layers`` (re-exported from
`afa_llm.attention.decoder_layers`) choose the layers.

``AnswerAttentionProbe(model, layers=None, attention_mask=None)``
    Context manager::

        with AnswerAttentionProbe(model, layers, attention_mask) as probe:
            out = model(input_ids=ids, attention_mask=attention_mask,
                        position_ids=position_ids)
            rows = probe.answer_attention()   # (B, len(layers), H, L), float32

    ``layers``: layer indices (negative ones count from the end; the output
    keeps the given order); ``None`` means :func:`default_focus_layers`.
    ``attention_mask``: the (B, L) mask given to the model; if ``None`` the
    probe takes the 2D mask the decoder stack received (all keys visible if it
    got none). If both exist and disagree, ``answer_attention`` raises.
    Rows are differentiable, float32 (softmax is taken in float32, as eager
    attention does, and not cast back down), sum to 1 over keys, and masked
    keys are exactly 0. The hooks are removed
    on exit, also on exceptions; the captured tensors stay, so
    ``answer_attention()`` may also be called after the ``with`` block. A new
    forward through the model inside the block replaces the captures; the
    re-run of layers by (non-reentrant) gradient checkpointing during backward
    does not. Only a full-sequence forward is supported (no KV cache of earlier
    tokens: the number of keys must equal the mask's length).

``eager_answer_attention(model, input_ids, attention_mask, position_ids, layers=None, **model_kwargs)``
    The reference path: one forward with ``output_attentions=True``, the last
    query row of the chosen layers, (B, len(layers), H, L) in float32. Raises
    ``ValueError`` if the model returns no attentions (the sdpa silent
    failure); load the model with ``attn_implementation="eager"`` or call
    ``model.set_attn_implementation("eager")`` first.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from afa_llm.attention.decoder_layers import default_focus_layers, find_decoder_layers, find_stack, normalise_layers, unwrap_model

__all__ = [
    "AnswerAttentionProbe",
    "default_focus_layers",
    "eager_answer_attention",
    "find_decoder_layers",
]


# ----------------------------------------------------------------------------- per-module details


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _standard_rope(q, k, cos, sin, unsqueeze_dim=1):
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rope_fn(attn: nn.Module):
    """The modeling file's own ``apply_rotary_pos_emb`` (same math as the forward)."""
    fn = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)
    return fn if callable(fn) else _standard_rope


_SOFTCAP_APPLIED: dict[type, bool] = {}


def _softcap(attn: nn.Module) -> float | None:
    """The logit soft-cap the module really applies.

    Gemma2 passes ``softcap=self.attn_logit_softcapping`` to its attention function;
    Gemma3 (transformers 5.23) stores the attribute but never passes it, so its
    attention is not capped. Read the forward's source to tell them apart; if the
    source is unavailable, trust the attribute.
    """
    cap = getattr(attn, "attn_logit_softcapping", None)
    if cap is None:
        return None
    cls = type(attn)
    if cls not in _SOFTCAP_APPLIED:
        try:
            _SOFTCAP_APPLIED[cls] = "softcap=" in inspect.getsource(cls.forward)
        except (OSError, TypeError):
            _SOFTCAP_APPLIED[cls] = True
    return float(cap) if _SOFTCAP_APPLIED[cls] else None


def _sliding_window(attn: nn.Module) -> int | None:
    """Window of this layer, as its mask uses it (None: full attention).

    Qwen2/3 and Gemma2/3 set ``self.sliding_window`` per layer (None on full layers);
    Mistral-style modules have no attribute and use ``config.sliding_window`` in
    every layer.
    """
    if hasattr(attn, "sliding_window"):
        sw = attn.sliding_window
    else:
        sw = getattr(getattr(attn, "config", None), "sliding_window", None)
    return int(sw) if sw else None


def _apply_head_norm(norm: nn.Module | None, x: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """``x``: (B, T, n_heads * head_dim) -> (B, T, n_heads, head_dim), normed like the module."""
    b, t, _ = x.shape
    if norm is None:
        return x.view(b, t, n_heads, head_dim)
    weight = getattr(norm, "weight", None)
    if weight is not None and weight.shape[-1] == n_heads * head_dim and n_heads > 1:
        return norm(x).view(b, t, n_heads, head_dim)  # OLMo2-style norm over all heads
    return norm(x.view(b, t, n_heads, head_dim))  # per head (Qwen3, Gemma3): last dim only


def _answer_row(
    attn: nn.Module,
    q_out: torch.Tensor,
    k_out: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    key_mask: torch.Tensor,
) -> torch.Tensor:
    """softmax(q_last . K^T * scaling [softcap] + mask) -> (B, H, L) float32.

    ``q_out``: the q_proj output at the last position, (B, 1, H * D);
    ``k_out``: the k_proj output, (B, L, H_kv * D); ``key_mask``: (B, L) bool, True = visible.
    """
    head_dim = int(attn.head_dim)  # every HF attention module with q_proj/k_proj sets it
    b, length, _ = k_out.shape
    n_heads = q_out.shape[-1] // head_dim
    n_kv = k_out.shape[-1] // head_dim
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads are not a multiple of {n_kv} key/value heads")

    q = _apply_head_norm(getattr(attn, "q_norm", None), q_out, n_heads, head_dim).transpose(1, 2)
    k = _apply_head_norm(getattr(attn, "k_norm", None), k_out, n_kv, head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    if cos.shape[-2] != length:
        raise ValueError(f"position embeddings cover {cos.shape[-2]} positions, keys {length}")
    rope = _rope_fn(attn)
    q = rope(q, q, cos[..., -1:, :], sin[..., -1:, :])[0]  # (B, H, 1, D)
    k = rope(k, k, cos, sin)[1]  # (B, H_kv, L, D)

    # GQA without materialising repeat_kv: head h = g * n_rep + r uses key head g.
    n_rep = n_heads // n_kv
    q = q.reshape(b, n_kv, n_rep, head_dim)
    scaling = getattr(attn, "scaling", None)
    logits = torch.einsum("bgrd,bgld->bgrl", q, k) * (head_dim**-0.5 if scaling is None else scaling)
    cap = _softcap(attn)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap

    visible = key_mask.to(device=logits.device, dtype=torch.bool)
    window = _sliding_window(attn)
    if window is not None:
        idx = torch.arange(length, device=logits.device)
        visible = visible & (idx > (length - 1) - window)
    visible = visible[:, None, None, :]
    logits = logits.masked_fill(~visible, torch.finfo(logits.dtype).min)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32) * visible
    return probs.reshape(b, n_heads, length)


# ----------------------------------------------------------------------------- the probe


def _call_arg(module: nn.Module, args: tuple, kwargs: dict, name: str):
    """The value of parameter ``name`` in a call ``module(*args, **kwargs)`` (None if absent)."""
    if name in kwargs:
        return kwargs[name]
    if not args:
        return None
    try:
        bound = inspect.signature(module.forward).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    return bound.arguments.get(name)


class AnswerAttentionProbe:
    """Recompute the answer-position attention row of chosen layers (see module doc)."""

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int] | None = None,
        attention_mask: torch.Tensor | None = None,
    ):
        self.model = model
        self._stack, all_layers = find_stack(model)
        self.num_layers = len(all_layers)
        self.layers = normalise_layers(layers, self.num_layers)
        self._attn = [all_layers[i].self_attn for i in self.layers]
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError(f"attention_mask must be 2D (B, L), got shape {tuple(attention_mask.shape)}")
            if not bool((attention_mask[:, -1] != 0).all()):
                raise ValueError(
                    "the last position is masked in some rows: the answer position must be the last "
                    "one, so pad on the left"
                )
        self.attention_mask = attention_mask
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._captures: list[dict[str, Any]] = [{} for _ in self.layers]
        self._stack_mask: Any = None  # the attention_mask the decoder stack received
        self._result: torch.Tensor | None = None

    # -- hooks ---------------------------------------------------------------
    def _on_stack(self, module, args, kwargs):
        # A new forward through the decoder: forget the previous one. (Layers re-run by
        # gradient checkpointing during backward do not pass through here.)
        self._captures = [{} for _ in self.layers]
        self._result = None
        self._stack_mask = _call_arg(module, args, kwargs, "attention_mask")

    def _make_hooks(self, slot: int):
        def on_attn(module, args, kwargs):
            pe = _call_arg(module, args, kwargs, "position_embeddings")
            self._captures[slot].setdefault("pe", pe)

        def on_q(module, args, output):
            self._captures[slot].setdefault("q", output[:, -1:, :])

        def on_k(module, args, output):
            self._captures[slot].setdefault("k", output)

        return on_attn, on_q, on_k

    def __enter__(self) -> AnswerAttentionProbe:
        try:
            self._handles.append(self._stack.register_forward_pre_hook(self._on_stack, with_kwargs=True))
            for slot, attn in enumerate(self._attn):
                on_attn, on_q, on_k = self._make_hooks(slot)
                self._handles.append(attn.register_forward_pre_hook(on_attn, with_kwargs=True))
                self._handles.append(attn.q_proj.register_forward_hook(on_q))
                self._handles.append(attn.k_proj.register_forward_hook(on_k))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove all hooks (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    # -- result --------------------------------------------------------------
    def _key_mask(self, batch: int, length: int, device) -> torch.Tensor:
        mask = self.attention_mask
        seen = self._stack_mask
        seen_2d = seen if isinstance(seen, torch.Tensor) and seen.dim() == 2 else None
        if mask is None and seen is not None and seen_2d is None:
            raise ValueError(
                "the model got a prepared (not 2D) attention mask; pass the 2D (B, L) mask "
                "to AnswerAttentionProbe(model, layers, attention_mask)"
            )
        if mask is not None and seen_2d is not None:
            if mask.shape != seen_2d.shape or not torch.equal(mask.to(seen_2d.device) != 0, seen_2d != 0):
                raise ValueError("the probe's attention_mask differs from the one given to the model")
        mask = mask if mask is not None else seen_2d
        if mask is None:
            return torch.ones(batch, length, dtype=torch.bool, device=device)
        if tuple(mask.shape) != (batch, length):
            raise ValueError(
                f"attention_mask has shape {tuple(mask.shape)} but the keys are ({batch}, {length}); "
                "the probe needs a full-sequence forward without a KV cache of earlier tokens"
            )
        if not bool((mask[:, -1] != 0).all()):
            raise ValueError("the last position is masked in some rows: pad on the left")
        return mask.to(device) != 0

    def answer_attention(self) -> torch.Tensor:
        """(B, len(layers), H, L) float32 attention of the last position, differentiable."""
        if self._result is not None:
            return self._result
        rows = []
        for slot, (idx, attn) in enumerate(zip(self.layers, self._attn)):
            cap = self._captures[slot]
            missing = [key for key in ("pe", "q", "k") if key not in cap]
            if missing:
                raise RuntimeError(
                    f"layer {idx}: nothing captured ({', '.join(missing)} missing); run the model "
                    "forward inside the `with AnswerAttentionProbe(...)` block"
                )
            if cap["pe"] is None:
                raise NotImplementedError(
                    f"layer {idx} ({type(attn).__name__}) got no position_embeddings (cos, sin); "
                    "only models that pass RoPE embeddings to the attention module are supported"
                )
            k = cap["k"]
            key_mask = self._key_mask(k.shape[0], k.shape[1], k.device)
            rows.append(_answer_row(attn, cap["q"], k, cap["pe"], key_mask))
        self._result = torch.stack(rows, dim=1)
        return self._result


# ----------------------------------------------------------------------------- eager reference


def eager_answer_attention(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    layers: Sequence[int] | None = None,
    **model_kwargs: Any,
) -> torch.Tensor:
    """Reference: ``output_attentions=True``, last query row -> (B, len(layers), H, L) float32.

    Needs eager attention; raises ``ValueError`` when the model returns no
    attention weights (sdpa returns an empty tuple and only logs a warning).
    """
    num_layers = len(find_decoder_layers(model))
    chosen = normalise_layers(layers, num_layers)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_attentions=True,
        **model_kwargs,
    )
    attentions = getattr(out, "attentions", None)
    impl = getattr(getattr(unwrap_model(model), "config", None), "_attn_implementation", None)
    if not attentions or any(a is None for a in attentions):
        raise ValueError(
            f"the model returned no attention weights (attention implementation: {impl!r}); "
            'load it with attn_implementation="eager" (or call model.set_attn_implementation("eager")) '
            "to use output_attentions, or use AnswerAttentionProbe, which works with sdpa"
        )
    if len(attentions) != num_layers:
        raise ValueError(f"the model returned {len(attentions)} attention tensors for {num_layers} layers")
    return torch.stack([attentions[i][:, :, -1, :] for i in chosen], dim=1).float()
