"""The one attention hook for every method that edits attention (Attention AT/VAT, ACT).

A custom attention function is registered through transformers' ``AttentionInterface``
under `HOOK_NAME`, together with ``sdpa_mask`` through ``AttentionMaskInterface``: without
a registered mask function transformers silently passes ``attention_mask=None`` and the
causal mask is lost. `attention_hook(model)` switches a model to it and back.

For every layer it runs torch SDPA first, exactly as ``attn_implementation="sdpa"``
does. Only where an `AttentionEdit` is given for the layer does it recompute the edited
slice (the last query row, or all rows; all heads or some) eagerly, in float32:

    s = q . k^T * scaling  [tanh soft-cap]     (GQA: query head h reads kv head h // n_rep)
    s = edit.scores(s)                         (Attention AT: s + r; before masking, so
    s = masked_fill(s, ~visible, min)           nothing masked can be unmasked)
    p = edit.probs(softmax(s), visible)        (ACT: scale the sink columns)
    out[slice] = p . v                         (out-of-place: the SDPA rows stay as they are)

Edits reach the function in two ways: a forward kwarg ``attention_edits={layer_idx: edit}``
(training: the perturbation is a graph leaf, and activation checkpointing re-runs the
function with the same kwarg), or `set_module_edits` on the attention modules (inference:
the evaluator, predict and focus call the model without extra kwargs). The visible keys
come from the mask the model built for that layer (left padding, causality and Gemma3's
sliding window included); a ``None`` mask means SDPA's causal shortcut.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Literal, Mapping, Sequence

import torch
from torch import nn

from afa_llm.attention.decoder_layers import find_decoder_layers, unwrap_model

HOOK_NAME = "afa_llm_edit"
EDITS_KWARG = "attention_edits"
_MODULE_ATTR = "_afa_llm_attention_edit"


@dataclass
class AttentionEdit:
    """An edit of one layer's attention. Subclasses override `scores` and/or `probs`.

    ``rows``: ``"last"`` (the answer position of a left-padded batch) or ``"all"``;
    ``heads``: query-head indices to recompute (None: all heads).
    """

    rows: Literal["last", "all"] = "last"
    heads: Sequence[int] | None = None
    # True: a row that `probs` returns unchanged keeps SDPA's output instead of the eager recompute,
    # so an edit that changes nothing on an input leaves the model bit-identical (ACT: a head with
    # no sink on that input). Not for score edits: `probs` does not see what `scores` changed.
    keep_unchanged_rows: bool = False

    def scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Pre-softmax scores (B, h, q, K) in float32 (or float64), before masking."""
        return scores

    def probs(self, probs: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Attention weights (B, h, q, K) float32 after the softmax; ``visible`` is bool."""
        return probs


@dataclass
class ScorePerturbation(AttentionEdit):
    """Attention AT/VAT: add ``r`` to the pre-softmax scores: (B, H, K) for the last row,
    (B, H, L, K) for all rows. ``r`` may require grad (it is the adversary's variable)."""

    r: torch.Tensor | None = None

    def scores(self, scores: torch.Tensor) -> torch.Tensor:
        r = self.r.to(scores.dtype)
        return scores + (r.unsqueeze(2) if self.rows == "last" else r)


# ---------------------------------------------------------------------------------- math
def visible_keys(attention_mask: torch.Tensor | None, q_len: int, k_len: int, device: torch.device) -> torch.Tensor:
    """Bool (B|1, 1, q_len, k_len), True = the query may attend to the key.

    Accepts what the attention function receives: a 4D bool mask from ``sdpa_mask``, a
    float mask (0 = visible), or None (no padding; causal, keys aligned to the end).
    """
    if attention_mask is None:
        q_pos = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
        return (torch.arange(k_len, device=device)[None, :] <= q_pos)[None, None]
    mask = attention_mask[..., -q_len:, -k_len:]
    return mask if mask.dtype == torch.bool else mask == 0


def recompute_slice(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None, edit: AttentionEdit,
                    softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The edited attention output of the slice, (B, q, h, D) in ``value``'s dtype, and with
    ``edit.keep_unchanged_rows`` the (B, q, h) rows that ``edit.probs`` changed (else None).

    ``query``: (B, H, Q, D); ``key``/``value``: (B, H_kv, K, D), as attention functions get them.
    """
    n_heads, n_kv = query.shape[1], key.shape[1]
    heads = torch.arange(n_heads, device=query.device) if edit.heads is None else \
        torch.as_tensor(list(edit.heads), device=query.device, dtype=torch.long)
    q = query[:, heads, -1:] if edit.rows == "last" else query[:, heads]
    kv_heads = heads // (n_heads // n_kv)
    k, v = key[:, kv_heads], value[:, kv_heads]
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    work = torch.promote_types(query.dtype, torch.float32)  # at least fp32, also under bf16 autocast
    with torch.autocast(device_type=query.device.type, enabled=False):
        s = torch.matmul(q.to(work), k.to(work).transpose(-1, -2)) * scale
        if softcap is not None:
            s = torch.tanh(s / softcap) * softcap
        s = edit.scores(s)
        visible = visible_keys(attention_mask, query.shape[2], key.shape[2], query.device)
        if edit.rows == "last":
            visible = visible[..., -1:, :]
        plain = torch.softmax(s.masked_fill(~visible, torch.finfo(work).min), dim=-1) * visible
        p = edit.probs(plain, visible)
        out = torch.matmul(p, v.to(work))
    changed = (p != plain).any(-1).transpose(1, 2) if edit.keep_unchanged_rows else None  # (B, q, h)
    return out.to(value.dtype).transpose(1, 2), changed


def splice(sdpa_out: torch.Tensor, edited: torch.Tensor, edit: AttentionEdit,
           changed: torch.Tensor | None = None) -> torch.Tensor:
    """Put the edited slice (B, q, h, D) into the SDPA output (B, Q, H, D), out of place;
    with ``changed`` (B, q, h), only those rows of it."""
    rows = sdpa_out[:, -1:] if edit.rows == "last" else sdpa_out
    heads = None if edit.heads is None else \
        torch.as_tensor(list(edit.heads), device=sdpa_out.device, dtype=torch.long)
    if changed is not None:
        sdpa_slice = rows if heads is None else rows.index_select(2, heads)
        edited = torch.where(changed[..., None], edited.to(rows.dtype), sdpa_slice)
    if heads is not None:
        edited = rows.index_copy(2, heads, edited.to(rows.dtype))
    if edit.rows == "last":
        return torch.cat([sdpa_out[:, :-1], edited.to(sdpa_out.dtype)], dim=1)
    return edited.to(sdpa_out.dtype)


# ------------------------------------------------------------------------- the function
def edited_sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0,
                          scaling: float | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """The registered attention function: SDPA, then the layer's edit (if any)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    edits = kwargs.pop(EDITS_KWARG, None)
    edit = (edits or {}).get(getattr(module, "layer_idx", None)) or getattr(module, _MODULE_ATTR, None)
    softcap = kwargs.pop("softcap", None)  # SDPA rejects it; only an edited slice can honour it
    if softcap is not None and edit is None:
        raise ValueError(f"{type(module).__name__} uses attention soft-capping, which SDPA does not support")
    out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                    scaling=scaling, **kwargs)
    if edit is None:
        return out, None
    edited, changed = recompute_slice(module, query, key, value, attention_mask, scaling, edit, softcap)
    return splice(out, edited, edit, changed), None


def register() -> str:
    """Register the function and its mask function (idempotent); returns `HOOK_NAME`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(HOOK_NAME, edited_sdpa_attention)
    AttentionMaskInterface.register(HOOK_NAME, sdpa_mask)
    return HOOK_NAME


@contextlib.contextmanager
def attention_hook(model: nn.Module) -> Iterator[nn.Module]:
    """Switch ``model`` (plain, peft- or DDP-wrapped) to the hook; restore its attention on exit."""
    base = unwrap_model(model)
    previous = base.config._attn_implementation
    base.set_attn_implementation(register())
    try:
        yield model
    finally:
        base.set_attn_implementation(previous)


def set_module_edits(model: nn.Module, edits: Mapping[int, AttentionEdit] | None) -> None:
    """Attach edits to the attention modules by layer index (None removes them all)."""
    for index, layer in enumerate(find_decoder_layers(model)):
        edit = (edits or {}).get(index)
        if edit is None:
            if hasattr(layer.self_attn, _MODULE_ATTR):
                delattr(layer.self_attn, _MODULE_ATTR)
        else:
            setattr(layer.self_attn, _MODULE_ATTR, edit)
