"""Task rules of ``Hebb-CueReward-v0`` (SPEC section 2): cues, trial structure, go-step reward."""

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

ENV_ID = "Hebb-CueReward-v0"


def make_vec(num_envs: int, **kwargs) -> gym.vector.VectorEnv:
    return gym.make_vec(
        ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
    )


def roll_out(num_envs: int, seed: int, **kwargs) -> dict[str, np.ndarray]:
    """Full episodes with random answers. ``obs`` is (steps + 1, envs, D): it includes the
    last observation; ``action`` and ``reward`` are (steps, envs)."""
    env = make_vec(num_envs, **kwargs)
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    cues, target = info["task"]["cues"].copy(), info["task"]["target"].copy()
    observations, actions, rewards = [obs], [], []
    for _ in range(env.unwrapped.batch.length):
        action = rng.integers(2, size=num_envs)
        obs, reward, terminated, _, info = env.step(action)
        assert not terminated.any()
        np.testing.assert_array_equal(info["task"]["cues"], cues)
        np.testing.assert_array_equal(info["task"]["target"], target)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
    layout = env.unwrapped.obs_layout
    env.close()
    return {
        "obs": np.array(observations),
        "action": np.array(actions),
        "reward": np.array(rewards),
        "cues": cues,
        "target": target,
        "cue_slice": layout["cue"],
        "go_index": layout["go"].start,
        "reward_index": layout["reward"].start,
    }


def shown_cues(obs: np.ndarray, cues: np.ndarray, cue_slice: slice) -> np.ndarray:
    """Index of the cue seen at each step of one episode (-1 when blank); fails on anything else."""
    seen = obs[:, cue_slice]
    shown = np.full(len(obs), -1)
    for t, vector in enumerate(seen):
        if not vector.any():
            continue
        matches = np.flatnonzero((cues == vector).all(axis=1))
        assert len(matches) == 1, f"step {t} shows {vector}, not one of the episode's cues"
        shown[t] = matches[0]
    return shown


def trials(shown: np.ndarray, go: np.ndarray) -> list[tuple[int, int, list[int]]]:
    """(start, go step, cue indices) of each complete trial; a trial ends at its go step."""
    result, start = [], 0
    for g in np.flatnonzero(go):
        result.append((start, int(g), [int(c) for c in shown[start:g] if c >= 0]))
        start = int(g) + 1
    return result


@pytest.fixture(scope="module")
def episodes() -> dict[str, np.ndarray]:
    return roll_out(300, seed=0)


def test_observation_layout_and_spaces() -> None:
    env = gym.make(ENV_ID)
    layout = env.unwrapped.obs_layout
    widths = {name: part.stop - part.start for name, part in layout.items()}
    assert widths == {"cue": 20, "go": 1, "bias": 1, "time": 1, "reward": 1, "action": 2}
    assert env.observation_space.shape == (26,)
    assert env.action_space == gym.spaces.Discrete(2)
    assert env.spec.max_episode_steps == 120
    env.close()


def test_four_distinct_random_cues_of_20_plus_minus_one(episodes) -> None:
    cues, target = episodes["cues"], episodes["target"]
    assert cues.shape == (300, 4, 20)
    assert set(np.unique(cues)) == {-1, 1}
    for episode in cues:
        assert len(np.unique(episode, axis=0)) == 4
    # fresh cues each episode, bits balanced
    assert len(np.unique(cues.reshape(300, -1), axis=0)) == 300
    assert abs((cues == 1).mean() - 0.5) < 0.02
    assert set(np.unique(target)) == {0, 1, 2, 3}
    for k in range(4):
        assert abs((target == k).sum() - 75) < 5 * np.sqrt(300 * 0.25 * 0.75)


def test_trials_are_blanks_two_different_cues_go_then_response(episodes) -> None:
    obs, cue_slice, go_index = episodes["obs"], episodes["cue_slice"], episodes["go_index"]
    lengths, counts = [], []
    for e in range(obs.shape[1]):
        shown = shown_cues(obs[:, e], episodes["cues"][e], cue_slice)
        go = obs[:, e, go_index] == 1
        assert set(np.unique(obs[:, e, go_index])) <= {0.0, 1.0}
        assert (shown[go] == -1).all(), "a cue shown at a go step"
        assert not (go[1:] & go[:-1]).any(), "two go steps in a row"
        episode_trials = trials(shown, go)
        for index, (start, g, cues_in_trial) in enumerate(episode_trials):
            assert len(cues_in_trial) == 2 and cues_in_trial[0] != cues_in_trial[1], (e, g)
            # a trial: (response of the last trial) 1–2 blanks, cue, 0–1 blank, cue, 0–1 blank, go
            segment = shown[start : g + 1]
            first, second = np.flatnonzero(segment >= 0)
            lead = first if index == 0 else first - 1  # minus the previous trial's response step
            assert 1 <= lead <= 2, (e, g, segment)
            assert 0 <= second - first - 1 <= 1, (e, g, segment)
            assert 0 <= len(segment) - 1 - second - 1 <= 1, (e, g, segment)
            length = g - start + (2 if index == 0 else 1)  # first trial: count its response step
            assert 5 <= length <= 8, (e, g, segment)
            if index > 0:
                lengths.append(length)
        counts.append(int(go[:120].sum()))  # go steps the agent answers
    lengths = np.array(lengths)
    assert set(lengths.tolist()) == {5, 6, 7, 8}
    assert abs(lengths.mean() - 6.5) < 0.07  # lead 1.5 + 2 cues + gaps 1 + go + response
    counts = np.array(counts)
    assert counts.min() >= 15 and counts.max() <= 24
    assert 17.0 < counts.mean() < 20.0, counts.mean()


def test_reward_at_go_steps_only_plus_one_iff_answer_right(episodes) -> None:
    obs, cue_slice, go_index = episodes["obs"], episodes["cue_slice"], episodes["go_index"]
    scored = answered_yes = 0
    for e in range(obs.shape[1]):
        shown = shown_cues(obs[:, e], episodes["cues"][e], cue_slice)
        go = obs[:, e, go_index] == 1
        rewards, actions = episodes["reward"][:, e], episodes["action"][:, e]
        expected = np.zeros(120)
        for _, g, cues_in_trial in trials(shown, go):
            if g >= 120:
                continue
            answer = int(episodes["target"][e] in cues_in_trial)
            expected[g] = 1.0 if actions[g] == answer else -1.0
            scored += 1
            answered_yes += answer
        np.testing.assert_array_equal(rewards, expected)
        # the reward is seen at the next step (the response step)
        np.testing.assert_array_equal(obs[1:, e, episodes["reward_index"]], rewards)
    # the target is among 2 of 4 distinct cues in half of the trials
    assert abs(answered_yes / scored - 0.5) < 5 * np.sqrt(0.25 / scored)


def test_info_go_and_answer_describe_the_current_step() -> None:
    env = gym.make(ENV_ID)
    layout = env.unwrapped.obs_layout
    obs, info = env.reset(seed=4)
    cues, target = info["task"]["cues"], int(info["task"]["target"])
    trial_cues: list[int] = []
    go_steps = 0
    for _ in range(120):
        go = obs[layout["go"]][0] == 1
        assert bool(info["go"]) == go
        vector = obs[layout["cue"]]
        if vector.any():
            trial_cues.append(int(np.flatnonzero((cues == vector).all(axis=1))[0]))
        if go:
            right = int(target in trial_cues)
            assert info["answer"] == right
            action = right if go_steps % 2 else 1 - right  # alternate right and wrong answers
            obs, reward, _, _, info = env.step(action)
            assert reward == (1.0 if action == right else -1.0)
            assert obs[layout["reward"]][0] == reward
            trial_cues, go_steps = [], go_steps + 1
        else:
            obs, reward, _, _, info = env.step(int(go_steps % 2))
            assert reward == 0.0
    assert go_steps >= 15
    env.close()


def test_one_hot_cues() -> None:
    data = roll_out(20, seed=5, one_hot=True)
    np.testing.assert_array_equal(data["cues"], np.broadcast_to(np.eye(4, 20), (20, 4, 20)))
    seen = data["obs"][:, :, data["cue_slice"]]
    shown = seen.any(axis=2)
    assert shown.any()
    np.testing.assert_array_equal(seen[shown].sum(axis=1), 1.0)
    assert set(np.unique(seen)) == {0.0, 1.0}
    assert set(np.unique(data["target"])) <= {0, 1, 2, 3}


def test_cue_size_kwarg() -> None:
    env = gym.make(ENV_ID, cue_size=8)
    layout = env.unwrapped.obs_layout
    assert layout["cue"].stop - layout["cue"].start == 8
    _, info = env.reset(seed=0)
    assert info["task"]["cues"].shape == (4, 8)
    env.close()


def test_fixed_task_is_shown_and_reported() -> None:
    rng = np.random.default_rng(0)
    cues = np.where(rng.random((4, 20)) < 0.5, -1, 1)
    env = gym.make(ENV_ID)
    layout = env.unwrapped.obs_layout
    obs, info = env.reset(seed=1, options={"task": {"cues": cues, "target": 2}})
    np.testing.assert_array_equal(info["task"]["cues"], cues)
    assert info["task"]["target"] == 2
    seen = set()
    for _ in range(120):
        vector = obs[layout["cue"]]
        if vector.any():
            matches = np.flatnonzero((cues == vector).all(axis=1))
            assert len(matches) == 1
            seen.add(int(matches[0]))
        obs, _, _, _, info = env.step(0)
    assert seen == {0, 1, 2, 3}
    env.close()


# -- bad input -----------------------------------------------------------------------------

GOOD_CUES = np.array([[1, 1, -1, -1], [1, -1, 1, -1], [-1, -1, 1, 1], [1, 1, 1, 1]])


@pytest.mark.parametrize(
    ("task", "match"),
    [
        ({"cues": GOOD_CUES[[0, 0, 1, 2]], "target": 0}, "distinct"),
        ({"cues": GOOD_CUES[:3], "target": 0}, "shape"),
        ({"cues": GOOD_CUES.T[:, :3], "target": 0}, "shape"),
        ({"cues": GOOD_CUES * 2, "target": 0}, "values"),
        ({"cues": np.abs(GOOD_CUES) * 0, "target": 0}, "values|distinct"),
        ({"cues": GOOD_CUES, "target": 4}, "target"),
        ({"cues": GOOD_CUES, "target": -1}, "target"),
        ({"cues": GOOD_CUES, "target": 1.0}, "target"),
        ({"cues": GOOD_CUES, "target": True}, "target"),
        ({"cues": GOOD_CUES}, "target"),
        ({"cues": GOOD_CUES, "target": 0, "extra": 1}, "keys"),
        (GOOD_CUES, "dict"),
    ],
)
def test_bad_task_option_raises(task, match) -> None:
    env = gym.make(ENV_ID, cue_size=4)
    with pytest.raises(ValueError, match=match):
        env.reset(seed=0, options={"task": task})
    env.close()


def test_valid_small_task_is_accepted() -> None:
    env = gym.make(ENV_ID, cue_size=4)
    _, info = env.reset(seed=0, options={"task": {"cues": GOOD_CUES, "target": np.int64(3)}})
    np.testing.assert_array_equal(info["task"]["cues"], GOOD_CUES)
    assert info["task"]["target"] == 3
    env.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_cues": 1}, ValueError, "n_cues"),
        ({"cue_size": 0}, ValueError, "cue_size"),
        ({"cue_size": 1}, ValueError, "cue_size"),
        ({"one_hot": True, "cue_size": 3}, ValueError, "cue_size"),
        ({"one_hot": 1}, TypeError, "one_hot"),
        ({"episode_length": 0}, ValueError, "episode_length"),
        ({"cues": 4}, TypeError, "cues"),
    ],
)
def test_bad_kwargs_raise_naming_the_argument(kwargs, error, match) -> None:
    assert_kwargs_refused(ENV_ID, kwargs, error, match)


def test_unknown_reset_option_raises_naming_it() -> None:
    assert_option_refused(ENV_ID, {"target": 1}, "target")


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
def test_bad_single_action_raises(action, error, match) -> None:
    assert_single_action_refused(ENV_ID, action, error, match)


@pytest.mark.parametrize(
    ("actions", "error", "match"),
    [
        (np.array([0, 2, 1]), ValueError, r"\[0, 1\]"),
        (np.array([0.0, 1.0, 1.0]), TypeError, "integer"),
        (np.array([True, False, False]), TypeError, "integer"),
        (np.array([0, 1]), ValueError, "shape"),
        (np.zeros((3, 1), dtype=np.int64), ValueError, "shape"),
    ],
)
def test_bad_vector_actions_raise(actions, error, match) -> None:
    assert_vector_actions_refused(ENV_ID, actions, error, match)
