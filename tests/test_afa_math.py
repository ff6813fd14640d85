"""Tests of the focus math, the masks and AFA's own math on hand-made tensors, no model."""

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from afa_llm.attention import focus_math as fm
from afa_llm.attention import masking as mk
from afa_llm.methods.afa import math as am

# One left-padded example (pos 0 pad, pos 1 template, 2..4 text, 5 template) and one full row.
TEXT_MASK = torch.tensor([[False, False, True, True, True, False],
                          [True, True, True, True, True, True]])


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_focus_distribution_averages_layers_and_heads_then_renormalises_over_text():
    # Two layers x one head: the mean row is [.1, .1, .2, .3, .1, .2]; text part .2/.3/.1.
    layer_a = torch.tensor([0.0, 0.2, 0.2, 0.4, 0.0, 0.2])
    layer_b = torch.tensor([0.2, 0.0, 0.2, 0.2, 0.2, 0.2])
    attention = torch.stack([layer_a, layer_b]).view(1, 2, 1, 6).repeat(2, 1, 1, 1)
    focus = fm.focus_distribution(attention, TEXT_MASK)
    expected = torch.tensor([0.0, 0.0, 0.2, 0.3, 0.1, 0.0]) / 0.6
    torch.testing.assert_close(focus[0], expected)
    torch.testing.assert_close(focus.sum(-1), torch.ones(2))
    assert (focus[~TEXT_MASK] == 0).all()


def test_focus_distribution_rejects_an_example_without_text():
    attention = torch.rand(1, 1, 2, 3)
    with pytest.raises(ValueError):
        fm.focus_distribution(attention, torch.zeros(1, 3, dtype=torch.bool))


def test_mix_uniform_is_a_distribution_over_text():
    focus = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [1 / 6] * 6])
    mixed = am.mix_uniform(focus, TEXT_MASK, 0.3)
    torch.testing.assert_close(mixed[0], torch.tensor([0.0, 0.0, 0.8, 0.1, 0.1, 0.0]))
    torch.testing.assert_close(mixed.sum(-1), torch.ones(2))


def test_masks_per_example_rounds_and_clamps():
    k = mk.masks_per_example(torch.tensor([1, 3, 10, 12, 40]), 0.2)
    assert k.tolist() == [1, 1, 2, 2, 8]
    assert mk.masks_per_example(torch.tensor([3]), 1.0).tolist() == [3]


def test_gumbel_top_k_picks_exactly_k_distinct_text_tokens():
    probs = am.mix_uniform(torch.tensor([[0, 0, 0.7, 0.2, 0.1, 0], [0.5, 0.1, 0.1, 0.1, 0.1, 0.1]]),
                           TEXT_MASK, 0.1)
    k = torch.tensor([2, 4])
    masks = mk.gumbel_top_k_masks(probs, TEXT_MASK, k, num_masks=50, generator=_seeded())
    assert masks.shape == (2, 50, 6) and masks.dtype == torch.bool
    assert (masks.sum(-1) == k.view(2, 1)).all()
    assert not (masks & ~TEXT_MASK.unsqueeze(1)).any()


def test_gumbel_top_k_never_picks_text_free_positions_even_if_they_have_mass():
    probs = torch.tensor([[0.9, 0.0, 0.05, 0.05]])  # mass on a non-text token must not matter
    text = torch.tensor([[False, False, True, True]])
    masks = mk.gumbel_top_k_masks(probs, text, torch.tensor([2]), 100, _seeded())
    assert (masks[..., :2] == 0).all() and (masks[..., 2:] == 1).all()


def test_gumbel_top_k_is_deterministic_under_a_seed():
    probs = torch.softmax(torch.randn(2, 6), -1) * TEXT_MASK
    k = torch.tensor([2, 3])
    first = mk.gumbel_top_k_masks(probs, TEXT_MASK, k, 8, _seeded(7))
    second = mk.gumbel_top_k_masks(probs, TEXT_MASK, k, 8, _seeded(7))
    other = mk.gumbel_top_k_masks(probs, TEXT_MASK, k, 8, _seeded(8))
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_gumbel_top_1_samples_from_probs():
    probs = torch.tensor([[0.0, 0.0, 0.6, 0.3, 0.1, 0.0]])
    masks = mk.gumbel_top_k_masks(probs, TEXT_MASK[:1], torch.tensor([1]), 20000, _seeded(1))
    frequency = masks.float().mean(dim=1)
    torch.testing.assert_close(frequency, probs, atol=0.015, rtol=0)


def test_gumbel_top_k_includes_likely_tokens_more_often():
    probs = torch.tensor([[0.0, 0.0, 0.6, 0.3, 0.1, 0.0]])
    masks = mk.gumbel_top_k_masks(probs, TEXT_MASK[:1], torch.tensor([2]), 5000, _seeded(2))
    inclusion = masks.float().mean(dim=1)[0]
    assert inclusion[2] > inclusion[3] > inclusion[4] > 0


def test_gumbel_top_k_rejects_k_above_text_length():
    with pytest.raises(ValueError):
        mk.gumbel_top_k_masks(torch.full((1, 6), 1 / 6), TEXT_MASK[:1], torch.tensor([4]), 2)


def test_uniform_masks_cover_text_tokens_evenly():
    masks = mk.uniform_masks(TEXT_MASK[:1], torch.tensor([1]), 9000, _seeded(3))
    frequency = masks.float().mean(dim=1)[0, 2:5]
    torch.testing.assert_close(frequency, torch.full((3,), 1 / 3), atol=0.02, rtol=0)


def test_mask_log_prob_sums_log_probs_and_has_gradient():
    probs = torch.tensor([[0.0, 0.0, 0.5, 0.3, 0.2, 0.0]], requires_grad=True)
    masks = torch.tensor([[[0, 0, 1, 0, 1, 0], [0, 0, 0, 1, 0, 0]]], dtype=torch.bool)
    log_prob = am.mask_log_prob(probs, masks)
    torch.testing.assert_close(log_prob, torch.tensor([[math.log(0.5 * 0.2), math.log(0.3)]]))
    log_prob.sum().backward()
    torch.testing.assert_close(probs.grad, torch.tensor([[0, 0, 2.0, 1 / 0.3, 5.0, 0]]))


def test_mask_log_prob_is_finite_on_zero_probability():
    probs = torch.tensor([[0.0, 1.0]], requires_grad=True)
    log_prob = am.mask_log_prob(probs, torch.tensor([[[True, True]]]))
    log_prob.sum().backward()
    assert torch.isfinite(log_prob).all() and torch.isfinite(probs.grad).all()


def test_mask_effect_is_kl_of_clean_to_masked():
    clean = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    masked = torch.stack([clean, torch.tensor([[0.0, 1.0], [3.0, -3.0]])], dim=1)
    effect = am.mask_effect(clean, masked)
    assert effect.shape == (2, 2)
    torch.testing.assert_close(effect[:, 0], torch.zeros(2))
    assert (effect[:, 1] > 0).all()
    expected = F.kl_div(torch.log_softmax(masked, -1), torch.log_softmax(clean, -1).unsqueeze(1),
                        reduction="none", log_target=True).sum(-1)
    torch.testing.assert_close(effect, expected)


def test_significance_labels_and_running_median():
    effect = torch.tensor([[0.1, 0.5], [0.3, 0.0]])
    assert am.significance_labels(effect, 0.3).tolist() == [[0.0, 1.0], [0.0, 0.0]]
    median = am.RunningMedian(window=3)
    assert median.update(torch.tensor([5.0])) == 5.0
    assert median.update(torch.tensor([1.0, 2.0, 3.0])) == 2.0  # 5.0 fell out of the window
    restored = am.RunningMedian(window=3)
    restored.load_state_dict(median.state_dict())
    assert restored.update(torch.tensor([10.0])) == median.update(torch.tensor([10.0])) == 3.0
    with pytest.raises(ValueError):
        am.RunningMedian(window=2).update(torch.tensor([]))


def test_leave_one_out_advantage_sums_to_zero_and_matches_hand_values():
    rewards = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    advantages = am.leave_one_out_advantage(rewards, normalize=False)
    torch.testing.assert_close(advantages[0], torch.tensor([-3.0, -1.5, 4.5]))
    torch.testing.assert_close(advantages.sum(-1), torch.zeros(2))
    normalised = am.leave_one_out_advantage(rewards, normalize=True)
    torch.testing.assert_close(normalised, advantages / (rewards.std(-1, keepdim=True) + 1e-6))
    torch.testing.assert_close(normalised.sum(-1), torch.zeros(2), atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        am.leave_one_out_advantage(torch.ones(2, 1), normalize=False)


def test_equal_rewards_give_zero_advantage_even_normalised():
    advantages = am.leave_one_out_advantage(torch.full((1, 4), 0.7), normalize=True)
    assert torch.equal(advantages, torch.zeros(1, 4))


def _pg_step_on_two_tokens(masks: torch.Tensor, high_reward_token: int) -> torch.Tensor:
    """One SGD step of L_pg on a 2-token focus; returns focus before and after."""
    theta = torch.zeros(2, requires_grad=True)
    text = torch.ones(1, 2, dtype=torch.bool)

    def focus() -> torch.Tensor:
        attention = torch.softmax(theta, -1).view(1, 1, 1, 2)
        return fm.focus_distribution(attention, text)

    before = focus().detach()
    rewards = masks[..., high_reward_token].float()  # masking that token "mattered"
    advantages = am.leave_one_out_advantage(rewards, normalize=True)
    log_probs = am.mask_log_prob(am.mix_uniform(focus(), text, 0.1), masks)
    am.policy_gradient_loss(advantages, log_probs).backward()
    with torch.no_grad():
        theta -= 0.5 * theta.grad
    return torch.stack([before, focus().detach()])


def test_policy_gradient_step_moves_focus_to_the_high_reward_token():
    fixed = torch.tensor([[[True, False], [False, True]]])
    before, after = _pg_step_on_two_tokens(fixed, high_reward_token=1)
    assert after[0, 1] > before[0, 1] + 1e-3
    text = torch.ones(1, 2, dtype=torch.bool)
    sampled = mk.gumbel_top_k_masks(torch.full((1, 2), 0.5), text, torch.tensor([1]), 16, _seeded())
    before, after = _pg_step_on_two_tokens(sampled, high_reward_token=0)
    assert after[0, 0] > before[0, 0] + 1e-3


def test_policy_gradient_loss_treats_advantages_as_constants():
    advantages = torch.tensor([[1.0, -1.0]], requires_grad=True)
    log_probs = torch.tensor([[-0.5, -2.0]], requires_grad=True)
    loss = am.policy_gradient_loss(advantages, log_probs)
    torch.testing.assert_close(loss, torch.tensor(-(-0.5 + 2.0) / 2))
    loss.backward()
    assert advantages.grad is None
    torch.testing.assert_close(log_probs.grad, torch.tensor([[-0.5, 0.5]]))


def test_focus_entropy_uniform_one_hot_and_gradients():
    probs = torch.tensor([[0.0, 0.0, 1 / 3, 1 / 3, 1 / 3, 0.0],
                          [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]], requires_grad=True)
    entropy = fm.focus_entropy(probs, TEXT_MASK)
    torch.testing.assert_close(entropy, torch.tensor([math.log(3), 0.0]))
    entropy.sum().backward()
    assert torch.isfinite(probs.grad).all()


def test_lambda_pg_schedule():
    assert am.lambda_pg_schedule(0, 10, 0.5) == 0.0
    assert am.lambda_pg_schedule(5, 10, 0.5) == pytest.approx(0.25)
    assert am.lambda_pg_schedule(10, 10, 0.5) == 0.5
    assert am.lambda_pg_schedule(99, 10, 0.5) == 0.5
    assert am.lambda_pg_schedule(0, 0, 0.5) == 0.5


def test_combine_rewards_sources():
    effect = torch.tensor([[0.0, 1.0, 4.0]])
    disc = torch.tensor([[0.2, 0.4, 0.6]])
    assert torch.equal(am.combine_rewards(effect, None, "delta"), effect)
    assert torch.equal(am.combine_rewards(effect, disc, "discriminator"), disc)
    mixed = am.combine_rewards(effect, disc, "mix", mix_weight=0.5)
    torch.testing.assert_close(mixed, 0.5 * torch.tensor([[0.0, 0.25, 1.0]]) + 0.5 * disc)
    with pytest.raises(ValueError):
        am.combine_rewards(effect, None, "mix")
    with pytest.raises(ValueError):
        am.combine_rewards(effect, disc, "bogus")  # type: ignore[arg-type]


def test_lowest_effect_mask_picks_the_smallest_effect_per_example():
    masks = torch.arange(2 * 3 * 4).view(2, 3, 4) % 3 == 0
    effect = torch.tensor([[0.5, 0.1, 0.9], [0.0, 0.2, 0.3]])
    chosen = am.lowest_effect_mask(masks, effect)
    assert torch.equal(chosen, torch.stack([masks[0, 1], masks[1, 0]]))


def test_frequent_token_ids_takes_the_top_percent_of_types():
    counts = Counter({token: 1000 - token for token in range(300)})  # ids 0.. most frequent
    assert fm.frequent_token_ids(counts).tolist() == [0, 1, 2]
    assert fm.frequent_token_ids({7: 3, 9: 5}).tolist() == [9]  # at least one
    assert fm.frequent_token_ids({4: 2, 3: 2, 8: 0}, top_fraction=0.5).tolist() == [3]


def test_frequent_shares_on_a_hand_example():
    input_ids = torch.tensor([[0, 11, 5, 6, 5, 12], [5, 6, 7, 8, 9, 5]])
    frequent = torch.tensor([5, 12])
    focus = torch.tensor([[0.0, 0.0, 0.5, 0.2, 0.3, 0.0], [0.1, 0.2, 0.2, 0.2, 0.2, 0.1]])
    share = fm.frequent_focus_share(focus, input_ids, frequent)
    torch.testing.assert_close(share, torch.tensor([0.8, 0.2]))
    base = fm.frequent_token_share(input_ids, TEXT_MASK, frequent)
    torch.testing.assert_close(base, torch.tensor([2 / 3, 2 / 6]))
    both = fm.frequent_shares(focus, input_ids, TEXT_MASK, frequent)
    torch.testing.assert_close(both[0], share)
    torch.testing.assert_close(both[1], base)
    # ratio of means, not mean of ratios: (0.8 + 0.2) / (2/3 + 1/3) = 1.0
    assert fm.fake_focus_ratio(*both) == pytest.approx(1.0)
    assert fm.fake_focus_ratio(torch.tensor([0.5]), torch.tensor([0.25])) == pytest.approx(2.0)
