"""Focus math shared by every method: the focus distribution and the fake-focus metric.

Pure torch functions on hand-made tensors (no model). Shapes: B = batch, L = sequence
length (left-padded). ``text_mask`` is bool (B, L), True on the example's *text* tokens.

    focus_distribution(answer_attention, text_mask) -> (B, L)   mean over layers/heads,
        renormalised over the text; raises ValueError on a row without text tokens.
    focus_entropy(probs, text_mask) -> (B,)
    frequent_token_ids / frequent_focus_share / frequent_token_share / frequent_shares /
    fake_focus_ratio: the "fake focus" metric (focus mass on the most frequent 1% of token
        types, relative to their share of the text).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from afa_llm.model.task import PromptTask

# Floor before log: keeps log finite (no -inf, no NaN grads) for zero-probability tokens.
LOG_FLOOR = 1e-12


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


def frequent_ids(task: PromptTask, texts: list[str], limit: int = 5000) -> torch.Tensor:
    """The most frequent 1% of token types in the training texts ("fake focus" words)."""
    counts: dict[int, int] = {}
    for text in texts[:limit]:
        for tok in task.text_ids(text):
            counts[tok] = counts.get(tok, 0) + 1
    return frequent_token_ids(counts, 0.01)
