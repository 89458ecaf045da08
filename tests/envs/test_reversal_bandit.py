"""Task rules of ``Hebb-ReversalBandit-v0`` (SPEC section 2): reversals and pay probabilities."""

from __future__ import annotations

import math

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

ENV_ID = "Hebb-ReversalBandit-v0"


def make_vec(num_envs: int, **kwargs) -> gym.vector.VectorEnv:
    return gym.make_vec(
        ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
    )


def roll_out(num_envs: int, seed: int, **kwargs) -> dict[str, np.ndarray]:
    """Full episodes with uniformly random pulls; arrays are (steps, envs).

    ``good[t]`` is the good arm for pull ``t`` (from the info before it) and ``reversal[t]``
    says whether it differs from the good arm of pull ``t - 1``."""
    env = make_vec(num_envs, **kwargs)
    arms = int(env.single_action_space.n)
    rng = np.random.default_rng(seed)
    _, info = env.reset(seed=seed)
    assert not info["reversal"].any()
    record: dict[str, list] = {k: [] for k in ("good", "reversal", "task", "action", "reward")}
    for _ in range(env.unwrapped.batch.length):
        actions = rng.integers(arms, size=num_envs)
        record["good"].append(info["good_arm"])
        record["reversal"].append(info["reversal"])
        record["task"].append(info["task"])
        record["action"].append(actions)
        _, reward, terminated, _, info = env.step(actions)
        assert not terminated.any()
        record["reward"].append(reward)
    env.close()
    return {key: np.array(values) for key, values in record.items()}


def within(count: float, n: float, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


@pytest.fixture(scope="module")
def default() -> dict[str, np.ndarray]:
    return roll_out(4000, seed=0)


def test_observation_has_no_task_channels() -> None:
    env = gym.make(ENV_ID)
    layout = env.unwrapped.obs_layout
    assert set(layout) == {"bias", "time", "reward", "action"}
    assert env.observation_space.shape == (5,)
    assert env.action_space == gym.spaces.Discrete(2)
    assert env.spec.max_episode_steps == 100
    env.close()


def test_default_has_exactly_one_reversal_in_the_middle_half(default) -> None:
    good, reversal = default["good"], default["reversal"]
    changed = np.vstack([np.zeros((1, good.shape[1]), bool), good[1:] != good[:-1]])
    np.testing.assert_array_equal(reversal, changed)  # info["reversal"] agrees with good_arm
    np.testing.assert_array_equal(reversal.sum(axis=0), 1)
    step = reversal.argmax(axis=0)
    assert step.min() == 25 and step.max() == 75
    # uniform over the 51 steps 25..75: chi-square with 50 dof, 5-sigma bound
    counts = np.bincount(step - 25, minlength=51)
    expected = len(step) / 51
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 50 + 5 * np.sqrt(100), chi2
    np.testing.assert_array_equal(default["task"], np.broadcast_to(good[0], good.shape))


@pytest.mark.parametrize("length", [50, 10])
def test_reversal_step_lies_in_quarter_to_three_quarters_for_any_length(length: int) -> None:
    """SPEC: the step is uniform in [T/4, 3T/4], so every integer in [ceil(T/4), floor(3T/4)]
    occurs and nothing outside it does (T = 50: 13..37; T = 10: 3..7)."""
    data = roll_out(1000, seed=length, episode_length=length, max_episode_steps=length)
    np.testing.assert_array_equal(data["reversal"].sum(axis=0), 1)
    steps = set(data["reversal"].argmax(axis=0).tolist())
    assert steps == set(range(math.ceil(length / 4), math.floor(3 * length / 4) + 1)), sorted(steps)


def test_initial_good_arm_is_uniform(default) -> None:
    first = default["good"][0]
    assert within((first == 1).sum(), first.size, 0.5)


def test_pay_probabilities_are_0_8_and_0_2(default) -> None:
    good_pull = default["action"] == default["good"]
    paid = default["reward"] == 1.0
    assert set(np.unique(default["reward"])) == {0.0, 1.0}
    n_good, n_bad = good_pull.sum(), (~good_pull).sum()
    assert within((paid & good_pull).sum(), n_good, 0.8), (paid & good_pull).sum() / n_good
    assert within((paid & ~good_pull).sum(), n_bad, 0.2), (paid & ~good_pull).sum() / n_bad


def test_custom_pay_probabilities() -> None:
    data = roll_out(1000, seed=3, p_good=0.6, p_bad=0.5)
    good_pull = data["action"] == data["good"]
    paid = data["reward"] == 1.0
    assert within((paid & good_pull).sum(), good_pull.sum(), 0.6)
    assert within((paid & ~good_pull).sum(), (~good_pull).sum(), 0.5)


def test_hazard_gives_hazard_times_length_reversals_on_average() -> None:
    data = roll_out(2000, seed=4, hazard=0.05)
    good = data["good"]
    changed = np.vstack([np.zeros((1, good.shape[1]), bool), good[1:] != good[:-1]])
    np.testing.assert_array_equal(data["reversal"], changed)
    # one draw per pull after the first, each reversal always moves the arm (2 arms)
    per_episode = data["reversal"].sum(axis=0)
    trials = 99
    mean, sd = 0.05 * trials, np.sqrt(trials * 0.05 * 0.95)
    assert abs(per_episode.mean() - mean) < 5 * sd / np.sqrt(len(per_episode)), per_episode.mean()
    assert abs(per_episode.var() - sd**2) < 0.2 * sd**2
    assert per_episode.max() >= 10 and per_episode.min() == 0  # any number of reversals
    # reversals happen anywhere, not only in the middle half
    steps = np.nonzero(data["reversal"])[0]
    assert steps.min() <= 3 and steps.max() >= 96


def test_zero_hazard_never_reverses() -> None:
    data = roll_out(200, seed=5, hazard=0.0)
    assert not data["reversal"].any()


def test_three_arms_reverse_to_either_other_arm() -> None:
    data = roll_out(3000, seed=6, arms=3)
    env = gym.make(ENV_ID, arms=3)
    assert env.action_space == gym.spaces.Discrete(3)
    assert env.unwrapped.obs_layout["action"].stop - env.unwrapped.obs_layout["action"].start == 3
    env.close()
    good = data["good"]
    assert set(np.unique(good)) == {0, 1, 2}
    for arm in range(3):
        assert within((good[0] == arm).sum(), good.shape[1], 1 / 3)
    np.testing.assert_array_equal(data["reversal"].sum(axis=0), 1)
    before, after = good[0], good[-1]
    assert (before != after).all()
    shift = (after - before) % 3
    assert within((shift == 1).sum(), len(shift), 0.5)
    good_pull = data["action"] == good
    paid = data["reward"] == 1.0
    assert within((paid & good_pull).sum(), good_pull.sum(), 0.8)
    assert within((paid & ~good_pull).sum(), (~good_pull).sum(), 0.2)


@pytest.mark.parametrize("arm", [0, 1, 2])
def test_fixed_initial_good_arm(arm: int) -> None:
    env = gym.make(ENV_ID, arms=3)
    _, info = env.reset(seed=0, options={"task": arm})
    assert info["task"] == arm and info["good_arm"] == arm
    for _ in range(100):
        _, _, _, _, info = env.step(0)
        assert info["task"] == arm
    env.close()


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"p_good": 0.2, "p_bad": 0.2}, ValueError, "p_good"),
        ({"p_good": 0.1, "p_bad": 0.9}, ValueError, "p_good"),
        ({"p_good": 1.5}, ValueError, "p_good"),
        ({"p_bad": -0.1}, ValueError, "p_bad"),
        ({"arms": 1}, ValueError, "arms"),
        ({"arms": 2.0}, TypeError, "arms"),
        ({"hazard": 1.5}, ValueError, "hazard"),
        ({"hazard": -0.01}, ValueError, "hazard"),
        ({"episode_length": 0}, ValueError, "episode_length"),
        ({"n_arms": 3}, TypeError, "n_arms"),
    ],
)
def test_bad_kwargs_raise_naming_the_argument(kwargs, error, match) -> None:
    assert_kwargs_refused(ENV_ID, kwargs, error, match)


@pytest.mark.parametrize("task", [2, -1, True, 1.0, None])
def test_bad_task_option_raises(task) -> None:
    env = gym.make(ENV_ID)
    with pytest.raises(ValueError, match="task"):
        env.reset(seed=0, options={"task": task})
    env.close()


def test_unknown_reset_option_raises_naming_it() -> None:
    assert_option_refused(ENV_ID, {"good_arm": 1}, "good_arm")


@pytest.mark.parametrize(
    ("action", "error", "match"),
    [
        (2, ValueError, r"\[0, 1\]"),
        (-1, ValueError, r"\[0, 1\]"),
        (0.0, TypeError, "integer"),
        (False, TypeError, "integer"),
        (np.array([0]), ValueError, "shape"),
    ],
)
def test_bad_single_action_raises(action, error, match) -> None:
    assert_single_action_refused(ENV_ID, action, error, match)


@pytest.mark.parametrize(
    ("actions", "error", "match"),
    [
        (np.array([0, 3, 1]), ValueError, r"\[0, 2\]"),
        (np.array([0.0, 1.0, 2.0]), TypeError, "integer"),
        (np.array([True, True, False]), TypeError, "integer"),
        (np.array([0, 1]), ValueError, "shape"),
        (np.array([[0, 1, 2]]), ValueError, "shape"),
    ],
)
def test_bad_vector_actions_raise(actions, error, match) -> None:
    assert_vector_actions_refused(ENV_ID, actions, error, match, arms=3)
