"""Evaluate a trained agent with frozen weights (plasticity still on) against references.

The score is normalised as ``(agent - random) / (oracle - random)``, with the random and
oracle references evaluated on the very same episodes (same env seeds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hebbgym.agents.actor_critic import ActorCritic
from hebbgym.agents.references import REFERENCE_POLICIES, evaluate_reference
from hebbgym.envs.base import episode_batch_seeds
from hebbgym.train.config import TrainConfig
from hebbgym.train.loop import load_agent, make_env
from hebbgym.train.rollout import collect_rollout

EVALUATION_BATCH = 100
# The held-out episodes of the results report: every agent, baseline and reference is scored
# on the episodes seeded from here, none of which any training run draws.
EVALUATION_SEED = 10_000


def evaluate_agent(
    config: TrainConfig,
    agent: ActorCritic,
    episodes: int,
    seed: int = 0,
    greedy: bool = False,
    batch_size: int = EVALUATION_BATCH,
) -> np.ndarray:
    """Returns of the ``episodes`` episodes seeded ``seed``, ``seed + 1``, ... (see
    :func:`~hebbgym.envs.base.episode_batch_seeds`)."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    batch_size = min(batch_size, episodes)
    env = make_env(config, batch_size)
    generator = torch.Generator().manual_seed(seed)
    returns = []
    with torch.no_grad():
        for batch_seed in episode_batch_seeds(episodes, batch_size, seed):
            rollout = collect_rollout(env, agent, batch_seed, generator, greedy)
            returns.append(rollout.rewards.sum(0).numpy())
    env.close()
    return np.concatenate(returns)[:episodes].astype(np.float64)


def summarize(returns: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "sem": float(returns.std() / np.sqrt(len(returns))),
    }


def evaluate_run(
    run_dir: str | Path, episodes: int = 1000, seed: int = 0, greedy: bool = False
) -> dict[str, Any]:
    """A JSON-ready summary of a run's agent and the references on the same episodes."""
    config, agent, progress = load_agent(Path(run_dir))
    return evaluation_summary(config, agent, episodes, seed, greedy, progress)


def evaluation_summary(
    config: TrainConfig,
    agent: ActorCritic,
    episodes: int,
    seed: int,
    greedy: bool,
    progress: dict[str, Any] | None = None,
) -> dict[str, Any]:
    agent_returns = evaluate_agent(config, agent, episodes, seed, greedy, EVALUATION_BATCH)
    summary: dict[str, Any] = {
        "env_id": config.env_id,
        "agent": config.agent,
        "episodes": episodes,
        "seed": seed,
        "greedy": greedy,
        "trained_episodes": (progress or {}).get("episodes"),
        "return": summarize(agent_returns),
        "references": {},
    }
    for name in REFERENCE_POLICIES[config.env_id]:
        reference = evaluate_reference(
            config.env_id, name, episodes, seed, EVALUATION_BATCH, **config.env_kwargs
        )
        summary["references"][name] = summarize(reference)
    random_mean = summary["references"]["random"]["mean"]
    oracle_mean = summary["references"]["oracle"]["mean"]
    if oracle_mean > random_mean:
        summary["score"] = (summary["return"]["mean"] - random_mean) / (oracle_mean - random_mean)
    return summary
