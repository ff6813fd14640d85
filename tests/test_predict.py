"""`afa-llm predict`: CSV / JSONL / parquet / stdin in, one row per input row out, in order,
with the run's (or merged folder's) saved prompt and class names; chunked == unchunked."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from afa_llm import cli

from afa_llm.inference import predict
from afa_llm.config import load_config
from afa_llm.evaluation.evaluate import predict_logits
from afa_llm.model.adapters import attach_adapter
from afa_llm.evaluation.metrics import softmax
from afa_llm.model.loading import load_model
from afa_llm.model.task import PromptTask
from tiny_runs import make_run

# The run trains with a prompt and class names unlike the `afa-llm eval` defaults, so
# output that matches them proves the saved settings were used.
TEMPLATE, WORDS, NAMES = "Text: {text}\nMood:", [" bad", " good"], ["bad", "good"]
TEXTS = ["a gorgeous, witty film", "dull and far too long", "I loved it", "", "the worst movie of the year",
         "charming", "   ", "flat jokes and wooden acting all the way through", "fine"]


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    run = make_run(tmp_path_factory.mktemp("runs") / "run", tiny_model_dir)
    cfg = load_config(str(run / "config.yaml"))
    cfg.template, cfg.label_words, cfg.max_text_tokens = TEMPLATE, WORDS, 5
    cfg.save(run / "config.yaml")
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "label_names": NAMES}))
    return run


@pytest.fixture(scope="module")
def expected_probs(tiny_model_dir, tiny_run) -> np.ndarray:
    """Class probabilities of every non-empty text, scored one by one with the run's prompt."""
    model, tokenizer = load_model(tiny_model_dir)
    model = attach_adapter(model, str(tiny_run))
    task = PromptTask(WORDS, template=TEMPLATE, max_text_tokens=5).bind(tokenizer)
    texts = [t for t in TEXTS if t.strip()]
    return softmax(np.concatenate([predict_logits(model, task, [t], progress=False) for t in texts]))


def run_predict(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["predict", *args, "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_preds(source) -> pd.DataFrame:
    """Prediction CSV as written: strings, empty cells as "", probabilities as floats (NaN if empty)."""
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    for column in (c for c in frame.columns if c.startswith("prob_")):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def input_frame() -> pd.DataFrame:
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(TEXTS))], "text": TEXTS,
                         "note": [f"n,{i}" for i in range(len(TEXTS))]})


def check_predictions(frame: pd.DataFrame, expected: np.ndarray) -> None:
    """One row per input row in input order, inputs kept, probabilities right and summing to 1."""
    assert list(frame.columns) == ["id", "text", "note", "predicted_label", "prob_bad", "prob_good"]
    assert frame["id"].tolist() == [f"r{i}" for i in range(len(TEXTS))]
    assert frame["note"].tolist() == [f"n,{i}" for i in range(len(TEXTS))]
    scored = np.asarray([bool(t.strip()) for t in TEXTS])
    probs = frame[["prob_bad", "prob_good"]].to_numpy(dtype=float)
    np.testing.assert_allclose(probs[scored], expected, atol=2e-6)
    np.testing.assert_allclose(probs[scored].sum(1), 1.0, atol=2e-6)
    assert frame["predicted_label"][scored].tolist() == [NAMES[i] for i in expected.argmax(1)]
    empty = frame[~scored]
    assert empty["predicted_label"].fillna("").eq("").all() and empty[["prob_bad", "prob_good"]].isna().all().all()


def test_csv_to_csv_reuses_the_run_settings(capsys, tiny_run, expected_probs, tmp_path):
    source = tmp_path / "in.csv"
    input_frame().to_csv(source, index=False)
    out = tmp_path / "preds" / "out.csv"
    code, stdout, err = run_predict(capsys, "--adapter", str(tiny_run), "--data", str(source), "--output", str(out))
    assert code == 0, err
    assert stdout == ""
    assert "2 of 9 rows have empty text" in err
    check_predictions(read_preds(out), expected_probs)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.csv"]  # no temporary file left


def test_jsonl_in_jsonl_out(capsys, tiny_run, expected_probs, tmp_path):
    source = tmp_path / "in.jsonl"
    rows = input_frame().to_dict("records")
    rows[3]["text"] = None  # a missing text counts as empty
    source.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")  # a trailing blank line is no row
    out = tmp_path / "out.jsonl"
    code, _, err = run_predict(capsys, "--adapter", str(tiny_run), "--data", str(source), "--output", str(out))
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[3]["text"] is None and records[3]["prob_good"] is None
    frame = pd.DataFrame.from_records(records)
    frame.loc[3, "text"] = ""
    check_predictions(frame, expected_probs)


def test_parquet_and_stdout(capsys, tiny_run, expected_probs, tmp_path):
    source = tmp_path / "in.parquet"
    input_frame().to_parquet(source)
    code, stdout, err = run_predict(capsys, "--adapter", str(tiny_run), "--data", str(source))
    assert code == 0, err
    check_predictions(read_preds(io.StringIO(stdout)), expected_probs)


def test_stdin_lines(capsys, monkeypatch, tiny_run, expected_probs):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(t + "\n" for t in TEXTS)))
    code, stdout, err = run_predict(capsys, "--adapter", str(tiny_run), "--data", "-")
    assert code == 0, err
    frame = read_preds(io.StringIO(stdout))
    assert frame["text"].tolist() == TEXTS
    assert frame.columns.tolist() == ["text", "predicted_label", "prob_bad", "prob_good"]
    scored = [bool(t.strip()) for t in TEXTS]
    np.testing.assert_allclose(frame[scored][["prob_bad", "prob_good"]].to_numpy(float), expected_probs, atol=2e-6)
    assert (frame["predicted_label"][[not s for s in scored]] == "").all()
    assert "2 of 9 rows have empty text" in err


def test_merged_folder_keeps_the_run_settings(capsys, tiny_run, expected_probs, tmp_path):
    merged = tmp_path / "merged"
    assert cli.main(["merge", "--adapter", str(tiny_run), "--output", str(merged)]) == 0
    source = tmp_path / "in.csv"
    input_frame().to_csv(source, index=False)
    out = tmp_path / "out.csv"
    capsys.readouterr()
    code, _, err = run_predict(capsys, "--model", str(merged), "--data", str(source), "--output", str(out))
    assert code == 0, err
    check_predictions(read_preds(out), expected_probs)  # merged weights: same scores to float rounding


def test_plain_model_uses_the_eval_defaults(capsys, tiny_model_dir, tmp_path):
    source = tmp_path / "in.csv"
    pd.DataFrame({"body": ["good", "bad"]}).to_csv(source, index=False)
    code, stdout, err = run_predict(capsys, "--model", tiny_model_dir, "--data", str(source), "--text-column", "body")
    assert code == 0, err
    frame = read_preds(io.StringIO(stdout))
    assert frame.columns.tolist() == ["body", "predicted_label", "prob_negative", "prob_positive"]
    model, tokenizer = load_model(tiny_model_dir)
    task = PromptTask([" negative", " positive"]).bind(tokenizer)  # the eval defaults
    expected = softmax(predict_logits(model, task, ["good", "bad"], progress=False))
    np.testing.assert_allclose(frame[["prob_negative", "prob_positive"]].to_numpy(float), expected, atol=2e-6)


def test_bare_adapter_needs_model_and_says_it_uses_the_default_prompt(capsys, tiny_model_dir, tiny_run, tmp_path):
    import shutil

    bare = shutil.copytree(tiny_run / "adapter", tmp_path / "bare")  # an adapter with no run folder around it
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": ["good"]}).to_csv(source, index=False)
    code, stdout, err = run_predict(capsys, "--adapter", str(bare), "--model", tiny_model_dir, "--data", str(source))
    assert code == 0, err
    assert "bare adapter with no run settings; using the default prompt" in err
    assert read_preds(io.StringIO(stdout)).columns.tolist() == ["text", "predicted_label", "prob_negative",
                                                                 "prob_positive"]


def test_chunked_run_equals_unchunked(capsys, monkeypatch, tiny_run, tmp_path):
    rng = np.random.default_rng(0)
    words = ["good", "bad", "film", "plot", "dull", "witty", "long", "the", "a", ""]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 12))).strip() for _ in range(23)]
    source = tmp_path / "in.csv"
    pd.DataFrame({"n": range(23), "text": texts}).to_csv(source, index=False)
    sizes: list[int] = []
    real = predict.predict_chunk
    monkeypatch.setattr(predict, "predict_chunk", lambda m, t, n, frame, *a: sizes.append(len(frame)) or
                        real(m, t, n, frame, *a))
    outputs = {}
    for chunk in ("4", "10000"):
        out = tmp_path / f"out{chunk}.csv"
        code, _, err = run_predict(capsys, "--adapter", str(tiny_run), "--data", str(source), "--output", str(out),
                                   "--chunk-size", chunk, "--batch-size", "3")
        assert code == 0, err
        outputs[chunk] = read_preds(out)
    assert sizes == [4, 4, 4, 4, 4, 3, 23]  # really read in chunks, never more than --chunk-size rows
    chunked, whole = outputs["4"], outputs["10000"]
    assert chunked["n"].tolist() == [str(i) for i in range(23)]
    pd.testing.assert_frame_equal(chunked.drop(columns=["prob_bad", "prob_good"]),
                                  whole.drop(columns=["prob_bad", "prob_good"]))
    np.testing.assert_allclose(chunked[["prob_bad", "prob_good"]].to_numpy(float),
                               whole[["prob_bad", "prob_good"]].to_numpy(float), atol=2e-6)


def test_interrupted_run_keeps_the_old_output(capsys, monkeypatch, tiny_run, tmp_path):
    source = tmp_path / "in.csv"
    input_frame().to_csv(source, index=False)
    out = tmp_path / "out.csv"
    out.write_text("old predictions\n")
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    real = predict.predict_chunk
    monkeypatch.setattr(predict, "predict_chunk", failing)
    code, _, err = run_predict(capsys, "--adapter", str(tiny_run), "--data", str(source), "--output", str(out),
                               "--chunk-size", "4")
    assert code == 130 and len(calls) == 2
    assert out.read_text() == "old predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv"]


@pytest.mark.parametrize("args, needle", [
    ([], "give --adapter RUN"),
    (["--model", "MODEL", "--output", "x.txt"], "--output must end in .csv or .jsonl"),
    (["--model", "MODEL", "--chunk-size", "0"], "--chunk-size must be positive"),
    (["--model", "MODEL", "--text-column", "body"], "no column 'body' (columns: id, text, note)"),
    (["--model", "MODEL", "--data", "missing.csv"], "data file not found: missing.csv"),
    (["--model", "MODEL", "--data", "bad.jsonl"], "cannot read bad.jsonl: line 2 is not JSON"),
])
def test_bad_input_fails_before_any_model_loads(capsys, monkeypatch, tiny_model_dir, tmp_path, args, needle):
    monkeypatch.chdir(tmp_path)
    input_frame().to_csv("in.csv", index=False)
    Path("bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    monkeypatch.setattr("afa_llm.model.loading.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    args = [tiny_model_dir if a == "MODEL" else a for a in args]
    code, stdout, err = run_predict(capsys, *(args if "--data" in args else [*args, "--data", "in.csv"]))
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_help_mentions_empty_rows(capsys):
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "empty predicted_label" in text and "count is printed on stderr" in text


@pytest.mark.slow
def test_real_model_end_to_end(capsys, monkeypatch):
    """The packaged SmolLM2 zero-shot on stdin: an obviously positive text comes out positive."""
    monkeypatch.setattr("sys.stdin", io.StringIO("a gorgeous, witty, wonderful film\n"))
    code, stdout, err = run_predict(capsys, "--model", "smollm2-135m", "--data", "-")
    assert code == 0, err
    row = read_preds(io.StringIO(stdout)).iloc[0]
    assert row["predicted_label"] == "positive"
    assert row["prob_negative"] + row["prob_positive"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("method, moved", [("offset", lambda c: c["offset"] != 0.0),
                                           ("temperature", lambda c: abs(c["temperature"] - 1.0) > 1e-3)])
def test_prior_correction_fitted_on_a_validation_report(capsys, tiny_run, expected_probs, tmp_path, method, moved):
    """--prior-from: the written probabilities and labels are the corrected ones; another scorer's report is refused."""
    from afa_llm.evaluation.prior import apply_correction, fit_correction

    val = tmp_path / "val.json"
    assert cli.main(["eval", "--adapter", str(tiny_run), "--split", "validation", "--no-progress", "--output", str(val)]) == 0
    source, out = tmp_path / "in.csv", tmp_path / "out.csv"
    input_frame().to_csv(source, index=False)
    code, _, err = run_predict(capsys, "--adapter", str(tiny_run), "--data", str(source), "--output", str(out),
                               "--prior-from", str(val), "--prior-correction", method)
    assert code == 0, err
    report = json.loads(val.read_text())
    correction = fit_correction(np.asarray(report["probabilities"]), np.asarray(report["labels"]), method)
    assert moved(correction)  # the tiny model leans to one class, and is not calibrated: the test can fail
    check_predictions(read_preds(out), apply_correction(expected_probs, correction))

    assert cli.main(["eval", "--model", report["model"], "--data", report["data"],
                     "--split", "validation", "--no-progress", "--output", str(val)]) == 0  # no adapter
    code, _, err = run_predict(capsys, "--adapter", str(tiny_run), "--data", str(source), "--prior-from", str(val))
    assert code == 2 and "adapter=None" in err and err.count("\n") == 1
