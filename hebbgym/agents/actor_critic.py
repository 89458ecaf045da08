"""Actor-critic: observation → recurrent core → policy and value heads.

The core (plastic, RNN or LSTM) knows nothing of environments or the learner; its
neuromodulator ``M(t)`` is its own output head. Action sampling takes an explicit
``torch.Generator`` so that training is reproducible bit for bit and resumable.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor, nn

from hebbgym.agents.baselines import LSTMCore, RNNCore, count_parameters, matched_hidden_size
from hebbgym.agents.plastic import CoreState, PlasticConfig, PlasticCore, PlayedSequence

AgentKind = Literal["modulated", "retroactive", "plastic", "rnn", "lstm"]
AGENT_KINDS: tuple[str, ...] = ("modulated", "retroactive", "plastic", "rnn", "lstm")


class StepOutput(NamedTuple):
    """What the agent computes at one step for a batch of ``B`` episodes (or, from
    :meth:`ActorCritic.replay`, at every step: each field with a leading time axis ``T``)."""

    action: Tensor
    """``[B]`` (Discrete) or ``[B, d]`` (Box): the sampled (or greedy) action."""
    log_prob: Tensor
    entropy: Tensor
    sum_squares: Tensor
    value: Tensor
    h: Tensor
    m: Tensor


class CategoricalHead(nn.Module):
    """Policy over ``Discrete(n)`` actions: logits from the hidden state."""

    def __init__(self, hidden_size: int, n: int) -> None:
        super().__init__()
        self.logits = nn.Linear(hidden_size, n)

    def forward(
        self, h: Tensor, generator: torch.Generator | None, greedy: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Choose an action for each row of ``h`` ``[B, N]``: ``(action, *score)``."""
        log_p = torch.log_softmax(self.logits(h), dim=-1)
        if greedy:
            action = log_p.argmax(dim=-1)
        else:
            action = torch.multinomial(log_p.detach().exp(), 1, generator=generator).squeeze(-1)
        return action, *self._score(log_p, action)

    def score(self, h: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(log_prob, entropy, sum_a pi(a)^2)`` of actions already taken, for ``h`` of any
        leading shape (``[T, B, N]`` with ``action`` ``[T, B]``)."""
        return self._score(torch.log_softmax(self.logits(h), dim=-1), action)

    @staticmethod
    def _score(log_p: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        p = log_p.exp()
        log_prob = log_p.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        entropy = -(p * log_p).sum(-1)
        return log_prob, entropy, p.pow(2).sum(-1)


class GaussianHead(nn.Module):
    """Policy over a ``Box(low, high)``: a Gaussian whose mean is squashed into the box and
    whose log standard deviation is a learned, state-independent parameter."""

    def __init__(self, hidden_size: int, low: np.ndarray, high: np.ndarray) -> None:
        super().__init__()
        self.mean = nn.Linear(hidden_size, len(low))
        self.log_std = nn.Parameter(torch.full((len(low),), -1.0))
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))

    def forward(
        self, h: Tensor, generator: torch.Generator | None, greedy: bool
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Choose an action for each row of ``h`` ``[B, N]``: ``(action, *score)``."""
        mean = self._mean(h)
        if greedy:
            action = mean.detach()
        else:
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
            action = (mean + self.log_std.exp() * noise).detach()
        return action, *self._score(mean, action)

    def score(self, h: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(log_prob, entropy, 0)`` of actions already taken, for ``h`` of any leading shape
        (``[T, B, N]`` with ``action`` ``[T, B, d]``)."""
        return self._score(self._mean(h), action)

    def _mean(self, h: Tensor) -> Tensor:
        return self.low + (self.high - self.low) * torch.sigmoid(self.mean(h))

    def _score(self, mean: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        std = self.log_std.exp().expand_as(mean)
        log_prob = (
            -((action - mean) ** 2) / (2 * std**2) - self.log_std - 0.5 * math.log(2 * math.pi)
        ).sum(-1)
        entropy = (0.5 + 0.5 * math.log(2 * math.pi) + self.log_std).sum().expand(mean.shape[:-1])
        return log_prob, entropy, torch.zeros_like(log_prob)


class ActorCritic(nn.Module):
    """Policy and value heads on a recurrent core; one :meth:`step` per env step."""

    def __init__(self, core: nn.Module, action_space: spaces.Discrete | spaces.Box) -> None:
        super().__init__()
        self.core = core
        hidden = core.hidden_size
        if isinstance(action_space, spaces.Discrete):
            self.policy = CategoricalHead(hidden, int(action_space.n))
        elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
            self.policy = GaussianHead(hidden, action_space.low, action_space.high)
        else:
            raise ValueError(f"unsupported action space {action_space}: Discrete or 1-D Box only")
        self.value = nn.Linear(hidden, 1)

    def initial_state(self, batch_size: int) -> CoreState:
        return self.core.initial_state(batch_size)

    def step(
        self,
        obs: Tensor,
        state: CoreState,
        generator: torch.Generator | None = None,
        greedy: bool = False,
    ) -> tuple[StepOutput, CoreState]:
        """Observations ``[B, D]`` → an action per episode, its log-prob, the value, M(t)."""
        h, m, state = self.core.step(obs, state)
        action, log_prob, entropy, sum_squares = self.policy(h, generator, greedy)
        value = self.value(h).squeeze(-1)
        return StepOutput(action, log_prob, entropy, sum_squares, value, h, m), state

    def replay(
        self, obs: Tensor, actions: Tensor, played: PlayedSequence | None = None
    ) -> StepOutput:
        """Every step of whole episodes at once, from their start: observations ``[T, B, D]``
        and the actions taken ``[T, B]`` (or ``[T, B, d]``) -> a :class:`StepOutput` of
        ``[T, B, ...]`` tensors.

        The core runs the observation sequence in one call (for the plastic core, one fused
        kernel for forward and one for backward instead of ``T`` steps), so training plays an
        episode without a graph and differentiates this replay. The core is deterministic,
        so the replay computes the played episode's activations (bit for bit on the fused
        plastic core), and its gradients are those of the played steps. ``played``, what the
        core kept while the episode was played, spares the fused core its forward.
        """
        out = self.core(obs)[0] if played is None else self.core.replay(obs, played)
        log_prob, entropy, sum_squares = self.policy.score(out.h, actions)
        value = self.value(out.h).squeeze(-1)
        return StepOutput(actions, log_prob, entropy, sum_squares, value, out.h, out.m)


def plastic_config(
    kind: str,
    input_size: int,
    hidden_size: int,
    plastic_rule: str = "decay",
    modulation: str = "scalar",
) -> PlasticConfig:
    """The plastic core of each plastic agent kind."""
    if kind == "modulated":
        return PlasticConfig(
            input_size, hidden_size, rule="clip", neuromod="simple", modulation=modulation
        )
    if kind == "retroactive":
        return PlasticConfig(
            input_size, hidden_size, rule="clip", neuromod="retroactive", modulation=modulation
        )
    if kind == "plastic":
        return PlasticConfig(input_size, hidden_size, rule=plastic_rule, neuromod="none")
    raise ValueError(f"{kind!r} is not a plastic agent kind")


def build_agent(
    kind: str,
    obs_size: int,
    action_space: spaces.Discrete | spaces.Box,
    hidden_size: int,
    plastic_rule: str = "decay",
    modulation: str = "scalar",
    match_baselines: bool = True,
) -> ActorCritic:
    """An agent of ``kind``. With ``match_baselines``, ``rnn``/``lstm`` get the hidden size
    whose parameter count is closest to the modulated agent's with ``hidden_size`` units,
    so comparisons are at equal capacity (as in the papers)."""
    if kind not in AGENT_KINDS:
        raise ValueError(f"agent kind must be one of {list(AGENT_KINDS)}, got {kind!r}")
    if kind in ("modulated", "retroactive", "plastic"):
        config = plastic_config(kind, obs_size, hidden_size, plastic_rule, modulation)
        return ActorCritic(PlasticCore(config), action_space)
    core_class = RNNCore if kind == "rnn" else LSTMCore
    if match_baselines:
        reference = build_agent(
            "modulated", obs_size, action_space, hidden_size, modulation=modulation
        )
        policy_outputs = (
            action_space.n if isinstance(action_space, spaces.Discrete) else action_space.shape[0]
        )
        head_outputs = int(policy_outputs) + 1  # policy and value heads
        hidden_size = matched_hidden_size(
            lambda n: core_class(obs_size, n), count_parameters(reference), head_outputs
        )
    return ActorCritic(core_class(obs_size, hidden_size), action_space)
