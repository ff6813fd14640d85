"""`afa-llm merge`: merged folders score like base + adapter; nf4 round trip; refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from afa_llm import cli

from afa_llm.inference import merge
from afa_llm.runs import MERGE_INFO
from afa_llm.evaluation.evaluate import evaluate_dataset
from afa_llm.model.adapters import attach_adapter
from afa_llm.model.loading import load_model
from afa_llm.model.scoring import class_logits
from afa_llm.model.task import PromptTask
from conftest import TINY_LLAMA_CONFIG
from tiny_runs import make_run, save_random_adapter

# fp32 merge of a random LoRA into the tiny model: measured max |diff| of class logits ~1e-7.
TINY_ATOL = 1e-5
SENTENCES = ["a warm, funny and moving film", "a dull and lifeless mess", "I loved every minute of it",
             "clumsy writing and flat jokes <b>", "the worst movie of the year", "charming and beautifully shot"]


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir) -> str:
    return tiny_model_dir


@pytest.fixture(scope="module")
def tiny_run(tiny_base, tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "run", tiny_base, accuracy=0.75)


def scores(model, tokenizer, texts=SENTENCES) -> torch.Tensor:
    task = PromptTask([" negative", " positive"]).bind(tokenizer)
    with torch.no_grad():
        return class_logits(model.eval(), task.encode(texts), task.label_token_ids)


def reference_scores(base: str, run: Path, quantization: str = "none") -> torch.Tensor:
    model, tokenizer = load_model(base, quantization=quantization)
    return scores(attach_adapter(model, str(run)), tokenizer)


def merged_scores(folder: Path) -> torch.Tensor:
    model, tokenizer = load_model(str(folder))
    return scores(model, tokenizer)


def test_merged_model_scores_like_base_plus_adapter(tiny_base, tiny_run, tiny_csv, tmp_path, capsys):
    out = tmp_path / "deploy" / "merged"
    assert cli.main(["merge", "--adapter", str(tiny_run), "--output", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged"]  # no temp folder left behind
    plain = AutoModelForCausalLM.from_pretrained(out)  # no peft involved
    assert not any("lora" in name for name, _ in plain.named_parameters())
    info = json.loads((out / MERGE_INFO).read_text())
    assert info["merge_base"] == "original" and info["nf4_round_tripped_modules"] == 0

    expected, got = reference_scores(tiny_base, tiny_run), merged_scores(out)
    base_only = scores(*load_model(tiny_base))
    assert (expected - base_only).abs().max() > 1e-3  # the adapter really changes the scores
    torch.testing.assert_close(got, expected, atol=TINY_ATOL, rtol=0)

    # the evaluator gives identical predictions, and `afa-llm eval --model DIR` works
    args = ["--data", tiny_csv, "--no-progress"]
    assert cli.main(["eval", "--model", str(out), *args, "--output", str(tmp_path / "m.json")]) == 0
    assert cli.main(["eval", "--model", tiny_base, "--adapter", str(tiny_run), *args,
                     "--output", str(tmp_path / "a.json")]) == 0
    reports = [json.loads((tmp_path / f"{n}.json").read_text()) for n in "ma"]
    assert reports[0]["predictions"] == reports[1]["predictions"] and reports[0]["n"] > 0

    card = (out / "README.md").read_text()
    assert "0.7500" in card and "rotten_tomatoes" in card and "base_model:" in card
    capsys.readouterr()


def test_dequantized_nf4_base_reproduces_the_4bit_training_base(tiny_base, tmp_path):
    import bitsandbytes as bnb

    # The round trip equals what bitsandbytes stores when loading in nf4, bit for bit.
    full, _ = load_model(tiny_base)
    names = merge.dequantize_nf4_(full, torch.float32)
    four_bit, _ = load_model(tiny_base, quantization="nf4")
    loaded = {n: m for n, m in four_bit.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert sorted(names) == sorted(loaded) and len(names) == 14 and "lm_head" not in names
    weights = dict(full.named_modules())
    for name, module in loaded.items():
        stored = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
        assert torch.equal(weights[name].weight, stored)

    run = make_run(tmp_path / "qlora", tiny_base, quantization="nf4", seed=1)
    assert cli.main(["merge", "--adapter", str(run / "adapter"), "--output", str(tmp_path / "nf4")]) == 0
    assert cli.main(["merge", "--adapter", str(run), "--base", "original", "--output", str(tmp_path / "orig")]) == 0
    assert json.loads((tmp_path / "nf4" / MERGE_INFO).read_text())["merge_base"] == "dequantized-nf4"

    trained = reference_scores(tiny_base, run, quantization="nf4")  # 4-bit base + adapter
    on_nf4, on_original = merged_scores(tmp_path / "nf4"), merged_scores(tmp_path / "orig")
    assert (on_nf4 - on_original).abs().max() > 1e-4  # the two bases really differ
    torch.testing.assert_close(on_nf4, trained, atol=TINY_ATOL, rtol=0)
    assert (on_original - trained).abs().max() > 10 * (on_nf4 - trained).abs().max()


def test_bf16_output_and_overwrite(tiny_run, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "old.txt").write_text("stale")
    args = ["merge", "--adapter", str(tiny_run), "--output", str(out), "--dtype", "bf16", "--overwrite"]
    assert cli.main(args) == 0
    assert not (out / "old.txt").exists()
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def _refused(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()  # model loading may print progress bars first
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and err.endswith(errors[0]) and errors[0].startswith("error: ")
    return errors[0]


def test_refusals(tiny_base, tiny_run, tmp_path, capsys, monkeypatch):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    assert "not empty" in _refused(capsys, ["merge", "--adapter", str(tiny_run), "--output", str(full)])
    assert (full / "keep.txt").read_text() == "mine"

    (tmp_path / "empty").mkdir()
    assert "adapter_config.json" in _refused(capsys, ["merge", "--adapter", str(tmp_path / "empty"),
                                                      "--output", str(tmp_path / "o1")])
    assert "not found" in _refused(capsys, ["merge", "--adapter", str(tmp_path / "nope"),
                                            "--output", str(tmp_path / "o2")])

    from transformers import LlamaConfig, LlamaForCausalLM

    shape = {**TINY_LLAMA_CONFIG, "hidden_size": 32, "intermediate_size": 64}
    other = LlamaForCausalLM(LlamaConfig(**shape, vocab_size=1000))  # another shape
    adapter = save_random_adapter(other, tmp_path / "other-adapter")
    err = _refused(capsys, ["merge", "--adapter", str(adapter), "--model", tiny_base,
                            "--output", str(tmp_path / "o3")])
    assert "does not fit" in err

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", disk_full)
    err = _refused(capsys, ["merge", "--adapter", str(tiny_run), "--output", str(tmp_path / "deploy" / "m")])
    assert "No space left" in err
    assert list((tmp_path / "deploy").iterdir()) == []  # the temp folder was removed


@pytest.mark.slow
def test_merge_real_smollm2(smollm2_path, tmp_path):
    """SmolLM2-135M + a LoRA with random B (a QLoRA run): both merges, 8 real RT sentences.

    Measured (2026-11-22): |merged-original - fp32 base + adapter| max 2.9e-5 and
    |merged-dequantized-nf4 - nf4 base + adapter| max 3.1e-5, on class logits of size ~19;
    across the two bases the logits differ by up to 7.4 (the nf4 quantisation error).
    """
    from afa_llm.data.loading import load_classification_data

    run = make_run(tmp_path / "run", smollm2_path, quantization="nf4", b_std=2e-3, r=8)
    for base in ("original", "dequantized-nf4"):
        assert cli.main(["merge", "--adapter", str(run), "--base", base, "--output", str(tmp_path / base)]) == 0
    test = load_classification_data("rotten_tomatoes").split("test").select(range(8))
    texts, names = list(test["text"]), ["negative", "positive"]
    for base, quantization in (("original", "none"), ("dequantized-nf4", "nf4")):
        model, tokenizer = load_model(smollm2_path, quantization=quantization)
        peft_model = attach_adapter(model, str(run))
        merged, _ = load_model(str(tmp_path / base))
        expected = scores(peft_model, tokenizer, texts)
        with peft_model.disable_adapter():
            assert (expected - scores(peft_model, tokenizer, texts)).abs().max() > 1e-2  # the adapter matters
        torch.testing.assert_close(scores(merged, tokenizer, texts), expected, atol=2e-4, rtol=0)
        task = PromptTask([" negative", " positive"]).bind(tokenizer)
        reports = [evaluate_dataset(m, task, test, names, progress=False) for m in (peft_model, merged)]
        assert reports[0]["predictions"] == reports[1]["predictions"]
        assert reports[0]["accuracy"] == reports[1]["accuracy"]
