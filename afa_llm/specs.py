"""Typed requests that the library takes instead of command-line namespaces.

- `ScorerSpec`: which model scores (base, adapter and its scale, precision) and with which prompt (template,
  label words, text budget, truncation). Filled from flags, from a run folder or a merged folder
  (`afa_llm.runs.resolve_scorer`), or from a leaderboard entry.
- `DataSpec`: which labelled data set, its columns and class names, the split seed, and the files that
  give a validation or test split of your own (instead of drawing it from the data by the seed).

Both hold each default once (`afa_llm.defaults`), and their fields are the key lists that runs, merged
folders, command options, reports and the leaderboard use (`MODEL_KEYS`, `PROMPT_KEYS`, `SCORER_KEYS`,
`DATA_KEYS`): a field added here reaches all of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Sequence

from afa_llm.defaults import (DEFAULT_DATA, DEFAULT_DTYPE, DEFAULT_HEAD, DEFAULT_MODEL, DEFAULT_TEMPLATE,
                              DEFAULT_TRUNCATION, EVAL_MAX_TEXT_TOKENS, LABEL_COLUMN, SCORING_QUANTIZATION,
                              TEXT_COLUMN)
from afa_llm.errors import UserError

# which model scores (what loading needs) / how it is prompted (evaluating, merging or ranking an adapter
# must reuse its trained values)
_MODEL, _PROMPT = {"part": "model"}, {"part": "prompt"}


@dataclass
class ScorerSpec:
    model: str = field(default=DEFAULT_MODEL, metadata=_MODEL)
    adapter: str | None = field(default=None, metadata=_MODEL)
    # WiSE-FT weight interpolation: the adapter's LoRA update times this, in [0, 1] (0: the base, 1: the
    # adapter as trained; `afa_llm.model.adapters.scale_adapter`). Chosen when scoring or merging, never
    # trained: a run's config.yaml has no such key, and a merged folder records its own in afa_merge.json
    adapter_scale: float = field(default=1.0, metadata=_MODEL)
    quantization: str = field(default=SCORING_QUANTIZATION, metadata=_MODEL)
    dtype: str = field(default=DEFAULT_DTYPE, metadata=_MODEL)
    template: str = field(default=DEFAULT_TEMPLATE, metadata=_PROMPT)
    label_words: list[str] | None = field(default=None, metadata=_PROMPT)  # None: " " + class name
    max_text_tokens: int = field(default=EVAL_MAX_TEXT_TOKENS, metadata=_PROMPT)
    truncation: str = field(default=DEFAULT_TRUNCATION, metadata=_PROMPT)
    # or "classifier" (afa_llm.model.heads); a run's or merged folder's own
    head: str = field(default=DEFAULT_HEAD, metadata=_PROMPT)
    length_normalize: bool = field(default=False, metadata=_PROMPT)

    def words_for(self, class_names: Sequence[str]) -> list[str]:
        """The label word of each class (one per class, checked)."""
        if self.label_words is None:
            return default_label_words(class_names)
        if len(self.label_words) != len(class_names):
            raise UserError(f"--label-words gives {len(self.label_words)} words but the data has "
                            f"{len(class_names)} classes {list(class_names)}")
        return list(self.label_words)

    def record(self, class_names: Sequence[str], act: dict | None = None, **rows) -> dict:
        """What a report records about how it scored: every field (the label words resolved), the class
        names, and ``rows`` (data, split, split_seed, shots)."""
        return {**{key: getattr(self, key) for key in MODEL_KEYS},
                **{key: rows.get(key) for key in ("data", "split", "split_seed")},
                **{key: getattr(self, key) for key in PROMPT_KEYS}, "label_words": self.words_for(class_names),
                "label_names": list(class_names), "shots": rows.get("shots", 0), "act": act}


@dataclass
class DataSpec:
    data: str = DEFAULT_DATA
    text_column: str = TEXT_COLUMN
    label_column: str = LABEL_COLUMN
    label_names: list[str] | None = None
    split_seed: int = 0
    # a split of your own: a file like ``data`` (same columns) read as that split instead of one drawn
    # from ``data`` by ``split_seed`` (`afa_llm.data.loading`)
    validation_data: str | None = None
    test_data: str | None = None


def _keys(cls: type, part: str | None = None) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if part is None or f.metadata.get("part") == part)


MODEL_KEYS = _keys(ScorerSpec, "model")
PROMPT_KEYS = _keys(ScorerSpec, "prompt")  # a run's config.yaml and a merged folder keep these
SCORER_KEYS = _keys(ScorerSpec)
DATA_KEYS = _keys(DataSpec)


@dataclass
class Resolved:
    """A scorer and data set resolved from flags and a run (see `afa_llm.runs.resolve_scorer`)."""

    scorer: ScorerSpec
    data: DataSpec
    class_names: list[str]  # the saved names of the run / merged folder, else from the label words
    config: object | None = None  # the run's TrainConfig
    own_data: bool = False  # the data scored is the run's own data set
    notes: list[str] = field(default_factory=list)


def default_label_words(class_names: Sequence[str]) -> list[str]:
    """`` negative`` for class ``negative``: a leading space makes a common word one token."""
    return [" " + name for name in class_names]


def parse_label_words(spec: str | None) -> list[str] | None:
    """``--label-words`` as a list: comma-separated, a leading space added where missing."""
    if spec is None:
        return None
    return [w if w.startswith(" ") else " " + w for w in (w.strip() for w in spec.split(","))]


def parse_names(spec: str | list | None) -> list[str] | None:
    """``--label-names`` (comma-separated) as a list."""
    if spec is None or isinstance(spec, list):
        return spec
    return [v for v in spec.split(",")] if spec else None


def class_names_for(label_names: Sequence[str] | None, label_words: Sequence[str] | None) -> list[str]:
    """Class names where no labelled data gives them: the saved names, else the label words, else neg/pos."""
    if label_names:
        return list(label_names)
    if label_words:
        return [w.strip() for w in label_words]
    return ["negative", "positive"]
