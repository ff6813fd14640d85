"""The two heads (afa_llm.model.heads): label words of any length, and a classifier saved with its adapter.

The classifier's round trip runs in a fresh process: a trained ``score`` that comes back random is the
most reported bug of LLM sequence classifiers with PEFT (peft #548, #577, #1070), and must be impossible.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from afa_llm import cli
from afa_llm.config import load_config
from afa_llm.errors import UserError
from afa_llm.model.heads import ClassifierHead, LabelWordHead, as_sequence_classifier
from afa_llm.model.scoring import class_logits
from afa_llm.model.task import PromptTask

from test_train import tiny_overrides

MULTI_WORDS = [" very negative", " not sure", " positive"]


def _loglik_by_hand(model, task, text: str, word_ids: list[int]) -> float:
    """log p(word | prompt) from one plain forward over prompt + word, no cache, no batching."""
    prompt, _, _ = task.prompt_ids(text)
    ids = torch.tensor([prompt + word_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logp[len(prompt) - 1 + k, tok].item() for k, tok in enumerate(word_ids))


def test_multi_token_scores_are_the_summed_log_probs(tiny_model):
    model, tokenizer = tiny_model
    task = PromptTask(MULTI_WORDS).bind(tokenizer)
    assert [len(t) for t in task.label_token_seqs] == [2, 2, 1]
    texts = ["a fine film", "the plot is long and the ending is a mess"]
    with torch.no_grad():
        scores = class_logits(model, task.encode(texts), task.head)
    for row, text in enumerate(texts):
        for c, ids in enumerate(task.label_token_seqs):
            assert scores[row, c].item() == pytest.approx(_loglik_by_hand(model, task, text, ids), abs=1e-4)


def test_length_normalize_divides_by_the_token_count(tiny_model):
    model, tokenizer = tiny_model
    summed = PromptTask(MULTI_WORDS).bind(tokenizer)
    mean = PromptTask(MULTI_WORDS, length_normalize=True).bind(tokenizer)
    batch = summed.encode(["a fine film"])
    with torch.no_grad():
        a, b = class_logits(model, batch, summed.head), class_logits(model, batch, mean.head)
    assert torch.allclose(b, a / torch.tensor([2.0, 2.0, 1.0]), atol=1e-5)


def test_one_token_words_keep_the_raw_logits(tiny_model):
    model, tokenizer = tiny_model
    task = PromptTask([" negative", " positive"]).bind(tokenizer)
    batch = task.encode(["a fine film", "dull"])
    with torch.no_grad():
        raw = model(**batch.model_inputs(), logits_to_keep=1, use_cache=False).logits[:, -1, task.label_token_ids].float()
        assert torch.equal(class_logits(model, batch, task.head), raw)


def test_batch_composition_does_not_change_multi_token_scores(tiny_model):
    model, tokenizer = tiny_model
    task = PromptTask(MULTI_WORDS).bind(tokenizer)
    texts = ["short", "a much longer text that forces a lot of left padding on the short one"]
    with torch.no_grad():
        together = class_logits(model, task.encode(texts), task.head)
        alone = torch.cat([class_logits(model, task.encode([t]), task.head) for t in texts])
    assert torch.allclose(together, alone, atol=1e-4)


def test_labels_without_one_token_words_are_refused_where_one_is_needed(tiny_model):
    task = PromptTask(MULTI_WORDS).bind(tiny_model[1])
    with pytest.raises(UserError, match="one token each"):
        task.label_token_ids


def _classifier(tiny_model_dir, init_rows=None, fill=None, num_classes=2):
    from afa_llm.model.loading import load_model

    causal, tokenizer = load_model(tiny_model_dir)
    return as_sequence_classifier(causal, num_classes, init_rows, seed=0, fill=fill).eval(), causal, tokenizer


def test_a_classifier_from_the_label_word_rows_equals_label_word_scoring(tiny_model_dir):
    from afa_llm.model.loading import load_model

    causal, tokenizer = load_model(tiny_model_dir)
    task = PromptTask([" negative", " positive"]).bind(tokenizer)
    model, _, _ = _classifier(tiny_model_dir, init_rows=task.classifier_init_rows())
    batch = task.encode(["a fine film", "a dull and long one"])
    with torch.no_grad():
        words = class_logits(causal, batch, task.head)
        head = class_logits(model, batch, ClassifierHead(2))
    assert torch.allclose(words, head, atol=1e-5)
    assert type(model).__name__ == "LlamaForSequenceClassification"


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_the_classifier_twin_of_each_architecture(arch, smollm2_tokenizer, tmp_path):
    """Step 0 equals label words; the folder names the class that AutoModelForSequenceClassification builds
    (Gemma 3 text: Gemma3TextForSequenceClassification, which vLLM reads from ``architectures``) and reloads."""
    from transformers import AutoModelForSequenceClassification

    from test_act_search import _tiny

    causal = _tiny(arch, smollm2_tokenizer)
    task = PromptTask([" negative", " positive"]).bind(smollm2_tokenizer)
    batch = task.encode(["a fine film", "a dull and long one"])
    with torch.no_grad():
        words = class_logits(causal, batch, task.head)
        model = as_sequence_classifier(causal, 2, task.classifier_init_rows()).eval()
        head = class_logits(model, batch, ClassifierHead(2))
        assert torch.allclose(words, head, atol=1e-5)
        model.save_pretrained(tmp_path)
        again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
        assert model.config.architectures == [type(model).__name__] == [type(again).__name__]
        assert torch.allclose(class_logits(again, batch, ClassifierHead(2)), head, atol=1e-5)


def test_classifier_padding_side_and_batch_do_not_change_a_prediction(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    model, _, tokenizer = _classifier(tiny_model_dir)  # random head, seeded
    task = PromptTask([" negative", " positive"], head_kind="classifier").bind(tokenizer)
    texts = ["short", "a much longer text with far more tokens than the first one has"]
    with torch.no_grad():
        ours = class_logits(model, task.encode(texts), task.head)
        alone = torch.cat([class_logits(model, task.encode([t]), task.head) for t in texts])
        # transformers' own pooling on RIGHT-padded rows of the same token ids
        rows = [task.prompt_ids(t)[0] for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        assert isinstance(model, AutoModelForSequenceClassification._model_mapping[type(model.config)])
        right = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(ours, alone, atol=1e-5)
    assert torch.allclose(ours, right, atol=1e-4)


def _train_classifier(run: Path, tiny_model_dir: str, data: str, *extra: str) -> dict:
    from afa_llm.training.trainer import train

    return train(load_config(None, tiny_overrides(run, tiny_model_dir, data, "head=classifier", "steps=3",
                                                  "eval_every=0", "save_every=0", "faithfulness_eval_limit=0",
                                                  *extra)))


FRESH = """
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification
from afa_llm.model.loading import load_model
from afa_llm.model.task import PromptTask
base = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], num_labels=2)
base.config.pad_token_id = 2
model = PeftModel.from_pretrained(base, sys.argv[2]).eval()
task = PromptTask([" negative", " positive"], head_kind="classifier", max_text_tokens=32).bind(load_model(sys.argv[1])[1])
batch = task.encode(json.loads(sys.argv[3]))
with torch.no_grad():
    print(json.dumps(model(**batch.model_inputs()).logits.tolist()))
"""


def test_classifier_round_trip_in_a_fresh_process(tiny_model_dir, learnable_csv, tmp_path):
    """Train -> adapter/ -> a fresh process loads it with plain transformers + peft -> the same logits."""
    from afa_llm.model.adapters import load_scorer
    from afa_llm.specs import ScorerSpec

    run = tmp_path / "run"
    results = _train_classifier(run, tiny_model_dir, learnable_csv, "method=lora")
    assert results["head"] == "classifier" and results["head_init"] == "label_word_rows"
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    texts = ["the movie was good today", "honestly it is bad really"]
    spec = ScorerSpec(model=tiny_model_dir, adapter=str(run), head="classifier", max_text_tokens=32)
    model, task = load_scorer(spec, ["negative", "positive"], progress=False)
    with torch.no_grad():
        here = class_logits(model.eval(), task.encode(texts), task.head)
    out = subprocess.run([sys.executable, "-c", FRESH, tiny_model_dir, str(run / "adapter"), json.dumps(texts)],
                         capture_output=True, text=True, check=True)
    there = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    assert torch.allclose(here, there, atol=1e-5)
    # and the trained head is not the initial one: the head trained
    base, _, _ = _classifier(tiny_model_dir, init_rows=task.classifier_init_rows())
    with torch.no_grad():
        assert not torch.allclose(class_logits(base, task.encode(texts), task.head), here, atol=1e-3)


@pytest.mark.parametrize("method, extra", [("lora", ()), ("lora", ("masked_ce=random",)), ("afa", ()), ("at", ()),
                                           ("vat", ()), ("attn_rp", ())])
def test_every_method_trains_a_step_with_the_classifier(method, extra, tiny_model_dir, learnable_csv, tmp_path):
    results = _train_classifier(tmp_path / "run", tiny_model_dir, learnable_csv, f"method={method}", *extra)
    assert results["head"] == "classifier" and 0 <= results["test"]["accuracy"] <= 1
    assert results["focus_metrics"]["adapter"] is not None


@pytest.mark.parametrize("method", ["afa", "at", "vat", "attn_rp"])
def test_every_method_trains_a_step_with_multi_token_label_words(method, tiny_model_dir, learnable_csv, tmp_path):
    """The later tokens read the prompt's KV cache, also under the attention hook and AFA's masked passes."""
    from afa_llm.training.trainer import train

    results = train(load_config(None, tiny_overrides(tmp_path / "run", tiny_model_dir, learnable_csv, f"method={method}",
                                                     "steps=2", "eval_every=0", "faithfulness_eval_limit=4",
                                                     "label_words=[' very bad', ' quite good']")))
    assert results["label_tokens"] == [2, 2] and 0 <= results["test"]["accuracy"] <= 1


@pytest.mark.parametrize("head", ["label_words", "classifier"])
def test_multi_token_class_names_train_and_evaluate(head, tiny_model_dir, make_csv, tmp_path, capsys):
    """A CSV whose class names are several tokens: train, then `afa-llm eval` of the run."""
    from afa_llm.training.trainer import train

    rows = [(f"{p} {w} {s}", name) for p in ("the movie was", "i found it", "overall it was", "this film is")
            for s in ("today", "for me", "really") for w, name in (("good", "very positive"), ("bad", "not good"),
                                                                   ("fine", "hard to say"))]
    data = make_csv(rows)
    run = tmp_path / "run"
    results = train(load_config(None, tiny_overrides(run, tiny_model_dir, data, f"head={head}", "steps=2",
                                                     "eval_every=0", "method=lora", "faithfulness_eval_limit=0")))
    assert sorted(results["label_names"]) == ["hard to say", "not good", "very positive"]
    assert results["head_init"] == ("random" if head == "classifier" else None)
    assert ("zero_shot" in results) == (head == "label_words")  # a random head has no zero-shot
    code = cli.main(["eval", "--adapter", str(run), "--limit", "8", "--no-progress", "--focus-n", "0",
                     "--faithfulness-n", "0"])
    assert code == 0, capsys.readouterr().err
    assert "accuracy" in capsys.readouterr().out


def test_merged_classifier_loads_in_plain_transformers_and_predicts_as_the_adapter(tiny_model_dir, learnable_csv,
                                                                                   tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, pipeline

    run, merged = tmp_path / "run", tmp_path / "merged"
    _train_classifier(run, tiny_model_dir, learnable_csv, "method=lora")
    assert cli.main(["merge", "--adapter", str(run), "--output", str(merged)]) == 0
    capsys.readouterr()
    card = (merged / "README.md").read_text()
    assert "pipeline('text-classification'" in card and f"afa-llm predict --model {merged} --data" in card
    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    assert model.config.id2label == {0: "negative", 1: "positive"}
    texts = ["the movie was good today", "honestly it is bad really", "i found it good for me"]
    from afa_llm.model.adapters import load_scorer
    from afa_llm.specs import ScorerSpec

    adapter, task = load_scorer(ScorerSpec(model=tiny_model_dir, adapter=str(run), head="classifier",
                                           max_text_tokens=32), ["negative", "positive"], progress=False)
    with torch.no_grad():
        expected = class_logits(adapter.eval(), task.encode(texts), task.head)
        plain = class_logits(model, task.encode(texts), task.head)
    assert torch.allclose(expected, plain, atol=1e-4)
    # the standard pipeline on the prompted texts: the same classes
    classify = pipeline("text-classification", model=str(merged), device="cpu")
    prompted = [task.template.format(text=t) for t in texts]
    names = [r["label"] for r in classify(prompted)]
    assert names == [["negative", "positive"][i] for i in expected.argmax(-1).tolist()]
    # and afa-llm's own commands accept the merged folder
    assert cli.main(["eval", "--model", str(merged), "--data", learnable_csv, "--limit", "8", "--no-progress",
                     "--focus-n", "0", "--faithfulness-n", "0"]) == 0
    assert "accuracy" in capsys.readouterr().out


def _one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, (code, err)


def test_a_merged_classifier_without_id2label_is_refused(tiny_model_dir, tiny_csv, tmp_path, capsys):
    model, _, tokenizer = _classifier(tiny_model_dir)
    folder = tmp_path / "seqcls"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    capsys.readouterr()  # transformers' loading bars (on where no earlier test turned them off)
    code = cli.main(["eval", "--model", str(folder), "--data", tiny_csv, "--no-progress"])
    _one_line_error(code, capsys.readouterr().err, "without id2label")


def test_few_shot_eval_of_a_classifier_is_refused(tiny_model_dir, tiny_csv, tmp_path, capsys):
    model, _, tokenizer = _classifier(tiny_model_dir)
    model.config.id2label, model.config.label2id = {0: "negative", 1: "positive"}, {"negative": 0, "positive": 1}
    folder = tmp_path / "seqcls"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    capsys.readouterr()  # transformers' loading bars (on where no earlier test turned them off)
    code = cli.main(["eval", "--model", str(folder), "--data", tiny_csv, "--shots", "2", "--no-progress"])
    _one_line_error(code, capsys.readouterr().err, "zero-shot only")


def test_an_adapter_without_a_head_is_refused_as_a_classifier(tiny_model_dir, learnable_csv, tmp_path):
    from afa_llm.model.adapters import load_scorer
    from afa_llm.specs import ScorerSpec
    from afa_llm.training.trainer import train

    run = tmp_path / "run"
    train(load_config(None, tiny_overrides(run, tiny_model_dir, learnable_csv, "steps=1", "eval_every=0",
                                           "method=lora", "faithfulness_eval_limit=0", "evaluate_zero_shot=false")))
    with pytest.raises(UserError, match="no trained classifier head"):
        load_scorer(ScorerSpec(model=tiny_model_dir, adapter=str(run), head="classifier"), ["negative", "positive"],
                    progress=False)


def test_an_unknown_head_names_the_key(capsys, tmp_path):
    code = cli.main(["train", "recipes/quickstart.yaml", "head=softmax", f"output_dir={tmp_path / 'r'}"])
    _one_line_error(code, capsys.readouterr().err, "head")


def test_heads_are_plain_values():
    head = LabelWordHead(((1, 2), (3,)))
    assert not head.single_token and head.first_ids == [1, 3]
    assert ClassifierHead(3).num_classes == 3


def test_a_classifier_run_through_every_command(tiny_model_dir, learnable_csv, tmp_path, capsys):
    """predict, focus, calibrate (ACT) and the leaderboard follow the run's head."""
    import yaml

    run = tmp_path / "run"
    _train_classifier(run, tiny_model_dir, learnable_csv, "method=lora")
    preds = tmp_path / "preds.csv"
    assert cli.main(["predict", "--adapter", str(run), "--data", learnable_csv, "--output", str(preds),
                     "--no-progress"]) == 0
    import pandas as pd

    table = pd.read_csv(preds)
    assert set(table["predicted_label"]) <= {"negative", "positive"} and "prob_positive" in table
    assert cli.main(["focus", "--adapter", str(run), "--text", "the movie was good today",
                     "--output", str(tmp_path / "focus")]) == 0
    assert cli.main(["calibrate", "--adapter", str(run), "--output", str(tmp_path / "act"), "--calibration-size",
                     "4", "--layers", "1", "--attention-heads", "all", "--no-progress"]) == 0
    board = tmp_path / "board.yaml"
    board.write_text(yaml.safe_dump({"entries": [{"name": "clf", "run": str(run)}]}))
    assert cli.main(["leaderboard", str(board), "--output-dir", str(tmp_path / "board"), "--limit", "8",
                     "--no-progress"]) == 0
    assert "| clf | classifier | 1 |" in (tmp_path / "board" / "leaderboard.md").read_text()  # the head column
    capsys.readouterr()


def test_five_multi_token_classes_zero_shot(tiny_model_dir, make_csv, capsys):
    names = ["very negative", "negative", "neutral", "positive", "very positive"]
    rows = [(f"text number {i} is {names[i % 5]}", names[i % 5]) for i in range(40)]
    code = cli.main(["eval", "--model", tiny_model_dir, "--data", make_csv(rows), "--split", "all", "--no-progress",
                     "--focus-n", "4", "--faithfulness-n", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "very positive" in captured.out


def test_class_weights_of_the_wrong_length_fail_before_the_model_loads(tiny_model_dir, learnable_csv, tmp_path,
                                                                       capsys):
    code = cli.main(["train", "recipes/quickstart.yaml", f"model={tmp_path / 'no-such-model'}", f"data={learnable_csv}",
                     "class_weights=[1, 2, 3]", f"output_dir={tmp_path / 'run'}", "progress=false"])
    _one_line_error(code, capsys.readouterr().err, "'class_weights' has 3 weights for 2 classes")


def test_a_model_without_a_pad_token_still_batches_as_a_classifier(tiny_model_dir):
    from afa_llm.model.loading import load_model

    causal, tokenizer = load_model(tiny_model_dir)
    causal.config.pad_token_id = None
    model = as_sequence_classifier(causal, 2, seed=0).eval()
    assert model.config.pad_token_id == causal.config.eos_token_id
    task = PromptTask([" negative", " positive"], head_kind="classifier").bind(tokenizer)
    texts = ["short", "a longer text than the first one"]
    with torch.no_grad():
        together = class_logits(model, task.encode(texts, pad_token_id=model.config.pad_token_id), task.head)
        alone = torch.cat([class_logits(model, task.encode([t]), task.head) for t in texts])
    assert torch.allclose(together, alone, atol=1e-5)


def test_a_classifier_on_a_4bit_base_trains_and_merges(tiny_model_dir, learnable_csv, tmp_path, capsys):
    """QLoRA: the head is a full-precision layer beside the nf4 decoder; the merge round-trips the base."""
    run, merged = tmp_path / "run", tmp_path / "merged"
    results = _train_classifier(run, tiny_model_dir, learnable_csv, "method=lora", "quantization=nf4")
    assert results["head"] == "classifier" and results["quantization"] == "nf4"
    assert cli.main(["merge", "--adapter", str(run), "--output", str(merged)]) == 0
    info = json.loads((merged / "afa_merge.json").read_text())
    assert info["merge_base"] == "dequantized-nf4" and info["head"] == "classifier"
    capsys.readouterr()


def test_act_refuses_label_words_of_several_tokens(tiny_model_dir, tiny_csv, tmp_path, capsys):
    code = cli.main(["calibrate", "--model", tiny_model_dir, "--data", tiny_csv, "--label-words",
                     " very bad, very good", "--calibration-size", "4", "--output", str(tmp_path / "act"),
                     "--no-progress"])
    _one_line_error(code, capsys.readouterr().err, "one-token label words")


def test_merging_a_bare_classifier_adapter_without_class_names_is_refused(tiny_model_dir, learnable_csv, tmp_path,
                                                                          capsys):
    import shutil

    run = tmp_path / "run"
    _train_classifier(run, tiny_model_dir, learnable_csv, "method=lora")
    bare = tmp_path / "bare"
    shutil.copytree(run / "adapter", bare)  # no config.yaml or results.json beside it: the class names are gone
    capsys.readouterr()
    code = cli.main(["merge", "--adapter", str(bare), "--model", tiny_model_dir, "--output", str(tmp_path / "m")])
    _one_line_error(code, capsys.readouterr().err, "class names of this classifier are unknown")
    assert not (tmp_path / "m").exists()
