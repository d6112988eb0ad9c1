"""GRPO objective from verl's core_algos: advantages by hand, clipping, masking, KL and entropy."""

from __future__ import annotations

import math

import pytest
import torch

from components.rl.loss import LossConfig, group_advantages, grpo_loss


def test_advantages_match_a_hand_computation():
    # group "a": rewards 1, 0, 0, 1 -> mean 0.5, unbiased std sqrt(1/3)
    # group "b": rewards 1, 1, 1 -> all equal, advantage 0
    rewards = [1, 0, 0, 1, 1, 1, 1]
    groups = ["a", "a", "a", "a", "b", "b", "b"]
    adv = group_advantages(rewards, groups, norm_adv_by_std=True)
    std = math.sqrt(1 / 3)
    expected = [0.5 / (std + 1e-6), -0.5 / (std + 1e-6), -0.5 / (std + 1e-6), 0.5 / (std + 1e-6), 0, 0, 0]
    assert adv.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_advantages_without_std_are_mean_centred_only():
    adv = group_advantages([0.0, 1.0, 1.0, 0.5], [7, 7, 7, 7], norm_adv_by_std=False)
    assert adv.tolist() == pytest.approx([-0.625, 0.375, 0.375, -0.125])


def test_advantages_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="2 rewards but 3 group ids"):
        group_advantages([1, 0], [0, 0, 1])


def test_on_policy_loss_is_minus_the_mean_advantage_over_model_tokens():
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.9], [0.3, 0.3, 0.3]]))
    mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    loss, m = grpo_loss(logp, logp.clone(), adv, mask, LossConfig())
    # ratio 1 everywhere: token-mean of -A over the 4 masked tokens = -(2 + 2 - 1 - 1) / 4
    assert loss.item() == pytest.approx(-0.5)
    assert m["clip_frac"] == 0.0 and m["response_tokens"] == 4


def test_environment_tokens_get_no_gradient():
    logp = torch.zeros(2, 4, requires_grad=True)
    old = torch.zeros(2, 4)
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    ref = torch.full((2, 4), -0.5)
    entropy = torch.rand(2, 4, requires_grad=True)
    loss, _ = grpo_loss(
        logp, old, torch.tensor([1.0, -1.0]), mask, LossConfig(kl_coef=0.1, entropy_coef=0.01), entropy, ref
    )
    loss.backward()
    assert torch.all(logp.grad[mask == 0] == 0)
    assert torch.all(logp.grad[mask == 1] != 0)
    assert torch.all(entropy.grad[mask == 0] == 0)


def test_ratio_outside_the_clip_range_is_clipped_and_counted():
    old = torch.zeros(1, 2)
    logp = torch.tensor([[math.log(1.5), 0.0]], requires_grad=True)  # ratio 1.5 > 1.2 on token 0
    loss, m = grpo_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 2), LossConfig(clip_ratio=0.2))
    loss.backward()
    assert m["clip_frac"] == pytest.approx(0.5)
    assert loss.item() == pytest.approx(-(1.2 + 1.0) / 2)
    assert logp.grad[0, 0] == 0  # clipped: no gradient pushes it further


def test_low_var_kl_is_zero_at_the_reference_and_positive_away():
    logp = torch.log(torch.tensor([[0.5, 0.4]]))
    mask = torch.ones(1, 2)
    _, same = grpo_loss(logp, logp, torch.zeros(1), mask, LossConfig(kl_coef=0.01), ref_log_prob=logp)
    _, away = grpo_loss(logp, logp, torch.zeros(1), mask, LossConfig(kl_coef=0.01), ref_log_prob=logp - 0.3)
    assert same["kl"] == pytest.approx(0.0, abs=1e-7)
    # k3 estimator: exp(d) - d - 1 with d = ref - logp = -0.3
    assert away["kl"] == pytest.approx(math.exp(-0.3) + 0.3 - 1, rel=1e-5)


def test_an_empty_mask_is_refused():
    with pytest.raises(ValueError, match="selects no token"):
        grpo_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), torch.zeros(1, 2), LossConfig())
