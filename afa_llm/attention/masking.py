"""Hiding words: the masks and the masked forward passes that AFA and word dropout share.

    masks_per_example(n_text, rho) -> (B,) long                 k = clamp(round(rho*n), 1, n)
    gumbel_top_k_masks(probs, text_mask, k, num_masks) -> (B, G, L)   k[b] distinct tokens
    uniform_masks(text_mask, k, num_masks) -> (B, G, L)         the word-dropout control
    top_k_masks(scores, text_mask, k) -> (B, L)                  the k[b] highest-scoring text tokens
    hide_tokens(batch, masks, mode, filler_id) -> EncodedBatch   B*G masked copies
    masked_scores(model, batch, masks, ...) -> class logits (B, G, C), answer states
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from afa_llm.errors import UserError
from afa_llm.attention.focus_math import LOG_FLOOR, _text_counts
from afa_llm.model.scoring import forward_scores
from afa_llm.model.task import EncodedBatch, drop_unattended

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from afa_llm.model.heads import Head


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


def top_k_masks(scores: torch.Tensor, text_mask: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The k[b] text tokens with the highest ``scores`` (ties: the earlier token) -> bool (B, L).

    Deterministic: the most-attended words that ``masked_ce: focus`` hides (progressive attention
    masking, Tang et al. 2019) and that the faithfulness metrics remove or keep."""
    length = scores.shape[-1]
    ranked = scores.detach().float().masked_fill(~text_mask, float("-inf"))
    order = ranked.argsort(dim=-1, descending=True, stable=True)
    positions = torch.arange(length, device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)
    return (rank < k.to(scores.device).view(-1, 1)) & text_mask


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


def masked_scores(model: torch.nn.Module, batch: EncodedBatch, masks: torch.Tensor, head: Head | Sequence[int],
                  mode: str, filler_id: int, need_hidden: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class logits (B, G, C) and answer states (B, G, D) of the masked inputs, no grad."""
    b, g = masks.shape[:2]
    with torch.no_grad():
        out = forward_scores(model, **hide_tokens(batch, masks, mode, filler_id).model_inputs(),
                             head=head, return_hidden=need_hidden)
    hidden = out.answer_hidden.view(b, g, -1) if need_hidden else None
    return out.class_logits.view(b, g, -1), hidden


def filler_token_id(tokenizer: PreTrainedTokenizerBase, token: str | None) -> int:
    """The id that ``mask_mode=filler`` writes over hidden tokens (default: the pad token).

    Accepts a vocabulary entry (``<|endoftext|>``, ``Ġthe``) or a text that is one token
    (`` the``); anything else is a config error rather than a silent fallback to the unk id.
    """
    if not token:
        if tokenizer.pad_token_id is None:  # load_tokenizer always sets one; a hand-built tokenizer may not
            raise UserError("config key 'filler_token': the tokenizer has no pad token to fill with; "
                            "name one token, e.g. ' the'")
        return tokenizer.pad_token_id
    vocab_id = tokenizer.convert_tokens_to_ids(token)
    if vocab_id is not None and (vocab_id != tokenizer.unk_token_id or token == tokenizer.unk_token):
        return vocab_id
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise UserError(f"config key 'filler_token': {token!r} is {len(ids)} tokens for this tokenizer; "
                        "use a single token, e.g. ' the' or the pad token")
    return ids[0]
