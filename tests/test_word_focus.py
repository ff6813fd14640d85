"""Focus metrics on hand-computed examples: lexicon mapping, AUPRC, AOPC (`word_focus`, `faithfulness`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from afa_llm.evaluation.faithfulness import aopc, faithfulness, faithfulness_batch, faithfulness_masks, summarize
from afa_llm.attention.masking import top_k_masks
from afa_llm.evaluation.word_focus import (average_precision, lexicon_metrics, lexicon_scores, sentiment_words, span_focus,
                                vader_lexicon, word_units)


# ---- the lexicon ----------------------------------------------------------------------------
def test_vader_lexicon_is_read_from_the_package():
    lexicon = vader_lexicon()
    assert len(lexicon) > 7000
    assert lexicon["good"] > 1 and lexicon["horrible"] < -1
    assert "good" in sentiment_words(1.0) and "good" not in sentiment_words(3.5)
    assert "film" not in sentiment_words(1.0)


# ---- words from token offsets ----------------------------------------------------------------
def test_word_units_join_split_words_and_isolate_punctuation():
    text = "a gorgeous, unwatchable film"
    # tokens as SmolLM2 cuts them: ' a' ' gorgeous' ',' ' unw' 'atch' 'able' ' film' (offsets without the lead space)
    spans = [(0, 1), (1, 10), (10, 11), (11, 15), (15, 19), (19, 23), (23, 28)]
    units = word_units(text, spans)
    assert units == [("a", [0]), ("gorgeous", [1]), (None, [2]), ("unwatchable", [3, 4, 5]), ("film", [6])]


def test_word_units_with_real_tokenizer_offsets(smollm2_tokenizer):
    from afa_llm.model.task import PromptTask

    task = PromptTask([" negative", " positive"], max_text_tokens=64).bind(smollm2_tokenizer)
    text = "a gorgeous, unwatchable film"
    spans = task.text_offsets(text)
    assert len(spans) == len(task.text_ids(text))
    words = [w for w, _ in word_units(text, spans) if w]
    assert words == ["a", "gorgeous", "unwatchable", "film"]
    short = PromptTask([" negative", " positive"], max_text_tokens=3).bind(smollm2_tokenizer)
    assert len(short.text_offsets(text)) == 3  # truncation keeps the same tokens as the prompt


def test_lexicon_scores_by_hand():
    # units: "great" (tokens 0,1; rated), "film" (token 2), "," (token 3), "awful" (token 4; rated)
    units = [("great", [0, 1]), ("film", [2]), (None, [3]), ("awful", [4])]
    focus = np.array([0.2, 0.1, 0.4, 0.2, 0.1])
    scores = lexicon_scores(focus, units, frozenset({"great", "awful"}))
    assert scores["lexicon_share"] == pytest.approx(0.4)  # 0.3 + 0.1
    assert scores["lexicon_lift"] == pytest.approx(0.4 / (3 / 5))
    # units ranked by focus: film 0.4 (no), great 0.3 (yes), "," 0.2 (no), awful 0.1 (yes): AP = (1/2 + 2/4) / 2
    assert scores["lexicon_auprc"] == pytest.approx(0.5)
    assert lexicon_scores(focus, units, frozenset({"superb"})) is None


def test_lexicon_metrics_average_only_texts_with_rated_words():
    texts = ["great film", "the film"]
    offsets = [[(0, 5), (5, 10)], [(0, 3), (3, 8)]]
    out = lexicon_metrics([np.array([0.75, 0.25]), np.array([0.5, 0.5])], offsets, texts, threshold=1.0)
    assert out["lexicon_n"] == 1 and out["lexicon_share"] == pytest.approx(0.75)
    assert out["lexicon_lift"] == pytest.approx(1.5) and out["lexicon_auprc"] == pytest.approx(1.0)
    none = lexicon_metrics([np.array([0.5, 0.5])], [offsets[1]], ["the film"])
    assert none["lexicon_n"] == 0 and none["lexicon_share"] is None


def test_average_precision_by_hand_and_ties():
    assert average_precision([0.9, 0.8, 0.7], [True, False, True]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.1, 0.9], [True, False]) == pytest.approx(0.5)
    # a tie counts as one threshold: both items enter together, precision 1/2 there
    assert average_precision([0.5, 0.5], [True, False]) == pytest.approx(0.5)
    assert np.isnan(average_precision([0.5], [False]))


def test_span_focus_sums_overlapping_tokens():
    spans = [(0, 1), (1, 8), (8, 12)]
    assert span_focus(np.array([0.1, 0.6, 0.3]), spans, 2, 9) == pytest.approx(0.9)


# ---- faithfulness ---------------------------------------------------------------------------------
def test_top_k_masks_pick_the_highest_text_tokens():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.05]])
    text = torch.tensor([[False, True, True, True, True]])
    assert top_k_masks(scores, text, torch.tensor([2])).tolist() == [[False, False, True, True, False]]


def test_faithfulness_masks_layout():
    focus = torch.tensor([[0.0, 0.1, 0.6, 0.3]])
    text = torch.tensor([[False, True, True, True]])
    masks = faithfulness_masks(focus, text, [0.3, 0.7], random_draws=1, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (1, 8, 4)
    assert masks[0, 0].tolist() == [False, False, True, False]  # hide top-1 (round(0.9) = 1)
    assert masks[0, 1].tolist() == [False, False, True, True]  # hide top-2
    assert masks[0, 2].tolist() == [False, True, False, True]  # keep only top-1
    assert (masks[0, 4:] & ~text[0]).sum() == 0 and masks[0, 4].sum() == 1 and masks[0, 5].sum() == 2


def test_aopc_with_a_stub_scorer():
    """The stub gives p(class 1) = 1 - (hidden share of token 2's weight): only token 2 matters."""
    focus = torch.tensor([[0.1, 0.7, 0.2]])
    text = torch.ones(1, 3, dtype=torch.bool)
    logits = torch.tensor([[0.0, 4.0]])

    def score(masks):  # token 1 carries the decision: hiding it flips the logits
        hidden = masks[0, :, 1].float()
        return torch.stack([4.0 * hidden, 4.0 * (1 - hidden)], -1).unsqueeze(0)

    out = faithfulness_batch(score, logits, focus, text, fractions=(0.3, 0.6), random_draws=3,
                             generator=torch.Generator().manual_seed(0))
    p = torch.tensor([0.0, 4.0]).softmax(-1)[1].item()
    q = torch.tensor([4.0, 0.0]).softmax(-1)[1].item()
    assert out["comprehensiveness"][0] == pytest.approx(p - q)  # the top token is always hidden
    assert out["sufficiency"][0] == pytest.approx(0.0)  # keeping it keeps the prediction
    summary = summarize(out)
    assert summary["comprehensiveness_gain"] > 0 and summary["sufficiency_gain"] > 0


def test_aopc_averages_fractions_and_random_draws():
    p_full = np.array([0.9])
    # layout for F=2, R=1: [focus hide k1,k2][focus keep k1,k2][random hide k1,k2][random keep k1,k2]
    p_masked = np.array([[0.5, 0.3, 0.8, 0.9, 0.9, 0.8, 0.6, 0.5]])
    out = aopc(p_full, p_masked, n_fractions=2, random_draws=1)
    assert out["comprehensiveness"][0] == pytest.approx(0.5)  # (0.4 + 0.6) / 2
    assert out["sufficiency"][0] == pytest.approx(0.05)
    assert out["comprehensiveness_random"][0] == pytest.approx(0.05)
    assert out["sufficiency_random"][0] == pytest.approx(0.35)


def test_random_baseline_follows_its_seed():
    focus = torch.rand(2, 12, generator=torch.Generator().manual_seed(1))
    text = torch.ones(2, 12, dtype=torch.bool)

    def draw(seed):
        return faithfulness_masks(focus, text, [0.25], 2, torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3)[:, 2:], draw(4)[:, 2:])
    assert torch.equal(draw(3)[:, :2], draw(4)[:, :2])  # the focus blocks do not depend on the seed


def test_faithfulness_of_no_texts_is_an_empty_report():
    # no model is touched: the empty case returns before the first pass
    assert faithfulness(torch.nn.Linear(1, 1), None, []) == {"faithfulness_n": 0}
