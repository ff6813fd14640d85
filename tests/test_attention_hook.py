"""The one attention hook (afa_llm.attention.hook) on tiny random Llama / Qwen3 / Gemma3 models.

- no edit: logits bit-identical to plain SDPA (left-padded and unpadded, under peft too);
- an identity edit recomputed eagerly (every row and head) matches SDPA to 1e-5: this
  checks the visible-key mask (padding, causality, Gemma3's sliding window), GQA and the
  scaling (Gemma3's query_pre_attn_scalar);
- a huge perturbation on a padded key changes nothing (added before masking);
- causality holds with the hook on (the mask function is registered);
- dL/dr matches central finite differences (float64 for the recomputed slice);
- the implementation is restored on exit.
"""

from __future__ import annotations

import pytest
import torch
from test_attention_probe import _batch, _model

from afa_llm.attention.hook import (EDITS_KWARG, HOOK_NAME, AttentionEdit, ScorePerturbation, attention_hook,
                                    set_module_edits)

ARCHS = ["llama", "qwen3", "gemma3"]


def _logits(model, ids, mask, pos, **kwargs):
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **kwargs).logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("padded", [True, False])
def test_no_edit_is_bit_identical_to_sdpa(arch, padded):
    model = _model(arch)
    ids, mask, pos = _batch()
    if not padded:  # no padding: sdpa_mask returns None and SDPA's causal shortcut runs
        mask, pos = torch.ones_like(mask), torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        plain = _logits(model, ids, mask, pos)
        with attention_hook(model):
            assert model.config._attn_implementation == HOOK_NAME
            hooked = _logits(model, ids, mask, pos)
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(plain, hooked)


def test_no_edit_is_bit_identical_under_peft():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))
    ids, mask, pos = _batch()
    with torch.no_grad():
        plain = _logits(model, ids, mask, pos)
        with attention_hook(model):
            assert torch.equal(plain, _logits(model, ids, mask, pos))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("rows", ["last", "all"])
def test_identity_edit_recomputed_eagerly_matches_sdpa(arch, rows):
    model = _model(arch)
    ids, mask, pos = _batch()
    layers = range(model.config.num_hidden_layers)
    with torch.no_grad():
        plain = _logits(model, ids, mask, pos)
        with attention_hook(model):
            edited = _logits(model, ids, mask, pos, **{EDITS_KWARG: {i: AttentionEdit(rows=rows) for i in layers}})
    keep = mask.bool()  # hidden/padded query rows may differ (SDPA gives them uniform garbage)
    torch.testing.assert_close(edited[keep], plain[keep], atol=1e-5, rtol=1e-5)


def test_a_head_subset_leaves_the_other_heads_alone():
    model = _model("llama")
    ids, mask, pos = _batch()

    class Zero(AttentionEdit):
        def probs(self, probs, visible):
            return torch.zeros_like(probs)

    captured = {}
    attn = model.model.layers[1].self_attn
    attn.o_proj.register_forward_hook(lambda m, args, out: captured.setdefault(len(captured), args[0]))
    with torch.no_grad():
        _logits(model, ids, mask, pos)
        with attention_hook(model):
            set_module_edits(model, {1: Zero(rows="all", heads=[2])})
            _logits(model, ids, mask, pos)
            set_module_edits(model, None)
    before, after = (captured[i].view(*captured[i].shape[:2], 4, -1) for i in (0, 1))
    assert torch.equal(after[:, :, [0, 1, 3]], before[:, :, [0, 1, 3]])
    assert after[:, :, 2].abs().max() == 0 and before[:, :, 2].abs().max() > 0
    assert not hasattr(attn, "_afa_llm_attention_edit")


def test_a_perturbation_cannot_unmask_a_padded_key():
    model = _model("llama")
    ids, mask, pos = _batch()
    r = torch.zeros(3, 4, ids.shape[1])
    r[2, :, :6] = 1e6  # row 2 is padded on its first 6 keys
    r[0, :, 7] = 1e6  # and row 0 hides key 7
    with torch.no_grad():
        plain = _logits(model, ids, mask, pos)
        with attention_hook(model):
            edited = _logits(model, ids, mask, pos, **{EDITS_KWARG: {i: ScorePerturbation(r=r) for i in range(3)}})
    torch.testing.assert_close(edited, plain, atol=1e-5, rtol=1e-5)


def test_causality_holds_with_the_hook_on():
    model = _model("llama")
    ids = torch.randint(0, 128, (1, 8), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 128
    mask = torch.ones_like(ids)
    mask[0, 0] = 0  # padding, so that a real 4D mask (not SDPA's causal shortcut) is used
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    edits = {EDITS_KWARG: {1: AttentionEdit(rows="all")}}
    with torch.no_grad(), attention_hook(model):
        a, b = _logits(model, ids, mask, pos, **edits), _logits(model, changed, mask, pos, **edits)
    torch.testing.assert_close(a[0, :-1], b[0, :-1], atol=0, rtol=0)
    assert not torch.equal(a[0, -1], b[0, -1])


def test_score_gradient_matches_finite_differences():
    model = _model("gemma3").double()
    ids, mask, pos = _batch()
    r = torch.zeros(3, 4, ids.shape[1], dtype=torch.float64, requires_grad=True)

    def loss_of(r_value):
        with attention_hook(model):
            edits = {EDITS_KWARG: {1: ScorePerturbation(r=r_value)}}
            return _logits(model, ids, mask, pos, **edits)[:, -1].double().logsumexp(-1).sum()

    (grad,) = torch.autograd.grad(loss_of(r), r)
    assert grad[2, :, :6].abs().max() == 0 and grad[0, :, 7].abs().max() == 0  # padded / hidden keys
    torch.testing.assert_close(grad.sum(-1), torch.zeros(3, 4, dtype=torch.float64), atol=1e-9, rtol=0)
    # the models' RMSNorm computes in float32 even for a float64 model, so the step is 1e-3
    for b, h, k in [(0, 0, 9), (1, 3, 4), (2, 1, 8)]:
        step = torch.zeros_like(r)
        step[b, h, k] = 1e-3
        with torch.no_grad():
            fd = (loss_of(r + step) - loss_of(r - step)) / 2e-3
        assert abs(fd.item() - grad[b, h, k].item()) < 1e-4 + 0.03 * abs(grad[b, h, k].item())  # O(h^2) error


def test_recomputed_slice_gradient_matches_finite_differences_in_float64():
    import types

    from afa_llm.attention.hook import recompute_slice

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 5, 8, dtype=torch.float64, generator=gen) for n in (4, 2, 2))
    r = torch.zeros(2, 4, 5, dtype=torch.float64, requires_grad=True)

    def f(r_value):
        return recompute_slice(types.SimpleNamespace(), q, k, v, None, None, ScorePerturbation(r=r_value))[0].pow(2).sum()

    (grad,) = torch.autograd.grad(f(r), r)
    for idx in [(0, 1, 3), (1, 2, 0), (1, 3, 4)]:
        step = torch.zeros_like(r)
        step[idx] = 1e-6
        assert abs((f(r + step) - f(r - step)).item() / 2e-6 - grad[idx].item()) < 1e-8
