"""Typed requests that the library takes instead of command-line namespaces.

- `ScorerSpec`: which model scores (base, adapter, precision) and with which prompt (template,
  label words, text budget, truncation). Filled from flags, from a run folder or a merged folder
  (`afa_llm.runs.resolve_scorer`), or from a leaderboard entry.
- `DataSpec`: which labelled data set, its columns and class names, and the split seed.

Both hold each default once (`afa_llm.defaults`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from afa_llm.defaults import DEFAULT_DATA, DEFAULT_MODEL, DEFAULT_TEMPLATE, EVAL_MAX_TEXT_TOKENS
from afa_llm.errors import UserError


@dataclass
class ScorerSpec:
    model: str = DEFAULT_MODEL
    adapter: str | None = None
    quantization: str = "none"
    dtype: str = "fp32"
    template: str = DEFAULT_TEMPLATE
    label_words: list[str] | None = None  # None: " " + class name
    max_text_tokens: int = EVAL_MAX_TEXT_TOKENS
    truncation: str = "head"
    head: str = "label_words"  # or "classifier" (afa_llm.model.heads); a run's or merged folder's own
    length_normalize: bool = False

    def words_for(self, class_names: Sequence[str]) -> list[str]:
        """The label word of each class (one per class, checked)."""
        if self.label_words is None:
            return default_label_words(class_names)
        if len(self.label_words) != len(class_names):
            raise UserError(f"--label-words gives {len(self.label_words)} words but the data has "
                            f"{len(class_names)} classes {list(class_names)}")
        return list(self.label_words)

    def record(self, class_names: Sequence[str], act: dict | None = None, **rows) -> dict:
        """What a report records about how it scored (``rows``: data, split, split_seed, shots)."""
        return {"model": self.model, "adapter": self.adapter, "quantization": self.quantization, "dtype": self.dtype,
                **{key: rows.get(key) for key in ("data", "split", "split_seed")}, "template": self.template,
                "label_words": self.words_for(class_names), "label_names": list(class_names),
                "max_text_tokens": self.max_text_tokens, "truncation": self.truncation, "head": self.head,
                "length_normalize": self.length_normalize, "shots": rows.get("shots", 0), "act": act}


@dataclass
class DataSpec:
    data: str = DEFAULT_DATA
    text_column: str = "text"
    label_column: str = "label"
    label_names: list[str] | None = None
    split_seed: int = 0


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
