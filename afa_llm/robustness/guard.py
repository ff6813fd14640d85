"""``guard``: hide the words that the model under training leans on beyond the zero-shot base, and make its
output on the input agree with its output on the hidden copy, so that such a word stops paying.

    guard: none | base | random | words     guard_weight: w     guard_words: [Winston, ...]

- ``base``: every ``guard_every`` steps, the audit's measure (`afa_llm.evaluation.audit`) on a sample of the
  training texts (drawn once per run; the base's effects are measured once, at the first refresh): for the
  ``guard_candidates`` most label-skewed words and pairs, the drop in the log-odds of their skewed class when
  each is hidden in ``guard_sample`` texts, for the model under training and for the base (the adapter
  switched off; with a classifier head, the head it started from). A word is flagged when its score (the
  model's effect over its median effect, minus the base's positive effect over the base's) is at least
  ``guard_threshold``. With ``guard_sticky`` (the default) a flag holds to the end of training; without it, only
  until the next refresh (a flagged cue stops paying, its score falls below the threshold, and the model learns
  it again). With sticky flags, ``select_best`` and early stopping count only the validations from one
  refresh interval after the newest flag on (`Guard.selectable_from`).
- ``random``: the control: at each refresh, ``guard_random_count`` words drawn at random from the same
  candidates; with ``guard_random_count: 0``, as many as the measure flags on the control's own model (with
  ``guard_sticky``, as many as it has flagged so far, the earlier draws kept), so that it hides as many words
  as the guard, for as long, and only which words differs.
- ``words``: the given list, from step 0 (e.g. the top words of `afa-llm audit` on a first run).

The loss, on the rows of the batch that hold a flagged word (``guard_loss``):

    kl:   w * KL( sg[p(x with the flagged words hidden)] || p(x) )     the gradient reaches p(x) only
    ce:   w * CE( p(x with the flagged words hidden), y )
    both: the sum

Hidden words are deleted from the attention at every layer, as the package's masked passes do
(`afa_llm.attention.masking.hide_tokens`).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from afa_llm.attention.masking import hide_tokens
from afa_llm.evaluation.audit import (Scorer, hidden_token_mask, mean_effects, measure_effects, sample_jobs,
                                      skewed_candidates)
from afa_llm.evaluation.audit_stats import Candidate, audit_scores, text_words
from afa_llm.model.scoring import forward_scores

if TYPE_CHECKING:
    from afa_llm.attention.clean_pass import CleanPass
    from afa_llm.model.task import EncodedBatch, PromptTask

GUARDS = ("none", "base", "random", "words")
GUARD_LOSSES = ("kl", "ce", "both")
TOP_LOGGED = 20


class Guard:
    """The guard of one run: which words are flagged, and the loss of a batch."""

    def __init__(self, cfg, task: PromptTask, texts: Sequence[str], labels: Sequence[int], num_classes: int):
        self.cfg, self.task, self.texts = cfg, task, list(texts)
        self.flagged: list[tuple[str, ...]] = []
        self.hidden_counts: Counter = Counter()  # word -> training rows it was hidden in
        self.first_step: dict[str, int] = {}  # word -> the step it was first flagged
        self.candidates: list[Candidate] = []
        self.skew_class: list[int] = []
        self.jobs: list[tuple[int, int]] | None = None  # (text, candidate) pairs measured at every refresh
        self.base_effects: np.ndarray | None = None
        self.measured: set[int] = set()  # random, matched and sticky: the candidates the measure has flagged
        if cfg.guard == "words":
            self.flagged = [tuple(w for w, _, _ in text_words(word)) for word in cfg.guard_words]
            self.first_step = {" ".join(words): 0 for words in self.flagged}
        else:
            self.candidates, skews, _ = skewed_candidates(texts, labels, num_classes, cfg.guard_min_count,
                                                          cfg.guard_candidates)
            self.skew_class = [s["class"] for s in skews]

    # ---- which words ---------------------------------------------------------------------------
    def refresh(self, model: torch.nn.Module, step: int) -> dict | None:
        """Flag anew every ``guard_every`` steps (``base`` and ``random``); the refresh's log record."""
        if self.cfg.guard == "words" or step % self.cfg.guard_every:
            return None
        rng = np.random.default_rng([self.cfg.seed, step, 0x6A])
        event: dict = {"step": step}
        if self.cfg.guard == "base":
            scores = self._scores(model)
            order = np.argsort(-np.asarray(scores))
            flagged = [i for i in order if scores[i] >= self.cfg.guard_threshold]
            event["guard_top_scores"] = [[self.candidates[i].text, round(float(scores[i]), 3)] for i in order[:5]]
        else:
            flagged = self._random_flags(model, rng, event)
        fresh = [self.candidates[i].words for i in flagged]
        if self._sticky():  # once flagged, hidden to the end of training
            fresh = list(dict.fromkeys([*self.flagged, *fresh]))
        self.flagged = fresh
        for words in self.flagged:
            self.first_step.setdefault(" ".join(words), step)
        return {**event, "guard_flagged": [" ".join(w) for w in self.flagged]}

    def _sticky(self) -> bool:
        """Whether flags hold to the end of training: ``guard_sticky`` with base, or with the matched control."""
        return self.cfg.guard_sticky and (self.cfg.guard == "base" or self.cfg.guard_random_count == 0)

    def selectable_from(self) -> int:
        """With sticky flags, the first step whose validation ``select_best`` and early stopping may count: one
        refresh interval after the newest word was first flagged. A checkpoint from before leaned on that word
        while the guard let it pay, and on a validation split that carries the cue it would win the selection
        (0: every step counts)."""
        if not self._sticky() or not self.first_step:
            return 0
        return max(self.first_step.values()) + self.cfg.guard_every

    def _random_flags(self, model: torch.nn.Module, rng: np.random.Generator, event: dict) -> list[int]:
        """The control's draw from the candidates: ``guard_random_count`` of them, or, with 0, as many as the
        measure flags on this model (sticky: the draws that bring the held flags up to as many as it has
        flagged so far, from the candidates not yet held)."""
        if self.cfg.guard_random_count:
            count = min(self.cfg.guard_random_count, len(self.candidates))
            return list(rng.choice(len(self.candidates), count, replace=False))
        scores = np.asarray(self._scores(model))
        measured = set(np.flatnonzero(scores >= self.cfg.guard_threshold).tolist())
        event["guard_measured"] = [self.candidates[i].text for i in sorted(measured)]
        if not self._sticky():
            return list(rng.choice(len(self.candidates), len(measured), replace=False))
        self.measured |= measured
        held = set(self.flagged)
        rest = [i for i, c in enumerate(self.candidates) if c.words not in held]
        return [int(i) for i in rng.choice(rest, max(len(self.measured) - len(held), 0), replace=False)]

    def _scores(self, model: torch.nn.Module) -> list[float]:
        """The audit's score of every candidate for the model under training. The sample of texts is drawn once
        per run, so that a score changes only as the model does, and the base's effects are measured once."""
        was_training = model.training
        model.eval()
        if self.jobs is None:
            self.jobs = sample_jobs(self.candidates, self.cfg.guard_sample, self.cfg.seed + 0x6A)
            base = Scorer("base", model, self.task.head, model.disable_adapter)
            self.base_effects = self._effects(base)
        effects = np.concatenate([self._effects(Scorer("model", model, self.task.head)), self.base_effects], axis=1)
        model.train(was_training)
        mean = mean_effects(self.jobs, effects, len(self.candidates))
        scores, _ = audit_scores(mean[:, 0], mean[:, 1])
        return scores

    def _effects(self, scorer: Scorer) -> np.ndarray:
        return measure_effects([scorer], self.task, self.texts, self.jobs, self.candidates, self.skew_class,
                               batch_size=64)

    # ---- the loss --------------------------------------------------------------------------------
    def hidden_mask(self, batch: EncodedBatch, texts: Sequence[str]) -> torch.Tensor:
        """(B, L) bool: the tokens of every flagged word in each row."""
        masks = []
        for row, text in enumerate(texts):
            positions = batch.text_mask[row].nonzero().squeeze(1).cpu()
            mask = torch.zeros(batch.input_ids.shape[1], dtype=torch.bool)
            for words in self.flagged:
                word_mask = hidden_token_mask(self.task, text, words, positions, mask.shape[0])
                if word_mask.any():
                    self.hidden_counts[" ".join(words)] += 1
                mask |= word_mask
            masks.append(mask)
        return torch.stack(masks).to(batch.input_ids.device)

    def loss(self, model: torch.nn.Module, batch: EncodedBatch, clean: CleanPass,
             texts: Sequence[str]) -> tuple[torch.Tensor, dict[str, float]]:
        zero = clean.class_logits.sum() * 0.0
        if not self.flagged:
            return zero, {"guard_loss": 0.0, "guard_rows": 0.0}
        mask = self.hidden_mask(batch, texts)
        rows = mask.any(dim=1).nonzero().squeeze(1)
        if len(rows) == 0:
            return zero, {"guard_loss": 0.0, "guard_rows": 0.0}
        sub = type(batch)(batch.input_ids[rows], batch.attention_mask[rows], batch.position_ids[rows],
                          batch.text_mask[rows])
        hidden = hide_tokens(sub, mask[rows].unsqueeze(1), "attention", self.task.tokenizer.pad_token_id or 0)
        kind, weight = self.cfg.guard_loss, self.cfg.guard_weight
        with torch.set_grad_enabled(kind != "kl"):
            hidden_logits = forward_scores(model, **hidden.model_inputs(), head=self.task.head).class_logits
        total = zero
        if kind in ("kl", "both"):
            teacher = F.log_softmax(hidden_logits.detach().float(), dim=-1)
            student = F.log_softmax(clean.class_logits[rows].float(), dim=-1)
            total = total + F.kl_div(student, teacher, log_target=True, reduction="sum") / len(batch.input_ids)
        if kind in ("ce", "both"):
            total = total + F.cross_entropy(hidden_logits.float(), batch.labels[rows], reduction="sum") / len(
                batch.input_ids)
        total = weight * total
        return total, {"guard_loss": float(total.detach()), "guard_rows": float(len(rows))}

    # ---- the record --------------------------------------------------------------------------------
    def top_hidden(self, top: int = TOP_LOGGED) -> list[list]:
        return [[word, count, self.first_step.get(word)] for word, count in self.hidden_counts.most_common(top)]

    def record(self) -> dict:
        return {"guard": self.cfg.guard, "guard_loss": self.cfg.guard_loss, "guard_weight": self.cfg.guard_weight,
                "guard_sticky": self.cfg.guard_sticky,
                "flagged_last": [" ".join(w) for w in self.flagged],
                "top_hidden": self.top_hidden()}  # [word, rows hidden in, first step flagged]

    def state_dict(self) -> dict:
        return {"flagged": [list(w) for w in self.flagged], "hidden_counts": dict(self.hidden_counts),
                "first_step": dict(self.first_step), "measured": sorted(self.measured)}

    def load_state_dict(self, state: dict) -> None:
        self.flagged = [tuple(w) for w in state["flagged"]]
        self.hidden_counts = Counter(state["hidden_counts"])
        self.first_step = dict(state["first_step"])
        self.measured = set(state.get("measured", []))
