"""Play a batch of whole episodes on the native vector env, keeping the graph for BPTT."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from hebbgym.agents.actor_critic import ActorCritic, StepOutput
from hebbgym.train.a2c import Rollout


def episode_seed(run_seed: int, batch: int) -> int:
    """The env seed of batch ``batch`` of a run: distinct across runs and batches, and a pure
    function of both, so a resumed run replays exactly the episodes it would have seen."""
    return int(np.random.SeedSequence([run_seed, batch]).generate_state(1)[0])


def to_env_actions(action: torch.Tensor, space: spaces.Space) -> np.ndarray:
    """Agent actions as the vector env expects them (Box actions clipped into the box)."""
    array = action.detach().cpu().numpy()
    if isinstance(space, spaces.Discrete):
        return array.astype(np.int64)
    return np.clip(array, space.low, space.high).astype(np.float32)


def collect_rollout(
    env: gym.vector.VectorEnv,
    model: ActorCritic,
    seed: int,
    generator: torch.Generator | None,
    greedy: bool = False,
    on_step: Callable[[StepOutput, dict[str, Any]], None] | None = None,
) -> Rollout:
    """Run ``env.num_envs`` episodes from ``reset(seed=seed)`` to truncation.

    Gradients flow through the whole episode (no truncation of BPTT), as in the papers.
    ``on_step`` sees each step's agent output and the env info (for watching and analysis).
    """
    obs, info = env.reset(seed=seed)
    state = model.initial_state(env.num_envs)
    space = env.single_action_space
    length = env.unwrapped.batch.length
    steps: list[StepOutput] = []
    rewards = np.zeros((length, env.num_envs), np.float32)
    for t in range(length):
        out, state = model.step(torch.as_tensor(obs), state, generator, greedy)
        obs, reward, _, _, info = env.step(to_env_actions(out.action, space))
        rewards[t] = reward
        steps.append(out)
        if on_step is not None:
            on_step(out, info)
    return Rollout(
        log_probs=torch.stack([s.log_prob for s in steps]),
        entropies=torch.stack([s.entropy for s in steps]),
        sum_squares=torch.stack([s.sum_squares for s in steps]),
        values=torch.stack([s.value for s in steps]),
        rewards=torch.from_numpy(rewards),
        modulation=torch.stack([s.m for s in steps]),
    )
