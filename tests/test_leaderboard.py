"""`afa-llm leaderboard`: rows and values, cache hits, --from-results, config errors."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml

from afa_llm import cli
from afa_llm.deprecations import truncation_name

from afa_llm.reports import leaderboard
from conftest import TINY_ROWS
from tiny_runs import make_run, write_csv

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir) -> dict:
    """A tiny base, two data sets, and two runs (seeds 0 and 1) of one method."""
    root = tmp_path_factory.mktemp("board")
    data_a, data_b = write_csv(root / "a.csv"), write_csv(root / "b.csv", TINY_ROWS[:30])
    for seed, accuracy in ((0, 0.7), (1, 0.8)):
        make_run(root / "runs" / f"rt-afa-seed{seed}", tiny_model_dir, data=data_a, seed=seed, accuracy=accuracy)
    return {"root": root, "base": tiny_model_dir, "a": data_a, "b": data_b}


def write_config(path: Path, entries: list[dict], **top) -> Path:
    path.write_text(yaml.safe_dump({"entries": entries, **top}))
    return path


def entries(setup: dict) -> list[dict]:
    return [{"name": "zero-shot", "model": setup["base"], "data": [setup["a"], setup["b"]]},
            {"name": "afa", "run": str(setup["root"] / "runs" / "rt-*-seed*"), "data": [setup["a"], setup["b"]]}]


def read_rows(out: Path) -> list[dict]:
    with open(out / "leaderboard.csv") as handle:
        return list(csv.DictReader(handle))


def test_leaderboard_rows_values_and_cache(setup, tmp_path, monkeypatch, capsys):
    import afa_llm.evaluation.evaluate

    calls = []
    real = afa_llm.evaluation.evaluate.evaluate_dataset
    monkeypatch.setattr(afa_llm.evaluation.evaluate, "evaluate_dataset", lambda *a, **k: calls.append(1) or real(*a, **k))
    config = write_config(tmp_path / "board.yaml", entries(setup))
    out = tmp_path / "out"
    argv = ["leaderboard", str(config), "--output-dir", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    assert len(calls) == 6  # (1 model + 2 runs) x 2 data sets
    assert {p.name for p in out.iterdir()} == {"leaderboard.md", "leaderboard.csv", "leaderboard.png", "cache"}
    assert (out / "leaderboard.png").read_bytes()[:4] == b"\x89PNG"

    rows = read_rows(out)
    assert [(r["data"], r["name"], r["runs"]) for r in rows if r["name"] == "afa"] == [
        (setup["a"], "afa", "2"), (setup["b"], "afa", "2")]
    assert sorted((r["data"], r["name"]) for r in rows) == sorted(
        (d, n) for d in (setup["a"], setup["b"]) for n in ("zero-shot", "afa"))
    assert all(r["seeds"] == "0,1" for r in rows if r["name"] == "afa")

    # values: the zero-shot row equals `afa-llm eval`; the afa row is the mean/std of its two runs
    assert cli.main(["eval", "--model", setup["base"], "--data", setup["a"], "--no-progress",
                     "--output", str(tmp_path / "zs.json")]) == 0
    zero_shot = json.loads((tmp_path / "zs.json").read_text())
    row = next(r for r in rows if r["name"] == "zero-shot" and r["data"] == setup["a"])
    assert float(row["accuracy_mean"]) == pytest.approx(zero_shot["accuracy"]) and row["accuracy_std"] == ""
    assert row["examples"] == str(zero_shot["n"])
    assert float(row["truncated_share"]) == pytest.approx(zero_shot["truncated_share"])  # reported, as eval does
    assert float(row["ece"]) == pytest.approx(zero_shot["ece"])
    for name, scores in zero_shot["per_class"].items():  # per-class F1 in every report
        assert float(row[f"f1_{name}"]) == pytest.approx(scores["f1"])
    assert "per-class F1" in (out / "leaderboard.md").read_text()
    reports = [json.loads(f.read_text()) for f in (out / "cache").glob("*.json")]
    data_a = str(Path(setup["a"]).resolve())
    run_accs = [r["report"]["accuracy"] for r in reports if r["key"]["adapter"] and r["key"]["data"][0] == data_a]
    row = next(r for r in rows if r["name"] == "afa" and r["data"] == setup["a"])
    assert float(row["accuracy_mean"]) == pytest.approx(statistics.fmean(run_accs))
    assert float(row["accuracy_std"]) == pytest.approx(statistics.stdev(run_accs))
    run_eces = [r["report"]["ece"] for r in reports if r["key"]["adapter"] and r["key"]["data"][0] == data_a]
    assert float(row["ece"]) == pytest.approx(statistics.fmean(run_eces))  # calibration: the mean over runs
    markdown = (out / "leaderboard.md").read_text()
    assert f"## {setup['a']}" in markdown and "| afa | label_words | 2 |" in markdown and " ECE |" in markdown

    # re-run: everything comes from the cache; only what changed is evaluated again
    calls.clear()
    assert cli.main(argv) == 0 and calls == []
    assert read_rows(out) == rows
    changed = entries(setup)
    changed[0].update(template="Text: {text}\nSentiment:", data=[setup["a"]])
    write_config(config, changed)
    assert cli.main(argv) == 0 and len(calls) == 1
    job = leaderboard.build_jobs(leaderboard.read_config(str(config)), str(config), None)[0]
    unlimited = leaderboard.cache_path(out, job)
    job.limit = 3
    assert leaderboard.cache_path(out, job) != unlimited  # --limit is part of the key
    job.limit, job.scorer.truncation = None, "start_end"
    assert leaderboard.cache_path(out, job) != unlimited  # so is the truncation
    capsys.readouterr()


def test_from_results_aggregates_results_json(setup, tmp_path, monkeypatch):
    monkeypatch.setattr("afa_llm.evaluation.evaluate.evaluate_dataset", None)  # must not evaluate
    config = write_config(tmp_path / "board.yaml", entries(setup))
    out = tmp_path / "out"
    assert cli.main(["leaderboard", str(config), "--output-dir", str(out), "--from-results"]) == 0
    rows = {r["name"]: r for r in read_rows(out)}
    assert set(rows) == {"afa", f"zero-shot {setup['base']}"}  # the model entry is skipped
    assert rows["afa"]["runs"] == "2" and rows["afa"]["data"] == setup["a"]
    assert float(rows["afa"]["accuracy_mean"]) == pytest.approx(0.75)
    assert float(rows["afa"]["accuracy_std"]) == pytest.approx(statistics.stdev([0.7, 0.8]))
    assert float(rows["afa"]["focus_share"]) == pytest.approx(0.9)
    zero = rows[f"zero-shot {setup['base']}"]
    assert zero["runs"] == "1" and float(zero["accuracy_mean"]) == pytest.approx(0.5)  # shared base, counted once
    assert rows["afa"]["head"] == zero["head"] == "label_words"
    assert "fake-focus share" in (out / "leaderboard.md").read_text()
    assert float(rows["afa"]["lexicon_share"]) == pytest.approx(0.375)  # results.json's focus metrics, averaged
    assert float(zero["lexicon_share"]) == pytest.approx(0.2) and rows["afa"]["comprehensiveness_gain"] == ""
    assert "focus on VADER words" in (out / "leaderboard.md").read_text()


def test_only_keeps_the_named_entries_and_refuses_unknown_names(setup, tmp_path, capsys):
    seed0 = {"name": "seed 0", "group": "first", "run": str(setup["root"] / "runs" / "rt-afa-seed0")}
    config = write_config(tmp_path / "board.yaml", [*entries(setup), seed0])
    out = tmp_path / "out"
    assert cli.main(["leaderboard", str(config), "--output-dir", str(out), "--from-results"]) == 0
    assert "first" in {r["name"] for r in read_rows(out)}
    assert cli.main(["leaderboard", str(config), "--output-dir", str(out), "--from-results", "--only", "afa"]) == 0
    assert {r["name"] for r in read_rows(out)} == {"afa", f"zero-shot {setup['base']}"}
    assert cli.main(["leaderboard", str(config), "--output-dir", str(out), "--from-results", "--only", "first"]) == 0
    assert "afa" not in {r["name"] for r in read_rows(out)}  # a group selects too
    err = _error(capsys, ["leaderboard", str(config), "--only", "afa", "--only", "lora"])
    assert "--only 'lora' matches no entry" in err and "afa, first, seed 0, zero-shot" in err


def test_prior_correction_entry_matches_eval_prior_from(setup, tmp_path, capsys):
    """An entry with prior_correction fits it on its validation split, as `afa-llm eval --prior-from` does."""
    entry = {"name": "zs+prior", "model": setup["base"], "data": [setup["a"]], "prior_correction": "normalize"}
    plain = {k: v for k, v in entry.items() if k != "prior_correction"} | {"name": "zs"}
    config = write_config(tmp_path / "board.yaml", [entry, plain])
    assert cli.main(["leaderboard", str(config), "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 0
    rows = {r["name"]: float(r["accuracy_mean"]) for r in read_rows(tmp_path / "out")}
    common = ["--model", setup["base"], "--data", setup["a"], "--no-progress"]
    val, test = tmp_path / "val.json", tmp_path / "test.json"
    assert cli.main(["eval", *common, "--split", "validation", "--output", str(val)]) == 0
    assert cli.main(["eval", *common, "--prior-from", str(val), "--output", str(test)]) == 0
    corrected = json.loads(test.read_text())
    assert rows["zs+prior"] == pytest.approx(corrected["accuracy"])
    assert rows["zs"] == pytest.approx(corrected["prior_correction"]["uncorrected"]["accuracy"])
    cached = {bool(c["key"].get("prior_correction")): c["report"]["predictions"]
              for c in (json.loads(f.read_text()) for f in (tmp_path / "out" / "cache").glob("*.json"))}
    assert cached[True] == corrected["predictions"]
    assert cached[False] != cached[True]  # the correction moved decisions: the test can fail
    scaled = {**entry, "name": "zs+temperature", "prior_correction": "temperature"}
    write_config(config, [scaled, plain])
    assert cli.main(["leaderboard", str(config), "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 0
    assert cli.main(["eval", *common, "--prior-from", str(val), "--prior-correction", "temperature",
                     "--output", str(test)]) == 0
    row = {r["name"]: r for r in read_rows(tmp_path / "out")}["zs+temperature"]
    assert float(row["ece"]) == pytest.approx(json.loads(test.read_text())["ece"])
    assert float(row["accuracy_mean"]) == pytest.approx(rows["zs"])  # temperature moves no decision
    bad = write_config(tmp_path / "bad.yaml", [{**entry, "prior_correction": "contextual"}])
    assert "prior_correction" in _error(capsys, ["leaderboard", str(bad)])


def test_offset_on_three_classes_is_refused_before_any_model_loads(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("afa_llm.model.loading.load_model", None)  # must not load
    three = write_csv(tmp_path / "three.csv", [(f"text number {i}", i % 3) for i in range(30)])
    config = write_config(tmp_path / "board.yaml", [
        {"name": "two", "model": setup["base"], "data": [setup["a"]], "prior_correction": "offset"},
        {"name": "three", "model": setup["base"], "data": [three], "prior_correction": "offset"}])
    err = _error(capsys, ["leaderboard", str(config), "--output-dir", str(tmp_path / "out")])
    assert "entry three" in err and "offset needs two classes" in err


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_config_errors(setup, tmp_path, capsys):
    bad_key = write_config(tmp_path / "bad.yaml", [{"name": "x", "modle": setup["base"], "data": [setup["a"]]}])
    assert "unknown key 'modle'" in _error(capsys, ["leaderboard", str(bad_key)])
    bad_top = write_config(tmp_path / "top.yaml", entries(setup), limt=3)
    assert "unknown key 'limt'" in _error(capsys, ["leaderboard", str(bad_top)])
    missing = write_config(tmp_path / "missing.yaml", [{"name": "x", "run": str(tmp_path / "nope-*")}])
    assert "run folder not found" in _error(capsys, ["leaderboard", str(missing), "--from-results"])
    two = write_config(tmp_path / "two.yaml", [{"name": "x", "model": "m", "merged": "d", "data": ["a"]}])
    assert "exactly one of" in _error(capsys, ["leaderboard", str(two)])
    no_data = write_config(tmp_path / "nodata.yaml", [{"name": "x", "model": setup["base"]}])
    assert "missing key 'data'" in _error(capsys, ["leaderboard", str(no_data)])
    assert "No such file" in _error(capsys, ["leaderboard", str(tmp_path / "absent.yaml")])


def test_transfer_config_sets_the_imdb_prompt_on_every_entry():
    raw = leaderboard.read_config(str(ROOT / "experiments" / "leaderboard_transfer.yaml"))
    assert all(e["max_text_tokens"] == 256 and truncation_name(e["truncation"], quiet=True) == "start_end"
               for e in raw["entries"])


def test_example_config_is_valid():
    raw = leaderboard.read_config(str(ROOT / "experiments" / "leaderboard_example.yaml"))
    assert len(raw["entries"]) >= 4
