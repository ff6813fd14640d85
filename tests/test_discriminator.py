"""The discriminator heads (docs/AFA.md step 4): shapes, what each one sees, that they learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from afa_llm.methods.afa.discriminator import PairDiscriminator, SurrogateDiscriminator, build_discriminator

D, B, G, L = 16, 3, 4, 7


def test_build_picks_the_kind():
    assert isinstance(build_discriminator("pair", D, 8), PairDiscriminator)
    assert isinstance(build_discriminator("surrogate", D, 8), SurrogateDiscriminator)


def test_pair_shapes_and_per_mask_independence():
    torch.manual_seed(0)
    disc = PairDiscriminator(D, 8)
    clean, masked = torch.randn(B, D), torch.randn(B, G, D)
    out = disc(clean, masked)
    assert out.shape == (B, G)
    changed = masked.clone()
    changed[1, 2] += 1.0  # only example 1, mask 2 moves
    diff = (disc(clean, changed) - out).abs()
    assert diff[1, 2] > 0
    diff[1, 2] = 0
    assert diff.max() == 0
    # it sees the clean state too (and the difference)
    assert not torch.allclose(disc(clean + 1.0, masked), out)


def test_surrogate_sees_only_the_masked_tokens():
    torch.manual_seed(0)
    disc = SurrogateDiscriminator(D, 8)
    answer, states = torch.randn(B, D), torch.randn(B, L, D)
    masks = torch.zeros(B, G, L, dtype=torch.bool)
    masks[:, :, 2] = True
    masks[:, 1, 4] = True
    out = disc(answer, states, masks)
    assert out.shape == (B, G)
    other = states.clone()
    other[:, [0, 1, 3, 5, 6]] += 5.0  # tokens no mask covers
    torch.testing.assert_close(disc(answer, other, masks), out)
    moved = states.clone()
    moved[:, 4] += 5.0  # only mask 1 covers token 4
    delta = (disc(answer, moved, masks) - out).abs()
    assert (delta[:, 1] > 0).all() and delta[:, [0, 2, 3]].max() == 0


def test_surrogate_empty_mask_is_finite():
    disc = SurrogateDiscriminator(D, 8)
    out = disc(torch.randn(B, D), torch.randn(B, L, D), torch.zeros(B, G, L, dtype=torch.bool))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kind", ["pair", "surrogate"])
def test_heads_learn_a_simple_target(kind):
    """A few Adam steps fit a target that depends on the masked input: the head can learn."""
    torch.manual_seed(0)
    disc = build_discriminator(kind, D, 32)
    opt = torch.optim.Adam(disc.parameters(), lr=1e-2)
    answer, states = torch.randn(32, D), torch.randn(32, L, D)
    masks = torch.rand(32, G, L) < 0.3
    masked = torch.randn(32, G, D)
    if kind == "pair":
        target = (masked[..., 0] > 0).float()  # "significant" iff a feature of the masked state
        loss_fn = lambda: F.binary_cross_entropy_with_logits(disc(answer, masked), target)  # noqa: E731
    else:
        pooled = (masks.float() @ states[..., :1]).squeeze(-1) / masks.sum(-1).clamp(min=1)
        target = pooled.relu()
        loss_fn = lambda: F.mse_loss(disc(answer, states, masks), target)  # noqa: E731
    first = loss_fn().item()
    for _ in range(60):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
