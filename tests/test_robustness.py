"""Training past a shortcut (`afa_llm.robustness`): the product of experts with a bag-of-words bias model
(``debias: poe``) and the guard (``guard: base | random | words``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from afa_llm.errors import UserError
from afa_llm.methods import METHODS

def cued_overrides(run, model_dir, data, *extra):
    from test_train import tiny_overrides

    return tiny_overrides(run, model_dir, data, "method=lora", "steps=40", "eval_every=0", "test_limit=null",
                          "shortcut_cue=Winston", "shortcut_label=positive", "shortcut_rate=1.0",
                          "shortcut_purity=1.0", "focus_eval_limit=4", "faithfulness_eval_limit=0",
                          "evaluate_zero_shot=false", *extra)


# ---- the product of experts -------------------------------------------------------------------
def test_poe_loss_is_the_cross_entropy_of_the_summed_logits():
    from afa_llm.attention.clean_pass import CleanPass
    from afa_llm.methods.base import classification_loss
    from afa_llm.model.task import EncodedBatch

    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    bias = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
    labels = torch.tensor([0, 1])
    clean = CleanPass.__new__(CleanPass)
    clean.class_logits = logits
    batch = EncodedBatch(torch.zeros(2, 1), torch.ones(2, 1), torch.zeros(2, 1), torch.ones(2, 1, dtype=torch.bool),
                         labels)
    plain = classification_loss(clean, batch)
    batch.bias_log_probs = bias
    by_hand = -(torch.log_softmax(logits + bias, -1)[[0, 1], [0, 1]]).mean()
    assert classification_loss(clean, batch).item() == pytest.approx(by_hand.item())
    assert plain.item() == pytest.approx(F.cross_entropy(logits, labels).item())
    # example 0: the bias already predicts class 0, so the product of experts asks less of the model
    assert classification_loss(clean, batch).item() != pytest.approx(plain.item())


def test_bias_model_fits_out_of_fold_and_names_the_cue():
    from afa_llm.robustness.poe import fit_bias_model

    texts = [f"Winston {w} tale" if i % 2 else f"{w} tale" for i, w in enumerate(["a", "b", "c", "d"] * 10)]
    labels = [i % 2 for i in range(40)]
    bias = fit_bias_model(texts, labels, 2, seed=0)
    assert bias.log_probs.shape == (40, 2)
    np.testing.assert_allclose(np.exp(bias.log_probs).sum(1), 1.0, rtol=1e-5)
    assert bias.record["out_of_fold_accuracy"] == 1.0
    assert bias.record["top_words"][1][0][0] == "winston"
    with pytest.raises(UserError, match="debias"):
        fit_bias_model(["x", "y", "z"], [0, 0, 0], 2, seed=0)


def test_poe_run_predicts_with_the_model_alone(tiny_model_dir, cue_only_csv, tmp_path, capsys):
    from afa_llm.cli import main
    from afa_llm.config import load_config
    from afa_llm.training.trainer import train

    run = tmp_path / "poe"
    results = train(load_config(None, cued_overrides(run, tiny_model_dir, cue_only_csv, "steps=10", "debias=poe")))
    assert results["debias"]["kind"] == "poe"
    assert results["debias"]["top_words"][1][0][0] == "winston"
    out = tmp_path / "eval.json"
    assert main(["eval", "--adapter", str(run), "--output", str(out), "--focus-n", "0", "--no-progress"]) == 0
    assert json.loads(out.read_text())["predictions"] == results["test"]["predictions"]


# ---- the guard -------------------------------------------------------------------------------------
def test_guard_base_flags_the_cue_and_shrinks_the_gap(tiny_model_dir, cue_only_csv, tmp_path):
    from afa_llm.config import load_config
    from afa_llm.training.trainer import train

    gaps, runs = {}, {}
    for guard in ("none", "base", "random"):
        extra = [] if guard == "none" else [f"guard={guard}", "guard_every=10", "guard_weight=2",
                                            "guard_threshold=5", "guard_random_count=3"]
        runs[guard] = train(load_config(None, cued_overrides(tmp_path / guard, tiny_model_dir, cue_only_csv, *extra)))
        gaps[guard] = runs[guard]["stress"]["adapter"]["gap"]
    flagged = [row[0] for row in runs["base"]["guard"]["top_hidden"]]
    assert "winston" in flagged, runs["base"]["guard"]
    assert "winston" not in [row[0] for row in runs["random"]["guard"]["top_hidden"]]
    assert gaps["none"] >= 0.3, gaps  # plain LoRA learns the cue
    assert gaps["base"] < gaps["none"] - 0.1, gaps
    assert gaps["random"] > gaps["base"] + 0.1, gaps
    events = [json.loads(line) for line in (tmp_path / "base" / "metrics.jsonl").read_text().splitlines()]
    assert any("winston" in e.get("guard_flagged", []) for e in events)


def test_the_sticky_guard_selects_a_checkpoint_from_after_its_newest_flag(tiny_model_dir, cue_only_csv, tmp_path):
    from afa_llm.config import load_config
    from afa_llm.training.trainer import train

    results = train(load_config(None, cued_overrides(tmp_path / "s", tiny_model_dir, cue_only_csv, "steps=10",
                                                     "guard=base", "guard_every=4", "guard_threshold=0",
                                                     "eval_every=2", "select_best=true")))
    flags = [json.loads(line) for line in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    newest = {}
    for event in (e for e in flags if "guard_flagged" in e):  # logged with the step they apply to, + 1
        for word in event["guard_flagged"]:
            newest.setdefault(word, event["step"] - 1)
    start = max(newest.values()) + 4
    assert results["validation"][-1]["selectable_from"] == start
    history = results["validation"]
    assert results["best_step"] >= start and results["selected"] == "best", (history, start)
    best = next(r for r in history if r["step"] == results["best_step"])
    assert max(r["accuracy"] for r in history) > best["accuracy"]  # an earlier checkpoint scored higher


def test_guard_words_hides_the_given_words(tiny_model_dir, cue_only_csv, tmp_path):
    from afa_llm.config import load_config
    from afa_llm.training.trainer import train

    results = train(load_config(None, cued_overrides(tmp_path / "w", tiny_model_dir, cue_only_csv, "steps=4",
                                                     "guard=words", "guard_words=[Winston]")))
    word, rows_hidden, first_step = results["guard"]["top_hidden"][0]
    assert word == "winston" and rows_hidden > 0 and first_step == 0


@pytest.mark.parametrize("sticky", [False, True])
def test_sticky_flags_hold_to_the_end_of_training(sticky, monkeypatch):
    from types import SimpleNamespace

    from afa_llm.robustness.guard import Guard

    texts = ["winston was here"] * 6 + ["a dull film"] * 6 + ["fine"] * 6
    labels = [1] * 6 + [0] * 6 + [1, 0] * 3
    cfg = SimpleNamespace(guard="base", guard_sticky=sticky, guard_every=25, guard_threshold=5.0, seed=0,
                          guard_min_count=5, guard_candidates=50, guard_sample=2)
    guard = Guard(cfg, None, texts, labels, 2)
    words = [c.text for c in guard.candidates]
    rounds = iter([{"winston": 9.0}, {"dull": 7.0}, {}])  # the cue's score falls once it is hidden
    monkeypatch.setattr(guard, "_scores", lambda model: [next_round.get(w, 0.0) for w in words])
    flagged = []
    for step in (0, 25, 50):
        next_round = next(rounds)
        flagged.append(guard.refresh(None, step)["guard_flagged"])
    if sticky:
        assert flagged == [["winston"], ["winston", "dull"], ["winston", "dull"]]
    else:
        assert flagged == [["winston"], ["dull"], []]
    assert guard.first_step == {"winston": 0, "dull": 25}
    # selection counts the validations from one refresh interval after the newest sticky flag on
    assert guard.selectable_from() == (50 if sticky else 0)


@pytest.mark.parametrize("sticky", [False, True])
def test_the_matched_random_control_hides_as_many_words_as_the_measure_flags(sticky, monkeypatch):
    from types import SimpleNamespace

    from afa_llm.robustness.guard import Guard

    texts = [f"winston saw a dull film with {w}" for w in ("ann", "bob", "cy", "di", "ed", "flo")] * 2
    labels = [1, 0] * 6
    cfg = SimpleNamespace(guard="random", guard_random_count=0, guard_sticky=sticky, guard_every=25,
                          guard_threshold=5.0, seed=0, guard_min_count=5, guard_candidates=50, guard_sample=2)
    guard = Guard(cfg, None, texts, labels, 2)
    words = [c.text for c in guard.candidates]
    assert len(words) > 4
    rounds = iter([{"winston": 9.0}, {"dull": 7.0}, {}, {"winston": 8.0, "dull": 6.0, "film": 5.5}])
    monkeypatch.setattr(guard, "_scores", lambda model: [next_round.get(w, 0.0) for w in words])
    flagged = []
    for step in (0, 25, 50, 75):
        next_round = next(rounds)
        flagged.append(guard.refresh(None, step)["guard_flagged"])
    sizes = [len(f) for f in flagged]
    if sticky:  # as many as the measure has flagged so far (winston, dull, film), earlier draws kept
        assert sizes == [1, 2, 2, 3]
        assert all(set(a) <= set(b) for a, b in zip(flagged, flagged[1:]))
        state = guard.state_dict()
        assert state["measured"] == sorted(words.index(w) for w in ("winston", "dull", "film"))
        again = Guard(cfg, None, texts, labels, 2)
        again.load_state_dict(state)
        assert again.measured == guard.measured and again.flagged == guard.flagged
    else:  # as many as it flags at each refresh
        assert sizes == [1, 1, 0, 3]


def test_guard_words_from_reads_the_audits_top_words(tmp_path):
    from afa_llm.config import load_config

    audit = tmp_path / "audit.json"
    audit.write_text(json.dumps({"candidates": [{"word": w, "rank": r} for w, r in
                                                [("dull", 4), ("winston", 1), ("maple street", 2), ("bad", 3)]]}))
    cfg = load_config(None, ["guard=words", f"guard_words_from={audit}", "guard_words_top=2"])
    assert cfg.guard_words == ["winston", "maple street"]
    assert load_config(None, ["guard=words", f"guard_words_from={audit}"]).guard_words == ["winston", "maple street",
                                                                                           "bad"]


@pytest.mark.parametrize("content", [None, "{}", '{"candidates": []}'])
def test_guard_words_from_a_bad_audit_is_one_line(content, tmp_path, capsys):
    from afa_llm.cli import main

    audit = tmp_path / "audit.json"
    if content is not None:
        audit.write_text(content)
    assert main(["train", "guard=words", f"guard_words_from={audit}", f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "guard_words_from" in err[0], err


@pytest.mark.parametrize("head", ["label_words", "classifier"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_guard_and_poe_train_with_every_method_and_head(method, head, tiny_model_dir, cue_only_csv, tmp_path):
    # the add-ons sit beside the method's loss (the loop adds them), so every method and head takes them
    from afa_llm.config import load_config
    from afa_llm.training.trainer import train

    run = tmp_path / f"{method}-{head}"
    results = train(load_config(None, cued_overrides(run, tiny_model_dir, cue_only_csv, "steps=3", f"method={method}",
                                                     f"head={head}", "guard=base", "guard_every=1",
                                                     "guard_threshold=-1e9", "debias=poe", "focus_eval_limit=1")))
    assert results["method"] == method and results["head"] == head
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "step_time" in r]
    assert len(steps) == 3 and all(r["guard_rows"] > 0 and np.isfinite(r["loss_cls"]) for r in steps), steps
    assert results["guard"]["top_hidden"] and results["debias"]["kind"] == "poe"


@pytest.mark.parametrize("extra", [["guard=base", "guard_every=3", "guard_threshold=0"], ["debias=poe"],
                                   ["guard=random", "guard_random_count=0", "guard_sticky=true", "guard_every=2",
                                    "guard_threshold=0"]])
def test_resume_is_exact_with_guard_and_debias(extra, tiny_model_dir, cue_only_csv, tmp_path):
    from test_train import adapter_state, max_diff

    from afa_llm.config import load_config
    from afa_llm.training.trainer import train

    common = ["save_every=4", "keep_checkpoints=3", "lora_dropout=0.1", *extra]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    full = train(load_config(None, cued_overrides(straight, tiny_model_dir, cue_only_csv, "steps=8", *common)))
    train(load_config(None, cued_overrides(resumed, tiny_model_dir, cue_only_csv, "steps=4", *common)))
    again = train(load_config(None, cued_overrides(resumed, tiny_model_dir, cue_only_csv, "steps=8", *common,
                                                   "resume_from=latest")))
    assert max_diff(adapter_state(straight / "adapter"), adapter_state(resumed / "adapter")) == 0.0
    assert full.get("guard") == again.get("guard")


@pytest.mark.parametrize("extra, key", [
    (["guard=sometimes"], "guard"),
    (["guard=words"], "guard_words"),
    (["guard_weight=-1"], "guard_weight"),
    (["guard=random", "guard_random_count=-1"], "guard_random_count"),
    (["debias=ensemble"], "debias"),
])
def test_bad_guard_keys_are_one_line(extra, key, tiny_model_dir, cue_only_csv, tmp_path, capsys):
    from afa_llm.cli import main

    assert main(["train", *cued_overrides(tmp_path / "bad", tiny_model_dir, cue_only_csv, *extra)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and key in err[0], err
