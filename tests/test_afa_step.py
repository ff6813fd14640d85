"""AFA's training step on the tiny random Llama: hiding tokens, the objective, its side effects.

- `hide_tokens` (attention mode) deletes the hidden tokens, keeping the original position
  ids, and scores what each example scores alone with those tokens deleted (to 1e-5);
- `AFAMethod` (method=afa): finite loss; the discriminator's own optimiser steps;
  the policy-gradient term reaches the q/k LoRA of the focus layers (and nothing when
  lambda_pg=0); surrogate mode measures only round(measure_frac * G) masks per example;
  every masked_ce mode adds its loss.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_ROWS

from afa_llm.attention import masking as mk
from afa_llm.methods import MethodContext, build_method
from afa_llm.attention.masking import hide_tokens, masked_scores
from afa_llm.config import load_config
from afa_llm.attention.clean_pass import clean_pass
from afa_llm.model.scoring import class_logits, forward_scores
from afa_llm.model.task import PromptTask

LABEL_WORDS = [" negative", " positive"]
B, G = 4, 4


def make_cfg(*overrides: str):
    afa = [f"afa.num_masks={G}", "afa.lambda_pg_warmup_steps=0", "afa.lambda_pg=1.0", "afa.median_window=64",
           "afa.discriminator_hidden=32", "afa.discriminator_lr=1e-2"]
    return load_config(None, ["method=afa", "quantization=none", "max_text_tokens=32", f"batch_size={B}", *afa,
                              *overrides])


@pytest.fixture(scope="module")
def task(tiny_model):
    return PromptTask(LABEL_WORDS, max_text_tokens=32).bind(tiny_model[1])


@pytest.fixture(scope="module")
def batch(task):
    rows = TINY_ROWS[:B]
    return task.encode([t for t, _ in rows], [y for _, y in rows])


@pytest.fixture(scope="module")
def peft_model(tiny_model_dir):
    """The trainer's own model builder: tiny Llama + masker LoRA, with random B matrices so
    that the adapter (and its A matrices' gradients) are not trivially zero."""
    from afa_llm.training.setup import build_model

    cfg = make_cfg(f"model={tiny_model_dir}")
    model, _ = build_model(cfg, types.SimpleNamespace(device=torch.device("cpu")))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    model.train()
    return model


def make_objective(cfg, task, hidden_size=64, seed=0):
    """The configured method (afa or lora) on the tiny model's shape, as the trainer builds it."""
    torch.manual_seed(seed)
    ctx = MethodContext(head=task.head, tokenizer=task.tokenizer, hidden_size=hidden_size,
                        num_layers=2, num_heads=4, focus_layers=[1], seed=seed,
                        generator=torch.Generator().manual_seed(seed))
    return build_method(cfg.method, cfg.method_config, ctx)


def lora_params(model, proj: str, layer: int):
    return {n: p for n, p in model.named_parameters()
            if p.requires_grad and f"layers.{layer}.self_attn.{proj}." in n and "lora_" in n}


# ---- hide_tokens -------------------------------------------------------------------------
def test_attention_hiding_equals_deleting_tokens(tiny_model, task, batch):
    model = tiny_model[0]
    gen = torch.Generator().manual_seed(0)
    k = mk.masks_per_example(batch.text_mask.sum(-1), 0.3)
    masks = mk.uniform_masks(batch.text_mask, k, 2, gen)
    hidden = hide_tokens(batch, masks, "attention", filler_id=0)
    kept = (batch.attention_mask.bool()[:, None] & ~masks).reshape(2 * B, -1)
    assert hidden.input_ids.shape == (2 * B, int(kept.sum(-1).max()))  # the hidden columns are gone
    assert hidden.input_ids.shape[1] < batch.input_ids.shape[1]
    for row in range(2 * B):  # each row: its kept ids and original positions, in order, left-padded
        n = int(kept[row].sum())
        assert torch.equal(hidden.input_ids[row, -n:], batch.input_ids[row // 2][kept[row]])
        assert torch.equal(hidden.position_ids[row, -n:], batch.position_ids[row // 2][kept[row]])
        assert hidden.attention_mask[row].sum() == n and hidden.attention_mask[row, -n:].all()
    with torch.no_grad():
        got = class_logits(model, hidden, task.label_token_ids).view(B, 2, -1)
        clean = class_logits(model, batch, task.label_token_ids)
        for i in range(B):
            for j in range(2):
                keep = (batch.attention_mask[i] == 1) & ~masks[i, j]
                ids, pos = batch.input_ids[i][keep][None], batch.position_ids[i][keep][None]
                deleted = forward_scores(model, ids, torch.ones_like(ids), pos, task.label_token_ids).class_logits[0]
                torch.testing.assert_close(got[i, j], deleted, atol=1e-5, rtol=0)
                # the check has teeth: hiding changes the logits far beyond the tolerance
                assert (clean[i] - deleted).abs().max() > 1e-3


def test_hidden_tokens_leave_text_mask(batch):
    masks = torch.zeros(B, 2, batch.input_ids.shape[1], dtype=torch.bool)
    first_text = batch.text_mask.float().argmax(-1)
    masks[torch.arange(B), 1, first_text] = True
    out = hide_tokens(batch, masks, "attention", filler_id=0)
    assert torch.equal(out.text_mask[0::2], batch.text_mask)  # mask 0 hides nothing
    assert (out.text_mask[1::2].sum(-1) == batch.text_mask.sum(-1) - 1).all()
    assert (out.attention_mask[1::2].sum(-1) == batch.attention_mask.sum(-1) - 1).all()


def test_filler_mode_replaces_ids(batch):
    gen = torch.Generator().manual_seed(3)
    k = mk.masks_per_example(batch.text_mask.sum(-1), 0.3)
    masks = mk.uniform_masks(batch.text_mask, k, 3, gen)
    filler = 7
    out = hide_tokens(batch, masks, "filler", filler_id=filler)
    flat = masks.reshape(-1, masks.shape[-1])
    expanded = batch.input_ids.repeat_interleave(3, 0)
    assert (out.input_ids[flat] == filler).all()
    assert torch.equal(out.input_ids[~flat], expanded[~flat])
    assert torch.equal(out.attention_mask, batch.attention_mask.repeat_interleave(3, 0))  # still attended
    assert torch.equal(out.position_ids, batch.position_ids.repeat_interleave(3, 0))
    assert not (out.text_mask & flat).any()
    # row b*G + g is example b under mask g
    assert (out.input_ids[3 * 2 + 1] == filler).sum() == masks[2, 1].sum()


def test_masked_scores_shapes(tiny_model, task, batch):
    masks = mk.uniform_masks(batch.text_mask, torch.ones(B, dtype=torch.long), 3, torch.Generator().manual_seed(0))
    logits, hidden = masked_scores(tiny_model[0], batch, masks, task.label_token_ids, "attention", 0, True)
    assert logits.shape == (B, 3, 2) and hidden.shape == (B, 3, 64)
    assert not logits.requires_grad


# ---- the methods' losses ----------------------------------------------------------------------
def run_objective(model, task, batch, cfg, step=5, objective=None):
    objective = objective or make_objective(cfg, task)
    model.zero_grad(set_to_none=True)
    clean = clean_pass(model, batch, task.label_token_ids, cfg.focus_layers)
    loss, metrics = objective.loss(model, batch, clean, step)
    return objective, clean, loss, metrics


@pytest.mark.parametrize("discriminator", ["pair", "surrogate"])
def test_afa_objective_loss_and_discriminator_update(peft_model, task, batch, discriminator):
    cfg = make_cfg(f"discriminator={discriminator}", "measure_frac=0.5")
    objective = make_objective(cfg, task)
    before = {n: p.detach().clone() for n, p in objective.disc.named_parameters()}
    _, _, loss, metrics = run_objective(peft_model, task, batch, cfg, objective=objective)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    for key in ("loss_cls", "loss_pg", "disc_loss", "disc_acc", "reward_mean", "effect_mean", "lambda_pg"):
        assert key in metrics and metrics[key] == metrics[key], key  # present, not NaN
    changed = [n for n, p in objective.disc.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)  # every discriminator parameter was stepped
    # the discriminator never sends gradients into the LLM, and the LLM loss none into it
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in peft_model.parameters() if p.requires_grad)
    objective.disc.zero_grad(set_to_none=True)
    loss.backward()
    assert all(p.grad is None for p in objective.disc.parameters())
    assert len(objective.median) > 0 and objective.state_dict()["median"]["values"]


def pg_grads(model, task, batch, cfg):
    """Gradients of (objective loss - L_cls) on every trainable LoRA parameter."""
    _, clean, loss, _ = run_objective(model, task, batch, cfg)
    params = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    total = torch.autograd.grad(loss, list(params.values()), retain_graph=True, allow_unused=True)
    cls = torch.autograd.grad(F.cross_entropy(clean.class_logits, batch.labels), list(params.values()),
                              allow_unused=True)
    zero = torch.tensor(0.0)
    return {n: ((t if t is not None else zero) - (c if c is not None else zero)).abs().max().item()
            for n, t, c in zip(params, total, cls)}


def test_policy_gradient_reaches_focus_layer_q_and_k(peft_model, task, batch):
    cfg = make_cfg("lambda_pg=1.0", "focus_layers=[1]")
    diff = pg_grads(peft_model, task, batch, cfg)
    for proj in ("q_proj", "k_proj"):
        names = lora_params(peft_model, proj, 1)
        assert names and all(diff[n] > 1e-7 for n in names), {n: diff[n] for n in names}
    # the focus of layer 1 is computed from its q and k: its v and o are out of the PG's reach
    for proj in ("v_proj", "o_proj"):
        assert all(diff[n] == 0 for n in lora_params(peft_model, proj, 1))


def test_no_policy_gradient_when_lambda_is_zero(peft_model, task, batch):
    cfg = make_cfg("lambda_pg=0.0")
    diff = pg_grads(peft_model, task, batch, cfg)
    assert max(diff.values()) == 0


def test_lambda_warmup_starts_at_zero(peft_model, task, batch):
    cfg = make_cfg("lambda_pg=1.0", "lambda_pg_warmup_steps=10")
    _, _, _, metrics = run_objective(peft_model, task, batch, cfg, step=0)
    assert metrics["lambda_pg"] == 0.0
    _, _, _, metrics = run_objective(peft_model, task, batch, cfg, step=5)
    assert metrics["lambda_pg"] == pytest.approx(0.5)


class RowCounter:
    """Counts the rows of every forward of the base model (clean and masked passes)."""

    def __init__(self, model):
        self.rows: list[int] = []
        self.handle = model.get_base_model().register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.rows.append(int(kwargs["input_ids"].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("discriminator, measure_frac, expected", [
    ("pair", 0.25, G),  # pair: every mask is measured
    ("surrogate", 0.25, 1),  # round(0.25 * 4) = 1
    ("surrogate", 0.5, 2),
    ("surrogate", 0.1, 1),  # at least one
])
def test_masked_passes_per_example(peft_model, task, batch, discriminator, measure_frac, expected):
    cfg = make_cfg(f"discriminator={discriminator}", f"measure_frac={measure_frac}")
    objective = make_objective(cfg, task)
    clean = clean_pass(peft_model, batch, task.label_token_ids, cfg.focus_layers)
    with RowCounter(peft_model) as counter:
        _, metrics = objective.loss(peft_model, batch, clean, 3)
    assert counter.rows == [B * expected]  # one batched no-grad forward of B * measured rows
    assert "disc_acc" in metrics


@pytest.mark.parametrize("method, mode", [("afa", "focus"), ("afa", "fake"), ("afa", "random"),
                                          ("lora", "random")])  # lora has no focus masks
def test_masked_ce_modes_add_their_loss(peft_model, task, batch, method, mode):
    cfg = make_cfg(f"method={method}", f"masked_ce={mode}", "masked_ce_weight=0.5", "afa.discriminator=pair")
    objective = make_objective(cfg, task)
    clean = clean_pass(peft_model, batch, task.label_token_ids, cfg.focus_layers)
    with RowCounter(peft_model) as counter:
        loss, metrics = objective.loss(peft_model, batch, clean, 3)
    assert "loss_masked_ce" in metrics and metrics["loss_masked_ce"] > 0
    # the masked-input CE is one more forward of B rows, with gradient
    assert counter.rows[-1] == B
    expected = metrics["loss_cls"] + 0.5 * metrics["loss_masked_ce"]
    if method == "afa":
        expected += metrics["lambda_pg"] * metrics["loss_pg"]
    else:
        assert counter.rows == [B] and "loss_pg" not in metrics
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_fake_mode_uses_the_lowest_effect_mask(peft_model, task, batch, monkeypatch):
    cfg = make_cfg("masked_ce=fake", "discriminator=pair")
    objective = make_objective(cfg, task)
    seen = {}
    original = objective.masked_ce_mask

    def spy(batch_, k, masks, effect):
        chosen = original(batch_, k, masks, effect)
        seen.update(masks=masks, effect=effect, chosen=chosen)
        return chosen

    monkeypatch.setattr(objective, "masked_ce_mask", spy)
    clean = clean_pass(peft_model, batch, task.label_token_ids, cfg.focus_layers)
    objective.loss(peft_model, batch, clean, 3)
    best = seen["effect"].argmin(-1)
    assert torch.equal(seen["chosen"], seen["masks"][torch.arange(B), best])


def test_lora_method_is_plain_cross_entropy(peft_model, task, batch):
    cfg = make_cfg("method=lora")
    objective = make_objective(cfg, task)  # lora: no discriminator
    clean = clean_pass(peft_model, batch, task.label_token_ids, cfg.focus_layers)
    loss, metrics = objective.loss(peft_model, batch, clean, 0)
    assert set(metrics) == {"loss_cls"}
    torch.testing.assert_close(loss, F.cross_entropy(clean.class_logits, batch.labels))


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir, task, batch):
    """The focus is read from q/k outputs captured in the forward: checkpointed layers must still
    pass the PG gradient (and L_cls) to the same LoRA weights."""
    from afa_llm.training.setup import build_model

    grads = []
    for checkpointing in ("false", "true"):
        cfg = make_cfg(f"model={tiny_model_dir}", f"gradient_checkpointing={checkpointing}", "lambda_pg=1.0")
        torch.manual_seed(0)
        model, _ = build_model(cfg, types.SimpleNamespace(device=torch.device("cpu")))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(1))
        model.train()
        _, _, loss, _ = run_objective(model, task, batch, cfg, objective=make_objective(cfg, task))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)
    assert any(g.abs().max() > 0 for g in grads[1].values())


def test_lora_focus_masked_ce_hides_the_most_attended_tokens(monkeypatch):
    """``masked_ce: focus`` (progressive attention masking) hides the top-k of the clean focus."""
    from afa_llm.attention import masking
    from afa_llm.methods.lora import LoRAMethod
    from afa_llm.methods.masked_ce import WordDropoutKeys

    focus = torch.tensor([[0.0, 0.5, 0.1, 0.3, 0.1]])
    text = torch.tensor([[False, True, True, True, True]])
    clean = type("Clean", (), {"focus": focus})()
    batch = type("Batch", (), {"text_mask": text})()
    method = LoRAMethod.__new__(LoRAMethod)
    method.keys, method.ctx = WordDropoutKeys(masked_ce="focus"), None
    picked = method.hidden_words(batch, clean, torch.tensor([2]))
    assert picked.tolist() == [[False, True, False, True, False]]
    assert masking.top_k_masks(focus, text, torch.tensor([2])).tolist() == picked.tolist()
