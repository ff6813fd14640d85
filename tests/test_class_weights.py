"""``class_weights``: none | balanced | [w1, ...] in every classification cross-entropy, for every method."""

from __future__ import annotations

import json

import pytest
import torch

from afa_llm.config import load_config
from afa_llm.errors import UserError
from afa_llm.methods.base import classification_loss
from afa_llm.training.setup import class_weight_values


def test_balanced_weights_are_n_over_classes_times_count():
    labels = [0, 0, 0, 1, 2, 2]  # counts 3, 1, 2 of n = 6
    assert class_weight_values("balanced", labels, 3) == pytest.approx([6 / 9, 6 / 3, 6 / 6])
    assert class_weight_values("none", labels, 3) is None
    assert class_weight_values([1, 2, 3], labels, 3) == [1.0, 2.0, 3.0]
    with pytest.raises(UserError, match="class_weights.*2 weights for 3 classes"):
        class_weight_values([1, 2], labels, 3)
    with pytest.raises(UserError, match="every class"):
        class_weight_values("balanced", [0, 0, 2], 3)


def test_weighted_loss_matches_the_hand_computed_weighted_mean():
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.5], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    clean = type("Clean", (), {"class_logits": logits})()
    batch = type("Batch", (), {"labels": labels})()
    weight = torch.tensor([3.0, 1.0])
    per_example = -torch.log_softmax(logits, -1)[torch.arange(3), labels]
    by_hand = (3.0 * per_example[0] + per_example[1] + per_example[2]) / (3.0 + 1.0 + 1.0)
    assert classification_loss(clean, batch, weight).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert classification_loss(clean, batch).item() == pytest.approx(per_example.mean().item(), rel=1e-6)
    assert classification_loss(clean, batch, weight).item() != pytest.approx(classification_loss(clean, batch).item())


@pytest.mark.parametrize("value, expected", [("none", "none"), ("balanced", "balanced"), ("[1, 2.5]", [1.0, 2.5])])
def test_the_key_is_validated_at_load_time(value, expected):
    assert load_config(None, [f"class_weights={value}"]).class_weights == expected


@pytest.mark.parametrize("value", ["heavy", "[1, -1]", "[2]", "3"])
def test_bad_class_weights_name_the_key(value):
    with pytest.raises(UserError, match="class_weights"):
        load_config(None, [f"class_weights={value}"])


@pytest.mark.parametrize("method", ["lora", "afa", "at", "vat", "attn_rp"])
def test_every_method_trains_with_class_weights(method, tiny_model_dir, learnable_csv, tmp_path):
    from test_train import tiny_overrides

    from afa_llm.training.trainer import train

    run = tmp_path / "run"
    extra = ["masked_ce=random"] if method == "lora" else []
    results = train(load_config(None, tiny_overrides(run, tiny_model_dir, learnable_csv, f"method={method}",
                                                     "steps=2", "eval_every=0", "class_weights=[1, 3]",
                                                     "faithfulness_eval_limit=0", *extra)))
    assert results["class_weights"] == [1.0, 3.0]
    assert json.loads((run / "results.json").read_text())["class_weights"] == [1.0, 3.0]


def test_class_weights_change_the_step(tiny_model_dir, learnable_csv, tmp_path):
    """Two runs that differ only in the weights end with different adapters."""
    from safetensors.torch import load_file
    from test_train import tiny_overrides

    from afa_llm.training.trainer import train

    adapters = []
    for name, weights in (("plain", "none"), ("weighted", "[1, 5]")):
        run = tmp_path / name
        train(load_config(None, tiny_overrides(run, tiny_model_dir, learnable_csv, "method=lora", "steps=2",
                                               "eval_every=0", f"class_weights={weights}",
                                               "faithfulness_eval_limit=0")))
        adapters.append(load_file(str(run / "adapter" / "adapter_model.safetensors")))
    assert max((adapters[0][k] - adapters[1][k]).abs().max().item() for k in adapters[0]) > 0
