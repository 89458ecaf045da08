"""The accuracy behind the solved criterion of the conditioning and cue-reward tasks, checked
against the rewards the same episodes paid (two code paths that must agree)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import hebbgym  # noqa: F401  (registers the env ids)


def play(env_id: str, num_envs: int, rng: np.random.Generator, **kwargs) -> tuple:
    """Random binary actions to the end of the episodes; the env and the rewards (T, B)."""
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs)
    env.reset(seed=int(rng.integers(1000)))
    rewards = [
        env.step(rng.integers(2, size=num_envs))[1] for _ in range(env.unwrapped.batch.length)
    ]
    return env, np.array(rewards)


@pytest.mark.parametrize("env_id", ["Hebb-Conditioning-v0", "Hebb-ConditioningIndependent-v0"])
def test_conditioning_accuracy_is_the_share_of_rewarded_steps_answered_right(env_id) -> None:
    env, rewards = play(env_id, 16, np.random.default_rng(0), learning_period=20)
    accuracy = env.unwrapped.batch.accuracy()
    # After the learning period every step pays +1 (right) or -1 (wrong).
    np.testing.assert_allclose(accuracy, (rewards[20:].mean(axis=0) + 1) / 2)
    assert 0.3 < accuracy.mean() < 0.7  # random responses


def test_a_continuous_response_counts_as_fear_from_one_half() -> None:
    env = gym.make_vec(
        "Hebb-Conditioning-v0", num_envs=8, vectorization_mode="vector_entry_point", continuous=True
    )
    env.reset(seed=3)
    rewards = [env.step(np.full((8, 1), 0.6, np.float32))[1] for _ in range(100)]
    # Reward -(0.6 - target)^2: -0.16 where fear (target 1) is right, -0.36 where calm is.
    right = np.isclose(np.array(rewards[20:]), -0.16)
    np.testing.assert_allclose(env.unwrapped.batch.accuracy(), right.mean(axis=0))


def test_cue_reward_accuracy_counts_the_go_steps_of_the_second_half() -> None:
    env, rewards = play("Hebb-CueReward-v0", 16, np.random.default_rng(1))
    accuracy = env.unwrapped.batch.accuracy()
    # Rewards are paid at go steps only: +1 for a right answer, -1 for a wrong one.
    second_half = rewards[60:]
    expected = (second_half > 0).sum(axis=0) / (second_half != 0).sum(axis=0)
    np.testing.assert_allclose(accuracy, expected)
    assert not np.allclose(accuracy, ((rewards > 0).sum(0) / (rewards != 0).sum(0)))


def test_an_oracle_is_always_right() -> None:
    from hebbgym.agents.references import evaluate_reference_scores

    for env_id in ("Hebb-Conditioning-v0", "Hebb-CueReward-v0"):
        scores = evaluate_reference_scores(env_id, "oracle", 50)
        np.testing.assert_array_equal(scores.accuracy, np.ones(50))
        random = evaluate_reference_scores(env_id, "random", 200).accuracy.mean()
        assert random == pytest.approx(0.5, abs=0.05)


def test_accuracy_needs_finished_episodes_and_a_task_that_has_one() -> None:
    env = gym.make_vec("Hebb-CueReward-v0", num_envs=2, vectorization_mode="vector_entry_point")
    env.reset(seed=0)
    env.step(np.zeros(2, np.int64))
    with pytest.raises(RuntimeError, match="finished episodes"):
        env.unwrapped.batch.accuracy()
    maze = gym.make_vec("Hebb-Maze-v0", num_envs=2, vectorization_mode="vector_entry_point")
    maze.reset(seed=0)
    assert maze.unwrapped.batch.accuracy() is None
