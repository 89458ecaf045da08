"""Task rules of ``Hebb-Conditioning-v0`` / ``Hebb-ConditioningIndependent-v0`` (SPEC section 2)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import hebbgym  # noqa: F401  (registers the ids)
from tests.envs.refusals import (
    assert_kwargs_refused,
    assert_option_refused,
    assert_single_action_refused,
    assert_vector_actions_refused,
)

EXCLUSIVE = "Hebb-Conditioning-v0"
INDEPENDENT = "Hebb-ConditioningIndependent-v0"
BOTH = [EXCLUSIVE, INDEPENDENT]


def make_vec(env_id: str, num_envs: int, **kwargs) -> gym.vector.VectorEnv:
    return gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
    )


def roll_out(env_id: str, num_envs: int, seed: int, **kwargs) -> dict[str, np.ndarray]:
    """One batch of full episodes with random actions; arrays are (steps, envs)."""
    env = make_vec(env_id, num_envs, **kwargs)
    layout = env.unwrapped.obs_layout
    continuous = isinstance(env.single_action_space, gym.spaces.Box)
    length = env.unwrapped.batch.length
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    record: dict[str, list] = {
        k: [] for k in ("s1", "s2", "pain", "task", "target", "action", "reward")
    }
    for _ in range(length):
        actions = rng.random((num_envs, 1)) if continuous else rng.integers(2, size=num_envs)
        record["s1"].append(obs[:, layout["stimuli"].start])
        record["s2"].append(obs[:, layout["stimuli"].start + 1])
        record["pain"].append(obs[:, layout["pain"].start])
        record["task"].append(info["task"])
        record["target"].append(info["target"])
        record["action"].append(actions[:, 0] if continuous else actions)
        obs, reward, terminated, _, info = env.step(actions)
        assert not terminated.any()
        record["reward"].append(reward)
    env.close()
    return {key: np.array(values) for key, values in record.items()}


@pytest.fixture(scope="module")
def exclusive() -> dict[str, np.ndarray]:
    return roll_out(EXCLUSIVE, 500, seed=1)


@pytest.fixture(scope="module")
def independent() -> dict[str, np.ndarray]:
    return roll_out(INDEPENDENT, 500, seed=2)


def within(count: float, n: float, p: float, sigmas: float = 5.0) -> bool:
    """``count`` successes out of ``n`` are within ``sigmas`` binomial sd of ``n * p``."""
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


def test_observation_layout_names_stimuli_and_pain() -> None:
    env = gym.make(EXCLUSIVE)
    layout = env.unwrapped.obs_layout
    widths = {name: part.stop - part.start for name, part in layout.items()}
    assert widths == {"stimuli": 2, "pain": 1, "bias": 1, "time": 1, "reward": 1, "action": 2}
    assert env.observation_space.shape == (8,)
    assert env.action_space == gym.spaces.Discrete(2)
    assert env.spec.max_episode_steps == 100
    env.close()


@pytest.mark.parametrize("name", ["exclusive", "independent"])
def test_pain_only_with_the_paired_stimulus_at_rate_0_3(name: str, request) -> None:
    data = request.getfixturevalue(name)
    stimuli = np.stack([data["s1"], data["s2"]])  # (2, steps, envs)
    paired_on = np.take_along_axis(stimuli, data["task"][None].astype(np.int64), axis=0)[0] == 1
    pain = data["pain"] == 1
    assert not (pain & ~paired_on).any(), "pain without the paired stimulus"
    n, k = paired_on.sum(), (pain & paired_on).sum()
    assert n > 20_000
    assert within(k, n, 0.3), k / n


@pytest.mark.parametrize("name", ["exclusive", "independent"])
def test_paired_stimulus_is_fixed_per_episode_and_fair(name: str, request) -> None:
    data = request.getfixturevalue(name)
    task = data["task"]
    assert set(np.unique(task)) <= {0, 1}
    assert (task == task[0]).all(), "the paired stimulus changed within an episode"
    assert within(task[0].sum(), task.shape[1], 0.5)


def test_exclusive_variant_shows_exactly_one_stimulus(exclusive) -> None:
    s1, s2 = exclusive["s1"], exclusive["s2"]
    assert set(np.unique(s1)) == {0.0, 1.0}
    np.testing.assert_array_equal(s1 + s2, 1.0)
    assert within(s1.sum(), s1.size, 0.5)


def test_independent_variant_draws_each_stimulus_with_probability_half(independent) -> None:
    s1, s2 = independent["s1"] == 1, independent["s2"] == 1
    n = s1.size
    assert within(s1.sum(), n, 0.5) and within(s2.sum(), n, 0.5)
    assert within((s1 & s2).sum(), n, 0.25), "both on should happen a quarter of the time"
    assert within((~s1 & ~s2).sum(), n, 0.25), "none on should happen a quarter of the time"


@pytest.mark.parametrize("name", ["exclusive", "independent"])
def test_target_is_fear_exactly_when_paired_stimulus_is_on(name: str, request) -> None:
    data = request.getfixturevalue(name)
    expected = np.where(data["task"] == 0, data["s1"], data["s2"])
    np.testing.assert_array_equal(data["target"], expected)
    # with or without pain: pain-free paired steps also want fear
    assert ((data["target"] == 1) & (data["pain"] == 0)).any()


@pytest.mark.parametrize("name", ["exclusive", "independent"])
def test_reward_zero_in_learning_period_then_plus_minus_one(name: str, request) -> None:
    data = request.getfixturevalue(name)
    reward, right = data["reward"], data["action"] == data["target"]
    np.testing.assert_array_equal(reward[:20], 0.0)
    np.testing.assert_array_equal(reward[20:], np.where(right[20:], 1.0, -1.0))


def test_learning_period_kwarg_moves_the_start_of_scoring() -> None:
    data = roll_out(EXCLUSIVE, 8, seed=3, learning_period=0)
    right = data["action"] == data["target"]
    np.testing.assert_array_equal(data["reward"], np.where(right, 1.0, -1.0))
    data = roll_out(EXCLUSIVE, 8, seed=3, learning_period=50)
    np.testing.assert_array_equal(data["reward"][:50], 0.0)
    assert (data["reward"][50:] != 0).all()


def test_pain_prob_kwarg_sets_the_rate() -> None:
    data = roll_out(EXCLUSIVE, 50, seed=4, pain_prob=1.0)
    paired_on = np.where(data["task"] == 0, data["s1"], data["s2"])
    np.testing.assert_array_equal(data["pain"], paired_on)


def test_continuous_reward_is_minus_squared_error() -> None:
    env = gym.make(EXCLUSIVE, continuous=True)
    assert env.action_space == gym.spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
    assert env.unwrapped.obs_layout["action"].stop - env.unwrapped.obs_layout["action"].start == 1
    env.close()
    data = roll_out(EXCLUSIVE, 64, seed=5, continuous=True)
    expected = -((data["action"] - data["target"]) ** 2)
    np.testing.assert_allclose(data["reward"][20:], expected[20:], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(data["reward"][:20], 0.0)
    assert (data["reward"] <= 0).all() and (data["reward"] >= -1).all()


def test_continuous_single_env_reward_and_action_channel() -> None:
    env = gym.make(EXCLUSIVE, continuous=True, learning_period=0)
    layout = env.unwrapped.obs_layout
    _, info = env.reset(seed=0, options={"task": 1})
    assert info["task"] == 1
    obs, reward, _, _, _ = env.step(np.array([0.25], dtype=np.float32))
    assert reward == pytest.approx(-((0.25 - info["target"]) ** 2))
    assert obs[layout["action"]][0] == pytest.approx(0.25)
    env.close()


@pytest.mark.parametrize("task", [0, 1])
def test_fixed_task_is_reported(task: int) -> None:
    env = gym.make(INDEPENDENT)
    layout = env.unwrapped.obs_layout
    obs, info = env.reset(seed=9, options={"task": task})
    for _ in range(100):
        assert info["task"] == task
        assert info["target"] == obs[layout["stimuli"].start + task]
        obs, _, _, _, info = env.step(0)
    env.close()


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", BOTH)
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"pain_prob": 2}, ValueError, "pain_prob"),
        ({"pain_prob": -0.1}, ValueError, "pain_prob"),
        ({"pain_prob": 0.0}, ValueError, "pain_prob"),
        ({"episode_length": 0}, ValueError, "episode_length"),
        ({"learning_period": -1}, ValueError, "learning_period"),
        ({"learning_period": 100}, ValueError, "learning_period"),
        ({"continuous": 1}, TypeError, "continuous"),
        ({"pain_probability": 0.3}, TypeError, "pain_probability"),
    ],
)
def test_bad_kwargs_raise_naming_the_argument(env_id, kwargs, error, match) -> None:
    assert_kwargs_refused(env_id, kwargs, error, match)


@pytest.mark.parametrize("task", [2, -1, True, 0.0, "S1", None])
def test_bad_task_option_raises(task) -> None:
    env = gym.make(EXCLUSIVE)
    with pytest.raises(ValueError, match="paired stimulus"):
        env.reset(seed=0, options={"task": task})
    env.close()


def test_unknown_reset_option_raises_naming_it() -> None:
    assert_option_refused(EXCLUSIVE, {"paired": 1}, "paired")


@pytest.mark.parametrize("env_id", BOTH)
@pytest.mark.parametrize(
    ("action", "error", "match"),
    [
        (2, ValueError, r"\[0, 1\]"),
        (-1, ValueError, r"\[0, 1\]"),
        (1.0, TypeError, "integer"),
        (True, TypeError, "integer"),
        (np.array([1]), ValueError, "shape"),
    ],
)
def test_bad_discrete_action_raises(env_id, action, error, match) -> None:
    assert_single_action_refused(env_id, action, error, match)


@pytest.mark.parametrize(
    ("action", "error", "match"),
    [
        (np.array([np.nan]), ValueError, "finite"),
        (np.array([np.inf]), ValueError, "finite"),
        (np.array([1.5]), ValueError, r"\[0.0, 1.0\]"),
        (np.array([-0.01]), ValueError, r"\[0.0, 1.0\]"),
        (0.5, ValueError, "shape"),
        (np.array([[0.5]]), ValueError, "shape"),
        (np.array([0.5, 0.5]), ValueError, "shape"),
        (np.array([True]), TypeError, "real"),
    ],
)
def test_bad_continuous_action_raises(action, error, match) -> None:
    env = gym.make(EXCLUSIVE, continuous=True)
    env.reset(seed=0)
    with pytest.raises(error, match=match):
        env.step(action)
    env.close()


@pytest.mark.parametrize(
    ("continuous", "actions", "error", "match"),
    [
        (False, np.array([0, 1, 2]), ValueError, r"\[0, 1\]"),
        (False, np.array([0.0, 1.0, 0.0]), TypeError, "integer"),
        (False, np.array([True, False, True]), TypeError, "integer"),
        (False, np.array([0, 1]), ValueError, "shape"),
        (False, np.array([[0], [1], [0]]), ValueError, "shape"),
        (True, np.full(3, 0.5), ValueError, "shape"),
        (True, np.full((2, 1), 0.5), ValueError, "shape"),
        (True, np.array([[0.5], [np.nan], [0.5]]), ValueError, "finite"),
        (True, np.array([[0.5], [2.0], [0.5]]), ValueError, r"\[0.0, 1.0\]"),
    ],
)
def test_bad_vector_actions_raise(continuous, actions, error, match) -> None:
    assert_vector_actions_refused(EXCLUSIVE, actions, error, match, continuous=continuous)
