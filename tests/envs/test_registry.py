"""Checks every registered ``Hebb-`` id gets the moment it is registered."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import hebbgym
from hebbgym.envs.registration import ENVIRONMENTS

HEBB_IDS = sorted(env_id for env_id in gym.registry if env_id.startswith("Hebb-"))


def random_actions(space: gym.Space, count: int, seed: int) -> list:
    space = copy.deepcopy(space)
    space.seed(seed)
    return [space.sample() for _ in range(count)]


def test_every_package_id_is_registered() -> None:
    assert set(hebbgym.ENV_IDS) == set(HEBB_IDS)
    assert len(HEBB_IDS) == 5


def test_make_with_module_prefix_needs_no_prior_import() -> None:
    code = "import gymnasium as gym; print(gym.make('hebbgym:Hebb-Maze-v0').reset(seed=0)[0].shape)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "(16,)"


def test_unknown_id_is_a_clear_error() -> None:
    with pytest.raises(gym.error.NameNotFound):
        gym.make("Hebb-Mazee-v0")


@pytest.mark.parametrize("env_id", HEBB_IDS)
def test_gymnasium_and_sb3_checkers_pass(env_id: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning is a failure
        check_env(gym.make(env_id, render_mode="rgb_array").unwrapped)
        sb3_check_env(gym.make(env_id), warn=True)


@pytest.mark.parametrize("env_id", HEBB_IDS)
def test_spec_and_layout(env_id: str) -> None:
    env = gym.make(env_id)
    assert (
        env.spec.max_episode_steps == ENVIRONMENTS[env_id][1] == env.unwrapped.rules.episode_length
    )
    layout = env.unwrapped.obs_layout
    covered = np.zeros(env.observation_space.shape[0], dtype=int)
    for part in layout.values():
        covered[part] += 1
    assert (covered == 1).all(), "obs_layout must cover every observation entry exactly once"
    obs, _ = env.reset(seed=3)
    assert obs.dtype == np.float32 and obs in env.observation_space
    assert obs[layout["bias"]] == 1.0 and obs[layout["time"]] == 0.0
    assert obs[layout["reward"]] == 0.0 and not obs[layout["action"]].any()
    action = env.action_space.sample()
    obs, *_ = env.step(action)
    assert obs[layout["time"]][0] == pytest.approx(1 / env.unwrapped.rules.episode_length)
    if isinstance(env.action_space, gym.spaces.Discrete):
        assert obs[layout["action"]].argmax() == action and obs[layout["action"]].sum() == 1


def rollout(env: gym.Env, seed: int, actions: list, options: dict | None = None) -> list:
    obs, info = env.reset(seed=seed, options=options)
    trace = [(obs.copy(), 0.0, False, info["task"])]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        trace.append((obs.copy(), reward, terminated or truncated, info["task"]))
        if terminated or truncated:
            break
    return trace


def assert_same_trace(first: list, second: list) -> None:
    assert len(first) == len(second)
    for (obs_a, rew_a, done_a, task_a), (obs_b, rew_b, done_b, task_b) in zip(
        first, second, strict=True
    ):
        np.testing.assert_array_equal(obs_a, obs_b)
        assert rew_a == rew_b and done_a == done_b
        assert repr(task_a) == repr(task_b)


@pytest.mark.parametrize("env_id", HEBB_IDS)
def test_seeding_is_deterministic_and_seeds_differ(env_id: str) -> None:
    env = gym.make(env_id)
    actions = random_actions(env.action_space, 400, seed=1)
    assert_same_trace(rollout(env, 7, actions), rollout(gym.make(env_id), 7, actions))
    tasks = {repr(gym.make(env_id).reset(seed=seed)[1]["task"]) for seed in range(12)}
    assert len(tasks) > 1, "different seeds must draw different hidden tasks"


@pytest.mark.parametrize("env_id", HEBB_IDS)
def test_task_option_fixes_the_hidden_task(env_id: str) -> None:
    env = gym.make(env_id)
    _, info = env.reset(seed=11)
    task = info["task"]
    for seed in range(5):
        _, again = env.reset(seed=seed, options={"task": task})
        assert repr(again["task"]) == repr(task)


@pytest.mark.parametrize("env_id", HEBB_IDS)
@pytest.mark.parametrize("fix_task", [False, True])
def test_vector_env_reproduces_single_env_episodes(env_id: str, fix_task: bool) -> None:
    """Sub-env i of a vector env seeded s plays the episode of a single env seeded s + i."""
    num_envs, seed = 3, 21
    single = gym.make(env_id)
    options = {"task": single.reset(seed=99)[1]["task"]} if fix_task else None
    vector = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    actions = random_actions(vector.action_space, single.spec.max_episode_steps, seed=5)
    obs, info = vector.reset(seed=seed, options=options)
    vector_trace = [[(obs[i].copy(), 0.0, False, _task(info, i))] for i in range(num_envs)]
    for batch_action in actions:
        obs, reward, terminated, truncated, info = vector.step(batch_action)
        for i in range(num_envs):
            done = bool(terminated[i] or truncated[i])
            vector_trace[i].append((obs[i].copy(), float(reward[i]), done, _task(info, i)))
    for i in range(num_envs):
        single_actions = [a[i] for a in actions]
        assert_same_trace(vector_trace[i], rollout(single, seed + i, single_actions, options))


def _task(info: dict, i: int):
    task = info["task"]
    if isinstance(task, dict):
        return {key: value[i] for key, value in task.items() if not key.startswith("_")}
    return task[i]


@pytest.mark.parametrize("env_id", HEBB_IDS)
def test_native_vector_env_matches_sync_vector_env(env_id: str) -> None:
    """Same spaces, same autoreset (NEXT_STEP) and the same numbers as SyncVectorEnv."""
    num_envs = 3
    native = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    sync = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync")
    assert native.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert native.single_observation_space == sync.single_observation_space
    assert native.single_action_space == sync.single_action_space
    assert native.observation_space == sync.observation_space
    assert native.action_space == sync.action_space
    steps = 2 * sync.spec.max_episode_steps + 3  # two episodes and into a third
    actions = random_actions(native.action_space, steps, seed=8)
    obs_n, _ = native.reset(seed=4)
    obs_s, _ = sync.reset(seed=4)
    np.testing.assert_array_equal(obs_n, obs_s)
    for action in actions:
        obs_n, rew_n, term_n, trunc_n, _ = native.step(action)
        obs_s, rew_s, term_s, trunc_s, _ = sync.step(action)
        np.testing.assert_array_equal(obs_n, obs_s)
        np.testing.assert_array_equal(rew_n, rew_s)
        np.testing.assert_array_equal(term_n, term_s)
        np.testing.assert_array_equal(trunc_n, trunc_s)
    native.close()
    sync.close()


@pytest.mark.parametrize("env_id", HEBB_IDS)
def test_pickled_env_continues_identically(env_id: str) -> None:
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=2)
    actions = random_actions(env.action_space, 30, seed=3)
    for action in actions[:10]:
        env.step(action)
    env.render()
    clone = pickle.loads(pickle.dumps(env))
    for action in actions[10:]:
        obs_a, reward_a, *_ = env.step(action)
        obs_b, reward_b, *_ = clone.step(action)
        np.testing.assert_array_equal(obs_a, obs_b)
        assert reward_a == reward_b
    np.testing.assert_array_equal(env.render(), clone.render())


@pytest.mark.parametrize("env_id", HEBB_IDS)
def test_rgb_array_frames(env_id: str) -> None:
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    first = env.render()
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
    assert first.shape[0] >= 200 and first.shape[1] >= 300
    for action in random_actions(env.action_space, 25, seed=0):
        env.step(action)
    later = env.render()
    assert later.shape == first.shape
    assert (later != first).any(axis=2).mean() > 0.001, (
        "the frame must show the episode progressing"
    )
    assert len(np.unique(later.reshape(-1, 3), axis=0)) > 4, "a frame is not a blank canvas"
    env.close()
    env.close()


@pytest.mark.parametrize("env_id", HEBB_IDS)
def test_vector_env_renders_one_frame_per_episode(env_id: str) -> None:
    envs = gym.make_vec(
        env_id, num_envs=2, vectorization_mode="vector_entry_point", render_mode="rgb_array"
    )
    envs.reset(seed=0)
    frames = envs.render()
    assert len(frames) == 2 and all(f.dtype == np.uint8 and f.ndim == 3 for f in frames)
    envs.close()
    envs.close()


@pytest.mark.parametrize("env_id", HEBB_IDS)
def test_human_mode_opens_and_closes_a_window(env_id: str) -> None:
    import pygame

    env = gym.make(env_id, render_mode="human")
    env.reset(seed=0)
    env.step(env.action_space.sample())
    assert pygame.display.get_surface() is not None
    assert env.render() is None
    env.close()
    assert pygame.display.get_surface() is None
    env.close()


@pytest.mark.parametrize("env_id", HEBB_IDS)
def test_step_before_reset_and_after_end_is_refused(env_id: str) -> None:
    env = gym.make(env_id, max_episode_steps=-1, disable_env_checker=True).unwrapped
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())
    env.reset(seed=0)
    for _ in range(env.rules.episode_length):
        *_, truncated, _ = env.step(env.action_space.sample())
    assert truncated
    with pytest.raises(RuntimeError, match="reset"):
        env.step(env.action_space.sample())


@pytest.mark.parametrize("env_id", HEBB_IDS)
def test_bad_input_is_named(env_id: str) -> None:
    env = gym.make(env_id)
    with pytest.raises(TypeError, match="no_such_kwarg"):
        gym.make(env_id, no_such_kwarg=1)
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(seed=0, options={"tsak": 1})
    env.reset(seed=0)
    if isinstance(env.action_space, gym.spaces.Discrete):
        with pytest.raises(TypeError, match="integer"):
            env.step(1.0)
        with pytest.raises(ValueError, match="lie in"):
            env.step(int(env.action_space.n))
    vector = gym.make_vec(env_id, num_envs=4, vectorization_mode="vector_entry_point")
    vector.reset(seed=0)
    good = vector.action_space.sample()
    with pytest.raises(ValueError, match="shape"):
        vector.step(good[:3])
    with pytest.raises((TypeError, ValueError)):
        vector.step(np.full(good.shape, np.nan))
