"""A2C losses for whole episodes: returns, advantages and the loss terms; and the gradient
clipping of the update.

The losses are pure functions of tensors, so each is tested against values computed by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor


class Rollout(NamedTuple):
    """One batch of ``B`` whole episodes of ``T`` steps, with the graph kept for BPTT.

    Attributes:
        log_probs: ``[T, B]`` log-probability of the action taken.
        entropies: ``[T, B]`` entropy of the policy.
        sum_squares: ``[T, B]`` ``sum_a pi(a)^2`` (the papers' regulariser; 0 for Box actions).
        values: ``[T, B]`` value estimates.
        rewards: ``[T, B]`` rewards received (no graph).
        modulation: ``[T, B, K]`` neuromodulator outputs ``M(t)`` (K = 0 without).
    """

    log_probs: Tensor
    entropies: Tensor
    sum_squares: Tensor
    values: Tensor
    rewards: Tensor
    modulation: Tensor


class LossTerms(NamedTuple):
    total: Tensor
    policy: Tensor
    value: Tensor
    entropy: Tensor


def discounted_returns(rewards: Tensor, gamma: float, bootstrap: Tensor | None = None) -> Tensor:
    """``R_t = r_t + gamma R_{t+1}`` backwards over ``[T, B]``; ``R_T = bootstrap`` (0)."""
    running = torch.zeros_like(rewards[0]) if bootstrap is None else bootstrap
    returns = torch.empty_like(rewards)
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


def gae_advantages(rewards: Tensor, values: Tensor, gamma: float, lam: float) -> Tensor:
    """GAE(lambda) advantages over ``[T, B]``; the episode ends after step ``T - 1``
    (fixed-length episodes with the time in the observation: nothing to bootstrap)."""
    next_values = torch.cat([values[1:], torch.zeros_like(values[:1])])
    deltas = rewards + gamma * next_values - values
    return discounted_returns(deltas, gamma * lam)


def a2c_loss(
    rollout: Rollout,
    gamma: float,
    value_coef: float,
    entropy_coef: float,
    entropy_kind: str = "entropy",
    gae_lambda: float | None = None,
    modulation_coef: float = 0.0,
) -> LossTerms:
    """The A2C loss of whole episodes, summed over time and averaged over the batch.

    The advantage is computed **per sample** (each episode against its own value
    estimates). Monte-Carlo returns by default; GAE(lambda) when ``gae_lambda`` is given.
    ``modulation_coef`` adds ``coef * sum_t mean_k M_t^2`` (part of ``total``; 0 without a
    neuromodulator).
    """
    values = rollout.values
    if gae_lambda is None:
        returns = discounted_returns(rollout.rewards, gamma)
        advantages = returns - values.detach()
    else:
        advantages = gae_advantages(rollout.rewards, values.detach(), gamma, gae_lambda)
        returns = advantages + values.detach()
    policy = -(rollout.log_probs * advantages).sum(0).mean()
    value = value_coef * (returns - values).pow(2).sum(0).mean()
    if entropy_kind == "entropy":
        entropy = -entropy_coef * rollout.entropies.sum(0).mean()
    elif entropy_kind == "sum_squares":
        entropy = entropy_coef * rollout.sum_squares.sum(0).mean()
    else:
        raise ValueError(f"entropy_kind must be 'entropy' or 'sum_squares', got {entropy_kind!r}")
    total = policy + value + entropy
    if modulation_coef and rollout.modulation.numel():
        total = total + modulation_coef * rollout.modulation.pow(2).mean(2).sum(0).mean()
    return LossTerms(total=total, policy=policy, value=value, entropy=entropy)


def clip_gradients(parameters: torch.Tensor | Iterable[torch.Tensor], max_norm: float) -> float:
    """Scale the gradients to a total norm of at most ``max_norm``; return the norm before.

    The norm is taken in float64. Backpropagation through a whole episode can give a plastic
    core finite gradient elements of 1e19 (measured: the maze's retroactive agent), whose
    squares overflow float32; ``torch.nn.utils.clip_grad_norm_`` then reports an infinite
    norm and scales the step to zero or NaN. Here such a float32 gradient is clipped like any
    other, and only non-finite elements give a non-finite norm (the step is then left
    unscaled).
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in grads])
    )
    if torch.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm.item() + 1e-6)
        for g in grads:
            g.mul_(scale)
    return norm.item()
