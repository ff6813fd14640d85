"""Tests of afa_llm.model.scoring and afa_llm.evaluation.evaluate on the tiny random Llama (fast, no real model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset

from afa_llm.errors import UserError
from afa_llm.evaluation.evaluate import evaluate_dataset, predict_logits
from afa_llm.evaluation.report import format_report
from afa_llm.model.adapters import attach_adapter, resolve_adapter_dir
from afa_llm.model.loading import load_model
from afa_llm.model.scoring import class_logits, forward_scores
from afa_llm.model.task import PromptTask, draw_demonstrations
from conftest import TINY_ROWS

TEXTS = [t for t, _ in TINY_ROWS]
LABELS = [y for _, y in TINY_ROWS]


@pytest.fixture(scope="module")
def task(tiny_model):
    return PromptTask([" negative", " positive"]).bind(tiny_model[1])


def _alone(model, task, texts, demos=None) -> torch.Tensor:
    """Score every example in its own batch of one (no padding at all)."""
    rows = []
    with torch.no_grad():
        for i, text in enumerate(texts):
            batch = task.encode([text], demos=[demos[i]] if demos else None)
            assert batch.attention_mask.all()
            rows.append(class_logits(model, batch, task.label_token_ids)[0])
    return torch.stack(rows)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_left_padded_batch_scores_equal_single_examples(tiny_model_dir, attn):
    model, tokenizer = load_model(tiny_model_dir, attn_implementation=attn)
    model.eval()
    task = PromptTask([" negative", " positive"]).bind(tokenizer)
    texts = TEXTS[:24]  # short texts and two long ones
    batch = task.encode(texts)
    assert (batch.attention_mask == 0).sum(1).max() >= 10  # real padding in the batch
    with torch.no_grad():
        batched = class_logits(model, batch, task.label_token_ids)
    alone = _alone(model, task, texts)
    assert batched.shape == (24, 2)
    assert batched.dtype == torch.float32
    torch.testing.assert_close(batched, alone, atol=1e-4, rtol=0)
    # Not trivially equal: the examples get different scores.
    assert alone[:, 1].sub(alone[:, 0]).std() > 1e-4


def test_forward_scores_returns_answer_hidden_state(tiny_model, task):
    model, _ = tiny_model
    batch = task.encode(TEXTS[:3])
    with torch.no_grad():
        out = forward_scores(model, **batch.model_inputs(), head=task.head, return_hidden=True)
        plain = forward_scores(model, **batch.model_inputs(), head=task.head)
        full = model(**batch.model_inputs()).logits[:, -1, :]
    assert out.answer_hidden.shape == (3, 64)
    assert len(out.hidden_states) == 3  # embeddings + 2 layers
    torch.testing.assert_close(out.answer_hidden, out.hidden_states[-1][:, -1, :])
    torch.testing.assert_close(out.class_logits, plain.class_logits)
    assert plain.answer_hidden is None and plain.hidden_states is None
    # The class logits are the label words' next-token logits at the last position.
    torch.testing.assert_close(plain.class_logits, full[:, task.label_token_ids])


def test_sorted_evaluation_returns_the_original_order(tiny_model, task):
    model, _ = tiny_model
    lengths = [len(task.text_ids(t)) for t in TEXTS]
    assert lengths != sorted(lengths)  # so sorting really reorders
    model.train()  # predict_logits must switch to eval and back
    logits = predict_logits(model, task, TEXTS, batch_size=7, progress=False)
    assert model.training
    model.eval()
    assert logits.shape == (40, 2) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, _alone(model, task, TEXTS).numpy(), atol=1e-4, rtol=0)


def test_few_shot_demos_stay_with_their_query(tiny_model, task):
    model, _ = tiny_model
    texts = TEXTS[:10]
    demos = draw_demonstrations(TEXTS[20:], LABELS[20:], shots=2, n_queries=len(texts), seed=3)
    logits = predict_logits(model, task, texts, batch_size=4, demos=demos, progress=False)
    np.testing.assert_allclose(logits, _alone(model, task, texts, demos).numpy(), atol=1e-4, rtol=0)
    zero_shot = predict_logits(model, task, texts, batch_size=4, progress=False)
    assert not np.allclose(logits, zero_shot, atol=1e-3)


def test_evaluate_dataset_report(tiny_model, task):
    model, _ = tiny_model
    data = Dataset.from_dict({"text": TEXTS[:16], "label": LABELS[:16]})
    report = evaluate_dataset(model, task, data, ["negative", "positive"], batch_size=5, progress=False)
    logits = _alone(model, task, TEXTS[:16]).numpy()
    assert report["predictions"] == logits.argmax(-1).tolist()
    assert report["labels"] == LABELS[:16]
    assert report["n"] == 16 and report["shots"] == 0
    correct = np.asarray(report["predictions"]) == np.asarray(LABELS[:16])
    assert report["accuracy"] == pytest.approx(correct.mean())
    assert sum(map(sum, report["confusion_matrix"])) == 16
    assert report["examples_per_second"] > 0
    text = format_report(report, ["negative", "positive"], title="tiny on toy")
    assert text.splitlines()[0] == "tiny on toy"
    assert f"n=16  accuracy={report['accuracy']:.4f}" in text
    assert "confusion matrix (rows = true, columns = predicted):" in text


def test_the_focus_is_read_off_the_scoring_pass_and_leaves_the_scores_as_they_are(tiny_model, task, monkeypatch):
    import afa_llm.attention.clean_pass as clean_pass_module
    from afa_llm.attention.clean_pass import clean_pass
    from afa_llm.evaluation.evaluate import evaluate_with_focus
    from afa_llm.model.task import length_batches

    model, _ = tiny_model
    data = Dataset.from_dict({"text": TEXTS, "label": LABELS})
    plain = evaluate_dataset(model, task, data, ["negative", "positive"], batch_size=7, progress=False)
    passes = []
    monkeypatch.setattr(clean_pass_module, "clean_pass", lambda *a, **k: passes.append(1) or clean_pass(*a, **k))
    report, focus = evaluate_with_focus(model, task, data, ["negative", "positive"], batch_size=7, progress=False,
                                        focus_on=range(5))
    assert report["probabilities"] == plain["probabilities"] and report["predictions"] == plain["predictions"]
    # one pass per batch: the batches that hold one of the first 5 rows run as clean passes, the rest plain
    batches = length_batches(task, TEXTS, 7)
    assert len(passes) == sum(bool(set(idx.tolist()) & set(range(5))) for idx in batches) < len(batches)
    # each row's focus, over its text tokens, is the one a clean pass of that row alone gives
    assert len(focus) == 5
    for text, row in zip(TEXTS[:5], focus):
        batch = task.encode([text])
        with torch.no_grad():
            alone = clean_pass(model, batch, task.head).focus[0][batch.text_mask[0]]
        assert row.shape == (len(task.text_ids(text)),)
        np.testing.assert_allclose(row, alone.numpy(), atol=1e-5)
    assert evaluate_with_focus(model, task, data, ["negative", "positive"], progress=False)[1] == []


def test_few_shot_evaluation_is_deterministic_for_a_seed(tiny_model, task):
    model, _ = tiny_model
    data = Dataset.from_dict({"text": TEXTS[:8], "label": LABELS[:8]})
    pool = Dataset.from_dict({"text": TEXTS[8:], "label": LABELS[8:]})
    run = lambda seed: evaluate_dataset(  # noqa: E731
        model, task, data, ["negative", "positive"], shots=2, demo_pool=pool, seed=seed, progress=False
    )
    a, b = run(0), run(0)
    assert a["predictions"] == b["predictions"] and a["shots"] == 2


def test_evaluate_dataset_errors(tiny_model, task):
    model, _ = tiny_model
    empty = Dataset.from_dict({"text": [], "label": []})
    with pytest.raises(UserError, match="evaluation split is empty"):
        evaluate_dataset(model, task, empty, ["negative", "positive"], progress=False)
    data = Dataset.from_dict({"text": TEXTS[:2], "label": LABELS[:2]})
    with pytest.raises(UserError, match="non-empty train split"):
        evaluate_dataset(model, task, data, ["negative", "positive"], shots=2, demo_pool=None, progress=False)


def test_adapter_round_trip(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_model(tiny_model_dir)
    task = PromptTask([" negative", " positive"]).bind(tokenizer)
    torch.manual_seed(0)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, lora_dropout=0.0)
    )
    peft_model.eval()
    run_dir = tmp_path / "run"
    peft_model.save_pretrained(run_dir / "adapter")
    expected = predict_logits(peft_model, task, TEXTS[:6], progress=False)

    assert resolve_adapter_dir(str(run_dir)) == run_dir / "adapter"
    assert resolve_adapter_dir(str(run_dir / "adapter")) == run_dir / "adapter"
    base, _ = load_model(tiny_model_dir)
    base_logits = predict_logits(base, task, TEXTS[:6], progress=False)
    attached = attach_adapter(base, str(run_dir))
    np.testing.assert_allclose(predict_logits(attached, task, TEXTS[:6], progress=False), expected, atol=1e-5)
    assert not np.allclose(base_logits, expected, atol=1e-4)

    with pytest.raises(UserError, match="adapter folder not found"):
        resolve_adapter_dir(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="holds no adapter_config.json"):
        resolve_adapter_dir(str(tmp_path))


def test_the_fake_focus_share_of_focus_rows_equals_the_batched_one(tiny_model, task):
    from afa_llm.attention import focus_math as fm
    from afa_llm.attention.clean_pass import clean_pass
    from afa_llm.evaluation.word_focus import text_focus
    from afa_llm.training.validation import fake_focus_share_of

    model, _ = tiny_model
    texts = TEXTS[:12]
    frequent = fm.frequent_ids(task, TEXTS)
    batch = task.encode(texts)
    with torch.no_grad():
        focus = clean_pass(model, batch, task.head).focus
    batched = fm.fake_focus_ratio(*fm.frequent_shares(focus, batch.input_ids, batch.text_mask, frequent))
    rows, _ = text_focus(model, task, texts, batch_size=5)
    assert fake_focus_share_of(task, texts, rows, frequent) == pytest.approx(batched, rel=1e-5)
    assert batched != pytest.approx(1.0)  # not trivially "no preference"
