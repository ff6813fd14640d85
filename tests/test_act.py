"""ACT (afa_llm.act.calibration): the calibration math without a model, then on tiny random Llama / Qwen3 /
Gemma3 models (tests/test_attention_probe.py's `_model`; initializer_range=0.2 makes attention
peaked, so sinks above tau exist), the config file, the fingerprint and `eval --act`.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_attention_probe import VOCAB, _model

from afa_llm.act.calibration import (ACTConfig, ACTEdit, act_enabled, act_probs, calibrate_rows, check_fingerprint,
                         default_eligible_layers, find_sinks, load_act, merged_copy, model_fingerprint,
                         real_queries, save_act, sink_scores)
from afa_llm.attention.hook import attention_hook, set_module_edits
from afa_llm.errors import UserError

ARCHS = ["llama", "qwen3", "gemma3"]
TAU = 0.1


# ------------------------------------------------------------------------------ the math
def _causal_map(batch=2, heads=3, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, n, n, generator=g) * 3
    visible = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    return torch.softmax(scores.masked_fill(~visible, float("-inf")), -1), visible


def test_sink_score_is_the_mean_over_the_queries_that_see_the_key():
    probs, visible = _causal_map()
    n = probs.shape[-1]
    expected = probs.sum(-2) / (n - torch.arange(n))  # the authors' sum_i A[i, j] / (N - j)
    torch.testing.assert_close(sink_scores(probs, visible), expected)


def test_pad_queries_are_excluded_from_the_scores():
    """Right padding: pad queries 5 and 6 see the real keys 0..4 but not their own key."""
    probs, visible = _causal_map(batch=1)
    visible = visible.clone()
    visible[..., 5:] = False  # pad keys
    probs = torch.softmax(torch.randn(probs.shape).masked_fill(~visible, float("-inf")), -1)
    assert real_queries(visible)[..., :5].all() and not real_queries(visible)[..., 5:].any()
    expected = probs[..., :5, :5].sum(-2) / (5 - torch.arange(5))  # the unpadded 5-token example
    torch.testing.assert_close(sink_scores(probs, visible)[..., :5], expected)
    assert sink_scores(probs, visible)[..., 5:].abs().max() == 0


def test_the_lowest_index_sink_is_spared():
    scores = torch.tensor([[0.05, 0.3, 0.02, 0.2, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0], [0.9, 0.0, 0.0, 0.0, 0.0]])
    assert find_sinks(scores, TAU).tolist() == [[False, False, False, True, True], [False] * 5, [False] * 5]


def test_closed_form_equals_scale_and_proportional_redistribution():
    probs, visible = _causal_map(seed=3)
    beta = 0.4
    sinks = find_sinks(sink_scores(probs, visible), TAU)
    out = calibrate_rows(probs, sinks, real_queries(visible), beta)
    # the oracle: scale the sinks, hand the removed mass to the other keys by their weights
    s = sinks[..., None, :].expand_as(probs)
    removed = ((1 - beta) * probs * s).sum(-1, keepdim=True)
    rest = (probs * ~s).sum(-1, keepdim=True)
    oracle = torch.where(s, beta * probs, probs + removed * probs / rest)
    oracle = torch.where(rest > 1e-6, oracle, probs)
    assert sinks.any()
    torch.testing.assert_close(out, oracle, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.sum(-1), torch.ones_like(out.sum(-1)), atol=2e-6, rtol=0)


def test_a_degenerate_row_is_left_unchanged_not_nan():
    probs = torch.tensor([[[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5]]]])
    sinks = torch.tensor([[[False, True, True]]])  # row 1 and row 2 have all their mass on sinks
    out = calibrate_rows(probs, sinks, torch.ones(1, 1, 3, dtype=torch.bool), 0.4)
    assert not out.isnan().any()
    assert torch.equal(out[..., 1:, :], probs[..., 1:, :])
    assert torch.equal(out[..., 0, :], probs[..., 0, :])  # no sink mass: nothing to move


def test_beta_one_changes_nothing_and_beta_zero_removes_the_sinks():
    probs, visible = _causal_map(seed=5)
    torch.testing.assert_close(act_probs(probs, visible, 1.0, TAU), probs, atol=1e-7, rtol=0)
    sinks = find_sinks(sink_scores(probs, visible), TAU)[..., None, :].expand_as(probs)
    zeroed = act_probs(probs, visible, 0.0, TAU)
    assert sinks.any() and zeroed[sinks & visible.expand_as(probs)].abs().max() == 0


def test_eligible_layers_follow_the_authors():
    assert default_eligible_layers(32) == list(range(2, 31))
    assert len(default_eligible_layers(30)) * 9 == 243  # SmolLM2-135M's candidates


# ---------------------------------------------------------------------------- on models
def _batch(lengths=(10, 7, 4), seed=1):
    """Left-padded, no hidden tokens: real prompts of the given lengths."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    ids = torch.randint(0, VOCAB, (len(lengths), width), generator=g)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _logits(model, ids, mask, pos):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits


def _act(model, heads, beta=0.4, tau=TAU) -> ACTConfig:
    return ACTConfig(heads=heads, beta=beta, tau=tau, fingerprint=model_fingerprint(model))


def _every_head(model):
    return {layer: list(range(model.config.num_attention_heads)) for layer in range(model.config.num_hidden_layers)}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("padded", [True, False])
def test_zero_heads_is_bit_identical(arch, padded):
    model = _model(arch)
    ids, mask, pos = _batch() if padded else _batch(lengths=(10, 10, 10))
    plain = _logits(model, ids, mask, pos)
    for heads in ({}, {1: []}):
        with act_enabled(model, _act(model, heads)):
            assert torch.equal(_logits(model, ids, mask, pos), plain)
    with act_enabled(model, _act(model, {1: [0]})):  # while one head does change them
        assert not torch.equal(_logits(model, ids, mask, pos), plain)
    assert model.config._attn_implementation == "sdpa"


def test_zero_heads_is_bit_identical_under_peft():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_model("llama"), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))
    ids, mask, pos = _batch()
    plain = _logits(model, ids, mask, pos)
    with act_enabled(model, _act(model, {})):
        assert torch.equal(_logits(model, ids, mask, pos), plain)
    with act_enabled(model, _act(model, {2: [1, 3]})):
        assert not torch.equal(_logits(model, ids, mask, pos), plain)


@pytest.mark.parametrize("arch", ARCHS)
def test_beta_one_equals_eager_attention(arch):
    model = _model(arch)
    eager = _model(arch, "eager")
    ids, mask, pos = _batch()
    with act_enabled(model, _act(model, _every_head(model), beta=1.0)):
        calibrated = _logits(model, ids, mask, pos)
    real = mask.bool()
    torch.testing.assert_close(calibrated[real], _logits(eager, ids, mask, pos)[real], atol=1e-5, rtol=1e-5)


class _Recording(ACTEdit):
    """ACTEdit that keeps what it got and what it gave."""

    def probs(self, probs, visible):
        out = super().probs(probs, visible)
        self.seen = (probs, visible, out)
        return out


@pytest.mark.parametrize("arch", ARCHS)
def test_sinks_scaled_by_exactly_beta_rows_sum_to_one_lowest_spared(arch):
    model = _model(arch)
    ids, mask, pos = _batch()
    edit = _Recording(heads=[0, 2], beta=0.4, tau=TAU)
    with torch.no_grad(), attention_hook(model):
        set_module_edits(model, {1: edit})
        model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        set_module_edits(model, None)
    before, visible, after = edit.seen
    above = sink_scores(before, visible) > TAU  # (B, h, K), computed here from the definition
    real = real_queries(visible).expand(before.shape[:-1])  # (B, h, Q)
    first = above.float().argmax(-1)
    spared = torch.zeros_like(above).scatter(-1, first[..., None], True) & above
    scaled = (above & ~spared)[..., None, :].expand_as(before) & real[..., None]
    assert scaled.any() and spared.any()
    moved = real[..., None] & ((before * scaled).sum(-1, keepdim=True) < 1 - 1e-6)  # non-degenerate rows
    mask_scaled = scaled & moved
    assert torch.equal(after[mask_scaled], before[mask_scaled] * 0.4)
    keep_spared = spared[..., None, :].expand_as(before) & moved & (before > 0)
    assert (after[keep_spared] >= before[keep_spared]).all()  # the spared sink gains mass
    sums = after.sum(-1)[real]
    torch.testing.assert_close(sums, torch.ones_like(sums), atol=2e-6, rtol=0)


def _head_outputs(model, edited_forward) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 1's per-head attention outputs (B, Q, heads, D): plain, then under ``edited_forward()``."""
    captured = []
    handle = model.model.layers[1].self_attn.o_proj.register_forward_hook(
        lambda m, args, out: captured.append(args[0]))
    _logits(model, *_batch())
    edited_forward()
    handle.remove()
    return tuple(c.view(*c.shape[:2], 4, -1) for c in captured)


def test_other_heads_are_untouched():
    model = _model("llama")

    def edited():
        with act_enabled(model, _act(model, {1: [2]})):
            _logits(model, *_batch())

    before, after = _head_outputs(model, edited)
    assert torch.equal(after[:, :, [0, 1, 3]], before[:, :, [0, 1, 3]])
    assert not torch.equal(after[:, :, 2], before[:, :, 2])


def test_rows_without_a_sink_keep_the_sdpa_output_bit_for_bit():
    # what lets the head search skip the examples a candidate leaves unchanged (afa_llm.act.head_search)
    model = _model("llama")
    edit = _Recording(heads=[2], beta=0.4, tau=TAU)

    def edited():
        with torch.no_grad(), attention_hook(model):
            set_module_edits(model, {1: edit})
            _logits(model, *_batch())
            set_module_edits(model, None)

    plain, calibrated = (out[:, :, 2] for out in _head_outputs(model, edited))  # (B, Q, D)
    before, _, after = edit.seen
    changed = (after != before).any(-1)[:, 0]  # (B, Q): the rows ACT moved in head 2
    assert changed.any() and (~changed).any()
    assert torch.equal(calibrated[~changed], plain[~changed])
    assert not torch.equal(calibrated[changed], plain[changed])


@pytest.mark.parametrize("arch", ARCHS)
def test_a_left_padded_row_equals_the_unpadded_example(arch):
    model = _model(arch)
    ids, mask, pos = _batch()
    with act_enabled(model, _act(model, _every_head(model))):
        batched = _logits(model, ids, mask, pos)
        for row, n in enumerate(mask.sum(-1).tolist()):
            alone = _logits(model, ids[row:row + 1, -n:], mask[row:row + 1, -n:], pos[row:row + 1, -n:])
            torch.testing.assert_close(batched[row, -n:], alone[0], atol=2e-5, rtol=1e-5)


def test_causality_holds_with_act_on():
    """The calibrated maps never look ahead, and with no sinks a future token changes no earlier
    logit (the mask reaches the recomputed heads). With sinks it may: a key's sink score averages
    the rows of every later query (the authors' definition), so ACT is not causal across rows;
    one-pass classification reads only the last position, where that is harmless."""
    model = _model("llama")
    ids, mask, pos = _batch(lengths=(8, 6))
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % VOCAB
    edit = _Recording(heads=[0, 1, 2, 3], tau=TAU)
    with torch.no_grad(), attention_hook(model):
        set_module_edits(model, {1: edit})
        model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        set_module_edits(model, None)
    _, visible, after = edit.seen
    assert after[~visible.expand_as(after)].abs().max() == 0
    results = {}
    for tau in (1.1, TAU):  # tau above 1: no key is a sink
        with act_enabled(model, _act(model, _every_head(model), tau=tau)):
            results[tau] = _logits(model, ids, mask, pos), _logits(model, changed, mask, pos)
    a, b = results[1.1]
    assert torch.equal(a[:, :-1], b[:, :-1]) and not torch.equal(a[:, -1], b[:, -1])
    a, b = results[TAU]
    assert not torch.equal(a[:, :-1], b[:, :-1])  # documents the non-causal sink scores


# ---------------------------------------------------------------------- file and fingerprint
def test_save_and_load_round_trip(tmp_path):
    model = _model("llama")
    config = _act(model, {2: [3, 1], 1: [0]})
    save_act(tmp_path / "act.json", config)
    loaded = load_act(tmp_path / "act.json")
    assert loaded.heads == {1: [0], 2: [1, 3]} and loaded.fingerprint == config.fingerprint
    assert loaded.n_heads == 3 and sorted(loaded.edits()) == [1, 2]


def test_missing_or_broken_act_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_act(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text(json.dumps({"heads": {}}))
    with pytest.raises(UserError, match="not a valid ACT file"):
        load_act(tmp_path / "bad.json")


def test_another_model_or_adapter_is_refused():
    from peft import LoraConfig, get_peft_model

    model = _model("llama")
    config = _act(model, {1: [0]})
    check_fingerprint(config, model)  # its own model passes
    other = _model("llama")
    with torch.no_grad():
        other.model.embed_tokens.weight.mul_(1.5)
    with pytest.raises(UserError, match="another model"):
        check_fingerprint(config, other)
    with pytest.raises(UserError, match="another model"):
        check_fingerprint(config, _model("qwen3"))
    peft = get_peft_model(_model("llama"), LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False))
    with pytest.raises(UserError, match="without an adapter"):
        check_fingerprint(config, peft)
    adapter_config = _act(peft, {1: [0]})
    with pytest.raises(UserError, match="another adapter"):
        check_fingerprint(adapter_config, model)
    merged = peft.merge_and_unload()
    with pytest.raises(UserError, match="another adapter"):
        check_fingerprint(adapter_config, merged)  # the run's own act.json does not fit the merge
    check_fingerprint(merged_copy(adapter_config, merged), merged)  # the merge's copy does
    with pytest.raises(UserError, match="another adapter"):
        check_fingerprint(merged_copy(adapter_config, merged), model)  # but not the bare base


def test_eval_act_errors_are_one_line_exit_2(tiny_model_dir, tiny_csv, tmp_path, capsys):
    from afa_llm.cli import main

    argv = ["eval", "--model", tiny_model_dir, "--data", tiny_csv, "--no-progress", "--limit", "4"]
    assert main(argv + ["--act", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ACT file not found") and "\n" not in err
    save_act(tmp_path / "act.json", _act(_model("llama"), {1: [0]}))
    assert main(argv + ["--act", str(tmp_path / "act.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "calibrated for another model" in err and "\n" not in err


def test_weights_sample_stays_inside_a_large_tensor():
    """A float linspace over SmolLM2's 28,311,552-element embedding rounded past its end."""
    from afa_llm.act.calibration import _sample_bytes

    big = torch.zeros(28311552)
    big[-1] = 7.0
    sample = torch.frombuffer(bytearray(_sample_bytes(big)), dtype=torch.float32)
    assert len(sample) == 64 and sample[-1] == 7.0 and sample[:-1].abs().max() == 0
