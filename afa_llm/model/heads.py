"""The two ways a decoder LLM turns a prompt into class scores, behind one interface.

- `LabelWordHead` (``head: label_words``): a class's score is the log-likelihood of its label word
  after the prompt, lm-eval's ``loglikelihood``. One-token words read the answer position's logits
  (exactly the logits of earlier versions); words of several tokens add their later tokens'
  log-probabilities from ONE more pass over the KV cache of the prompt, all classes in one batch, so the
  prompt is never run once per class. ``length_normalize`` divides by the token count.
- `ClassifierHead` (``head: classifier``): a linear ``score`` layer over the final hidden state at the
  last real token, as transformers' ``*ForSequenceClassification`` computes it; the model IS such a
  model (`as_sequence_classifier`), so the adapter is a standard SEQ_CLS LoRA with ``score`` in
  ``modules_to_save`` and a merged folder loads with ``AutoModelForSequenceClassification``.

`prompt_forward` runs the prompt once; ``head.class_logits`` reads the classes from it. Both heads
return float32 (B, C) logits whose softmax is the class distribution.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from afa_llm.errors import UserError

if TYPE_CHECKING:
    from transformers.cache_utils import Cache
    from transformers.utils import ModelOutput

SEQ_CLS_SUFFIX = "ForSequenceClassification"


@dataclass(frozen=True)
class LabelWordHead:
    """Label-word scoring: ``token_ids[c]`` are the tokens of class c's word after the prompt."""

    token_ids: tuple[tuple[int, ...], ...]
    length_normalize: bool = False

    @property
    def single_token(self) -> bool:
        return all(len(ids) == 1 for ids in self.token_ids)

    @property
    def first_ids(self) -> list[int]:
        return [ids[0] for ids in self.token_ids]

    @property
    def reads_cache(self) -> bool:
        """Whether scoring needs every layer's KV cache of the prompt (a shortcut that skips layers cannot)."""
        return not self.single_token

    def forward_kwargs(self) -> dict:
        # the LM head on the answer position only; later tokens of a word read the prompt's KV cache
        return {"logits_to_keep": 1, "use_cache": not self.single_token}

    def class_logits(self, model: nn.Module, out: ModelOutput, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        last = out.logits[:, -1, :].float()
        ids = torch.tensor(self.first_ids, device=last.device)
        if self.single_token and not self.length_normalize:
            return last.index_select(-1, ids)  # the raw logits: log-probs up to a constant per row
        scores = torch.log_softmax(last, dim=-1).index_select(-1, ids)
        if not self.single_token:
            scores = scores + continuation_logprobs(model, out.past_key_values, inputs, self.token_ids)
        if self.length_normalize:
            scores = scores / torch.tensor([len(t) for t in self.token_ids], device=scores.device)
        return scores


@dataclass(frozen=True)
class ClassifierHead:
    """A linear ``score`` layer at the last real token (the model is a ``*ForSequenceClassification``)."""

    num_classes: int
    reads_cache = False

    def forward_kwargs(self) -> dict:
        return {"use_cache": False}

    def class_logits(self, model: nn.Module, out: ModelOutput, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if out.logits.dim() != 2:
            raise RuntimeError("the classifier head needs a *ForSequenceClassification model "
                               "(afa_llm.model.heads.as_sequence_classifier)")
        return out.logits.float()


Head = LabelWordHead | ClassifierHead


def as_head(head: Head | Sequence[int]) -> Head:
    """A head; a plain list of token ids means one-token label words (tests, benchmarks)."""
    if isinstance(head, (LabelWordHead, ClassifierHead)):
        return head
    return LabelWordHead(tuple((int(i),) for i in head))


def prompt_forward(model: nn.Module, inputs: dict[str, torch.Tensor], head: Head, return_hidden: bool = False,
                   **forward_kwargs) -> ModelOutput:
    """The one forward pass over the prompts (``forward_kwargs`` reach the attention functions)."""
    return model(**inputs, output_hidden_states=return_hidden, **head.forward_kwargs(), **forward_kwargs)


def continuation_logprobs(model: nn.Module, cache: Cache | None, inputs: dict[str, torch.Tensor],
                          token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, C): sum over k >= 1 of log p(word_c[k] | prompt, word_c[:k]), 0 for one-token words.

    One pass over the prompt's KV cache, repeated for the classes with more than one token; each row
    feeds its word minus the last token (right-padded: nothing real attends to the padding)."""
    if cache is None:
        raise UserError("label words of several tokens need the prompt's KV cache, which gradient "
                        "checkpointing turns off in training; set gradient_checkpointing=false or head=classifier")
    mask = inputs["attention_mask"]
    batch, device = mask.shape[0], mask.device
    multi = [c for c, ids in enumerate(token_ids) if len(ids) > 1]
    width = max(len(token_ids[c]) for c in multi) - 1
    feed = torch.zeros((len(multi), width), dtype=torch.long, device=device)
    target = torch.zeros_like(feed)
    valid = torch.zeros((len(multi), width), dtype=torch.bool, device=device)
    for row, c in enumerate(multi):
        ids = torch.tensor(token_ids[c], device=device)
        feed[row, : len(ids) - 1], target[row, : len(ids) - 1] = ids[:-1], ids[1:]
        valid[row, : len(ids) - 1] = True
    k = len(multi)
    cache.reorder_cache(torch.arange(batch, device=device).repeat_interleave(k))  # (B*k) rows: b-major
    last_position = inputs["position_ids"][:, -1:].repeat_interleave(k, 0)
    out = model(input_ids=feed.repeat(batch, 1),
                attention_mask=torch.cat([mask.repeat_interleave(k, 0), torch.ones_like(feed).repeat(batch, 1)], 1),
                position_ids=last_position + 1 + torch.arange(width, device=device),
                past_key_values=cache, use_cache=True)
    logp = torch.log_softmax(out.logits.float(), -1).gather(-1, target.repeat(batch, 1).unsqueeze(-1)).squeeze(-1)
    per_word = (logp * valid.repeat(batch, 1)).sum(-1).view(batch, k)
    scores = torch.zeros((batch, len(token_ids)), device=device)
    scores[:, multi] = per_word
    return scores


# ---- the classifier model ----------------------------------------------------------------
def is_sequence_classifier(model: nn.Module) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(inner).__name__.endswith(SEQ_CLS_SUFFIX)


def as_sequence_classifier(causal_lm: nn.Module, num_classes: int, init_rows: Sequence[int] | None = None,
                           seed: int = 0, fill: float | None = None) -> nn.Module:
    """The ``*ForSequenceClassification`` twin of ``causal_lm``, sharing its decoder (no copy).

    ``score`` starts from the LM head's rows ``init_rows`` (one token per class: the logits then equal
    label-word scoring exactly), else from a seeded normal(0, initializer_range) draw; ``fill`` sets every
    weight to one value (loading: a head the adapter does not overwrite shows up as NaN)."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(causal_lm.config)
    config.num_labels = num_classes
    try:
        with torch.device("meta"):  # the decoder is moved over, not built twice
            model = AutoModelForSequenceClassification.from_config(config)
    except ValueError as exc:
        raise UserError(f"head=classifier: transformers has no sequence-classification class for "
                        f"{type(causal_lm).__name__} ({str(exc).splitlines()[0]})") from exc
    model.config.architectures = [type(model).__name__]  # e.g. Gemma3TextForSequenceClassification (vLLM reads it)
    prefix = model.base_model_prefix
    setattr(model, prefix, getattr(causal_lm, causal_lm.base_model_prefix))
    lm_head = causal_lm.get_output_embeddings()
    weight = lm_head.weight
    score = nn.Linear(weight.shape[1], num_classes, bias=False, device=weight.device, dtype=torch.float32)
    with torch.no_grad():
        if fill is not None:
            score.weight.fill_(fill)
        elif init_rows is not None:
            score.weight.copy_(weight[list(init_rows)].float())
        else:
            generator = torch.Generator().manual_seed(seed)
            std = getattr(config.get_text_config(), "initializer_range", 0.02)
            score.weight.copy_(torch.randn(score.weight.shape, generator=generator) * std)
    model.score = score.to(weight.dtype if weight.dtype.is_floating_point else torch.float32)
    # transformers pools at the last token that is not padding, and refuses batches without a pad id: a
    # tokenizer without one pads with eos (as `afa_llm.model.task` does), and left padding keeps the
    # pooled token at -1, the answer position
    pad = causal_lm.config.pad_token_id
    if pad is None:
        eos = causal_lm.config.eos_token_id
        pad = eos[0] if isinstance(eos, list) else eos
    model.config.pad_token_id = pad
    return model


def check_head_loaded(model: nn.Module, source: str) -> None:
    """Refuse a classifier whose ``score`` still holds the NaN placeholder: the adapter had no head."""
    weight = model.score.weight if hasattr(model, "score") else None
    if weight is not None and not torch.isfinite(weight.float()).all():
        raise UserError(f"{source} holds no trained classifier head ('score' in modules_to_save); "
                        "was it trained with head=label_words?")
