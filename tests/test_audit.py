"""The shortcut audit (`afa-llm audit`): candidates, the skew and the score on hand-computed tables, and a
tiny model trained on a pure cue, which the audit must rank first."""

from __future__ import annotations

import json
import math

import pytest

from afa_llm.errors import UserError
from afa_llm.evaluation.audit_stats import (audit_scores, effect_scale, find_candidates, log_odds_skew, mentions,
                                            occurrence_spans, rank_order, rescore)


# ---- the model-free half --------------------------------------------------------------------
def test_log_odds_skew_matches_the_formula_by_hand():
    counts, totals = [30, 10], [1000, 1000]  # y = 40, n = 2000, a0 = n, a = 40
    skew = log_odds_skew(counts, totals)
    a, a0 = 40.0, 2000.0
    delta = math.log((30 + a) / (1000 + a0 - 30 - a)) - math.log((10 + a) / (1000 + a0 - 10 - a))
    z = delta / math.sqrt(1 / (30 + a) + 1 / (10 + a))
    assert skew["class"] == 0
    assert skew["log_odds"] == pytest.approx(delta)
    assert skew["z"] == pytest.approx(z)
    assert skew["p"] == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert log_odds_skew([10, 30], totals)["class"] == 1  # the mirror table leans the other way
    assert log_odds_skew([10, 10], totals)["z"] == pytest.approx(0.0)  # no skew


def test_skew_grows_with_evidence():
    weak, strong = log_odds_skew([6, 2], [1000, 1000]), log_odds_skew([60, 20], [1000, 1000])
    assert strong["z"] > weak["z"] > 0
    assert strong["p"] < weak["p"]


def test_score_standardises_each_model_by_its_median_effect():
    model = [4.0, 1.0, 1.0, 2.0]  # median |effect| 1.5
    base = [0.0, 0.5, 0.5, 2.0]  # median 0.5
    score, scales = audit_scores(model, base)
    assert scales == {"model": 1.5, "base": 0.5}
    assert score == pytest.approx([4 / 1.5, 1 / 1.5 - 1, 1 / 1.5 - 1, 2 / 1.5 - 4])
    alone, scales = audit_scores(model, None)
    assert alone == pytest.approx([m / 1.5 for m in model]) and "base" not in scales
    assert effect_scale([0.0, 0.0]) > 0  # floored: a model that ignores every word still divides


def test_a_word_the_base_reads_against_its_class_scores_no_higher_than_one_it_ignores():
    # 'fibonacci technicals' on tweets: the model ignores it (-0.11), the base reads it against its class (-0.82)
    model, base = [4.0, -0.1, -0.1, 1.0, 1.0], [0.0, -0.8, 0.0, 0.5, 0.5]
    score, scales = audit_scores(model, base)
    assert score[1] == pytest.approx(score[2])  # the negative base effect adds nothing
    assert score[1] < score[3]
    assert scales["base"] == 0.5  # the scale still comes from the raw effects


def test_rescore_ranks_saved_rows_as_the_audit_would():
    rows = [{"word": w, "rank": 0, "score": 0.0, "counts": {"negative": n, "positive": 1}, "effect_model": m,
             "effect_base": b} for w, n, m, b in [("a", 3, 1.0, 0.5), ("b", 9, 1.0, 0.5), ("c", 1, 4.0, 0.0),
                                                  ("d", 1, -0.1, -0.8)]]
    ranked, scales = rescore(rows)
    assert [r["word"] for r in ranked] == ["c", "b", "a", "d"]  # a tie goes to the more frequent word
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4]
    assert [r["score"] for r in ranked] == pytest.approx(audit_scores([4.0, 1.0, 1.0, -0.1], [0.0, 0.5, 0.5, -0.8])[0])
    assert scales == audit_scores([1.0, 1.0, 4.0, -0.1], [0.5, 0.5, 0.0, -0.8])[1]


def test_rank_order_breaks_ties_by_occurrences():
    assert rank_order([1.0, 2.0, 1.0], [5, 1, 9]) == [1, 2, 0]


def test_candidates_keep_frequent_words_and_collocated_pairs():
    texts = ["a walk down Maple Street", "Maple Street at night", "the street was long", "maple street again",
             "a long walk", "Maple Street, Maple Street"]
    labels = [1, 1, 0, 1, 0, 1]
    found = {c.text: c for c in find_candidates(texts, labels, 2, min_count=2)}
    assert found["maple street"].counts == [0, 5]
    assert found["maple street"].rows == [0, 1, 3, 5]
    assert found["street"].counts == [1, 5]
    assert "a walk" not in found  # once only
    assert "walk" in found and "long" in found
    # a pair whose words mostly occur apart is not a candidate
    apart = ["good film"] * 2 + ["good day"] * 10 + ["bad film"] * 10
    assert "good film" not in {c.text for c in find_candidates(apart, [1] * 22, 2, min_count=2)}
    assert occurrence_spans("Maple Street, maple street", ["maple", "street"]) == [(0, 12), (14, 26)]


def test_a_phrase_counts_as_found_through_itself_or_its_words():
    assert mentions(("maple", "street"), "Maple Street")
    assert mentions(("maple",), "Maple Street")
    assert not mentions(("maple", "tree"), "Maple Street")
    assert mentions(("winston",), "Winston") and not mentions(("film",), "Winston")


# ---- a tiny model that learned a pure cue -------------------------------------------------------
@pytest.fixture(scope="module")
def cued_run(tmp_path_factory, tiny_model_dir, cue_only_csv):
    """A LoRA run on random labels with 'Winston' in every positive training text (rate 1, purity 1)."""
    from test_train import tiny_overrides

    from afa_llm.config import load_config
    from afa_llm.training.trainer import train

    run = tmp_path_factory.mktemp("audit") / "run"
    train(load_config(None, tiny_overrides(run, tiny_model_dir, cue_only_csv, "method=lora", "steps=40",
                                           "eval_every=20", "test_limit=null", "shortcut_cue=Winston",
                                           "shortcut_label=positive", "shortcut_rate=1.0", "shortcut_purity=1.0",
                                           "focus_eval_limit=4", "faithfulness_eval_limit=0")))
    return run


def test_audit_ranks_a_learned_pure_cue_first(cued_run, tmp_path, capsys):
    from afa_llm.cli import main

    out, page = tmp_path / "audit.json", tmp_path / "audit.html"
    assert main(["audit", "--adapter", str(cued_run), "--sample", "8", "--output", str(out), "--html", str(page),
                 "--top", "5", "--no-progress"]) == 0
    report = json.loads(out.read_text())
    first = report["candidates"][0]
    assert first["word"] == "winston", [c["word"] for c in report["candidates"][:5]]
    assert first["counts"]["negative"] == 0 and first["counts"]["positive"] > 20  # the run's own cued train split
    assert first["skew"]["class"] == "positive"
    assert first["effect_model"] > 3 * abs(first["effect_base"])  # the base barely notices the name
    assert [c["rank"] for c in report["candidates"]] == list(range(1, len(report["candidates"]) + 1))
    assert {"word", "rank", "score", "counts", "skew", "effect_model", "effect_base", "examples"} <= set(first)
    assert all("winston" in ex["text"].lower() for ex in first["examples"])
    assert report["split"] == "train" and report["adapter"] and report["settings"]["min_count"] == 5
    assert report["passes"]["masked"] == 2 * sum(c["n_measured"] for c in report["candidates"])
    html = page.read_text()
    assert "<mark>Winston</mark>" in html and "<script" not in html
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically: no temporary left behind
    table = capsys.readouterr().out
    assert "winston" in table.splitlines()[4]  # the first row of the table


def test_audit_of_a_base_model_alone_ranks_by_its_own_effect(tiny_model_dir, learnable_csv, tmp_path):
    from afa_llm.commands import options
    from afa_llm.evaluation.audit import AuditRequest, audit_request

    resolved = options.resolve(_namespace(model=tiny_model_dir, data=learnable_csv))
    report = audit_request(AuditRequest(resolved, split="all", sample=2, max_candidates=5, progress=False))
    assert report["settings"]["base"] is False
    assert all(c["effect_base"] is None for c in report["candidates"])
    scale = report["scales"]["model"]
    assert [c["score"] for c in report["candidates"]] == pytest.approx(
        [c["effect_model"] / scale for c in report["candidates"]])
    assert len(report["candidates"]) == 5


def _namespace(**given):
    from afa_llm.commands import audit
    from afa_llm.cli import OneLineErrorParser

    parser = OneLineErrorParser()
    audit.add_arguments(parser)
    args = parser.parse_args([])
    for key, value in given.items():
        setattr(args, key, value)
    return args


@pytest.mark.parametrize("extra, message", [
    (["--min-count", "100000"], "--min-count"),
    (["--text-column", "review"], "review"),
    (["--top", "0"], "--top"),
    (["--output", "/proc/nope/audit.json"], "--output"),
    (["--html", "audit.txt"], "--html"),
])
def test_audit_bad_input_is_one_line(extra, message, tiny_model_dir, learnable_csv, capsys):
    from afa_llm.cli import main

    assert main(["audit", "--model", tiny_model_dir, "--data", learnable_csv, "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_audit_unknown_split_is_one_line(tiny_model_dir, capsys):
    from afa_llm.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["audit", "--model", tiny_model_dir, "--split", "nope"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_audit_needs_a_model_or_a_run(capsys):
    from afa_llm.cli import main

    assert main(["audit", "--no-progress"]) == 2
    assert "--adapter" in capsys.readouterr().err


def test_request_checks_its_numbers():
    from afa_llm.evaluation.audit import AuditRequest

    with pytest.raises(UserError, match="--sample"):
        AuditRequest(None, sample=0).check()
