"""Prompt-based classification task: template + verbalizer, and batch encoding.

A task turns a text into a prompt (``Review: {text}\\nSentiment:``) and scores each
class at the last prompt position with its head (`afa_llm.model.heads`): the log-likelihood
of the class's label word (`` negative`` / `` positive``, or several tokens such as
`` very negative``), or a linear classifier. Training and evaluation both encode through
`PromptTask.encode` and score through `afa_llm.model.scoring.class_logits`, so they cannot
drift apart.

Encoding rules (why they matter):
- The prefix, text and suffix are tokenized separately and concatenated, so we know
  exactly which tokens are the *text* (AFA's focus is over text tokens only) and
  over-long texts are truncated *inside the text*: the template and the answer
  position are never cut. ``truncation="start"`` keeps the first ``max_text_tokens``
  tokens; ``"start_end"`` keeps the first quarter and the last three quarters of that
  budget, since reviews tend to state their verdict at the end (Sun et al. 2019,
  "How to Fine-Tune BERT for Text Classification", found head+tail best on IMDB).
- Batches are LEFT-padded, so the answer position is index -1 for every row, with
  explicit ``position_ids``; AFA later hides tokens by zeroing attention-mask entries
  while keeping these positions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from afa_llm.defaults import (DEFAULT_HEAD, DEFAULT_TEMPLATE, DEFAULT_TRUNCATION, EVAL_MAX_TEXT_TOKENS, HEADS,
                              TRUNCATIONS)
from afa_llm.deprecations import truncation_name
from afa_llm.errors import UserError
from afa_llm.model.heads import ClassifierHead, Head, LabelWordHead

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class EncodedBatch:
    """A left-padded prompt batch. All tensors are (B, L) except ``labels`` (B,)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    text_mask: torch.Tensor  # bool: True on the example's own text tokens
    labels: torch.Tensor | None = None
    # (B, C) log-probabilities of a bias model, training only (``debias: poe``, afa_llm.robustness.poe)
    bias_log_probs: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "EncodedBatch":
        moved = {k: (v.to(device) if v is not None else None) for k, v in self.__dict__.items()}
        return EncodedBatch(**moved)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }


def drop_unattended(batch: EncodedBatch, pad_id: int) -> EncodedBatch:
    """Delete every position whose attention-mask entry is 0, then left-pad the rows again.

    The kept tokens keep their position ids, so each row computes what it computed before
    (a token nobody attends to changes no other token) on fewer columns. Left padding and
    tokens hidden through the attention mask both go; ``labels`` are kept.
    """
    keep = batch.attention_mask.bool()
    lengths = keep.sum(-1)
    width = int(lengths.max())
    rows, cols = keep.nonzero(as_tuple=True)  # row-major, so each row's tokens stay in order
    new_cols = width - lengths[rows] + keep.long().cumsum(-1)[rows, cols] - 1

    def place(t: torch.Tensor, fill) -> torch.Tensor:
        out = t.new_full((t.shape[0], width), fill)
        out[rows, new_cols] = t[rows, cols]
        return out

    return EncodedBatch(place(batch.input_ids, pad_id), place(batch.attention_mask, 0),
                        place(batch.position_ids, 0), place(batch.text_mask, False), batch.labels)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (left padding gets position 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def truncate(ids: list[int], limit: int, mode: str = DEFAULT_TRUNCATION) -> list[int]:
    """At most ``limit`` tokens: the first ones (start), or the first quarter and the last three quarters
    (start_end)."""
    if len(ids) <= limit:
        return ids
    mode = truncation_name(mode)
    if mode == "start":
        return ids[:limit]
    if mode != "start_end":
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATIONS)}, got {mode!r}")
    first = limit // 4
    return ids[:first] + ids[len(ids) - (limit - first):]


@dataclass
class PromptTask:
    """A prompt template with one ``{text}`` slot, one label word per class and a head (`HEADS`)."""

    label_words: list[str]
    template: str = DEFAULT_TEMPLATE
    max_text_tokens: int = EVAL_MAX_TEXT_TOKENS  # a run's task takes its config's
    demo_text_tokens: int = 64
    truncation: str = DEFAULT_TRUNCATION
    head_kind: str = DEFAULT_HEAD
    length_normalize: bool = False  # label words of several tokens: mean instead of summed log-probability
    label_token_seqs: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.template.count("{text}") != 1:
            raise UserError(f"prompt template must contain '{{text}}' exactly once: {self.template!r}")
        if len(self.label_words) < 2:
            raise UserError(f"verbalizer needs at least two label words, got {self.label_words}")
        if len(set(self.label_words)) != len(self.label_words):
            raise UserError(f"verbalizer label words must be distinct: {self.label_words}")
        if self.head_kind not in HEADS:
            raise UserError(f"head must be one of {', '.join(HEADS)}, got {self.head_kind!r}")
        self.truncation = truncation_name(self.truncation)  # head / head_tail: one release more, with a notice
        if self.truncation not in TRUNCATIONS:
            raise UserError(f"truncation must be one of {', '.join(TRUNCATIONS)}, got {self.truncation!r}")
        if self.max_text_tokens <= 0 or self.demo_text_tokens <= 0:
            raise UserError(
                f"max_text_tokens and demo_text_tokens must be positive "
                f"(got {self.max_text_tokens} and {self.demo_text_tokens})"
            )

    # ---- tokenizer binding -------------------------------------------------
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    def bind(self, tokenizer: PreTrainedTokenizerBase) -> "PromptTask":
        """Tokenize the label words (one or more tokens each; they must differ)."""
        seqs = [tokenizer.encode(word, add_special_tokens=False) for word in self.label_words]
        for word, toks in zip(self.label_words, seqs):
            if not toks:
                raise UserError(f"label word {word!r} is empty for this tokenizer")
        if self.head_kind == "label_words" and len({tuple(t) for t in seqs}) != len(seqs):
            raise UserError(f"label words {self.label_words} map to the same tokens")
        self.label_token_seqs = seqs
        self._tokenizer = tokenizer
        prefix, suffix = self.template.split("{text}")
        # A trailing space in the prefix belongs to the text's first BPE token.
        self._text_lead = ""
        if prefix.endswith(" "):
            prefix, self._text_lead = prefix[:-1], " "
        self._prefix_ids = self._encode(prefix)
        self._suffix_ids = self._encode(suffix)
        self._bos = leading_special_tokens(tokenizer)
        return self

    def _encode(self, s: str) -> list[int]:
        return self._tokenizer.encode(s, add_special_tokens=False) if s else []

    @property
    def num_classes(self) -> int:
        return len(self.label_words)

    @property
    def label_token_ids(self) -> list[int]:
        """The token id of each label word, for the features that need one-token words (ACT, the TRL
        baseline, the classifier's initialisation)."""
        if any(len(t) != 1 for t in self.label_token_seqs):
            pieces = {w: self._tokenizer.convert_ids_to_tokens(t) for w, t in zip(self.label_words, self.label_token_seqs)}
            raise UserError(f"this needs label words of one token each; the tokenizer splits them as {pieces}")
        return [t[0] for t in self.label_token_seqs]

    @property
    def head(self) -> Head:
        """The scoring head (`afa_llm.model.heads`) of this task."""
        if self.head_kind == "classifier":
            return ClassifierHead(self.num_classes)
        return LabelWordHead(tuple(tuple(t) for t in self.label_token_seqs), self.length_normalize)

    def classifier_init_rows(self) -> list[int] | None:
        """The LM-head rows a classifier starts from: the label words' tokens where each is one token."""
        rows = [t[0] for t in self.label_token_seqs if len(t) == 1]
        return rows if len(set(rows)) == self.num_classes else None

    # ---- encoding ------------------------------------------------------------
    def text_ids(self, text: str, limit: int | None = None) -> list[int]:
        return truncate(self._encode(self._text_lead + text), limit or self.max_text_tokens, self.truncation)

    def truncated_share(self, texts: Sequence[str]) -> float:
        """The share of ``texts`` longer than ``max_text_tokens`` (cut by `text_ids`)."""
        cut = sum(len(self._encode(self._text_lead + t)) > self.max_text_tokens for t in texts)
        return cut / len(texts) if len(texts) else 0.0

    def text_offsets(self, text: str) -> list[tuple[int, int]]:
        """The character span in ``text`` of each token that `text_ids` keeps, in order (for mapping
        focus to words). Needs a fast tokenizer (offset mapping)."""
        lead = self._text_lead
        try:
            enc = self._tokenizer(lead + text, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError as exc:
            raise UserError("word-level focus metrics need a fast tokenizer (offset mapping)") from exc
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        kept = truncate(list(range(len(ids))), self.max_text_tokens, self.truncation)
        if [ids[i] for i in kept] != self.text_ids(text):
            raise RuntimeError("the tokenizer's offset encoding differs from the prompt encoding")
        shift = len(lead)
        return [(max(0, offsets[i][0] - shift), max(0, offsets[i][1] - shift)) for i in kept]

    def prompt_ids(self, text: str, demos: Sequence[tuple[str, int]] = ()) -> tuple[list[int], int, int]:
        """Token ids of one prompt and the [start, end) span of its text tokens."""
        if not hasattr(self, "_tokenizer"):
            raise RuntimeError("PromptTask.bind(tokenizer) must be called before encoding")
        ids = list(self._bos)
        for demo_text, demo_label in demos:
            ids += self._prefix_ids + self.text_ids(demo_text, self.demo_text_tokens) + self._suffix_ids
            ids += self.label_token_seqs[demo_label] + self._encode("\n\n")
        ids += self._prefix_ids
        start = len(ids)
        ids += self.text_ids(text)
        end = len(ids)
        return ids + self._suffix_ids, start, end

    def encode(
        self,
        texts: Sequence[str],
        labels: Sequence[int] | None = None,
        demos: Sequence[Sequence[tuple[str, int]]] | None = None,
        pad_token_id: int | None = None,
    ) -> EncodedBatch:
        """Encode and left-pad a batch of texts (with optional per-text demonstrations)."""
        rows = [self.prompt_ids(t, demos[i] if demos else ()) for i, t in enumerate(texts)]
        width = max(len(r[0]) for r in rows)
        pad = pad_token_id if pad_token_id is not None else _pad_id(self._tokenizer)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        text_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (ids, start, end) in enumerate(rows):
            offset = width - len(ids)
            input_ids[i, offset:] = torch.tensor(ids)
            attention_mask[i, offset:] = 1
            text_mask[i, offset + start : offset + end] = True
        return EncodedBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            text_mask=text_mask,
            labels=torch.tensor(list(labels), dtype=torch.long) if labels is not None else None,
        )


def length_batches(task: PromptTask, texts: Sequence[str], batch_size: int) -> list[np.ndarray]:
    """Row indices of ``texts`` in batches of similar length (shortest first: less padding)."""
    order = np.argsort([len(task.text_ids(t)) for t in texts], kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(texts), batch_size)]


def leading_special_tokens(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens the tokenizer itself puts before a text (e.g. Gemma's ``<bos>``).

    Read off an encoding rather than ``add_bos_token``, which transformers 5 tokenizers
    do not always set: Gemma 3 without its ``<bos>`` predicts one class for everything.
    """
    plain = tokenizer.encode("x", add_special_tokens=False)
    full = tokenizer.encode("x", add_special_tokens=True)
    cut = len(full) - len(plain)
    return list(full[:cut]) if cut > 0 and full[cut:] == plain else []


def _pad_id(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return candidate
    return 0


def draw_demonstrations(
    pool_texts: Sequence[str], pool_labels: Sequence[int], shots: int, n_queries: int, seed: int
) -> list[list[tuple[str, int]]]:
    """``shots`` demonstrations per query, drawn from the train pool with a fixed seed.

    Classes are cycled so that every class appears when shots >= num_classes.
    """
    if shots <= 0:
        return [[] for _ in range(n_queries)]
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(pool_labels):
        by_class.setdefault(int(y), []).append(i)
    classes = sorted(by_class)
    out = []
    for _ in range(n_queries):
        order = rng.sample(classes, len(classes))
        picks = [rng.choice(by_class[order[j % len(order)]]) for j in range(shots)]
        out.append([(pool_texts[i], int(pool_labels[i])) for i in picks])
    return out
