"""Truncation is reported, never silent: the share of texts cut to max_text_tokens, and a warning on
stderr that names the flag when more than 10% were cut (eval, predict, leaderboard)."""

from __future__ import annotations

import json

from afa_llm import cli
from afa_llm.model.task import PromptTask

LONG = " ".join(["a long and winding review of a film"] * 20)


def test_truncated_share_counts_texts_over_the_budget(smollm2_tokenizer):
    task = PromptTask([" negative", " positive"], max_text_tokens=8).bind(smollm2_tokenizer)
    assert task.truncated_share(["short", "short too", LONG, LONG]) == 0.5
    assert PromptTask([" negative", " positive"], max_text_tokens=4096).bind(smollm2_tokenizer).truncated_share(
        [LONG]) == 0.0


def test_eval_reports_and_warns(make_csv, tiny_model_dir, tmp_path, capsys):
    data = make_csv([(LONG, i % 2) for i in range(20)] + [("fine", i % 2) for i in range(20)], name="long.csv")
    out = tmp_path / "eval.json"
    argv = ["eval", "--model", tiny_model_dir, "--data", data, "--split", "all", "--no-progress", "--focus-n", "0",
            "--output", str(out)]
    assert cli.main([*argv, "--max-text-tokens", "16"]) == 0
    captured = capsys.readouterr()
    assert json.loads(out.read_text())["truncated_share"] == 0.5
    assert "truncated: 50.0%" in captured.out
    assert "--max-text-tokens" in captured.err and captured.err.count("warning:") == 1
    assert cli.main([*argv, "--max-text-tokens", "512"]) == 0
    captured = capsys.readouterr()
    assert json.loads(out.read_text())["truncated_share"] == 0.0 and "warning" not in captured.err


def test_predict_warns_on_stderr(make_csv, tiny_model_dir, tmp_path, capsys):
    from tiny_runs import make_run

    run = make_run(tmp_path / "run", tiny_model_dir)  # max_text_tokens: the training default, 96
    data = make_csv([(LONG,)] * 3 + [("fine",)], name="texts.csv", header=("text",))
    assert cli.main(["predict", "--adapter", str(run), "--data", data, "--no-progress",
                     "--output", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert "truncated: 3 of 4 texts (75.0%)" in err and "pass --max-text-tokens" in err
