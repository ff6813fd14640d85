"""Attention AT / VAT / RP (afa_llm.methods.adversarial) and their math, on tiny models.

Math, no model: valid entries (padding, causality, exclusions), the norms, centring,
random directions that do not depend on batch make-up or padding, epsilon as RMS.
Methods, tiny Llama + LoRA: epsilon = 0 gives plain LoRA's loss and gradients (VAT) or
(1 + lambda) times them (AT); the adversarial direction beats a random one of the same
norm; the power iteration leaves no parameter gradient and only LoRA weights get any;
the perturbed pass that starts at the lowest perturbed layer gives the gradients of a full
forward; gradient checkpointing on and off agree; per-example r does not depend on the
batch make-up.
"""

from __future__ import annotations

import contextlib
import types

import pytest
import torch
from conftest import TINY_ROWS

from afa_llm.attention.hook import attention_hook
from afa_llm.config import load_config
from afa_llm.attention.clean_pass import clean_pass
from afa_llm.methods import adversarial_math as adv
from afa_llm.model.task import PromptTask

MASK = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])


# ---- math -------------------------------------------------------------------------------
def test_valid_entries_answer_row_and_exclusions():
    assert adv.valid_entries(MASK, "answer")[:, 0].tolist() == MASK.bool().tolist()
    v = adv.valid_entries(MASK, "answer", ["first_token", "answer_token"])[:, 0]
    assert v.tolist() == [[False, False, False, True, False], [False, True, True, True, False]]
    with pytest.raises(ValueError, match="unknown exclusion"):
        adv.valid_entries(MASK, "answer", ["sink"])


def test_valid_entries_all_rows_are_causal_and_real():
    v = adv.valid_entries(MASK, "all")[:, 0]  # (B, L, L)
    assert not v[0, :2].any() and not v[0, :, :2].any()  # padded queries and keys
    assert v[1].tolist() == torch.tril(torch.ones(5, 5, dtype=torch.bool)).tolist()
    v = adv.valid_entries(MASK, "all", ["answer_token", "first_token"])[:, 0]
    assert not v[1].diagonal().any() and not v[1, :, 0].any() and not v[0, :, 2].any()


def test_normalise_gives_eps_per_example_and_per_row():
    valid = adv.valid_entries(MASK, "answer")
    d = [torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    r = adv.normalise(d, valid, 2.5, "example")
    norm = sum(t.pow(2).flatten(1).sum(1) for t in r).sqrt()
    torch.testing.assert_close(norm, torch.full((2,), 2.5))
    assert all((t[0, :, :2] == 0).all() for t in r)  # nothing on padded keys
    rows = adv.normalise(d, valid, 0.5, "row")
    torch.testing.assert_close(rows[1].pow(2).sum(-1).sqrt(), torch.full((2, 3), 0.5))
    assert adv.normalise([torch.zeros(2, 3, 5)], valid, 1.0)[0].abs().max() == 0  # no NaN from 0/0


def test_centre_rows_and_random_directions_are_centred():
    valid = adv.valid_entries(MASK, "answer", ["first_token"])
    d = adv.random_directions([(2, 3, 5)], valid, torch.tensor([3, 5]), [11, 12])[0]
    torch.testing.assert_close(d.sum(-1), torch.zeros(2, 3), atol=1e-6, rtol=0)
    assert (d * ~valid).abs().max() == 0


@pytest.mark.parametrize("rows", ["answer", "all"])
def test_random_directions_do_not_depend_on_batch_or_padding(rows):
    alone = torch.ones(1, 3, dtype=torch.long)
    padded = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    row = (3,) if rows == "answer" else (3, 3)
    wide = (5,) if rows == "answer" else (5, 5)
    a = adv.random_directions([(1, 2, *row)], adv.valid_entries(alone, rows), torch.tensor([3]), [7])[0]
    b = adv.random_directions([(2, 2, *wide)], adv.valid_entries(padded, rows), torch.tensor([3, 5]), [7, 8])[0]
    inner = b[0, ..., -3:] if rows == "answer" else b[0, ..., -3:, -3:]
    torch.testing.assert_close(inner, a[0])


def test_keep_where_vanished():
    new = [torch.tensor([[1.0, 2.0], [0.0, 0.0]])]
    old = [torch.tensor([[5.0, 5.0], [3.0, 4.0]])]
    assert adv.keep_where_vanished(new, old)[0].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_eps_rms_and_key_share():
    valid = adv.valid_entries(MASK, "answer")  # 3 and 5 valid keys
    torch.testing.assert_close(adv.eps_rms(3.0, valid, 2, 4, "example"),
                               torch.tensor([3 / (3 * 8) ** 0.5, 3 / (5 * 8) ** 0.5]))
    r = [torch.tensor([[[0.0, 0.0, 3.0, 4.0, 0.0]]])]
    first = torch.tensor([[False, False, True, False, False]])
    torch.testing.assert_close(adv.key_share(r, first), torch.tensor([9 / 25]))


# ---- the methods on a tiny model -------------------------------------------------------------
B = 4


def _cfg(*overrides: str):
    return load_config(None, ["quantization=none", "max_text_tokens=32", f"batch_size={B}", "focus_layers=[1]",
                              *overrides])


@pytest.fixture(scope="module")
def task(tiny_model):
    return PromptTask([" negative", " positive"], max_text_tokens=32).bind(tiny_model[1])


@pytest.fixture(scope="module")
def batch(task):
    rows = TINY_ROWS[:2] + TINY_ROWS[-2:]
    return task.encode([t for t, _ in rows], [y for _, y in rows])


def _peft(tiny_model_dir, *overrides):
    from afa_llm.training.setup import build_model

    model, _ = build_model(_cfg(f"model={tiny_model_dir}", *overrides), types.SimpleNamespace(device="cpu"))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    return model.train()


@pytest.fixture(scope="module")
def peft_model(tiny_model_dir):
    return _peft(tiny_model_dir)


def _step(model, task, batch, *overrides, backward=True):
    """One training step's loss, metrics and LoRA gradients, as the trainer runs it."""
    from afa_llm.training.setup import make_method

    cfg = _cfg(*overrides)
    method = make_method(cfg, model, task, torch.Generator().manual_seed(0))
    model.zero_grad(set_to_none=True)
    with attention_hook(model) if method.edits_attention else contextlib.nullcontext():
        clean = clean_pass(model, batch, task.label_token_ids, cfg.focus_layers, **method.forward_kwargs(batch))
        loss, metrics = method.loss(model, batch, clean, 0)
        if backward:
            loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss, metrics, grads


def _close(a: dict, b: dict, scale: float = 1.0, tol: float = 1e-6):
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], scale * b[name], atol=tol, rtol=1e-5)


def test_eps_zero_equals_plain_lora(peft_model, task, batch):
    loss, _, lora = _step(peft_model, task, batch, "method=lora")
    vat_loss, metrics, vat = _step(peft_model, task, batch, "method=vat", "adv_eps=0")
    assert vat_loss.item() == pytest.approx(loss.item(), abs=1e-7) and metrics["adv_kl"] == pytest.approx(0, abs=1e-7)
    _close(vat, lora)
    at_loss, _, at = _step(peft_model, task, batch, "method=at", "adv_eps=0", "adv_lambda=0.5")
    assert at_loss.item() == pytest.approx(1.5 * loss.item(), rel=1e-6)
    _close(at, lora, scale=1.5)


def test_only_lora_weights_get_gradients(peft_model, task, batch):
    _, _, grads = _step(peft_model, task, batch, "method=vat", "adv_eps=1")
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert set(grads) == trainable and all("lora_" in n for n in grads)


def test_power_iteration_leaves_no_parameter_gradients(peft_model, task, batch):
    from afa_llm.training.setup import make_method

    cfg = _cfg("method=vat", "adv_power_iters=2")
    method = make_method(cfg, peft_model, task, torch.Generator().manual_seed(0))
    peft_model.zero_grad(set_to_none=True)
    with attention_hook(peft_model):
        clean = clean_pass(peft_model, batch, task.label_token_ids, cfg.focus_layers)
        valid = adv.valid_entries(batch.attention_mask, "answer")
        direction = method.direction(peft_model, batch, clean, None, valid, 0)
    assert all(p.grad is None for p in peft_model.parameters())
    assert sum(d.abs().sum() for d in direction) > 0


@pytest.mark.parametrize("method", ["at", "vat"])
def test_adversarial_beats_random_at_the_same_norm(peft_model, task, batch, method):
    _, metrics, _ = _step(peft_model, task, batch, f"method={method}", "adv_eps=3", backward=False)
    assert metrics["adv_kl"] > 3 * metrics["adv_random_kl"]
    assert metrics["adv_norm"] == pytest.approx(3.0, rel=1e-4)
    if method == "at":
        assert metrics["adv_ce"] > metrics["loss_cls"]
        _, iat, _ = _step(peft_model, task, batch, "method=iat", "adv_eps=3", backward=False)
        assert iat["adv_ce"] < iat["loss_cls"]  # the released iAT: a loss-decreasing direction


@pytest.mark.parametrize("method", ["at", "vat", "attn_rp"])
def test_starting_at_the_lowest_layer_gives_full_forward_gradients(peft_model, task, batch, method, monkeypatch):
    import afa_llm.methods.adversarial as module

    ref = _step(peft_model, task, batch, f"method={method}", "adv_eps=2", "adv_layers=[1]")
    monkeypatch.setattr(module, "start_at_layer", lambda *a, **k: contextlib.nullcontext())  # a full forward instead
    full = _step(peft_model, task, batch, f"method={method}", "adv_eps=2", "adv_layers=[1]")
    assert ref[0].item() == pytest.approx(full[0].item(), rel=1e-6)
    _close(ref[2], full[2])


def test_gradient_checkpointing_on_and_off_agree(tiny_model_dir, task, batch):
    plain = _step(_peft(tiny_model_dir), task, batch, "method=vat", "adv_eps=2")
    checkpointed = _step(_peft(tiny_model_dir, "gradient_checkpointing=true"), task, batch, "method=vat", "adv_eps=2")
    assert plain[0].item() == pytest.approx(checkpointed[0].item(), rel=1e-6)
    _close(plain[2], checkpointed[2], tol=1e-5)


@pytest.mark.parametrize("method", ["at", "vat"])
def test_per_example_perturbation_does_not_depend_on_the_batch(peft_model, task, method):
    from afa_llm.training.setup import make_method

    cfg = _cfg(f"method={method}", "adv_eps=1")
    texts = [TINY_ROWS[0][0], TINY_ROWS[-1][0]]  # different lengths: the first gets padded with the second
    outs = []
    for rows in ([texts[0]], texts):
        b = task.encode(rows, [1] * len(rows))
        method = make_method(cfg, peft_model, task, torch.Generator().manual_seed(0))
        with attention_hook(peft_model):
            clean = clean_pass(peft_model, b, task.label_token_ids, cfg.focus_layers, **method.forward_kwargs(b))
            valid = adv.valid_entries(b.attention_mask, "answer")
            loss = torch.nn.functional.cross_entropy(clean.class_logits, b.labels)
            r = adv.normalise(method.direction(peft_model, b, clean, loss, valid, 0), valid, 1.0)
        n = int(b.attention_mask[0].sum())
        outs.append(torch.stack([t[0, :, -n:].detach() for t in r]))
    # VAT's direction is a finite-difference power step, which amplifies the rounding that padding and
    # 2-thread matmul blocking bring (seen: 4e-4 after test_act*.py in one 2-thread process). Mixing the
    # examples' norms, the bug this guards against, rescales an example's entries by its share of the
    # batch norm (about 0.7 for two like examples), far beyond 2e-3.
    tol = 1e-5 if cfg.method == "at" else 2e-3
    torch.testing.assert_close(outs[0], outs[1], atol=tol, rtol=1e-4 if cfg.method == "at" else 1e-2)
