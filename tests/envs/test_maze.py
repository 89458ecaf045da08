"""Task rules of ``Hebb-Maze-v0`` (SPEC section 2): layout, moves, walls, reward, teleport."""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest

import hebbgym  # noqa: F401  (registers the ids)
from hebbgym.envs.maze import MazeAction
from tests.envs.refusals import (
    assert_kwargs_refused,
    assert_option_refused,
    assert_single_action_refused,
    assert_vector_actions_refused,
)

ENV_ID = "Hebb-Maze-v0"

# Drawn by hand from the SPEC: border, pillars where both coordinates are even, centre free.
MAP_13 = """
#############
#...........#
#.#.#.#.#.#.#
#...........#
#.#.#.#.#.#.#
#...........#
#.#.#...#.#.#
#...........#
#.#.#.#.#.#.#
#...........#
#.#.#.#.#.#.#
#...........#
#############
"""
MAP_11 = """
###########
#.........#
#.#.#.#.#.#
#.........#
#.#.#.#.#.#
#.........#
#.#.#.#.#.#
#.........#
#.#.#.#.#.#
#.........#
###########
"""
MOVE = {
    MazeAction.UP: (-1, 0),
    MazeAction.DOWN: (1, 0),
    MazeAction.LEFT: (0, -1),
    MazeAction.RIGHT: (0, 1),
}


def parse(text: str) -> np.ndarray:
    return np.array([[ch == "#" for ch in line] for line in text.strip().splitlines()])


def make_vec(num_envs: int, **kwargs) -> gym.vector.VectorEnv:
    return gym.make_vec(
        ENV_ID, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
    )


def free_cells(walls: np.ndarray) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in np.argwhere(~walls)}


def neighbourhood(walls: np.ndarray, position) -> np.ndarray:
    r, c = (int(v) for v in position)
    return walls[r - 1 : r + 2, c - 1 : c + 2].astype(np.float32).ravel()


@contextlib.contextmanager
def no_unraisable_exceptions() -> Iterator[None]:
    """Fail if anything (e.g. ``__del__`` of a half-built env) raises where nobody can see it."""
    seen: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(f"{u.exc_type.__name__}: {u.exc_value}")
    try:
        yield
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert not seen, f"exceptions raised during cleanup: {seen}"


# -- layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "text"), [(13, MAP_13), (11, MAP_11)])
def test_wall_layout_matches_hand_drawn_map(size: int, text: str) -> None:
    expected = parse(text)
    assert expected.shape == (size, size)
    env = gym.make(ENV_ID, size=size)
    walls = np.asarray(env.unwrapped.rules.walls)
    np.testing.assert_array_equal(walls, expected)
    assert not walls[size // 2, size // 2]
    # the pillar rule stated independently of the map
    for r in range(1, size - 1):
        for c in range(1, size - 1):
            pillar = r % 2 == 0 and c % 2 == 0 and (r, c) != (size // 2, size // 2)
            assert walls[r, c] == pillar, (r, c)
    assert walls[0].all() and walls[-1].all() and walls[:, 0].all() and walls[:, -1].all()
    env.close()


def test_observation_layout_is_16_wide_with_named_parts() -> None:
    env = gym.make(ENV_ID)
    layout = env.unwrapped.obs_layout
    assert env.observation_space.shape == (16,)
    widths = {name: part.stop - part.start for name, part in layout.items()}
    assert widths == {"walls": 9, "bias": 1, "time": 1, "reward": 1, "action": 4}
    obs, info = env.reset(seed=3)
    assert tuple(info["position"]) == (6, 6)
    assert obs[layout["bias"]][0] == 1.0
    assert obs[layout["time"]][0] == 0.0 and obs[layout["reward"]][0] == 0.0
    assert not obs[layout["action"]].any()
    # the centre of 13x13 is the removed pillar; its 8 neighbours have an odd coordinate
    np.testing.assert_array_equal(obs[layout["walls"]], np.zeros(9))
    env.close()


@pytest.mark.parametrize(("size", "text"), [(13, MAP_13), (11, MAP_11)])
def test_wall_channels_match_grid_around_position_on_a_random_walk(size: int, text: str) -> None:
    walls = parse(text)
    env = gym.make(ENV_ID, size=size)
    layout = env.unwrapped.obs_layout
    rng = np.random.default_rng(size)
    obs, info = env.reset(seed=size)
    visited = set()
    for _ in range(200):
        np.testing.assert_array_equal(obs[layout["walls"]], neighbourhood(walls, info["position"]))
        visited.add(tuple(int(v) for v in info["position"]))
        obs, _, _, _, info = env.step(int(rng.integers(4)))
    assert len(visited) > 15  # the walk went somewhere, so the check covered many cells
    env.close()


# -- moves, walls, reward, teleport ----------------------------------------------------------


def test_actions_are_an_intenum_moving_up_down_left_right() -> None:
    assert [(a.name, int(a)) for a in MazeAction] == [
        ("UP", 0),
        ("DOWN", 1),
        ("LEFT", 2),
        ("RIGHT", 3),
    ]
    env = gym.make(ENV_ID)
    assert env.action_space == gym.spaces.Discrete(4)
    for action, (dr, dc) in MOVE.items():
        obs, info = env.reset(seed=0, options={"task": (1, 1)})
        obs, reward, terminated, truncated, info = env.step(action)
        assert tuple(info["position"]) == (6 + dr, 6 + dc), action.name
        assert reward == 0.0 and not terminated and not truncated
        one_hot = np.zeros(4, np.float32)
        one_hot[int(action)] = 1.0
        np.testing.assert_array_equal(obs[env.unwrapped.obs_layout["action"]], one_hot)
    env.close()


@pytest.mark.parametrize("penalty", [0.0, 0.1])
def test_bumping_into_a_pillar_stays_in_place_and_costs_wall_penalty(penalty: float) -> None:
    env = gym.make(ENV_ID, wall_penalty=penalty)
    layout = env.unwrapped.obs_layout
    env.reset(seed=0, options={"task": (11, 11)})
    _, reward, _, _, info = env.step(MazeAction.UP)  # (6, 6) -> (5, 6)
    assert tuple(info["position"]) == (5, 6) and reward == 0.0
    obs, reward, _, _, info = env.step(MazeAction.UP)  # (4, 6) is a pillar
    assert tuple(info["position"]) == (5, 6)
    assert reward == pytest.approx(-penalty)
    assert obs[layout["reward"]][0] == pytest.approx(-penalty)
    assert info["episode_return"] == pytest.approx(-penalty)
    env.close()


@pytest.mark.parametrize("penalty", [0.0, 0.1])
def test_every_transition_of_random_walks_follows_the_rules(penalty: float) -> None:
    """Vector env, 64 random walks: each step moves, bumps (−penalty) or scores (+10, teleport)."""
    walls = parse(MAP_13)
    free = free_cells(walls)
    goal = (5, 7)  # close to the centre, so random walks find it often
    env = make_vec(64, wall_penalty=penalty)
    rng = np.random.default_rng(7)
    _, info = env.reset(seed=11, options={"task": goal})
    bumps = scores = 0
    for _ in range(200):
        before = info["position"].copy()
        actions = rng.integers(4, size=64)
        _, rewards, terminated, _, info = env.step(actions)
        assert not terminated.any()
        np.testing.assert_array_equal(info["task"], np.tile(goal, (64, 1)))
        for i in range(64):
            dr, dc = MOVE[MazeAction(int(actions[i]))]
            target = (int(before[i, 0]) + dr, int(before[i, 1]) + dc)
            after = tuple(int(v) for v in info["position"][i])
            assert after in free and after != goal
            if walls[target]:
                assert after == tuple(before[i]) and rewards[i] == pytest.approx(-penalty)
                bumps += 1
            elif target == goal:
                assert rewards[i] == 10.0
                scores += 1
            else:
                assert after == target and rewards[i] == 0.0
    assert bumps > 100 and scores > 10
    env.close()


def test_entering_the_reward_cell_pays_10_and_teleports_away() -> None:
    env = gym.make(ENV_ID)
    layout = env.unwrapped.obs_layout
    free = free_cells(parse(MAP_13))
    destinations = set()
    for seed in range(40):
        env.reset(seed=seed, options={"task": (6, 7)})
        obs, reward, terminated, truncated, info = env.step(MazeAction.RIGHT)
        assert reward == 10.0 and not terminated and not truncated
        assert obs[layout["reward"]][0] == 10.0
        position = tuple(int(v) for v in info["position"])
        assert position in free and position != (6, 7)
        destinations.add(position)
    assert len(destinations) > 25  # not a fixed cell: random over the maze
    env.close()


def test_teleport_destinations_are_uniform_over_free_cells_but_the_reward_cell() -> None:
    goal = (6, 7)
    allowed = sorted(free_cells(parse(MAP_13)) - {goal})
    assert len(allowed) == 96
    n = 9600
    env = make_vec(n)
    env.reset(seed=123, options={"task": goal})
    _, rewards, _, _, info = env.step(np.full(n, int(MazeAction.RIGHT)))
    assert (rewards == 10.0).all()
    index = {cell: k for k, cell in enumerate(allowed)}
    counts = np.zeros(len(allowed))
    for r, c in info["position"]:
        counts[index[(int(r), int(c))]] += 1  # KeyError if a wall or the reward cell
    expected = n / len(allowed)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    dof = len(allowed) - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), chi2
    assert counts.min() > 0
    env.close()


def test_reward_cell_is_uniform_over_free_cells_except_centre() -> None:
    candidates = sorted(free_cells(parse(MAP_13)) - {(6, 6)})
    assert len(candidates) == 96
    n = 9600
    env = make_vec(n)
    _, info = env.reset(seed=2024)
    index = {cell: k for k, cell in enumerate(candidates)}
    counts = np.zeros(len(candidates))
    for r, c in info["task"]:
        counts[index[(int(r), int(c))]] += 1  # KeyError if the centre or a wall
    expected = n / len(candidates)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    dof = len(candidates) - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), chi2
    assert counts.min() > 0
    np.testing.assert_array_equal(info["position"], np.tile([6, 6], (n, 1)))
    env.close()


def test_fixed_task_is_reported_and_kept_for_the_episode() -> None:
    env = gym.make(ENV_ID)
    _, info = env.reset(seed=5, options={"task": (1, 11)})
    assert tuple(info["task"]) == (1, 11)
    for _ in range(50):
        _, _, _, _, info = env.step(MazeAction.LEFT)
        assert tuple(info["task"]) == (1, 11)
    env.close()


def test_episode_truncates_at_200_and_never_terminates() -> None:
    env = gym.make(ENV_ID)
    assert env.spec.max_episode_steps == 200
    layout = env.unwrapped.obs_layout
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    for t in range(1, 201):
        obs, _, terminated, truncated, _ = env.step(int(rng.integers(4)))
        assert not terminated
        assert truncated == (t == 200), t
        assert obs[layout["time"]][0] == pytest.approx(t / 200)
    env.close()


def test_dp_setting_size_11_runs_250_steps_with_penalty() -> None:
    env = gym.make(ENV_ID, size=11, episode_length=250, wall_penalty=0.1, max_episode_steps=250)
    layout = env.unwrapped.obs_layout
    np.testing.assert_array_equal(env.unwrapped.rules.walls, parse(MAP_11))
    _, info = env.reset(seed=0)
    assert tuple(info["position"]) == (5, 5)
    rng = np.random.default_rng(0)
    steps, bumps = 0, 0
    truncated = False
    while not truncated:
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(4)))
        steps += 1
        assert not terminated
        bumps += reward == pytest.approx(-0.1)
        assert obs[layout["time"]][0] == pytest.approx(steps / 250)
    assert steps == 250
    assert bumps > 0
    env.close()

    venv = make_vec(4, size=11, episode_length=250, wall_penalty=0.1, max_episode_steps=250)
    venv.reset(seed=0)
    for t in range(1, 251):
        _, _, terminated, truncated, _ = venv.step(np.zeros(4, dtype=np.int64))
        assert not terminated.any()
        assert truncated.all() == (t == 250) and truncated.any() == (t == 250), t
    venv.close()


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("task", [(6, 6), (0, 3), (2, 2), (13, 3), (3, -1), (3, 13)])
def test_reward_cell_option_on_wall_centre_or_outside_raises(task) -> None:
    env = gym.make(ENV_ID)
    with pytest.raises(ValueError, match=r"reward cell|start cell"):
        env.reset(seed=0, options={"task": task})
    venv = make_vec(3)
    with pytest.raises(ValueError, match=r"reward cell|start cell"):
        venv.reset(seed=0, options={"task": task})
    env.close()
    venv.close()


@pytest.mark.parametrize("task", [(1.0, 1.0), (1, 1, 1), 7, "a1", (True, True)])
def test_malformed_reward_cell_option_raises(task) -> None:
    env = gym.make(ENV_ID)
    with pytest.raises(ValueError, match="task"):
        env.reset(seed=0, options={"task": task})
    env.close()


def test_vector_env_accepts_one_task_per_env() -> None:
    venv = make_vec(3)
    tasks = [(1, 1), (11, 11), (5, 6)]
    _, info = venv.reset(seed=0, options={"task": tasks})
    np.testing.assert_array_equal(info["task"], tasks)
    venv.close()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"size": 12}, ValueError, "size"),
        ({"size": 14}, ValueError, "size"),
        ({"size": 3}, ValueError, "size"),
        ({"size": 1}, ValueError, "size"),
        ({"size": 13.0}, TypeError, "size"),
        ({"episode_length": 0}, ValueError, "episode_length"),
        ({"wall_penalty": -0.1}, ValueError, "wall_penalty"),
        ({"wall_penalty": float("nan")}, ValueError, "wall_penalty"),
        ({"reward_value": 0.0}, ValueError, "reward_value"),
        ({"walls_penalty": 0.1}, TypeError, "walls_penalty"),
    ],
)
def test_bad_kwargs_raise_naming_the_argument(kwargs, error, match) -> None:
    assert_kwargs_refused(ENV_ID, kwargs, error, match)


def test_failed_vector_env_construction_cleans_up_quietly() -> None:
    """A vector env whose ``__init__`` raises is garbage; collecting it must not raise too
    (``VectorEnv.__del__`` calls ``close()``, which must cope with a half-built env)."""
    with no_unraisable_exceptions(), pytest.raises(TypeError, match="not_a_kwarg"):
        make_vec(2, not_a_kwarg=1)


@pytest.mark.parametrize(
    ("action", "error", "match"),
    [
        (4, ValueError, r"\[0, 3\]"),
        (-1, ValueError, r"\[0, 3\]"),
        (1.0, TypeError, "integer"),
        (True, TypeError, "integer"),
        (np.array([1]), ValueError, "shape"),
        ("1", TypeError, "integer"),
    ],
)
def test_bad_single_action_raises(action, error, match) -> None:
    assert_single_action_refused(ENV_ID, action, error, match)


@pytest.mark.parametrize(
    ("actions", "error", "match"),
    [
        (np.array([0, 1, 4]), ValueError, r"\[0, 3\]"),
        (np.array([0, -1, 2]), ValueError, r"\[0, 3\]"),
        (np.array([0.0, 1.0, 2.0]), TypeError, "integer"),
        (np.array([True, False, True]), TypeError, "integer"),
        (np.array([0, 1]), ValueError, "shape"),
        (np.array([0, 1, 2, 3]), ValueError, "shape"),
        (np.array([[0, 1, 2]]), ValueError, "shape"),
        (1, ValueError, "shape"),
    ],
)
def test_bad_vector_actions_raise(actions, error, match) -> None:
    assert_vector_actions_refused(ENV_ID, actions, error, match)


def test_unknown_reset_option_raises_naming_it() -> None:
    assert_option_refused(ENV_ID, {"reward_cell": (1, 1)}, "reward_cell")
