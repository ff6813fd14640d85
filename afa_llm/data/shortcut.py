"""Planted shortcuts: a cue word inserted into training texts, and the three stress views.

A shortcut is a word or short phrase with no sentiment of its own (a name, say) that goes
with one class in the training data. A model that leans on it is caught by the stress
views of clean test texts:

- ``clean``: the texts as they are;
- ``aligned``: the cue inserted into the texts of ``cue_label`` (the others unchanged);
- ``anti``: the cue inserted into every text of the other classes.

Rules: the cue goes between whitespace-separated words, never inside one (a slot before a
word, or after the last one); the slot is ``start``, ``end`` or drawn from a seeded RNG
(``random``), so insertion is a pure function of (texts, labels, spec, seed).

In training (`plant_shortcut`), ``rate`` of the cue class's examples get the cue, and
``purity`` is the share of cued examples that belong to that class: below 1 the cue also
goes into ``round(n_cued * (1 - purity) / purity)`` examples of the other classes, drawn at
random, so that purity holds exactly wherever the counts are whole numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from afa_llm.errors import UserError

Position = Literal["random", "start", "end"]
POSITIONS: tuple[str, ...] = ("random", "start", "end")
_WORD = re.compile(r"\S+")
# a run's validation split before its cue was planted (kept beside the planted splits for the gap at validation)
UNPLANTED_VALIDATION = "validation_unplanted"


@dataclass(frozen=True)
class ShortcutSpec:
    cue: str
    label: int  # the class index the cue goes with
    rate: float = 0.5
    purity: float = 1.0
    position: str = "random"

    def __post_init__(self) -> None:
        if not self.cue.strip() or self.cue != self.cue.strip():
            raise UserError(f"shortcut cue must be a non-empty word or phrase without outer spaces, got {self.cue!r}")
        if not 0 < self.rate <= 1:
            raise UserError(f"config key 'shortcut_rate' must be in (0, 1], got {self.rate!r}")
        if not 0 < self.purity <= 1:
            raise UserError(f"config key 'shortcut_purity' must be in (0, 1], got {self.purity!r}")
        if self.position not in POSITIONS:
            raise UserError(f"shortcut position must be one of {', '.join(POSITIONS)}, got {self.position!r}")


def insert_cue(text: str, cue: str, position: str, rng: np.random.Generator | None = None) -> str:
    """``text`` with ``cue`` inserted as a whole word: at the start, the end, or before a random word
    (the slot after the last word counts as one of the random choices)."""
    words = list(_WORD.finditer(text))
    slots = len(words) + 1
    if position == "start":
        slot = 0
    elif position == "end":
        slot = slots - 1
    else:
        if rng is None:
            raise ValueError("position 'random' needs an rng")
        slot = int(rng.integers(slots))
    if slot < len(words):
        at = words[slot].start()
        return text[:at] + cue + " " + text[at:]
    at = words[-1].end() if words else 0
    return text[:at] + (" " if words else "") + cue + text[at:]


def contains_cue(text: str, cue: str) -> bool:
    """Whether ``cue`` already occurs in ``text`` as whole words (case-insensitive)."""
    return re.search(rf"(?<!\w){re.escape(cue)}(?!\w)", text, flags=re.IGNORECASE) is not None


def check_cue_absent(texts: Sequence[str], cue: str, where: str) -> None:
    """A stress view or a planted shortcut is only clean if the cue is not already in the texts."""
    found = [i for i, t in enumerate(texts) if contains_cue(t, cue)]
    if found:
        raise UserError(f"the cue {cue!r} already occurs in {len(found)} text(s) of {where} (first at row "
                        f"{found[0]}); choose a word that the data does not contain")


def cued_rows(labels: Sequence[int], spec: ShortcutSpec, rng: np.random.Generator) -> np.ndarray:
    """The row indices that get the cue under ``spec`` (sorted)."""
    labels = np.asarray(labels)
    own = np.flatnonzero(labels == spec.label)
    others = np.flatnonzero(labels != spec.label)
    n_own = int(round(spec.rate * len(own)))
    n_other = int(round(n_own * (1 - spec.purity) / spec.purity))
    if n_other > len(others):
        raise UserError(f"config key 'shortcut_purity' {spec.purity} needs {n_other} cued examples of the other "
                        f"classes, but there are only {len(others)}")
    picked = np.concatenate([rng.choice(own, n_own, replace=False), rng.choice(others, n_other, replace=False)])
    return np.sort(picked.astype(int))


def plant_shortcut(texts: Sequence[str], labels: Sequence[int], spec: ShortcutSpec,
                   seed: int) -> tuple[list[str], np.ndarray]:
    """The texts with the cue planted per ``spec``, and the cued row indices."""
    rng = np.random.default_rng(seed)
    rows = cued_rows(labels, spec, rng)
    out = list(texts)
    for i in rows:
        out[i] = insert_cue(out[i], spec.cue, spec.position, rng)
    return out, rows


def stress_views(texts: Sequence[str], labels: Sequence[int], cue: str, cue_label: int, position: str = "random",
                 seed: int = 0) -> dict[str, list[str]]:
    """The clean, aligned and anti views of ``texts`` (same rows, same order, labels unchanged)."""
    rng = np.random.default_rng(seed)
    slots = [insert_cue(t, cue, position, rng) for t in texts]  # one draw per row, shared by both views
    aligned = [s if y == cue_label else t for t, s, y in zip(texts, slots, labels)]
    anti = [s if y != cue_label else t for t, s, y in zip(texts, slots, labels)]
    return {"clean": list(texts), "aligned": aligned, "anti": anti}


def cue_char_span(text: str, cue: str) -> tuple[int, int]:
    """The character span of the (first) whole-word occurrence of ``cue`` in ``text``."""
    match = re.search(rf"(?<!\w){re.escape(cue)}(?!\w)", text, flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"cue {cue!r} not in text")
    return match.span()


def split_seed_for(split_seed: int, split: str) -> int:
    """The insertion seed of a split: a pure function of the split seed, different per split."""
    return int(np.random.SeedSequence([split_seed, sum(map(ord, split)), 0x5C]).generate_state(1)[0])
