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
    def accuracy_and_rewards(response: float) -> tuple[np.ndarray, np.ndarray]:
        env = gym.make_vec(
            "Hebb-Conditioning-v0", 8, vectorization_mode="vector_entry_point", continuous=True
        )
        env.reset(seed=3)  # the same episodes whatever the responses
        rewards = [env.step(np.full((8, 1), response, np.float32))[1] for _ in range(100)]
        return env.unwrapped.batch.accuracy(), np.array(rewards)

    fear, rewards = accuracy_and_rewards(0.6)
    # Reward -(0.6 - target)^2: -0.16 where the target is fear (1), -0.36 where it is calm.
    fear_wanted = np.isclose(rewards[20:], -0.16).mean(axis=0)
    np.testing.assert_allclose(fear, fear_wanted)
    np.testing.assert_allclose(accuracy_and_rewards(0.5)[0], fear_wanted)  # 0.5 is fear
    np.testing.assert_allclose(accuracy_and_rewards(0.4)[0], 1 - fear_wanted)


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


def test_an_episode_with_nothing_to_score_has_no_accuracy_and_no_verdict() -> None:
    from hebbgym.agents.references import evaluate_reference, evaluate_reference_scores
    from hebbgym.envs.base import mean_accuracy
    from hebbgym.train.evaluate import is_solved, task_rules

    # A time limit inside the learning period leaves no rewarded step to score.
    cut = {"max_episode_steps": 15}
    with pytest.warns(UserWarning, match="cuts episodes"):
        scores = evaluate_reference_scores("Hebb-Conditioning-v0", "oracle", 10, **cut)
        rules = task_rules("Hebb-Conditioning-v0", cut)
    assert np.isnan(scores.accuracy).all() and mean_accuracy(scores.accuracy) is None
    assert is_solved(rules, float(scores.returns.mean()), None, {}) is None
    # Short cue-reward episodes: some have a go step in their second half, some not.
    short = evaluate_reference_scores("Hebb-CueReward-v0", "oracle", 200, episode_length=8)
    assert np.isnan(short.accuracy).any() and not np.isnan(short.accuracy).all()
    assert mean_accuracy(short.accuracy) == 1.0
    returns = evaluate_reference("Hebb-CueReward-v0", "random", 30, episode_length=8)
    assert returns.shape == (30,)


def test_accuracy_needs_finished_episodes_and_a_task_that_has_one() -> None:
    env = gym.make_vec("Hebb-CueReward-v0", num_envs=2, vectorization_mode="vector_entry_point")
    env.reset(seed=0)
    env.step(np.zeros(2, np.int64))
    with pytest.raises(RuntimeError, match="finished episodes"):
        env.unwrapped.batch.accuracy()
    maze = gym.make_vec("Hebb-Maze-v0", num_envs=2, vectorization_mode="vector_entry_point")
    maze.reset(seed=0)
    assert maze.unwrapped.batch.accuracy() is None
