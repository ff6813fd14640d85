"""Faithfulness of the focus, as ERASER measures it (DeYoung et al., ACL 2020).

For each text, the predicted class ``y`` and its probability ``p(y|x)`` on the full input; then
for each k in ``AOPC_FRACTIONS`` (1, 5, 10, 20, 50% of the text tokens, at least one token):

    comprehensiveness_k = p(y|x) - p(y|x without the top-k focus tokens)   high: the focus mattered
    sufficiency_k       = p(y|x) - p(y|only the top-k focus tokens)        low: the focus suffices

averaged over k (AOPC). The same with k random text tokens (``random_draws`` draws, the masks of
the word-dropout control) gives chance level, and the reported gains are

    comprehensiveness_gain = comprehensiveness - comprehensiveness(random)
    sufficiency_gain       = sufficiency(random) - sufficiency

so that above 0 means that the focus beats chance for both. Tokens are hidden as AFA hides
them (`afa_llm.attention.masking.hide_tokens`, mode ``attention``: deleted, positions kept); the prompt
and the answer position are never hidden.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from afa_llm.attention import masking

if TYPE_CHECKING:
    from afa_llm.model.task import PromptTask

AOPC_FRACTIONS = (0.01, 0.05, 0.10, 0.20, 0.50)
KINDS = ("comprehensiveness", "sufficiency")


def faithfulness_masks(focus: torch.Tensor, text_mask: torch.Tensor, fractions: Sequence[float],
                       random_draws: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Hidden-token masks (B, G, L), G = 2 * F * (1 + random_draws), in blocks of F:
    [focus: hide top-k][focus: keep only top-k] then per draw [random: hide k][random: keep only k]."""
    n_text = text_mask.sum(-1)
    blocks = []
    for source in ["focus"] + ["random"] * random_draws:
        hide, keep = [], []
        for fraction in fractions:
            k = masking.masks_per_example(n_text, fraction)
            if source == "focus":
                top = masking.top_k_masks(focus, text_mask, k)
            else:
                top = masking.uniform_masks(text_mask, k, 1, generator)[:, 0]
            hide.append(top)
            keep.append(text_mask & ~top)
        blocks += hide + keep
    return torch.stack(blocks, dim=1)


def aopc(p_full: np.ndarray, p_masked: np.ndarray, n_fractions: int, random_draws: int) -> dict[str, np.ndarray]:
    """Per-text AOPC values from p(y|x) (B,) and p(y|masked) (B, G) in `faithfulness_masks`' layout."""
    drops = p_full[:, None] - p_masked  # (B, G)
    blocks = drops.reshape(len(p_full), 1 + random_draws, 2, n_fractions).mean(-1)  # (B, source, kind)
    focus, rand = blocks[:, 0], blocks[:, 1:].mean(1)
    return {"comprehensiveness": focus[:, 0], "sufficiency": focus[:, 1],
            "comprehensiveness_random": rand[:, 0], "sufficiency_random": rand[:, 1]}


def faithfulness_batch(score_masked: Callable[[torch.Tensor], torch.Tensor], class_logits: torch.Tensor,
                       focus: torch.Tensor, text_mask: torch.Tensor, fractions: Sequence[float] = AOPC_FRACTIONS,
                       random_draws: int = 2, generator: torch.Generator | None = None) -> dict[str, np.ndarray]:
    """AOPC values of one batch; ``score_masked(masks (B, G, L)) -> class logits (B, G, C)``."""
    probs = class_logits.float().softmax(-1)
    predicted = probs.argmax(-1)
    masks = faithfulness_masks(focus, text_mask, fractions, random_draws, generator)
    masked = score_masked(masks).float().softmax(-1)
    index = predicted.view(-1, 1, 1).expand(-1, masked.shape[1], 1)
    p_masked = masked.gather(-1, index)[..., 0]
    p_full = probs.gather(-1, predicted.view(-1, 1))[:, 0]
    return aopc(p_full.cpu().numpy(), p_masked.cpu().numpy(), len(fractions), random_draws)


def summarize(per_text: dict[str, np.ndarray]) -> dict[str, float]:
    out = {key: float(np.mean(values)) for key, values in per_text.items()}
    out["comprehensiveness_gain"] = out["comprehensiveness"] - out["comprehensiveness_random"]
    out["sufficiency_gain"] = out["sufficiency_random"] - out["sufficiency"]
    out["faithfulness_n"] = int(len(next(iter(per_text.values()))))
    return out


@torch.no_grad()
def faithfulness(model: torch.nn.Module, task: PromptTask, texts: Sequence[str], *, batch_size: int = 8,
                 random_draws: int = 2, seed: int = 0, focus_layers: Sequence[int] | None = None) -> dict[str, float]:
    """Comprehensiveness and sufficiency (AOPC) of ``model``'s focus on ``texts``, against random tokens.

    ``batch_size`` counts texts; each becomes 2 * |fractions| * (1 + random_draws) masked copies (30 by
    default), so a batch of 8 texts is a forward of 240 sequences. No texts: only ``faithfulness_n = 0``.
    """
    from afa_llm.model.task import length_batches
    from afa_llm.attention.clean_pass import clean_pass

    if not texts:
        return {"faithfulness_n": 0}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    pad = task.tokenizer.pad_token_id if task.tokenizer.pad_token_id is not None else 0
    parts: list[dict[str, np.ndarray]] = []
    for idx in length_batches(task, texts, batch_size):
        batch = task.encode([texts[i] for i in idx]).to(device)
        clean = clean_pass(model, batch, task.head, focus_layers)

        def score(masks: torch.Tensor) -> torch.Tensor:
            return masking.masked_scores(model, batch, masks, task.head, "attention", pad, False)[0]

        parts.append(faithfulness_batch(score, clean.class_logits, clean.focus, batch.text_mask,
                                        random_draws=random_draws, generator=generator))
    model.train(was_training)
    return summarize({key: np.concatenate([p[key] for p in parts]) for key in parts[0]})
