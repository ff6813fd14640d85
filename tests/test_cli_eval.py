"""Tests of `afa-llm eval`: bad input gives one stderr line and exit code 2; good input works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from afa_llm import cli
from afa_llm.data.loading import load_classification_data
from conftest import TINY_ROWS


def run_eval(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["eval", *args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, needle: str) -> None:
    assert code == 2, (code, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert needle in lines[0], err
    assert "Traceback" not in err
    assert out == ""


# ---- bad data (the data loads before the model, so these never touch a model) ----------------
def test_missing_data_file(capsys, tmp_path):
    code, out, err = run_eval(capsys, "--data", str(tmp_path / "missing.csv"))
    assert_one_line_error(code, out, err, f"data file not found: {tmp_path / 'missing.csv'}")


@pytest.mark.parametrize("name, content", [
    ("garbage.csv", bytes(range(256)) * 20),
    ("quote.csv", b'text,label\n"an unterminated quote,1\nfine,0\n'),
    ("bad.jsonl", b'{"text": "ok", "label": 1}\n{"text": "broken", \n'),
])
def test_unreadable_data_file(capsys, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    code, out, err = run_eval(capsys, "--data", str(path))
    assert_one_line_error(code, out, err, f"cannot read {path}")


def test_unsupported_file_type(capsys, tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("whatever")
    code, out, err = run_eval(capsys, "--data", str(path))
    assert_one_line_error(code, out, err, "unsupported data file type '.xlsx'")


@pytest.mark.parametrize("flag, column", [("--text-column", "body"), ("--label-column", "stars")])
def test_missing_column(capsys, tiny_csv, flag, column):
    code, out, err = run_eval(capsys, "--data", tiny_csv, flag, column)
    assert_one_line_error(code, out, err, f"no column '{column}' (columns: text, label); set {flag}")


def test_unknown_int_label(capsys, make_csv):
    path = make_csv(TINY_ROWS + [("a seventh kind of review", 7)])
    code, out, err = run_eval(capsys, "--data", path, "--label-names", "negative,positive")
    assert_one_line_error(code, out, err, "unknown label value 7 (expected 0..1")


def test_unknown_string_label(capsys, make_csv):
    rows = [(t, "positive" if y else "negative") for t, y in TINY_ROWS] + [("so-so", "meh")]
    code, out, err = run_eval(capsys, "--data", make_csv(rows), "--label-names", "negative,positive")
    assert_one_line_error(code, out, err, "unknown label value 'meh'")


def test_empty_text_rows(capsys, make_csv):
    path = make_csv(TINY_ROWS[:4] + [("", 1), ("   ", 0)] + TINY_ROWS[4:])
    code, out, err = run_eval(capsys, "--data", path)
    assert_one_line_error(code, out, err, "2 row(s) have empty text (first at row 4)")


def test_empty_data_set(capsys, make_csv):
    code, out, err = run_eval(capsys, "--data", make_csv([]))
    assert_one_line_error(code, out, err, "the data set is empty")


# ---- bad model / prompt / options -------------------------------------------------------------
def test_unknown_model_name(capsys, tiny_csv):
    code, out, err = run_eval(capsys, "--data", tiny_csv, "--model", "smollm9-1t")
    assert_one_line_error(code, out, err, "unknown model 'smollm9-1t'")


def test_gguf_file_that_is_not_gguf(capsys, tiny_csv, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("definitely not a gguf file")
    code, out, err = run_eval(capsys, "--data", tiny_csv, "--model", str(fake))
    assert_one_line_error(code, out, err, f"{fake} is not a GGUF file (bad magic bytes)")


def test_multi_token_verbalizer_scores_by_log_likelihood(capsys, tiny_csv, tiny_model_dir):
    code, out, err = run_eval(
        capsys, "--data", tiny_csv, "--model", tiny_model_dir, "--label-words", " supercalifragilistic,positive"
    )
    assert code == 0, err
    assert "accuracy" in out


def test_label_word_count_must_match_classes(capsys, tiny_csv, tiny_model_dir):
    code, out, err = run_eval(
        capsys, "--data", tiny_csv, "--model", tiny_model_dir, "--label-words", "bad,okay,good"
    )
    assert_one_line_error(code, out, err, "--label-words gives 3 words but the data has 2 classes")


def test_template_without_text_slot(capsys, tiny_csv, tiny_model_dir):
    code, out, err = run_eval(capsys, "--data", tiny_csv, "--model", tiny_model_dir, "--template", "Review:")
    assert_one_line_error(code, out, err, "prompt template must contain '{text}' exactly once")


def test_missing_adapter(capsys, tiny_csv, tiny_model_dir, tmp_path):
    code, out, err = run_eval(
        capsys, "--data", tiny_csv, "--model", tiny_model_dir, "--adapter", str(tmp_path / "no_run")
    )
    assert_one_line_error(code, out, err, "adapter folder not found")


@pytest.mark.parametrize("value", ["0", "-3"])
def test_non_positive_limit(capsys, tiny_csv, value):
    code, out, err = run_eval(capsys, "--data", tiny_csv, "--limit", value)
    assert_one_line_error(code, out, err, "--limit must be a positive number of examples")


def test_non_integer_limit(capsys, tiny_csv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--data", tiny_csv, "--limit", "abc"])
    captured = capsys.readouterr()
    assert_one_line_error(exit_info.value.code, captured.out, captured.err, "argument --limit: invalid int value: 'abc'")


def test_bad_batch_size_and_shots(capsys, tiny_csv):
    code, out, err = run_eval(capsys, "--data", tiny_csv, "--batch-size", "0")
    assert_one_line_error(code, out, err, "--batch-size must be positive")
    code, out, err = run_eval(capsys, "--data", tiny_csv, "--shots", "-1")
    assert_one_line_error(code, out, err, "--shots must be 0 (zero-shot) or a positive number")


def test_bad_max_text_tokens(capsys, tiny_csv, tiny_model_dir):
    code, out, err = run_eval(capsys, "--data", tiny_csv, "--model", tiny_model_dir, "--max-text-tokens", "0")
    assert_one_line_error(code, out, err, "max_text_tokens and demo_text_tokens must be positive")


def test_corrupt_gguf_model(capsys, tiny_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("AFA_LLM_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    code, out, err = run_eval(capsys, "--data", tiny_csv, "--model", str(bad))
    assert_one_line_error(code, out, err, f"cannot read GGUF file {bad}: ")


def test_installed_script_prints_exactly_one_stderr_line(tiny_csv, tiny_model_dir):
    """Out of process, through the console script: nothing else (progress bars, library
    warnings) may reach stderr, and the verbalizer is checked before the weights load."""
    script = Path(sys.executable).parent / "afa-llm"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(
        [str(script), "eval", "--data", tiny_csv, "--model", tiny_model_dir,
         "--label-words", "negative,negative"],
        capture_output=True, text=True, env=env, timeout=180,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: verbalizer label words must be distinct")


def test_eval_help_documents_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--model", "--data", "--label-names", "--label-words", "--limit", "--output", "--split-seed"):
        assert option in help_text


# ---- good input ---------------------------------------------------------------------------------
def test_local_csv_end_to_end_with_tiny_model(capsys, tiny_csv, tiny_model_dir, tmp_path, monkeypatch):
    import afa_llm.evaluation.word_focus as word_focus

    # the default focus metrics read the focus off the scoring pass: no pass of their own
    monkeypatch.setattr(word_focus, "text_focus", None)
    output = tmp_path / "results" / "eval.json"
    code, out, err = run_eval(
        capsys, "--model", tiny_model_dir, "--data", tiny_csv, "--split-seed", "3",
        "--batch-size", "4", "--output", str(output),
    )
    assert code == 0, err
    report = json.loads(output.read_text())
    test_split = load_classification_data(tiny_csv, split_seed=3).split("test")
    assert report["n"] == len(test_split) == 6
    assert report["labels"] == list(test_split["label"])
    assert len(report["predictions"]) == 6 and set(report["predictions"]) <= {0, 1}
    assert report["accuracy"] == pytest.approx(
        sum(p == y for p, y in zip(report["predictions"], report["labels"])) / 6
    )
    assert 0.0 <= report["macro_f1"] <= 1.0
    assert (report["model"], report["data"], report["split"], report["split_seed"]) == (
        tiny_model_dir, tiny_csv, "test", 3,
    )
    assert report["label_names"] == ["negative", "positive"]
    assert report["machine"]["cpu"] and report["machine"]["torch_threads"] >= 1  # where it was measured
    assert report["label_words"] == [" negative", " positive"]
    assert report["template"] == "Review: {text}\nSentiment:"
    assert not list(output.parent.glob("*.tmp"))
    assert out.splitlines()[0] == f"{tiny_model_dir} on {tiny_csv}/test"
    assert f"n=6  accuracy={report['accuracy']:.4f}" in out
    metrics = report["focus_metrics"]  # the six test texts: lexicon on all; faithfulness is opt-in
    assert metrics["lexicon_n"] >= 1 and 0 <= metrics["lexicon_share"] <= 1 and "faithfulness_n" not in metrics
    assert "focus on VADER words" in out and "comprehensiveness" not in out


def test_a_run_folder_brings_its_base_prompt_and_data(capsys, make_csv, tiny_model_dir, tmp_path):
    """`eval --adapter RUN` scores the run's own test split on its base with its prompt; flags win."""
    import yaml
    from tiny_runs import make_run

    data = make_csv(name="run_data.csv")
    run = make_run(tmp_path / "run", tiny_model_dir, data=data)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config.update(split_seed=3, template="Text: {text}\nLabel:")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    output = tmp_path / "eval.json"
    code, _, err = run_eval(capsys, "--adapter", str(run), "--output", str(output))
    assert code == 0, err
    report = json.loads(output.read_text())
    assert (report["model"], report["data"], report["split_seed"]) == (tiny_model_dir, data, 3)
    assert report["template"] == "Text: {text}\nLabel:"
    assert report["labels"] == list(load_classification_data(data, split_seed=3).split("test")["label"])

    other = make_csv(name="other.csv")  # other data: the default split seed, the flags given
    code, _, err = run_eval(capsys, "--adapter", str(run), "--data", other, "--template", "T: {text}\nS:",
                            "--output", str(output))
    assert code == 0, err
    report = json.loads(output.read_text())
    assert (report["data"], report["split_seed"], report["template"]) == (other, 0, "T: {text}\nS:")


def test_string_labels_label_names_limit_and_shots(capsys, make_csv, tiny_model_dir, tmp_path):
    rows = [(t, "good" if y else "bad") for t, y in TINY_ROWS]
    output = tmp_path / "eval.json"
    code, out, err = run_eval(
        capsys, "--model", tiny_model_dir, "--data", make_csv(rows), "--label-names", "bad,good",
        "--split", "validation", "--limit", "3", "--shots", "2", "--template", "Text: {text}\\nLabel:",
        "--output", str(output),
    )
    assert code == 0, err
    report = json.loads(output.read_text())
    assert report["n"] == 3 and report["shots"] == 2 and report["split"] == "validation"
    assert report["label_names"] == ["bad", "good"]
    assert report["label_words"] == [" bad", " good"]
    assert report["template"] == "Text: {text}\nLabel:"


@pytest.mark.slow
def test_smollm2_on_rotten_tomatoes(capsys, tmp_path):
    output = tmp_path / "X.json"
    code, out, err = run_eval(
        capsys, "--model", "smollm2-135m", "--data", "rotten_tomatoes", "--limit", "64", "--output", str(output)
    )
    assert code == 0, err
    report = json.loads(output.read_text())
    assert {"accuracy", "macro_f1", "n", "model", "data", "split_seed"} <= set(report)
    assert report["n"] == 64
    assert (report["model"], report["data"], report["split_seed"]) == ("smollm2-135m", "rotten_tomatoes", 0)
    assert report["accuracy"] > 0.6
    assert report["macro_f1"] > 0.5


def test_top_level_help_imports_no_subcommand():
    """`afa-llm --help` lists the subcommands without importing torch (it took ~5 s)."""
    code = ("import sys\nfrom afa_llm.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'afa_llm.training.trainer' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "leaderboard" in out and out.strip().splitlines()[-1] == "False False"
