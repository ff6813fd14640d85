"""ACT head search (afa_llm.act.search): the pure functions, the fast search against the plain
one (a full forward per candidate) on tiny random Llama / Qwen3 / Gemma3 models, and
`afa-llm calibrate` (resume, controls, errors, eval --act)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_ROWS

from afa_llm.act.calibration import load_act
from afa_llm.act import head_search
from afa_llm.act.search import all_heads, random_heads, select_heads
from afa_llm.act.head_search import HeadSearch, accuracy_and_margin, prepare_batches, sub_batch_rows
from afa_llm.cli import main
from afa_llm.model.task import PromptTask


# ------------------------------------------------------------------------------ pure functions
def test_accuracy_and_margin():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0], [1.0, 1.5, 0.0]])
    labels = torch.tensor([0, 2, 0])
    out = accuracy_and_margin(logits, labels)
    assert out["accuracy"] == pytest.approx(1 / 3) and out["n"] == 3
    assert out["margin"] == pytest.approx(((2 - 1) + (1 - 3) + (1 - 1.5)) / 3)


def test_selection_rules():
    baseline = {"accuracy": 0.5, "margin": 0.2}
    results = [{"layer": 3, "head": 1, "accuracy": 0.6, "margin": 0.1},  # better accuracy, lower margin
               {"layer": 3, "head": 0, "accuracy": 0.6, "margin": 0.3},
               {"layer": 2, "head": 4, "accuracy": 0.5, "margin": 0.9},  # a tie is no gain
               {"layer": 5, "head": 2, "accuracy": 0.4, "margin": 0.9}]
    assert select_heads(results, baseline, "faithful") == {3: [0, 1]}
    assert select_heads(results, baseline, "strict") == {3: [0]}


def test_random_heads_keep_the_count_per_layer_and_are_seeded():
    counts = {2: 3, 5: 1, 7: 0}
    draws = [random_heads(counts, 9, seed=0, draw=k) for k in range(3)]
    for heads in draws:
        assert {layer: len(h) for layer, h in heads.items()} == {2: 3, 5: 1}
        assert all(len(set(h)) == len(h) and all(0 <= x < 9 for x in h) for h in heads.values())
    assert draws[0] == random_heads(counts, 9, seed=0, draw=0)
    assert len({json.dumps(d) for d in draws}) > 1
    assert all_heads([2, 3], 3) == {2: [0, 1, 2], 3: [0, 1, 2]}


# ------------------------------------------------------------------------- fast == plain
def _tiny(arch: str, tokenizer):
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig, Qwen3Config

    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                  pad_token_id=tokenizer.pad_token_id)
    config = {"llama": lambda: LlamaConfig(**common),
              "qwen3": lambda: Qwen3Config(head_dim=16, **common),
              "gemma3": lambda: Gemma3TextConfig(head_dim=16, sliding_window=6, query_pre_attn_scalar=24,
                                                 layer_types=["sliding_attention", "full_attention"] * 2,
                                                 **common)}[arch]()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()


def _search(model, tokenizer, fast: bool, skip: bool = True, tau: float = 0.1) -> tuple[list[dict], HeadSearch]:
    task = PromptTask([" negative", " positive"]).bind(tokenizer)
    texts, labels = [t for t, _ in TINY_ROWS[:12]], [y for _, y in TINY_ROWS[:12]]
    batches, ordered = prepare_batches(task, texts, labels, 5, "cpu")
    search = HeadSearch(model, batches, ordered, task.label_token_ids, tau=tau, fast=fast, skip_unchanged=skip)
    baseline = search.baseline([1, 2, 3])
    return [baseline] + [search.candidate(layer, head) for layer in (1, 2, 3) for head in range(4)], search


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_fast_search_reproduces_the_plain_search_exactly(arch, smollm2_tokenizer):
    model = _tiny(arch, smollm2_tokenizer)
    for tau in (0.1, 0.2):  # 0.2: some heads find no sink in some examples, so those are skipped
        plain, _ = _search(model, smollm2_tokenizer, fast=False, tau=tau)
        fast, search = _search(model, smollm2_tokenizer, fast=True, tau=tau)
        assert fast == plain  # accuracy and margin of every candidate, to the last bit
        assert len({r["margin"] for r in plain}) > len(plain) // 2  # the candidates really differ
    # 8 candidates below the last layer x 12 examples: some reused their clean logits, others ran again
    assert 0 < search.skipped < 8 * 12
    no_skip, unskipped = _search(model, smollm2_tokenizer, fast=True, skip=False, tau=0.2)
    assert no_skip == plain and unskipped.skipped == 0
    assert search.forwards < unskipped.forwards


def test_sub_batch_keeps_an_explicit_mask():
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [1, 1, 1], [0, 0, 1]])
    assert sub_batch_rows(mask, torch.tensor([False, True, True, False])).tolist() == [0, 1, 2]  # + a padded row
    assert sub_batch_rows(mask, torch.tensor([False, True, False, True])).tolist() == [1, 3]
    assert sub_batch_rows(mask, torch.zeros(4, dtype=torch.bool)).tolist() == []
    assert sub_batch_rows(torch.ones(2, 3), torch.tensor([True, False])).tolist() == [0]  # no padding anywhere


def test_fast_search_would_see_a_wrong_layer_input(smollm2_tokenizer, monkeypatch):
    """The comparison above can fail: feeding another layer's cached input changes the numbers."""
    model = _tiny("llama", smollm2_tokenizer)
    plain, _ = _search(model, smollm2_tokenizer, fast=False)
    original = HeadSearch.baseline

    def shifted(self, layers):
        out = original(self, layers)
        self.layer_inputs = {layer: self.layer_inputs[max(layers)] for layer in self.layer_inputs}
        return out

    monkeypatch.setattr(HeadSearch, "baseline", shifted)
    assert _search(model, smollm2_tokenizer, fast=True)[0] != plain


def test_fast_search_would_see_skipped_changes(smollm2_tokenizer, monkeypatch):
    """... and so can reusing the clean logits of examples that the head did change."""
    model = _tiny("llama", smollm2_tokenizer)
    plain, _ = _search(model, smollm2_tokenizer, fast=False, tau=0.2)
    monkeypatch.setattr(head_search, "sub_batch_rows", lambda mask, changed: changed.nonzero().flatten()[:1])
    assert _search(model, smollm2_tokenizer, fast=True, tau=0.2)[0] != plain


# ------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def tiny4_dir(tmp_path_factory, smollm2_tokenizer) -> str:
    folder = tmp_path_factory.mktemp("tiny4")
    _tiny("llama", smollm2_tokenizer).save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return str(folder)


def _calibrate(model_dir, data, out, *extra) -> int:
    argv = ["calibrate", "--model", model_dir, "--data", data, "--calibration-size", "4", "--output", str(out),
            "--layers", "1,2", "--no-progress", *extra]
    try:
        return main(argv)
    except SystemExit as exc:  # a usage error (argparse)
        return exc.code


def test_calibrate_writes_act_and_search_log(tiny4_dir, tiny_csv, tmp_path, capsys):
    assert _calibrate(tiny4_dir, tiny_csv, tmp_path) == 0
    lines = [json.loads(line) for line in (tmp_path / "search.jsonl").read_text().splitlines()]
    assert [(r["layer"], r["head"]) for r in lines] == [(l, h) for l in (1, 2) for h in range(4)]
    assert all(r["n"] == 4 for r in lines)
    act = load_act(tmp_path / "act.json")
    baseline = act.info["baseline"]
    assert act.heads == select_heads(lines, baseline, "faithful")
    assert act.calibration["split"] == "validation" and len(act.calibration["ids"]) == 4
    assert act.calibration["data"] == tiny_csv and act.fingerprint["layers"] == 4
    assert "wrote" in capsys.readouterr().out


COST_KEYS = ("seconds", "forwards")


def _results(lines: list[str]) -> dict:
    """A search log's results by candidate, without the per-candidate cost (timings differ run to run)."""
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r["seconds"], float) and r["forwards"] > 0 for r in records)
    return {(r["layer"], r["head"]): {k: v for k, v in r.items() if k not in COST_KEYS} for r in records}


def test_resume_skips_done_candidates(tiny4_dir, tiny_csv, tmp_path, monkeypatch):
    assert _calibrate(tiny4_dir, tiny_csv, tmp_path) == 0
    fresh = load_act(tmp_path / "act.json").info
    log = tmp_path / "search.jsonl"
    full = log.read_text().splitlines()
    log.write_text("\n".join(full[:3]) + "\n" + full[3][:20])  # 3 done, one torn line
    assert _calibrate(tiny4_dir, tiny_csv, tmp_path) == 2  # no --resume: refused
    calls = []
    original = HeadSearch.candidate
    monkeypatch.setattr(HeadSearch, "candidate", lambda self, l, h: calls.append((l, h)) or original(self, l, h))
    assert _calibrate(tiny4_dir, tiny_csv, tmp_path, "--resume") == 0
    assert calls == [(1, 3), (2, 0), (2, 1), (2, 2), (2, 3)]
    assert list(_results(log.read_text().splitlines()).items()) == list(_results(full).items())
    resumed = load_act(tmp_path / "act.json").info
    assert resumed["resumed_candidates"] == 3 and "resumed_without_cost" not in resumed
    assert resumed["resumed_seconds"] == round(sum(json.loads(line)["seconds"] for line in full[:3]), 1)
    assert resumed["forwards_per_example"] == fresh["forwards_per_example"]  # the earlier run's passes counted
    assert _calibrate(tiny4_dir, tiny_csv, tmp_path, "--resume", "--beta", "0.5") == 2  # another setup


def test_workers_score_the_same_candidates_as_one_process(tiny4_dir, tiny_csv, tmp_path):
    """--workers 2 after a partial search: every candidate once, with the one-process numbers."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert _calibrate(tiny4_dir, tiny_csv, one) == 0
    full = (one / "search.jsonl").read_text().splitlines()
    two.mkdir()
    (two / "search.jsonl").write_text("\n".join(full[:3]) + "\n")  # 3 done before
    assert _calibrate(tiny4_dir, tiny_csv, two, "--resume", "--workers", "2") == 0
    lines = (two / "search.jsonl").read_text().splitlines()
    assert len(lines) == len(full) and _results(lines) == _results(full)
    assert load_act(two / "act.json").heads == load_act(one / "act.json").heads
    info_one, info_two = load_act(one / "act.json").info, load_act(two / "act.json").info
    assert info_two["workers"] == 2 and info_two["threads_per_process"] >= 1 and info_two["resumed_candidates"] == 3
    assert info_two["forwards_per_example"] == info_one["forwards_per_example"]  # the workers' passes counted
    assert _calibrate(tiny4_dir, tiny_csv, two, "--workers", "0") == 2


def test_a_worker_that_fails_is_one_line_and_keeps_the_log(tiny4_dir, tiny_csv, tmp_path, capsys, monkeypatch):
    from afa_llm.act import workers as act_workers

    monkeypatch.setattr(act_workers, "_worker", _failing_worker)
    assert _calibrate(tiny4_dir, tiny_csv, tmp_path, "--workers", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rerun with --resume" in err[0]


def _failing_worker(*args) -> None:  # module level: a spawned process imports it by name
    raise SystemExit(3)


def test_controls_write_act_files(tiny4_dir, tiny_csv, tmp_path):
    assert _calibrate(tiny4_dir, tiny_csv, tmp_path, "--attention-heads", "all") == 0
    assert load_act(tmp_path / "act-all.json").heads == {1: [0, 1, 2, 3], 2: [0, 1, 2, 3]}
    assert not (tmp_path / "search.jsonl").exists()  # no search for the all-heads control
    assert _calibrate(tiny4_dir, tiny_csv, tmp_path, "--rule", "strict") == 0
    searched = load_act(tmp_path / "act-strict.json")
    for draw in (0, 1):
        assert _calibrate(tiny4_dir, tiny_csv, tmp_path, "--rule", "strict", "--attention-heads", "random",
                          "--draw", str(draw)) == 0
        drawn = load_act(tmp_path / f"act-strict-random-{draw}.json")
        assert {l: len(h) for l, h in drawn.heads.items()} == {l: len(h) for l, h in searched.heads.items()}
        assert drawn.selection == "random" and drawn.info["draw"] == draw


def test_eval_applies_the_calibration_and_records_it(tiny4_dir, tiny_csv, tmp_path):
    assert _calibrate(tiny4_dir, tiny_csv, tmp_path, "--attention-heads", "all") == 0
    base = ["eval", "--model", tiny4_dir, "--data", tiny_csv, "--no-progress", "--limit", "6"]
    assert main(base + ["--output", str(tmp_path / "plain.json")]) == 0
    assert main(base + ["--act", str(tmp_path / "act-all.json"), "--output", str(tmp_path / "act.json")]) == 0
    plain, calibrated = (json.loads((tmp_path / f).read_text()) for f in ("plain.json", "act.json"))
    assert plain["act"] is None
    act = calibrated["act"]
    assert act["attention_heads"] == 8 and act["beta"] == 0.4 and act["tau"] == 0.1
    assert calibrated["act"]["path"] == str(tmp_path / "act-all.json")
    assert calibrated["probabilities"] != plain["probabilities"]


@pytest.mark.parametrize("case, message", [
    ("empty", "split is empty"),
    ("too_many", "larger than the validation split"),
    ("test_split", "invalid choice"),
])
def test_calibrate_errors_are_one_line_exit_2(case, message, tiny4_dir, make_csv, tiny_csv, tmp_path, capsys):
    data, extra = tiny_csv, []
    if case == "empty":
        data = make_csv(rows=TINY_ROWS[:4], name="four.csv")  # 10% of 2 per class rounds to 0
    elif case == "too_many":
        extra = ["--calibration-size", "50"]
    else:
        extra = ["--split", "test"]
    assert _calibrate(tiny4_dir, data, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_calibration_never_uses_the_runs_training_examples(monkeypatch):
    import argparse
    from types import SimpleNamespace

    from afa_llm.act.setup import check_calibration_source
    from afa_llm.commands import calibrate, options
    from afa_llm.errors import UserError

    cfg = SimpleNamespace(data="rotten_tomatoes", split_seed=3, text_column="text", label_column="label",
                          label_names=None, validation_data=None, test_data=None)
    monkeypatch.setattr("afa_llm.runs._saved_settings", lambda adapter, model: ({"model": "m"}, cfg, "run/adapter"))
    parser = argparse.ArgumentParser()
    calibrate.add_arguments(parser)

    def resolve(*argv):
        args = parser.parse_args(["--output", "x", "--adapter", "run", *argv])
        resolved = options.resolve(args)
        check_calibration_source(resolved, args.split)
        return resolved.data

    data = resolve()
    assert (data.data, data.split_seed) == ("rotten_tomatoes", 3)  # the run's data and split seed
    with pytest.raises(UserError, match="trained on the train split"):
        resolve("--split", "train")
    with pytest.raises(UserError, match="overlaps its training examples"):
        resolve("--split-seed", "0")
    data = resolve("--data", "imdb", "--split", "train")  # another data set's train split is unseen
    assert (data.data, data.split_seed) == ("imdb", 0)


def test_a_run_calibrated_then_eval_predict_merge_leaderboard_focus(tiny4_dir, tiny_csv, tmp_path, capsys):
    """End to end on a run folder: the calibration follows the adapter into the merge, and every
    command that takes --act (or an entry's act key) applies it or refuses a mismatch."""
    import yaml
    from tiny_runs import make_run

    run = make_run(tmp_path / "run", tiny4_dir, data=tiny_csv)
    assert main(["calibrate", "--adapter", str(run), "--output", str(run), "--calibration-size", "4",
                 "--layers", "1,2", "--attention-heads", "all", "--no-progress"]) == 0
    act_file = str(run / "act-all.json")
    assert load_act(act_file).calibration["data"] == tiny_csv  # the run's own data, validation split
    evaluate = ["eval", "--data", tiny_csv, "--no-progress", "--limit", "6"]
    assert main(evaluate + ["--model", tiny4_dir, "--adapter", str(run), "--act", act_file,
                            "--output", str(tmp_path / "adapter.json")]) == 0
    assert main(evaluate + ["--model", tiny4_dir, "--act", act_file]) == 2  # the base alone: refused
    assert "calibrated with another adapter" in capsys.readouterr().err

    merged = tmp_path / "merged"
    assert main(["merge", "--adapter", str(run), "--output", str(merged), "--act", act_file]) == 0
    card = (merged / "README.md").read_text()
    assert "inference-time" in card and "enable_act" in card and str(merged / "act.json") in card
    assert main(evaluate + ["--model", str(merged), "--act", str(merged / "act.json"),
                            "--output", str(tmp_path / "merged.json")]) == 0
    expected, got = (json.loads((tmp_path / f).read_text())["probabilities"] for f in ("adapter.json", "merged.json"))
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-4)
    assert main(evaluate + ["--model", str(merged), "--act", act_file]) == 2  # the run's file: not the merge's
    capsys.readouterr()

    out = tmp_path / "preds.csv"
    assert main(["predict", "--adapter", str(run), "--data", tiny_csv, "--output", str(out), "--act", act_file,
                 "--no-progress"]) == 0
    assert out.read_text().count("\n") == 41

    board = tmp_path / "board.yaml"
    board.write_text(yaml.safe_dump({"limit": 6, "entries": [
        {"name": "lora", "model": tiny4_dir, "adapter": str(run), "data": tiny_csv},
        {"name": "lora+act", "model": tiny4_dir, "adapter": str(run), "act": "run/act-all.json", "data": tiny_csv}]}))
    assert main(["leaderboard", str(board), "--no-progress"]) == 0
    assert len(list((tmp_path / "board" / "cache").glob("*.json"))) == 2  # the act file is part of the key

    assert main(["focus", "--adapter", str(run), "--act", act_file, "--text", "A wonderful film.",
                 "--output", str(tmp_path / "focus")]) == 0
    report = json.loads((tmp_path / "focus" / "focus.json").read_text())
    assert report["sides"] == ["base", "adapter", "act"] and report["act"]["attention_heads"] == 8
    item = report["texts"][0]
    assert item["act"]["focus"] != item["adapter"]["focus"]
    assert abs(sum(item["act"]["focus"]) - 1) < 1e-5


@pytest.mark.slow
def test_calibrate_and_eval_on_the_real_smollm2(tmp_path):
    assert main(["calibrate", "--model", "smollm2-135m", "--data", "rotten_tomatoes", "--calibration-size", "8",
                 "--layers", "2", "--output", str(tmp_path), "--no-progress"]) == 0
    act = load_act(tmp_path / "act.json")
    assert act.fingerprint["layers"] == 30 and act.fingerprint["heads"] == 9 and act.info["candidates"] == 9
    assert main(["eval", "--model", "smollm2-135m", "--data", "rotten_tomatoes", "--limit", "8", "--no-progress",
                 "--act", str(tmp_path / "act.json")]) == 0

