"""AnswerAttentionProbe (sdpa, last row only) against the eager output_attentions path.

Tiny random models (fp32, hidden 64, 3-4 layers, vocab 128). initializer_range=0.2
makes attention peaked, so that a wrong scaling, window, soft-cap, norm or RoPE
moves the rows far beyond the 1e-5 tolerance (checked when this file was written).
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    Qwen2Config,
    Qwen3Config,
)

from afa_llm.attention.probe import (
    AnswerAttentionProbe,
    default_focus_layers,
    eager_answer_attention,
    find_decoder_layers,
)

ATOL = 1e-5
VOCAB = 128
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA everywhere
    max_position_embeddings=64,
    initializer_range=0.2,
)
GEMMA3_LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


def _config(arch: str):
    if arch == "llama":
        return LlamaConfig(num_hidden_layers=3, **COMMON)
    if arch == "qwen2":  # q/k/v biases
        return Qwen2Config(num_hidden_layers=3, **COMMON)
    if arch == "qwen3":  # q_norm/k_norm before the head transpose
        return Qwen3Config(num_hidden_layers=3, head_dim=16, **COMMON)
    if arch == "gemma3":
        # window 4 bites on length 10; query_pre_attn_scalar != head_dim. Gemma3 in
        # transformers 5.23 stores attn_logit_softcapping but does not apply it: the probe
        # must match the module, not the config.
        return Gemma3TextConfig(
            num_hidden_layers=4,
            head_dim=16,
            sliding_window=4,
            layer_types=GEMMA3_LAYER_TYPES,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=2.0,
            **COMMON,
        )
    if arch == "gemma2":  # applies the soft-cap; has no sdpa support, so eager only
        return Gemma2Config(
            num_hidden_layers=4,
            head_dim=16,
            sliding_window=4,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=2.0,
            **COMMON,
        )
    raise ValueError(arch)


def _model(arch: str, impl: str = "sdpa"):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(_config(arch), attn_implementation=impl).eval()


def _batch(seed: int = 1):
    """Left-padded lengths 10, 7, 4; row 0 hides index 7, row 1 hides index 5."""
    g = torch.Generator().manual_seed(seed)
    real = torch.tensor([[1] * 10, [0] * 3 + [1] * 7, [0] * 6 + [1] * 4])
    position_ids = (real.cumsum(-1) - 1).clamp(min=0)  # hidden tokens keep their positions
    attention_mask = real.clone()
    attention_mask[0, 7] = 0
    attention_mask[1, 5] = 0
    input_ids = torch.randint(0, VOCAB, (3, 10), generator=g)
    return input_ids, attention_mask, position_ids


def _probe_rows(model, layers, input_ids, attention_mask, position_ids):
    with AnswerAttentionProbe(model, layers, attention_mask) as probe:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return probe.answer_attention()


def _all_hooks(model) -> int:
    dicts = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")
    return sum(len(getattr(m, d, {})) for m in model.modules() for d in dicts)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3", "gemma2"])
def test_probe_matches_eager(arch):
    model = _model(arch, "eager" if arch == "gemma2" else "sdpa")
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    assert eager.config._attn_implementation == "eager"
    if arch != "gemma2":
        assert model.config._attn_implementation == "sdpa"
    ids, mask, pos = _batch()
    layers = list(range(model.config.num_hidden_layers))

    with torch.no_grad():
        rows = _probe_rows(model, layers, ids, mask, pos)
        ref = eager_answer_attention(eager, ids, mask, pos, layers)

    heads = model.config.num_attention_heads
    assert rows.shape == ref.shape == (3, len(layers), heads, 10)
    assert rows.dtype == torch.float32
    visible = (mask != 0)[:, None, None, :].expand_as(rows)
    window = getattr(model.config, "sliding_window", None)
    types = getattr(model.config, "layer_types", None)
    if types is not None and window and "sliding_attention" in types:
        sliding = torch.tensor([t == "sliding_attention" for t in types])
        outside = torch.arange(10) <= 9 - window
        visible = visible & ~(sliding[None, :, None, None] & outside[None, None, None, :])
        # The window bites: the reference has zeros on unpadded keys outside it.
        first = types.index("sliding_attention")
        assert ref[0, first, :, :6].abs().max() < 1e-7
        assert ref[0, types.index("full_attention"), :, :6].abs().max() > 1e-3
    torch.testing.assert_close(rows[visible], ref[visible], atol=ATOL, rtol=0)
    assert torch.count_nonzero(rows[~visible]) == 0  # masked keys are exactly zero
    assert ref[~visible].abs().max() < 1e-7
    torch.testing.assert_close(rows.sum(-1), torch.ones_like(rows.sum(-1)), atol=1e-5, rtol=0)


def test_layer_order_and_negative_indices():
    model = _model("llama")
    ids, mask, pos = _batch()
    with torch.no_grad():
        all_rows = _probe_rows(model, [0, 1, 2], ids, mask, pos)
        picked = _probe_rows(model, [-1, 0], ids, mask, pos)
    torch.testing.assert_close(picked, all_rows[:, [2, 0]], atol=0, rtol=0)


def _assert_grads_close(a, b, name):
    """|a - b| <= 1e-5 on the gradient's own scale.

    The peaked tiny models give LoRA grads up to ~30; fp32 summation-order noise between
    the sdpa and eager graphs is then ~1e-6 relative (a few 1e-5 absolute), while any
    mistake in the probe is O(1) relative.
    """
    scale = max(1.0, b.abs().max().item())
    err = (a - b).abs().max().item()
    assert err <= ATOL * scale, f"{name}: max |diff| {err:.2e} > {ATOL:.0e} * {scale:.2f}"


def _lora(arch: str, dropout: float = 0.0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(_config(arch), attn_implementation="sdpa")
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,  # lora_B non-zero, so grads reach lora_A too
    )
    return get_peft_model(base, config)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_lora_grads_match_eager(arch):
    # Train mode with LoRA dropout: the probe must use the forward's own q/k (same
    # dropout sample), which the eager path sees under the same seed.
    model = _lora(arch, dropout=0.1)
    model.train()
    num_layers = len(find_decoder_layers(model))
    layers = default_focus_layers(num_layers)
    ids, mask, pos = _batch()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    weights = torch.randn(3, len(layers), 4, 10, generator=torch.Generator().manual_seed(2))

    def grads(rows):  # rows sum to 1, so weight them to get a non-trivial loss
        return torch.autograd.grad((rows * weights).sum(), params, allow_unused=True)

    torch.manual_seed(123)
    with AnswerAttentionProbe(model, layers, mask) as probe:
        model(input_ids=ids, attention_mask=mask, position_ids=pos)
        probe_grads = grads(probe.answer_attention())

    model.get_base_model().set_attn_implementation("eager")  # same weights, eager path
    torch.manual_seed(123)
    eager_grads = grads(eager_answer_attention(model, ids, mask, pos, layers))
    model.get_base_model().set_attn_implementation("sdpa")

    for layer in layers:
        for proj in ("q_proj", "k_proj"):
            for ab in ("lora_A", "lora_B"):
                key = f"layers.{layer}.self_attn.{proj}.{ab}."
                hits = [i for i, (n, _) in enumerate(named) if key in n]
                assert hits, key
                g = probe_grads[hits[0]]
                assert g is not None and g.abs().max() > 1e-4, key
    for (name, _), a, b in zip(named, probe_grads, eager_grads):
        assert (a is None) == (b is None), name
        if a is not None:
            _assert_grads_close(a, b, name)
    # The last chosen layer's v/o adapters cannot influence its own attention row.
    last = f"layers.{num_layers - 1}.self_attn.v_proj.lora_A."
    assert all(g is None for (n, _), g in zip(named, probe_grads) if last in n)


def test_gradient_checkpointing_gives_same_rows_and_grads():
    model = _lora("llama")
    model.train()
    layers = [1, 2]
    ids, mask, pos = _batch()
    params = [p for p in model.parameters() if p.requires_grad]

    def run():
        with AnswerAttentionProbe(model, layers, mask) as probe:
            model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
            rows = probe.answer_attention()
            grads = torch.autograd.grad(rows[..., 3].sum() - rows[..., 9].sum(), params, allow_unused=True)
        return rows.detach(), grads

    rows_plain, grads_plain = run()
    model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    rows_ckpt, grads_ckpt = run()
    torch.testing.assert_close(rows_ckpt, rows_plain, atol=ATOL, rtol=0)
    for a, b in zip(grads_ckpt, grads_plain):
        assert (a is None) == (b is None)
        if a is not None:
            _assert_grads_close(a, b, "checkpointed")


def test_sdpa_output_attentions_is_silently_empty_and_eager_path_raises():
    model = _model("llama", "sdpa")
    ids, mask, pos = _batch()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_attentions=True)
    assert not out.attentions  # the silent failure this guards against
    with pytest.raises(ValueError, match='attn_implementation="eager"'):
        with torch.no_grad():
            eager_answer_attention(model, ids, mask, pos, [2])


def test_hooks_removed_on_exit_and_on_exception():
    model = _lora("gemma3")
    before = _all_hooks(model)
    ids, mask, pos = _batch()
    with AnswerAttentionProbe(model, [1, 3], mask) as probe:
        assert _all_hooks(model) > before
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, position_ids=pos)
    assert _all_hooks(model) == before
    assert probe.answer_attention().shape == (3, 2, 4, 10)  # captures outlive the block

    with pytest.raises(RuntimeError, match="boom"):
        with AnswerAttentionProbe(model, [1, 3], mask):
            raise RuntimeError("boom")
    assert _all_hooks(model) == before


def test_latest_forward_wins_and_mask_taken_from_model_call():
    model = _model("qwen2")
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    ids, mask, pos = _batch(seed=1)
    ids2, _, _ = _batch(seed=5)
    with torch.no_grad(), AnswerAttentionProbe(model, [0, 2]) as probe:  # no mask given
        model(input_ids=ids, attention_mask=mask, position_ids=pos)
        model(input_ids=ids2, attention_mask=mask, position_ids=pos)
        rows = probe.answer_attention()
        ref = eager_answer_attention(eager, ids2, mask, pos, [0, 2])
    torch.testing.assert_close(rows, ref, atol=ATOL, rtol=0)
    assert torch.count_nonzero(rows[0, :, :, 7]) == 0  # the hidden token, from the model's mask


def test_mismatched_or_misplaced_masks_raise():
    model = _model("llama")
    ids, mask, pos = _batch()
    other = mask.clone()
    other[2, 8] = 0
    with torch.no_grad(), AnswerAttentionProbe(model, [2], other) as probe:
        model(input_ids=ids, attention_mask=mask, position_ids=pos)
        with pytest.raises(ValueError, match="differs"):
            probe.answer_attention()
    right_padded = mask.flip(-1)
    with pytest.raises(ValueError, match="pad on the left"):
        AnswerAttentionProbe(model, [2], right_padded)
    with pytest.raises(RuntimeError, match="nothing captured"):
        AnswerAttentionProbe(model, [2], mask).answer_attention()
    with pytest.raises(ValueError, match="out of range"):
        AnswerAttentionProbe(model, [3], mask)


def test_default_focus_layers():
    assert default_focus_layers(30) == list(range(20, 30))
    assert default_focus_layers(1) == [0]
    assert default_focus_layers(2) == [1]
    assert default_focus_layers(6) == [4, 5]
    assert default_focus_layers(4, fraction=0.5) == [2, 3]
    assert default_focus_layers(5, fraction=1.0) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        default_focus_layers(0)
    with pytest.raises(ValueError):
        default_focus_layers(4, fraction=0.0)


def test_find_decoder_layers_plain_and_peft():
    plain = _model("gemma3")
    assert find_decoder_layers(plain) is plain.model.layers
    wrapped = _lora("llama")
    assert find_decoder_layers(wrapped) is wrapped.get_base_model().model.layers
    with pytest.raises(ValueError, match="decoder layers"):
        find_decoder_layers(torch.nn.Linear(2, 2))
