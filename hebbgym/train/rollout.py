"""Play a batch of whole episodes on the native vector env, with the graph for BPTT."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from hebbgym.agents.actor_critic import ActorCritic, StepOutput
from hebbgym.agents.plastic import CoreState, PlayedSequence
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
    replay: bool = True,
) -> Rollout:
    """Run ``env.num_envs`` episodes from ``reset(seed=seed)`` to truncation.

    Gradients flow through the whole episode (no truncation of BPTT), as in the papers. The
    episodes are played step by step without a graph (choosing actions needs only the
    forward pass); then, where gradients are enabled, :meth:`ActorCritic.replay` runs the
    recorded observations through the agent in one sequence call and its outputs, graph
    included, make the rollout: the same values and gradients as differentiating the played
    steps, at a fraction of the cost (docs/performance.md). Under ``torch.no_grad()``
    (evaluation) the played steps themselves are returned. ``replay=False`` keeps the graph of
    the played steps instead (one autograd node per step: slower, but right for a core whose
    forward is not a deterministic function of its inputs, e.g. one with dropout).

    ``on_step`` sees each step's agent output and the env info (for watching and analysis).
    """
    space = env.single_action_space
    length = env.unwrapped.batch.length
    steps: list[StepOutput] = []
    observations: list[torch.Tensor] = []
    rewards = np.zeros((length, env.num_envs), np.float32)
    replaying = replay and torch.is_grad_enabled()
    keep = set(model.core.replay_checkpoints(length)) if replaying else set()
    kept: dict[int, CoreState] = {}
    with torch.no_grad() if replay else contextlib.nullcontext():
        obs, info = env.reset(seed=seed)
        state = model.initial_state(env.num_envs)
        for t in range(length):
            if t in keep:
                kept[t] = state
            observations.append(torch.as_tensor(obs))
            out, state = model.step(observations[-1], state, generator, greedy)
            obs, reward, _, _, info = env.step(to_env_actions(out.action, space))
            rewards[t] = reward
            steps.append(out)
            if on_step is not None:
                on_step(out, info)
    if replaying:
        record = PlayedSequence(
            torch.stack([s.h for s in steps]), torch.stack([s.m for s in steps]), kept, state
        )
        actions = torch.stack([s.action for s in steps])
        played = model.replay(torch.stack(observations), actions, record)
    else:
        played = StepOutput(*(torch.stack(field) for field in zip(*steps, strict=True)))
    return Rollout(
        log_probs=played.log_prob,
        entropies=played.entropy,
        sum_squares=played.sum_squares,
        values=played.value,
        rewards=torch.from_numpy(rewards),
        modulation=played.m,
    )
