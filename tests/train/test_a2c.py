"""Returns, advantages, loss terms and gradient clipping against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from hebbgym.train.a2c import (
    Rollout,
    a2c_loss,
    clip_gradients,
    discounted_returns,
    gae_advantages,
)


def test_discounted_returns_by_hand() -> None:
    rewards = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, -1.0]])
    returns = discounted_returns(rewards, gamma=0.5)
    # column 0: R2 = 3, R1 = 0 + 0.5*3 = 1.5, R0 = 1 + 0.5*1.5 = 1.75
    # column 1: R2 = -1, R1 = 2 - 0.5 = 1.5, R0 = 0 + 0.75 = 0.75
    expected = torch.tensor([[1.75, 0.75], [1.5, 1.5], [3.0, -1.0]])
    torch.testing.assert_close(returns, expected)


def test_discounted_returns_with_bootstrap_and_gamma_extremes() -> None:
    rewards = torch.tensor([[1.0], [1.0]])
    torch.testing.assert_close(discounted_returns(rewards, 1.0), torch.tensor([[2.0], [1.0]]))
    torch.testing.assert_close(discounted_returns(rewards, 0.0), rewards)
    boot = discounted_returns(rewards, 0.5, bootstrap=torch.tensor([4.0]))
    torch.testing.assert_close(boot, torch.tensor([[2.5], [3.0]]))


def test_gae_by_hand() -> None:
    rewards = torch.tensor([[1.0], [0.0], [2.0]])
    values = torch.tensor([[0.5], [1.0], [0.0]])
    gamma, lam = 0.9, 0.5
    d2 = 2.0 + 0.0 - 0.0
    d1 = 0.0 + gamma * 0.0 - 1.0
    d0 = 1.0 + gamma * 1.0 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    expected = torch.tensor([[a0], [a1], [a2]])
    torch.testing.assert_close(gae_advantages(rewards, values, gamma, lam), expected)


def test_gae_with_lambda_one_is_monte_carlo_advantage() -> None:
    torch.manual_seed(0)
    rewards, values = torch.randn(6, 3), torch.randn(6, 3)
    mc = discounted_returns(rewards, 0.8) - values
    torch.testing.assert_close(gae_advantages(rewards, values, 0.8, 1.0), mc)


def make_rollout(values: torch.Tensor) -> Rollout:
    log_probs = torch.tensor([[-0.5, -1.0], [-0.2, -2.0]], requires_grad=True)
    return Rollout(
        log_probs=log_probs,
        entropies=torch.tensor([[0.6, 0.4], [0.5, 0.3]]),
        sum_squares=torch.tensor([[0.5, 0.7], [0.6, 0.9]]),
        values=values,
        rewards=torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        modulation=torch.zeros(2, 2, 0),
    )


def test_loss_terms_by_hand_use_per_sample_advantages() -> None:
    values = torch.tensor([[0.5, 0.2], [0.1, 0.4]], requires_grad=True)
    rollout = make_rollout(values)
    terms = a2c_loss(rollout, gamma=1.0, value_coef=0.1, entropy_coef=0.03)
    returns = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    advantages = returns - values.detach()  # each episode against its own values
    policy = -(rollout.log_probs * advantages).sum(0).mean()
    value = 0.1 * ((returns - values) ** 2).sum(0).mean()
    entropy = -0.03 * rollout.entropies.sum(0).mean()
    torch.testing.assert_close(terms.policy, policy)
    torch.testing.assert_close(terms.value, value)
    torch.testing.assert_close(terms.entropy, entropy)
    torch.testing.assert_close(terms.total, policy + value + entropy)
    # The advantage must not feed gradients into the value head through the policy term.
    terms.policy.backward()
    assert values.grad is None


def test_sum_squares_regulariser_and_unknown_kind() -> None:
    rollout = make_rollout(torch.zeros(2, 2))
    terms = a2c_loss(rollout, 0.9, 0.1, 0.03, entropy_kind="sum_squares")
    torch.testing.assert_close(terms.entropy, 0.03 * torch.tensor([1.1, 1.6]).mean())
    with pytest.raises(ValueError, match="entropy_kind"):
        a2c_loss(rollout, 0.9, 0.1, 0.03, entropy_kind="gini")


def test_modulation_penalty_by_hand() -> None:
    values = torch.tensor([[0.5, 0.2], [0.1, 0.4]])
    m = torch.tensor([[[0.5, -1.0], [0.0, 0.2]], [[1.0, 1.0], [-0.4, 0.0]]], requires_grad=True)
    rollout = make_rollout(values)._replace(modulation=m)
    plain = a2c_loss(rollout, gamma=1.0, value_coef=0.1, entropy_coef=0.03)
    penalised = a2c_loss(rollout, 1.0, 0.1, 0.03, modulation_coef=0.5)
    # per episode: sum over t of the mean over k of M^2; episode 0: 0.625 + 1.0, episode 1:
    # 0.02 + 0.08; averaged over the batch and scaled by 0.5
    expected = 0.5 * ((0.625 + 1.0) + (0.02 + 0.08)) / 2
    torch.testing.assert_close(penalised.total - plain.total, torch.tensor(expected))
    penalised.total.backward()
    torch.testing.assert_close(m.grad, 0.5 * 2 * m.detach() / 2 / 2)  # d/dM of coef*M^2/K/B
    no_modulator = make_rollout(values)  # K = 0: nothing to penalise
    assert (
        a2c_loss(no_modulator, 1.0, 0.1, 0.03, modulation_coef=0.5).total
        == a2c_loss(no_modulator, 1.0, 0.1, 0.03).total
    )


def test_gradient_clipping_matches_torch_and_survives_float32_overflow() -> None:
    def params_with(*grads: torch.Tensor) -> list[torch.nn.Parameter]:
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        return params

    ordinary = (torch.tensor([3.0, -4.0]), torch.tensor([[12.0]]))
    ours, theirs = params_with(*ordinary), params_with(*ordinary)
    assert clip_gradients(ours, 2.0) == pytest.approx(13.0)
    torch.nn.utils.clip_grad_norm_(theirs, 2.0)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad)

    small = params_with(torch.tensor([0.3, 0.4]))
    assert clip_gradients(small, 2.0) == pytest.approx(0.5)
    assert small[0].grad.tolist() == pytest.approx([0.3, 0.4])  # below the bound: untouched

    # Finite elements of 1e19 (as a plastic core's BPTT gradient can be): torch's float32
    # norm overflows to inf; ours clips to the bound and keeps the direction.
    huge = params_with(torch.tensor([3e19, -4e19]), torch.tensor([0.0]))
    assert math.isinf(torch.nn.utils.clip_grad_norm_(params_with(huge[0].grad), 2.0).item())
    assert clip_gradients(huge, 2.0) == pytest.approx(5e19)
    assert huge[0].grad.tolist() == pytest.approx([1.2, -1.6])

    single = params_with(torch.tensor([3.0, 4.0]))[0]  # one tensor, as torch accepts
    assert clip_gradients(single, 1.0) == pytest.approx(5.0)
    assert single.grad.tolist() == pytest.approx([0.6, 0.8])

    broken = params_with(torch.tensor([1.0, float("nan")]))
    assert math.isnan(clip_gradients(broken, 2.0))
    assert clip_gradients(params_with(), 2.0) == 0.0
