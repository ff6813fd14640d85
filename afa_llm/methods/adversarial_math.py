"""Attention AT / VAT math as small, pure torch functions (docs/ATTENTION_AT.md).

A perturbation is a list with one tensor per perturbed layer: (B, H, L) for the answer
row (``rows="answer"``) or (B, H, L, L) for every row (``rows="all"``). ``valid`` marks the
entries that may be perturbed, broadcastable to one layer's tensor: (B, 1, L) or
(B, 1, L, L). Outside ``valid`` every direction is exactly 0, so no epsilon leaks into
padded, causally hidden or excluded keys.

    valid_entries(attention_mask, rows, exclude) -> bool (B, 1, L) | (B, 1, L, L)
    normalise(directions, valid, eps, scope) -> directions with norm eps
        scope "example": one L2 norm per example over all layers, heads and entries
        (the analogue of Kitada & Iyatomi's per-example norm over the tokens);
        scope "row": eps per (layer, head, query row).
    centre_rows(directions, valid) -> row-mean removed (softmax ignores a constant shift)
    random_directions(shapes, valid, example_seeds) -> centred Gaussian directions, each
        example drawn from its own seed over its own length: the same whatever the batch
        make-up or the padding width.
    eps_rms(eps, valid, n_layers, n_heads, scope) -> (B,) eps as the RMS per edited entry
    key_share(directions, key_mask) -> (B,) share of the squared norm on chosen keys
    keep_where_vanished(new, old) -> new, but old for examples whose new direction is 0
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch

Rows = Literal["answer", "all"]
Scope = Literal["example", "row"]
EXCLUDABLE = ("first_token", "answer_token")
_TINY = 1e-12


def first_real_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's first real token in a left-padded (B, L) mask -> (B,) long."""
    return (attention_mask != 0).long().argmax(dim=1)


def valid_entries(attention_mask: torch.Tensor, rows: Rows, exclude: Sequence[str] = ()) -> torch.Tensor:
    """The perturbable entries. ``exclude``: ``first_token`` (the attention sink: the first
    real key) and/or ``answer_token`` (the query's own key: the last key of the answer row,
    the diagonal for ``rows="all"``)."""
    unknown = set(exclude) - set(EXCLUDABLE)
    if unknown:
        raise ValueError(f"unknown exclusion {sorted(unknown)[0]!r}; choose from {EXCLUDABLE}")
    real = attention_mask != 0  # (B, L)
    b, length = real.shape
    keys = torch.arange(length, device=real.device)
    first = first_real_token(attention_mask)
    if rows == "answer":
        valid = real.clone()
        if "first_token" in exclude:
            valid[torch.arange(b, device=real.device), first] = False
        if "answer_token" in exclude:
            valid[:, -1] = False
        return valid[:, None, :]
    causal = keys[None, :] <= keys[:, None]  # (L, L): query i sees key j <= i
    valid = real[:, :, None] & real[:, None, :] & causal[None]
    if "first_token" in exclude:
        valid &= keys[None, None, :] != first[:, None, None]
    if "answer_token" in exclude:
        valid &= ~torch.eye(length, dtype=torch.bool, device=real.device)[None]
    return valid[:, None]


def _norms(directions: Sequence[torch.Tensor], scope: Scope) -> list[torch.Tensor]:
    """The norm that each entry is divided by, broadcastable to each direction."""
    if scope == "row":
        return [d.pow(2).sum(-1, keepdim=True).sqrt() for d in directions]
    total = sum(d.pow(2).flatten(1).sum(1) for d in directions).sqrt()  # (B,)
    return [total.view(-1, *([1] * (d.dim() - 1))) for d in directions]


def normalise(directions: Sequence[torch.Tensor], valid: torch.Tensor, eps: float,
              scope: Scope = "example") -> list[torch.Tensor]:
    """Zero outside ``valid``, then scale to norm ``eps`` (a zero direction stays zero)."""
    masked = [d * valid for d in directions]
    return [eps * d / n.clamp_min(_TINY) for d, n in zip(masked, _norms(masked, scope))]


def centre_rows(directions: Sequence[torch.Tensor], valid: torch.Tensor) -> list[torch.Tensor]:
    """Remove each row's mean over its valid keys (the part softmax cannot see)."""
    count = valid.sum(-1, keepdim=True).clamp_min(1)
    out = []
    for d in directions:
        d = d * valid
        out.append((d - d.sum(-1, keepdim=True) / count) * valid)
    return out


def random_directions(shapes: Sequence[tuple[int, ...]], valid: torch.Tensor, lengths: torch.Tensor,
                      example_seeds: Sequence[int]) -> list[torch.Tensor]:
    """Centred N(0, 1) directions; example b's entries come from ``example_seeds[b]`` over
    its last ``lengths[b]`` positions only (left padding), so they do not depend on the
    other examples or on the padding width."""
    out = [torch.zeros(shape, device=valid.device) for shape in shapes]
    for b, seed in enumerate(example_seeds):
        gen = torch.Generator().manual_seed(int(seed))
        n = int(lengths[b])
        for d in out:
            inner = (*d.shape[1:-2], n, n) if d.dim() == 4 else (*d.shape[1:-1], n)
            noise = torch.randn(inner, generator=gen).to(d.device)
            if d.dim() == 4:
                d[b, ..., -n:, -n:] = noise
            else:
                d[b, ..., -n:] = noise
    return centre_rows(out, valid)


def eps_rms(eps: float, valid: torch.Tensor, n_layers: int, n_heads: int, scope: Scope) -> torch.Tensor:
    """Epsilon as the root-mean-square per edited entry, per example -> (B,)."""
    if scope == "row":  # eps per row of n_b keys: the RMS over a row is eps / sqrt(n_b)
        per_row = valid.flatten(2).sum(-1).float() if valid.dim() == 3 else valid.sum(-1).float()
        rows_rms = eps / per_row.clamp_min(1).sqrt()
        return rows_rms.flatten(1).mean(1)
    entries = valid.flatten(1).sum(1).float() * n_layers * n_heads
    return eps / entries.clamp_min(1).sqrt()


def key_share(directions: Sequence[torch.Tensor], key_mask: torch.Tensor) -> torch.Tensor:
    """Share of each example's squared norm on the keys in ``key_mask`` (B, L) -> (B,)."""
    on = sum((d.pow(2) * key_mask.view(key_mask.shape[0], *([1] * (d.dim() - 2)), -1)).flatten(1).sum(1)
             for d in directions)
    total = sum(d.pow(2).flatten(1).sum(1) for d in directions)
    return on / total.clamp_min(_TINY)


def keep_where_vanished(new: Sequence[torch.Tensor], old: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Per example, ``new`` unless it is all zero, then ``old``.

    A VAT power-iteration gradient underflows to exactly 0 once the model is saturated on an
    example (p^ one-hot in fp32); the iteration then keeps its start instead of dropping r.
    """
    norm = sum(t.pow(2).flatten(1).sum(1) for t in new)
    dead = norm <= _TINY
    return [torch.where(dead.view(-1, *([1] * (n.dim() - 1))), o, n) for n, o in zip(new, old)]
