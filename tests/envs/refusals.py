"""Shared bodies of the per-task bad-input tests: each task file keeps its own table of bad
values, these check that the single and the vector env refuse them by name."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import pytest


def make_vec(env_id: str, num_envs: int, **kwargs: Any) -> gym.vector.VectorEnv:
    return gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
    )


def assert_kwargs_refused(env_id: str, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        gym.make(env_id, **kwargs)
    with pytest.raises(error, match=match):
        make_vec(env_id, 2, **kwargs)


def assert_option_refused(env_id: str, options: dict, match: str) -> None:
    env, venv = gym.make(env_id), make_vec(env_id, 2)
    with pytest.raises(ValueError, match=match):
        env.reset(seed=0, options=options)
    with pytest.raises(ValueError, match=match):
        venv.reset(seed=0, options=options)
    env.close()
    venv.close()


def assert_single_action_refused(env_id: str, action: Any, error: type, match: str) -> None:
    env = gym.make(env_id)
    env.reset(seed=0)
    with pytest.raises(error, match=match):
        env.step(action)
    env.close()


def assert_vector_actions_refused(
    env_id: str, actions: Any, error: type, match: str, **kwargs: Any
) -> None:
    venv = make_vec(env_id, 3, **kwargs)
    venv.reset(seed=0)
    with pytest.raises(error, match=match):
        venv.step(actions)
    venv.close()
