"""Tests of afa_llm.model.loading: model specs, the GGUF cache, and the bitsandbytes 4-bit CPU repack."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from afa_llm.model import loading as models
from afa_llm.errors import UserError
from afa_llm.evaluation.evaluate import predict_logits
from afa_llm.model.loading import load_model, resolve_model_path
from afa_llm.model.scoring import class_logits
from afa_llm.model.task import PromptTask
from conftest import TINY_ROWS


# ---- specs ------------------------------------------------------------------------------
def test_unknown_model_name_raises():
    with pytest.raises(UserError, match="unknown model 'no-such-model'"):
        resolve_model_path("no-such-model")


def test_bad_magic_gguf_raises(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a gguf")
    with pytest.raises(UserError, match="not a GGUF file"):
        resolve_model_path(str(fake))


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_corrupt_gguf_with_good_magic_raises(tmp_path, monkeypatch, content):
    monkeypatch.setenv("AFA_LLM_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    if content == "garbage":
        bad.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    else:  # an interrupted download of the real file
        with open(models._builtin_gguf("smollm2-135m"), "rb") as handle:
            bad.write_bytes(handle.read(100_000))  # cut inside the metadata
    with pytest.raises(UserError, match=f"cannot read GGUF file {bad}: "):
        resolve_model_path(str(bad))
    assert list((tmp_path / "cache" / "hf").iterdir()) == []  # no half-written cache


def test_missing_paths_raise(tmp_path):
    with pytest.raises(UserError, match="GGUF file not found"):
        resolve_model_path(str(tmp_path / "missing.gguf"))
    with pytest.raises(UserError, match="no config.json"):
        resolve_model_path(str(tmp_path))
    with pytest.raises(UserError, match="model path not found"):
        resolve_model_path(str(tmp_path / "missing_folder"))


def test_hub_ids_pass_through_and_fail_cleanly_offline():
    assert resolve_model_path("HuggingFaceTB/SmolLM2-360M") == "HuggingFaceTB/SmolLM2-360M"
    with pytest.raises(UserError, match="cannot load model 'someorg/somemodel'"):
        models.load_model_tokenizer("someorg/somemodel")


def test_bad_dtype_and_quantization_raise(tiny_model_dir):
    with pytest.raises(UserError, match="unknown dtype"):
        load_model(tiny_model_dir, dtype="fp8")
    with pytest.raises(UserError, match="unknown quantization"):
        load_model(tiny_model_dir, quantization="nf3")


def test_load_model_sets_left_padding(tiny_model):
    model, tokenizer = tiny_model
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert models.disable_bnb_cpu_repack(model) == 0  # nothing to patch in full precision


# ---- GGUF cache -----------------------------------------------------------------------------
def test_builtin_gguf_cache_is_reused(smollm2_path, tmp_path):
    start = time.perf_counter()
    again = resolve_model_path("smollm2-135m")
    assert time.perf_counter() - start < 5  # a hash of the 98 MB file, no conversion
    assert again == smollm2_path
    folder = Path(smollm2_path)
    assert folder.parent == models.cache_root() / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(smollm2_path)
    assert (config.model_type, config.vocab_size, config.num_hidden_layers) == ("llama", 49152, 30)
    assert getattr(config, "quantization_config", None) is None
    # The cache is keyed by the file's content, not its name.
    link = tmp_path / "renamed.gguf"
    link.symlink_to(models._builtin_gguf("smollm2-135m"))
    assert resolve_model_path(str(link)) == smollm2_path


@pytest.mark.slow
def test_cached_folder_loads_with_plain_automodel(smollm2_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_path)
    n_params = sum(p.numel() for p in model.parameters())
    assert 134_000_000 < n_params < 135_000_000
    assert next(model.parameters()).dtype == torch.float32


class _FakeTokenizer:
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return cls()

    def save_pretrained(self, folder):
        (Path(folder) / "tokenizer.json").write_text("{}")


def _fake_model_class(on_load):
    class _FakeModel:
        config = SimpleNamespace()

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            on_load()
            return cls()

        def save_pretrained(self, folder):
            (Path(folder) / "config.json").write_text('{"writer": "this process"}')

    return _FakeModel


def _fake_gguf(tmp_path, monkeypatch) -> tuple[Path, Path]:
    monkeypatch.setenv("AFA_LLM_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(60)))
    target = models.cache_root() / "hf" / models.file_sha256(gguf)[:20]
    monkeypatch.setattr(models, "AutoTokenizer", _FakeTokenizer)
    return gguf, target


def test_gguf_conversion_writes_the_cache_atomically(tmp_path, monkeypatch):
    gguf, target = _fake_gguf(tmp_path, monkeypatch)
    monkeypatch.setattr(models, "AutoModelForCausalLM", _fake_model_class(lambda: None))
    assert models.gguf_to_hf_folder(gguf) == target
    assert (target / "config.json").read_text() == '{"writer": "this process"}'
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temp folder left


def test_concurrent_gguf_conversion_keeps_the_finished_folder(tmp_path, monkeypatch):
    gguf, target = _fake_gguf(tmp_path, monkeypatch)

    def other_process_finishes_first():
        target.mkdir(parents=True)
        (target / "config.json").write_text('{"writer": "other process"}')

    monkeypatch.setattr(models, "AutoModelForCausalLM", _fake_model_class(other_process_finishes_first))
    assert models.gguf_to_hf_folder(gguf) == target
    assert (target / "config.json").read_text() == '{"writer": "other process"}'
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_failed_gguf_conversion_leaves_no_cache(tmp_path, monkeypatch):
    gguf, target = _fake_gguf(tmp_path, monkeypatch)

    def broken():
        raise RuntimeError("unsupported architecture")

    monkeypatch.setattr(models, "AutoModelForCausalLM", _fake_model_class(broken))
    with pytest.raises(RuntimeError, match="unsupported architecture"):
        models.gguf_to_hf_folder(gguf)
    assert list(target.parent.iterdir()) == []


# ---- bitsandbytes 4-bit on CPU: the silent repack failure (docs/STACK_NOTES.md) ---------------
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _cpu_repacks() -> bool:
    """bitsandbytes' own condition: Linear4bit repacks on CPU iff has_avx512bf16()."""
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


def _qlora_model(model_dir: str, *, keep_fix: bool):
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model, tokenizer = load_model(model_dir, quantization="nf4")
    linear4bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4bit) == 14  # 2 layers x (4 attention + 3 MLP projections)
    assert not any(m.support_avx512bf16_for_cpu for m in linear4bit)  # load_model applied the fix
    if not keep_fix:
        for module in linear4bit:
            module.support_avx512bf16_for_cpu = True
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS, init_lora_weights=False)
    model = get_peft_model(model, config)
    task = PromptTask([" negative", " positive"]).bind(tokenizer)
    return model, task, linear4bit


def _lora_grads(model, task) -> dict[str, torch.Tensor]:
    texts, labels = zip(*TINY_ROWS[:8])
    batch = task.encode(texts, labels)
    model.train()
    model.zero_grad()
    loss = F.cross_entropy(class_logits(model, batch, task.label_token_ids), batch.labels)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert len(grads) == 2 * 4 * 2  # lora_A and lora_B on 4 projections in 2 layers
    assert all("lora_" in n for n in grads)
    return grads


def _grads_after_eval_vs_fresh(model_dir: str, keep_fix: bool):
    used, task, used_linear = _qlora_model(model_dir, keep_fix=keep_fix)
    fresh, _, _ = _qlora_model(model_dir, keep_fix=keep_fix)
    # An eval-mode no_grad forward, as a validation pass during training does.
    predict_logits(used, task, [t for t, _ in TINY_ROWS[:4]], progress=False)
    packed = [bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False)) for m in used_linear]
    return _lora_grads(used, task), _lora_grads(fresh, task), packed


def test_4bit_lora_grads_unchanged_by_an_eval_forward(tiny_model_dir):
    after_eval, fresh, packed = _grads_after_eval_vs_fresh(tiny_model_dir, keep_fix=True)
    assert not any(packed)
    assert max(g.abs().max().item() for g in fresh.values()) > 1e-3  # non-trivial gradients
    for name, grad in fresh.items():
        torch.testing.assert_close(after_eval[name], grad, rtol=1e-4, atol=1e-7, msg=name)


@pytest.mark.skipif(
    not _cpu_repacks(),
    reason="this CPU lacks AVX512-BF16, so bitsandbytes never repacks 4-bit weights; the failure cannot show",
)
def test_4bit_lora_grads_go_wrong_without_the_fix(tiny_model_dir):
    """Proves the test above can fail: with the repack allowed, the gradients are wrong."""
    after_eval, fresh, packed = _grads_after_eval_vs_fresh(tiny_model_dir, keep_fix=False)
    assert all(packed)
    worst = max((after_eval[n] - fresh[n]).abs().max().item() for n in fresh)
    scale = max(g.abs().max().item() for g in fresh.values())
    assert worst > 0.05 * scale, (worst, scale)
