"""Names that changed so that each word has one meaning, and the old names that still work for one release.

Each old name prints one line on stderr (once per process) and then does what the new one does:

- truncation modes (a recipe's ``truncation:``, ``--truncation``, a leaderboard entry, `PromptTask`):
  ``head`` -> ``start`` (the first N tokens), ``head_tail`` -> ``start_end`` (the first quarter and the
  last three quarters): "head" means the classifier head only. A run folder or merged folder written
  before the rename reads as the new name without a notice (it is a record, not something to fix);
- ``afa-llm calibrate --heads`` -> ``--attention-heads`` (ACT's attention heads, not the classifier head);
- ``afa-llm prior --method`` -> ``--correction`` ("method" is the training method);
- ``python -m afa_llm.train`` -> ``afa-llm train`` (or ``python -m afa_llm train``);
- the data class ``SentimentData`` and ``load_sentiment_data`` of `afa_llm.data.loading` -> ``ClassificationData``
  and ``load_classification_data`` (a Python `DeprecationWarning`).
"""

from __future__ import annotations

import sys

RENAMED_TRUNCATIONS = {"head": "start", "head_tail": "start_end"}
_FIRST_SPELLING = {new: old for old, new in RENAMED_TRUNCATIONS.items()}
_told: set[str] = set()  # the old names already announced in this process


def notice(old: str, new: str) -> None:
    """One line on stderr, once per process per old name: ``old`` works for this release, ``new`` replaces it."""
    if old in _told:
        return
    _told.add(old)
    print(f"deprecated: {old} is now {new}; the old name works until the next release", file=sys.stderr)


def truncation_name(value: object, quiet: bool = False) -> object:
    """The current name of a truncation mode (an old one with a notice unless ``quiet``); anything else as given,
    for the caller's own check to refuse."""
    new = RENAMED_TRUNCATIONS.get(value) if isinstance(value, str) else None
    if new is None:
        return value
    if not quiet:
        notice(f"truncation {value!r}", repr(new))
    return new


def first_spelling(truncation: str) -> str:
    """The name a truncation mode had when the hashes that depend on it were first written (leaderboard cache
    keys, ACT search-log setups): hashing that name keeps caches and logs from before the rename valid."""
    return _FIRST_SPELLING.get(truncation, truncation)


def upgrade_config(raw: dict, saved: bool) -> None:
    """Rename old values of a recipe's keys in place (a run's own config.yaml, ``saved``, without a notice)."""
    if "truncation" in raw:
        raw["truncation"] = truncation_name(raw["truncation"], quiet=saved)
