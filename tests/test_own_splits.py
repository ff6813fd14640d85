"""Your own splits: ``validation_data`` / ``test_data`` files (CSV, JSONL, Parquet, a save_to_disk folder)
read as those splits, DatasetDict folders, the run's record read back by eval and stress, and one-line
errors (exit 2) for bad split files, all before any model loads."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from afa_llm import cli
from afa_llm.config import load_config
from afa_llm.data.loading import load_classification_data
from afa_llm.errors import UserError
from conftest import TINY_ROWS

WORDS = {0: "negative", 1: "positive"}
TRAIN, VALIDATION, TEST = TINY_ROWS[:28], TINY_ROWS[28:34], TINY_ROWS[34:]


def _write(rows, path, kind: str = "csv", named: bool = False) -> str:
    """``rows`` as a table file; ``named``: labels as class names instead of 0/1."""
    frame = pd.DataFrame([(t, WORDS[y] if named else y) for t, y in rows], columns=["text", "label"])
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif kind == "parquet":
        frame.to_parquet(path, index=False)
    else:  # a single Dataset written by save_to_disk
        from datasets import Dataset

        Dataset.from_pandas(frame).save_to_disk(str(path))
    return str(path)


def _pairs(split) -> list[tuple[str, int]]:
    return list(zip(split["text"], split["label"]))


# ---- reading the split files -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet", "dataset_folder"])
def test_split_files_of_each_format_are_the_splits(tmp_path, kind):
    suffix = "" if kind == "dataset_folder" else f".{kind}"
    data = load_classification_data(_write(TRAIN, tmp_path / f"train{suffix}", kind),
                                    validation_data=_write(VALIDATION, tmp_path / f"val{suffix}", kind),
                                    test_data=_write(TEST, tmp_path / f"test{suffix}", kind))
    assert _pairs(data.split("validation")) == VALIDATION  # as given: every row, in file order
    assert _pairs(data.split("test")) == TEST
    assert sorted(_pairs(data.split("train"))) == sorted(TRAIN)  # nothing drawn from train
    assert data.label_names == ["negative", "positive"]
    assert set(data.given_splits) == {"validation", "test"}
    assert len(data.split("all")) == len(TINY_ROWS)


def test_the_split_not_given_is_drawn_from_data_by_the_seed(tmp_path):
    train = _write(TRAIN, tmp_path / "train.csv")
    plain = load_classification_data(train, split_seed=3)
    own_test = load_classification_data(train, split_seed=3, test_data=_write(TEST, tmp_path / "test.csv"))
    assert _pairs(own_test.split("test")) == TEST
    assert len(own_test.split("validation")) == len(plain.split("validation")) > 0
    assert sorted(_pairs(own_test.split("train")) + _pairs(own_test.split("validation"))) == sorted(TRAIN)
    own_validation = load_classification_data(train, split_seed=3, validation_data=_write(VALIDATION, tmp_path / "v.csv"))
    assert sorted(_pairs(own_validation.split("test"))) == sorted(_pairs(plain.split("test")))  # the same test rows
    assert _pairs(own_validation.split("validation")) == VALIDATION


def test_string_labels_map_by_name_whatever_the_row_order(tmp_path):
    train_rows = sorted(TRAIN, key=lambda row: -row[1])  # positive rows first
    test_rows = sorted(TEST, key=lambda row: row[1])  # negative rows first
    data = load_classification_data(_write(train_rows, tmp_path / "train.csv", named=True),
                                    test_data=_write(test_rows, tmp_path / "test.csv", named=True))
    assert data.label_names == ["negative", "positive"]
    assert _pairs(data.split("test")) == test_rows
    topics = [("goal in the final minute", "sports"), ("the vote on the budget", "politics")] * 4
    topics = [(f"{t} {i}", y) for i, (t, y) in enumerate(topics)]
    frame = lambda rows: pd.DataFrame(rows, columns=["text", "label"])  # noqa: E731
    frame(topics).to_csv(tmp_path / "topics_train.csv", index=False)
    frame(topics[::-1]).to_csv(tmp_path / "topics_test.csv", index=False)
    data = load_classification_data(str(tmp_path / "topics_train.csv"), test_data=str(tmp_path / "topics_test.csv"))
    assert [data.label_names[y] for y in data.split("test")["label"]] == [y for _, y in topics[::-1]]


def test_dataset_dict_folder_splits_are_used_as_they_are(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict

    def split(rows):
        return Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]})

    folder = str(tmp_path / "dd")
    full = DatasetDict({"train": split(TRAIN), "validation": split(VALIDATION), "test": split(TEST)})
    full = full.cast_column("label", ClassLabel(names=["bad", "good"]))
    full.save_to_disk(folder)
    data = load_classification_data(folder)
    assert data.label_names == ["bad", "good"]  # the ClassLabel's names
    assert [_pairs(data.split(s)) for s in ("train", "validation", "test")] == [TRAIN, VALIDATION, TEST]

    DatasetDict({"train": split(TRAIN + VALIDATION), "test": split(TEST)}).save_to_disk(str(tmp_path / "no_val"))
    data = load_classification_data(str(tmp_path / "no_val"), split_seed=1)
    assert _pairs(data.split("test")) == TEST
    assert len(data.split("validation")) > 0  # drawn from train by the split seed
    assert sorted(_pairs(data.split("train")) + _pairs(data.split("validation"))) == sorted(TRAIN + VALIDATION)
    # a test file wins over the folder's own test split
    data = load_classification_data(str(tmp_path / "no_val"), test_data=_write(TEST[:3], tmp_path / "t.csv"))
    assert _pairs(data.split("test")) == TEST[:3]


def test_texts_shared_with_train_get_a_note(tmp_path, capsys):
    load_classification_data(_write(TRAIN, tmp_path / "train.csv"), test_data=_write(TRAIN[:2] + TEST, tmp_path / "t.csv"))
    assert "note: 2 of the 8 texts of the test split" in capsys.readouterr().err


def test_recipe_keys_are_validated(tmp_path):
    cfg = load_config(None, ["validation_data=v.csv", "test_data=t.parquet"])
    assert (cfg.validation_data, cfg.test_data) == ("v.csv", "t.parquet")
    assert load_config(None, []).test_data is None
    with pytest.raises(UserError, match="'test_data'"):
        load_config(None, ["test_data= "])


# ---- bad split files: one line, exit 2, before any model loads --------------------------------
def _eval(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["eval", *args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.err


def _bad_inputs(tmp_path) -> dict[str, tuple[list[str], str]]:
    test = tmp_path / "test.csv"
    (tmp_path / "empty.csv").write_text("text,label\n")
    (tmp_path / "blank.jsonl").write_text("")
    pd.DataFrame({"text": ["fine"], "sentiment": [1]}).to_csv(tmp_path / "columns.csv", index=False)
    _write([("so-so", 2)], tmp_path / "unseen.csv")
    _write(TEST, test)
    pd.DataFrame({"text": ["fine"], "label": ["neutral"]}).to_parquet(tmp_path / "unseen.parquet")
    return {
        "missing": (["--test-data", str(tmp_path / "nope.csv")], f"test_data file not found: {tmp_path / 'nope.csv'}"),
        "empty": (["--test-data", str(tmp_path / "empty.csv")], "empty.csv: the data set is empty"),
        "blank": (["--validation-data", str(tmp_path / "blank.jsonl")], "blank.jsonl: the data set is empty"),
        "columns": (["--test-data", str(tmp_path / "columns.csv")],
                    f"test_data {tmp_path / 'columns.csv'}: no column 'label'"),
        "unseen": (["--test-data", str(tmp_path / "unseen.csv")], "label 2 is not a class of the training data"),
        "unseen_name": (["--validation-data", str(tmp_path / "unseen.parquet")],
                        "label 'neutral' is not a class of the training data"),
        "wrong_train_columns": (["--text-column", "body", "--test-data", str(test)], "no column 'body'"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "blank", "columns", "unseen", "unseen_name",
                                  "wrong_train_columns"])
def test_bad_split_file_is_one_line_exit_2(capsys, tmp_path, case):
    train = _write(TRAIN, tmp_path / "train.csv")
    flags, needle = _bad_inputs(tmp_path)[case]
    code, err = _eval(capsys, "--data", train, *flags)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err


def test_bad_split_file_in_stress_is_one_line_exit_2(capsys, tmp_path):
    train = _write(TRAIN, tmp_path / "train.csv")
    code = cli.main(["stress", "--data", train, "--test-data", str(tmp_path / "nope.csv"), "--cue", "Zed",
                     "--cue-label", "positive", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "test_data file not found" in err, err


# ---- a run records its split files; eval and stress read them back -----------------------------
def test_run_records_its_test_file_and_eval_and_stress_score_it(tiny_model_dir, tmp_path, capsys):
    from afa_llm.training.trainer import train

    run = tmp_path / "run"
    test = _write(TEST, tmp_path / "test.jsonl", "jsonl", named=True)
    train(load_config(None, [
        f"output_dir={run}", f"model={tiny_model_dir}", f"data={_write(TRAIN, tmp_path / 'train.csv')}",
        f"test_data={test}", "method=lora", "quantization=none", "steps=2", "batch_size=4", "max_text_tokens=32",
        "eval_every=0", "evaluate_zero_shot=false", "focus_eval_limit=4", "faithfulness_eval_limit=0",
        "report_to=none", "progress=false"]))
    assert load_config(str(run / "config.yaml"), saved=True).test_data == test
    results = json.loads((run / "results.json").read_text())
    assert results["test_data"] == test and results["test"]["n"] == len(TEST)  # the final test is the file

    report = tmp_path / "eval.json"
    assert cli.main(["eval", "--adapter", str(run), "--focus-n", "0", "--output", str(report), "--no-progress"]) == 0
    scored = json.loads(report.read_text())["scored"]
    assert scored["file"] == test and scored["n"] == len(TEST)
    assert "the test split as given" in capsys.readouterr().out

    stress = tmp_path / "stress.json"
    assert cli.main(["stress", "--adapter", str(run), "--cue", "Zed", "--cue-label", "positive",
                     "--output", str(stress), "--no-progress"]) == 0
    assert json.loads(stress.read_text())["scored"]["file"] == test
