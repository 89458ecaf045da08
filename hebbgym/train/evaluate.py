"""Evaluate a trained agent with frozen weights (plasticity still on) against references.

The score is normalised as ``(agent - random) / (oracle - random)``, with the random and
oracle references evaluated on the very same episodes (same env seeds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from hebbgym.agents.actor_critic import ActorCritic
from hebbgym.agents.references import REFERENCE_POLICIES, evaluate_reference_scores
from hebbgym.envs.base import (
    EpisodeScores,
    ScoreLog,
    TaskRules,
    episode_batch_seeds,
    mean_accuracy,
)
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
    return evaluate_agent_scores(config, agent, episodes, seed, greedy, batch_size).returns


def evaluate_agent_scores(
    config: TrainConfig,
    agent: ActorCritic,
    episodes: int,
    seed: int = 0,
    greedy: bool = False,
    batch_size: int = EVALUATION_BATCH,
) -> EpisodeScores:
    """:func:`evaluate_agent`'s returns, with the task's accuracy where it has one."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    batch_size = min(batch_size, episodes)
    env = make_env(config, batch_size)
    generator = torch.Generator().manual_seed(seed)
    log = ScoreLog()
    with torch.no_grad():
        for batch_seed in episode_batch_seeds(episodes, batch_size, seed):
            rollout = collect_rollout(env, agent, batch_seed, generator, greedy)
            log.add(rollout.rewards.sum(0).numpy(), env.unwrapped.batch)
    env.close()
    return log.scores(episodes)


def task_rules(env_id: str, env_kwargs: dict[str, Any]) -> TaskRules:
    """The rules of a registered task with these kwargs (they hold its solved criterion)."""
    env = gym.make_vec(env_id, num_envs=1, vectorization_mode="vector_entry_point", **env_kwargs)
    rules = env.unwrapped.batch.rules
    env.close()
    return rules


def score_fields(scores: EpisodeScores, greedy: bool) -> dict[str, list[float]]:
    """The keys an evaluation file stores ``scores`` under: ``returns`` and ``accuracy``,
    prefixed ``greedy_`` for greedy actions (no accuracy for a task without one)."""
    prefix = "greedy_" if greedy else ""
    fields = {f"{prefix}returns": scores.returns.tolist()}
    if scores.accuracy is not None:
        fields[f"{prefix}accuracy"] = scores.accuracy.tolist()
    return fields


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


def is_solved(
    rules: TaskRules,
    mean_return: float,
    mean_accuracy: float | None,
    reference_returns: dict[str, float],
) -> bool | None:
    """The task's solved criterion (:attr:`TaskRules.solved_accuracy` or
    :attr:`TaskRules.solved_reference`) on an evaluation's means; ``None`` where it has none,
    or where it is judged on accuracy and no episode had answers to score."""
    if rules.solved_accuracy is not None:
        return None if mean_accuracy is None else bool(mean_accuracy >= rules.solved_accuracy)
    if rules.solved_reference is not None:  # less regret than the reference: strictly above it
        return bool(mean_return > reference_returns[rules.solved_reference])
    return None


def evaluation_summary(
    config: TrainConfig,
    agent: ActorCritic,
    episodes: int,
    seed: int,
    greedy: bool,
    progress: dict[str, Any] | None = None,
) -> dict[str, Any]:
    scores = evaluate_agent_scores(config, agent, episodes, seed, greedy, EVALUATION_BATCH)
    summary: dict[str, Any] = {
        "env_id": config.env_id,
        "agent": config.agent,
        "episodes": episodes,
        "seed": seed,
        "greedy": greedy,
        "trained_episodes": (progress or {}).get("episodes"),
        "return": summarize(scores.returns),
        "references": {},
    }
    accuracy = mean_accuracy(scores.accuracy)
    if accuracy is not None:
        summary["accuracy"] = summarize(scores.accuracy[~np.isnan(scores.accuracy)])
        summary["reference_accuracy"] = {}
    for name in REFERENCE_POLICIES[config.env_id]:
        reference = evaluate_reference_scores(
            config.env_id, name, episodes, seed, EVALUATION_BATCH, **config.env_kwargs
        )
        summary["references"][name] = summarize(reference.returns)
        if accuracy is not None:
            summary["reference_accuracy"][name] = mean_accuracy(reference.accuracy)
    references = {name: value["mean"] for name, value in summary["references"].items()}
    random_mean, oracle_mean = references["random"], references["oracle"]
    if oracle_mean > random_mean:
        summary["score"] = (summary["return"]["mean"] - random_mean) / (oracle_mean - random_mean)
    rules = task_rules(config.env_id, config.env_kwargs)
    solved = is_solved(rules, summary["return"]["mean"], accuracy, references)
    if solved is not None:
        summary["solved"] = solved
    return summary
