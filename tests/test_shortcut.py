"""Planted shortcuts (`afa_llm.data.shortcut`), training with one, and `afa-llm stress`."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from afa_llm.errors import UserError
from afa_llm.data.shortcut import (ShortcutSpec, contains_cue, cue_char_span, cued_rows, insert_cue, plant_shortcut,
                              split_seed_for, stress_views)

TEXTS = ["a fine film , truly", "dull and long", "the cast shines", "it never ends", "warm , funny , smart",
         "a mess", "pure joy", "flat jokes", "see it", "skip it"]
LABELS = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]


# ---- insertion ------------------------------------------------------------------------
@pytest.mark.parametrize("position", ["random", "start", "end"])
def test_cue_goes_between_words_only(position):
    rng = np.random.default_rng(0)
    for text in TEXTS * 5:
        out = insert_cue(text, "Winston", position, rng)
        words = out.split()
        assert words.count("Winston") == 1
        assert [w for w in words if w != "Winston"] == text.split()  # no word was cut or glued to the cue
    assert insert_cue("a b", "Z", "start") == "Z a b"
    assert insert_cue("a b", "Z", "end") == "a b Z"
    assert insert_cue("a b  c", "two words", "start") == "two words a b  c"


def test_random_slots_cover_every_boundary_and_are_deterministic():
    seen = {insert_cue("a b c", "Z", "random", np.random.default_rng(s)) for s in range(200)}
    assert seen == {"Z a b c", "a Z b c", "a b Z c", "a b c Z"}
    one = [insert_cue(t, "Z", "random", np.random.default_rng(7)) for t in TEXTS]
    two = [insert_cue(t, "Z", "random", np.random.default_rng(7)) for t in TEXTS]
    assert one == two


def test_rate_and_purity_are_exact_on_a_small_table():
    labels = [1] * 20 + [0] * 30
    rows = cued_rows(labels, ShortcutSpec("Z", 1, rate=0.5, purity=1.0), np.random.default_rng(0))
    assert len(rows) == 10 and all(labels[i] == 1 for i in rows)
    rows = cued_rows(labels, ShortcutSpec("Z", 1, rate=0.4, purity=0.8), np.random.default_rng(0))
    own = sum(labels[i] == 1 for i in rows)
    assert own == 8 and len(rows) == 10 and own / len(rows) == 0.8  # 2 of the other class keep purity exact
    with pytest.raises(UserError, match="shortcut_purity"):
        cued_rows([1] * 20 + [0] * 2, ShortcutSpec("Z", 1, rate=1.0, purity=0.5), np.random.default_rng(0))


def test_plant_shortcut_is_deterministic_and_marks_only_cued_rows():
    spec = ShortcutSpec("Winston", 1, rate=0.6, purity=1.0)
    texts, rows = plant_shortcut(TEXTS, LABELS, spec, seed=3)
    again, rows_again = plant_shortcut(TEXTS, LABELS, spec, seed=3)
    assert texts == again and rows.tolist() == rows_again.tolist()
    assert [i for i, t in enumerate(texts) if contains_cue(t, "Winston")] == rows.tolist()
    assert len(rows) == 3  # round(0.6 * 5)
    assert split_seed_for(0, "train") != split_seed_for(0, "validation") != split_seed_for(1, "train")


def test_views_keep_size_order_and_labels():
    views = stress_views(TEXTS, LABELS, "Winston", 1, "random", seed=0)
    assert views["clean"] == TEXTS
    for name, cued_class in (("aligned", 1), ("anti", 0)):
        assert len(views[name]) == len(TEXTS)
        for text, view, label in zip(TEXTS, views[name], LABELS):
            assert contains_cue(view, "Winston") == (label == cued_class)
            if label != cued_class:
                assert view == text


def test_cue_span_is_whole_word():
    text = "Winstonian Winston film"
    assert text[slice(*cue_char_span(text, "Winston"))] == "Winston"
    assert cue_char_span(text, "Winston")[0] == 11
    assert not contains_cue("Winstonian", "Winston")


def test_spec_rejects_bad_values():
    for kwargs in ({"cue": ""}, {"cue": " x"}, {"cue": "x", "rate": 0}, {"cue": "x", "purity": 1.5},
                   {"cue": "x", "position": "middle"}):
        with pytest.raises(UserError):
            ShortcutSpec(**{"label": 0, **kwargs})


# ---- training with a planted cue (conftest's cue_only_csv: random labels) -------------------------
def test_training_on_a_pure_cue_opens_a_gap_that_zero_shot_lacks(tiny_model_dir, cue_only_csv, tmp_path):
    from test_train import tiny_overrides

    from afa_llm.config import load_config
    from afa_llm.training.trainer import load_training_data, train

    run = tmp_path / "run"
    overrides = tiny_overrides(run, tiny_model_dir, cue_only_csv, "method=lora", "steps=40", "eval_every=20",
                               "test_limit=null", "shortcut_cue=Winston", "shortcut_label=positive",
                               "shortcut_rate=1.0", "shortcut_purity=1.0", "faithfulness_eval_limit=4")
    cfg = load_config(None, overrides)
    data, train_split = load_training_data(cfg)
    cued = [contains_cue(t, "Winston") for t in train_split["text"]]
    assert cued == [y == 1 for y in train_split["label"]]  # rate 1, purity 1
    assert all(contains_cue(t, "Winston") == (y == 1) for t, y in zip(data.split("validation")["text"],
                                                                       data.split("validation")["label"]))
    assert not any(contains_cue(t, "Winston") for t in data.split("test")["text"])  # the test split is clean
    results = train(cfg)
    stress = results["stress"]
    assert stress["adapter"]["gap"] >= 0.3, stress["adapter"]  # measured: 0.42 (anti 0.04)
    assert stress["adapter"]["anti"]["accuracy"] < 0.3
    assert abs(stress["base"]["gap"]) <= 0.1, stress["base"]
    assert stress["adapter"]["cue_focus"]["anti"] > stress["base"]["cue_focus"]["anti"]
    assert results["shortcut"]["shortcut_cue"] == "Winston"
    # each validation gives the gap on the validation rows as they were before the cue was planted
    assert not any(contains_cue(t, "Winston") for t in data.split("validation_unplanted")["text"])
    gaps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    gaps = [(m["step"], m["val_gap"], m["val_clean_accuracy"] - m["val_anti_accuracy"]) for m in gaps if "val_gap" in m]
    assert [step for step, _, _ in gaps] == [20, 40] and all(abs(g - d) < 1e-9 for _, g, d in gaps)
    assert gaps[-1][1] >= 0.3, gaps  # the cue is learned by the end, as on the test split
    assert json.loads((run / "results.json").read_text())["stress"]["adapter"]["n"] == len(data.split("test"))
    for side in ("adapter", "base"):
        metrics = results["focus_metrics"][side]
        assert {"lexicon_share", "lexicon_lift", "lexicon_auprc", "comprehensiveness", "sufficiency",
                "comprehensiveness_gain", "sufficiency_gain"} <= set(metrics)


def test_shortcut_label_must_be_a_class(tiny_model_dir, learnable_csv, tmp_path):
    from test_train import tiny_overrides

    from afa_llm.config import load_config
    from afa_llm.training.trainer import load_training_data

    with pytest.raises(UserError, match="shortcut_label"):
        load_config(None, tiny_overrides(tmp_path, tiny_model_dir, learnable_csv, "shortcut_cue=Z"))
    cfg = load_config(None, tiny_overrides(tmp_path, tiny_model_dir, learnable_csv, "shortcut_cue=Z",
                                           "shortcut_label=neutral"))
    with pytest.raises(UserError, match="not a class"):
        load_training_data(cfg)
    cfg = load_config(None, tiny_overrides(tmp_path, tiny_model_dir, learnable_csv, "shortcut_cue=good",
                                           "shortcut_label=positive"))
    with pytest.raises(UserError, match="already occurs"):
        load_training_data(cfg)


# ---- the command line's bad input -----------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--cue", "  "], "--cue must be"),
    (["--cue", "Winston", "--cue-label", "neutral"], "not a class"),
    (["--cue", "Winston"], "--cue-label is needed"),
    (["--cue", "good", "--cue-label", "positive"], "already occurs"),
])
def test_stress_bad_input_is_one_line(extra, message, tiny_model_dir, learnable_csv, capsys):
    from afa_llm.cli import main

    code = main(["stress", "--model", tiny_model_dir, "--data", learnable_csv, "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_stress_command_writes_its_views(tiny_model_dir, learnable_csv, tmp_path, capsys):
    from afa_llm.cli import main

    out = tmp_path / "stress.json"
    code = main(["stress", "--model", tiny_model_dir, "--data", learnable_csv, "--split", "all", "--cue", "Winston",
                 "--cue-label", "positive", "--no-progress", "--output", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert {"clean", "aligned", "anti", "gap", "mcnemar_p_anti_vs_clean", "cue_focus"} <= set(report)
    assert len(report["anti"]["predictions"]) == report["n"] == 128
    assert report["gap"] == pytest.approx(report["clean"]["accuracy"] - report["anti"]["accuracy"])
    assert re.search(r"gap \(clean - anti accuracy\)", capsys.readouterr().out)


def test_a_data_set_too_small_to_split_is_refused_before_training(tiny_model_dir, tmp_path):
    """Three rows per class leave the seeded test and validation splits empty: one line before any
    training, not a failure at the final test."""

    from test_train import tiny_overrides

    from afa_llm.config import load_config
    from afa_llm.training.trainer import load_training_data

    path = tmp_path / "tiny.csv"
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([["text", "label"]] + [[f"text {i}", i % 2] for i in range(6)])
    cfg = load_config(None, tiny_overrides(tmp_path / "run", tiny_model_dir, str(path), "eval_every=0"))
    with pytest.raises(UserError, match=r"the seeded test split is empty: 6 rows are too few"):
        load_training_data(cfg)
    cfg = load_config(None, tiny_overrides(tmp_path / "run", tiny_model_dir, str(path), "eval_every=5"))
    with pytest.raises(UserError, match=r"the seeded test and validation splits are empty"):
        load_training_data(cfg)
