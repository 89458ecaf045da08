"""Property-based tests (hypothesis) over every registered id, single and native vector env.

For arbitrary seeds, reset options, kwargs inside their documented ranges and action
sequences, observations stay inside the observation space (finite, ``float32``, the right
shape), rewards are finite and within the rules' bounds, and episodes end by truncation at
``episode_length``. Invalid actions, kwargs, tasks and options raise ``ValueError`` or
``TypeError`` with a message that names the problem, never an ``IndexError`` or a silent step,
and the env stays usable after a refused call.

Every ``@given`` test is derandomized (the same examples on every run) and keeps no example
database, so the file is reproducible in CI and writes nothing to the checkout.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
import signal
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import hebbgym
from hebbgym.envs.registration import ENVIRONMENTS

ENV_IDS = tuple(hebbgym.ENV_IDS)
SUPPRESSED = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]


# No shrinking by default: the bugs found so far each have a minimal test at the end of this
# file, and shrinking a dozen failing properties would take minutes. Set
# HEBBGYM_HYPOTHESIS_SHRINK=1 to minimise a new failure.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate)
if os.environ.get("HEBBGYM_HYPOTHESIS_SHRINK"):
    PHASES = (*PHASES, Phase.shrink)


def props(max_examples: int) -> settings:
    """Derandomized, database-free settings: reproducible in CI, nothing written to disk."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=SUPPRESSED,
        phases=PHASES,
    )


SEEDS = st.integers(min_value=0, max_value=2**128)
MAKE_KWARGS = {"max_episode_steps", "autoreset", "apply_api_compatibility", "disable_env_checker"}
MAKE_VEC_KWARGS = {"num_envs", "vectorization_mode", "vector_kwargs", "wrappers"}
GYM_SUFFIX = " was raised from the environment creator"


# -- building envs --------------------------------------------------------------------------
def make_single(env_id: str, kwargs: dict[str, Any]) -> gym.Env:
    """``gym.make`` with the TimeLimit set to the episode length, so it never cuts early."""
    length = kwargs.get("episode_length", ENVIRONMENTS[env_id][1])
    return gym.make(env_id, max_episode_steps=length, **kwargs)


def make_vector(env_id: str, num_envs: int, kwargs: dict[str, Any]) -> gym.vector.VectorEnv:
    length = kwargs.get("episode_length", ENVIRONMENTS[env_id][1])
    return gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        max_episode_steps=length,
        **kwargs,
    )


def message(excinfo: pytest.ExceptionInfo) -> str:
    """The exception's own message, without the kwargs dump ``gym.make`` appends to it."""
    return str(excinfo.value).split(GYM_SUFFIX)[0]


def strip_masks(value: Any) -> Any:
    """Drop Gymnasium's ``_key`` info masks from a (nested) vector info dict."""
    if isinstance(value, Mapping):
        return {k: strip_masks(v) for k, v in value.items() if not str(k).startswith("_")}
    return value


def row_of(task: Any, row: int) -> Any:
    """Sub-env ``row``'s task out of a batched ``info["task"]``."""
    task = strip_masks(task)
    if isinstance(task, Mapping):
        return {key: value[row] for key, value in task.items()}
    return task[row]


def same_task(reported: Any, given: Any) -> bool:
    """Whether a reported task equals a given one (any int/array form of it)."""
    if isinstance(reported, Mapping) or isinstance(given, Mapping):
        if not (isinstance(reported, Mapping) and isinstance(given, Mapping)):
            return False
        reported, given = strip_masks(reported), strip_masks(given)
        return set(reported) == set(given) and all(
            same_task(reported[key], given[key]) for key in reported
        )
    a, b = np.asarray(reported), np.asarray(given)
    return a.shape == b.shape and bool(np.array_equal(a, b))


def check_observation(obs: Any, space: spaces.Box, shape: tuple[int, ...]) -> None:
    assert isinstance(obs, np.ndarray), type(obs)
    assert obs.dtype == np.float32, obs.dtype
    assert obs.shape == shape, (obs.shape, shape)
    assert np.isfinite(obs).all(), obs
    assert obs in space, (obs, space.low, space.high)


# -- kwargs inside their documented ranges --------------------------------------------------
def lengths(max_length: int) -> st.SearchStrategy[int]:
    return st.integers(1, max_length)


def int_forms(values: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    """An int as Python and numpy integer types (all valid wherever an int is due)."""
    return values.flatmap(lambda v: st.sampled_from([v, np.int64(v), np.int32(v), np.uint8(v)]))


@st.composite
def maze_kwargs(draw: st.DrawFn, max_length: int) -> dict[str, Any]:
    return {
        "size": 2 * draw(st.integers(2, 10)) + 1,
        "episode_length": draw(lengths(max_length)),
        "wall_penalty": draw(st.one_of(st.floats(0.0, 5.0), st.integers(0, 5))),
        "reward_value": draw(
            # > 0; from 1e-30 on, so it survives the float32 cast of the reward channel
            st.one_of(st.floats(1e-30, 100.0), st.integers(1, 100))
        ),
    }


@st.composite
def conditioning_kwargs(draw: st.DrawFn, max_length: int) -> dict[str, Any]:
    length = draw(lengths(max_length))
    return {
        "episode_length": length,
        "learning_period": draw(st.integers(0, length - 1)),
        "pain_prob": draw(st.floats(0.0, 1.0, exclude_min=True)),
        "continuous": draw(st.booleans()),
    }


@st.composite
def bandit_kwargs(draw: st.DrawFn, max_length: int) -> dict[str, Any]:
    p_bad = draw(st.floats(0.0, 1.0, exclude_max=True))
    return {
        "arms": draw(st.integers(2, 8)),
        "p_good": draw(st.floats(p_bad, 1.0, exclude_min=True)),
        "p_bad": p_bad,
        "episode_length": draw(lengths(max_length)),
        "hazard": draw(st.none() | st.floats(0.0, 1.0)),
    }


@st.composite
def cue_reward_kwargs(draw: st.DrawFn, max_length: int) -> dict[str, Any]:
    n_cues = draw(st.integers(2, 8))
    one_hot = draw(st.booleans())
    smallest = n_cues if one_hot else (n_cues - 1).bit_length()  # 2**cue_size >= n_cues
    return {
        "n_cues": n_cues,
        "cue_size": draw(st.integers(smallest, 24)),
        "one_hot": one_hot,
        "episode_length": draw(lengths(max_length)),
    }


# -- valid tasks ----------------------------------------------------------------------------
@st.composite
def maze_task(draw: st.DrawFn, rules: Any) -> Any:
    index = draw(st.integers(0, len(rules.reward_candidates) - 1))
    row, col = (int(v) for v in rules.reward_candidates[index])
    form = draw(st.sampled_from(["tuple", "list", "int64", "int32", "uint8", "numpy ints"]))
    if form == "tuple":
        return (row, col)
    if form == "list":
        return [row, col]
    if form == "numpy ints":
        return (np.int64(row), np.int16(col))
    return np.array([row, col], dtype=form)


def conditioning_task(rules: Any) -> st.SearchStrategy[Any]:
    return int_forms(st.integers(0, 1))


def bandit_task(rules: Any) -> st.SearchStrategy[Any]:
    return int_forms(st.integers(0, rules.arms - 1))


@st.composite
def cue_reward_task(draw: st.DrawFn, rules: Any) -> dict[str, Any]:
    n, size = rules.n_cues, rules.cue_size
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    codes = rng.choice(2**size, size=n, replace=False)  # distinct rows
    bits = (codes[:, None] >> np.arange(size)) & 1
    cues = bits if rules.one_hot else 2 * bits - 1
    form = draw(st.sampled_from(["int8", "int64", "list"]))
    cues = cues.tolist() if form == "list" else cues.astype(form)
    return {"cues": cues, "target": draw(int_forms(st.integers(0, n - 1)))}


# -- invalid tasks: (task, fragments one of which the error message must contain) ------------
TASK = ("task",)
WRONG_TYPES = st.one_of(
    st.none(),
    st.text(max_size=4),
    st.floats(),
    st.complex_numbers(max_magnitude=5),
    st.just({"value": 1}),
)


@st.composite
def maze_invalid_task(draw: st.DrawFn, rules: Any) -> tuple[Any, tuple[str, ...]]:
    size, walls = rules.size, rules.walls
    center = (size // 2, size // 2)

    def is_reward_cell(cell: tuple[int, int]) -> bool:
        row, col = cell
        inside = 0 <= row < size and 0 <= col < size
        return inside and not walls[row, col] and cell != center

    coordinate = st.integers(0, size - 1)
    kind = draw(st.sampled_from(["cell", "shape", "type", "bool", "ragged"]))
    if kind == "cell":  # out of the grid, a wall, or the start cell
        near = st.tuples(st.integers(-4, size + 4), st.integers(-4, size + 4))
        far = st.tuples(st.integers(), st.integers())
        wall_cells = [(int(r), int(c)) for r, c in np.argwhere(walls)]
        cell = draw(
            st.one_of(near, far, st.sampled_from(wall_cells), st.just(center)).filter(
                lambda cell: not is_reward_cell(cell)
            )
        )
        task = cell if draw(st.booleans()) else list(cell)
        return task, ("task", f"({cell[0]}, {cell[1]})")
    if kind == "shape":
        task = draw(
            st.one_of(
                coordinate,
                coordinate.map(lambda r: (r,)),
                st.tuples(coordinate, coordinate, coordinate),
                st.just(()),
                st.tuples(coordinate, coordinate).map(lambda cell: [list(cell)]),
                st.tuples(coordinate, coordinate).map(lambda cell: np.array([cell, cell])),
            )
        )
        return task, TASK
    if kind == "type":
        task = draw(
            st.one_of(
                WRONG_TYPES,
                st.tuples(st.floats(), st.floats()),
                st.tuples(coordinate, coordinate).map(lambda cell: np.array(cell, dtype=float)),
                st.tuples(coordinate, coordinate).map(lambda cell: tuple(map(str, cell))),
                st.tuples(coordinate, coordinate).map(lambda cell: (complex(cell[0]), cell[1])),
            )
        )
        return task, TASK
    if kind == "bool":  # bools are not coordinates, even where True would name a free cell
        odd = st.integers(0, (size - 3) // 2).map(lambda k: 2 * k + 1)  # (1, odd) is free
        true = st.sampled_from([True, np.bool_(True)])
        task = draw(
            st.one_of(
                st.tuples(true, odd),
                st.tuples(odd, true),
                st.tuples(st.booleans(), st.booleans()),
            )
        )
        return task, TASK
    task = draw(  # ragged nesting
        st.one_of(
            coordinate.map(lambda r: [[r], r]),
            st.tuples(coordinate, coordinate).map(lambda cell: [(cell[0],), cell]),
        )
    )
    return task, TASK


def scalar_invalid_task(valid: range) -> st.SearchStrategy[tuple[Any, tuple[str, ...]]]:
    """Invalid tasks where a single int in ``valid`` is due (conditioning, bandit)."""
    inside = st.integers(valid.start, valid.stop - 1)
    task = st.one_of(
        st.integers().filter(lambda v: v not in valid),
        st.booleans(),
        st.booleans().map(np.bool_),
        WRONG_TYPES,
        inside.map(float),
        inside.map(np.float32),
        inside.map(str),
        inside.map(lambda v: [v]),
        inside.map(lambda v: (v, v)),
        inside.map(lambda v: np.array([v])),
    )
    return task.map(lambda t: (t, TASK))


def conditioning_invalid_task(rules: Any) -> st.SearchStrategy[tuple[Any, tuple[str, ...]]]:
    return scalar_invalid_task(range(2))


def bandit_invalid_task(rules: Any) -> st.SearchStrategy[tuple[Any, tuple[str, ...]]]:
    return scalar_invalid_task(range(rules.arms))


@st.composite
def cue_reward_invalid_task(draw: st.DrawFn, rules: Any) -> tuple[Any, tuple[str, ...]]:
    n = rules.n_cues
    valid = draw(cue_reward_task(rules))
    cues, target = np.array(valid["cues"], dtype=np.int64), valid["target"]
    row = st.integers(0, n - 1)
    kind = draw(
        st.sampled_from(
            ["not a dict", "keys", "shape", "value", "duplicate", "target", "bools", "ragged"]
        )
    )
    if kind == "not a dict":
        task = draw(st.one_of(WRONG_TYPES, st.just(cues), st.just((cues, target)), st.integers()))
    elif kind == "keys":
        task = draw(
            st.sampled_from(
                [
                    {"cues": cues},
                    {"target": target},
                    {"cues": cues, "target": target, "extra": 0},
                    {"cue": cues, "target": target},
                    {},
                ]
            )
        )
    elif kind == "shape":
        reshaped = draw(
            st.sampled_from(
                [
                    cues[:-1],
                    np.vstack([cues, cues[:1]]),
                    np.hstack([cues, cues[:, :1]]),
                    cues.ravel(),
                    cues[None],
                ]
            )
        )
        task = {"cues": reshaped, "target": target}
    elif kind == "value":
        bad_values = [-1, 2, 0.5, math.nan] if rules.one_hot else [0, 2, -0.5, math.nan]
        broken = cues.astype(float)
        broken[draw(row), draw(st.integers(0, rules.cue_size - 1))] = draw(
            st.sampled_from(bad_values)
        )
        task = {"cues": broken if draw(st.booleans()) else broken.astype(str), "target": target}
    elif kind == "duplicate":
        first, second = draw(st.lists(row, min_size=2, max_size=2, unique=True))
        broken = cues.copy()
        broken[first] = broken[second]
        task = {"cues": broken, "target": target}
    elif kind == "target":
        bad_target = draw(
            st.one_of(
                st.integers().filter(lambda v: not 0 <= v < n),
                st.booleans(),
                st.booleans().map(np.bool_),
                WRONG_TYPES,
                row.map(float),
                row.map(lambda v: [v]),
            )
        )
        task = {"cues": cues, "target": bad_target}
    elif kind == "bools":  # bool cue matrices are refused like bool targets are
        task = {"cues": cues.astype(bool), "target": target}
    else:
        ragged = cues.tolist()
        ragged[draw(row)] = ragged[0][:-1] if len(ragged[0]) > 1 else []
        task = {"cues": ragged, "target": target}
    return task, TASK


# -- invalid kwargs -------------------------------------------------------------------------
NON_NUMERIC = st.one_of(
    st.none(),
    st.text(max_size=4),
    st.just({}),
    st.complex_numbers(max_magnitude=5).filter(lambda z: z.imag != 0),
    st.just(Decimal("0.5")),
)
NOT_NUMBERS = NON_NUMERIC | st.just([1])


def bad_int(low: int, high: int) -> st.SearchStrategy[Any]:
    inside = st.integers(low, high)
    return st.one_of(
        st.integers(max_value=low - 1),
        st.integers(min_value=high + 1),
        st.floats(),  # integral floats too: 13.0 is not an int
        inside.map(float),
        inside.map(np.float64),
        st.booleans(),
        st.booleans().map(np.bool_),
        NOT_NUMBERS,
    )


def bad_float(low: float, high: float) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.floats(max_value=low, exclude_max=True),
        st.floats(min_value=high, exclude_min=True),
        st.sampled_from([math.nan, math.inf, -math.inf, np.float32("nan")]),
        st.booleans(),
        st.booleans().map(np.bool_),
        NOT_NUMBERS,
    )


BAD_BOOL = st.one_of(
    st.integers(),
    st.integers(0, 1).map(np.int64),
    st.floats(),
    st.none(),
    st.text(max_size=5),
)
BAD_LENGTH = bad_int(1, 1_000_000)


def maze_bad_kwargs(base: dict[str, Any]) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "size": st.one_of(bad_int(5, 101), st.integers(3, 50).map(lambda k: 2 * k)),
        "episode_length": BAD_LENGTH,
        "wall_penalty": bad_float(0.0, 1e6),
        "reward_value": st.one_of(bad_float(0.0, 1e6), st.sampled_from([0, 0.0, -0.0])),
    }


def conditioning_bad_kwargs(base: dict[str, Any]) -> dict[str, st.SearchStrategy[Any]]:
    length = base["episode_length"]
    return {
        "episode_length": BAD_LENGTH,
        "learning_period": bad_int(0, length - 1),
        "pain_prob": st.one_of(bad_float(0.0, 1.0), st.sampled_from([0, 0.0])),
        "continuous": BAD_BOOL,
    }


def bandit_bad_kwargs(base: dict[str, Any]) -> dict[str, st.SearchStrategy[Any]]:
    p_good, p_bad = base["p_good"], base["p_bad"]
    return {
        "arms": bad_int(2, 64),
        "p_good": st.one_of(bad_float(0.0, 1.0), st.floats(0.0, p_bad)),  # p_good <= p_bad
        "p_bad": st.one_of(bad_float(0.0, 1.0), st.floats(p_good, 1.0)),
        "episode_length": BAD_LENGTH,
        "hazard": bad_float(0.0, 1.0).filter(lambda v: v is not None),  # None: no hazard
    }


def cue_reward_bad_kwargs(base: dict[str, Any]) -> dict[str, st.SearchStrategy[Any]]:
    n_cues = base["n_cues"]
    too_small = n_cues - 1 if base["one_hot"] else (n_cues - 1).bit_length() - 1
    cue_size = bad_int(1, 1024)
    if too_small >= 1:  # cannot hold n_cues distinct cues
        cue_size = st.one_of(cue_size, st.integers(1, too_small))
    return {
        "n_cues": bad_int(2, 64),
        "cue_size": cue_size,
        "one_hot": BAD_BOOL,
        "episode_length": BAD_LENGTH,
    }


# -- per-family registry --------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    kwargs: Callable[[int], st.SearchStrategy[dict[str, Any]]]
    valid_task: Callable[[Any], st.SearchStrategy[Any]]
    invalid_task: Callable[[Any], st.SearchStrategy[tuple[Any, tuple[str, ...]]]]
    bad_kwargs: Callable[[dict[str, Any]], dict[str, st.SearchStrategy[Any]]]


FAMILIES = {
    "maze": Family(maze_kwargs, maze_task, maze_invalid_task, maze_bad_kwargs),
    "conditioning": Family(
        conditioning_kwargs, conditioning_task, conditioning_invalid_task, conditioning_bad_kwargs
    ),
    "reversal_bandit": Family(bandit_kwargs, bandit_task, bandit_invalid_task, bandit_bad_kwargs),
    "cue_reward": Family(
        cue_reward_kwargs, cue_reward_task, cue_reward_invalid_task, cue_reward_bad_kwargs
    ),
}


def family(env_id: str) -> Family:
    return FAMILIES[ENVIRONMENTS[env_id][0].split(":")[0]]


# -- actions --------------------------------------------------------------------------------
def valid_action(space: spaces.Space) -> st.SearchStrategy[Any]:
    """One valid action of a single env, in the Python and numpy forms a user may pass."""
    if isinstance(space, spaces.Discrete):
        return int_forms(st.integers(0, int(space.n) - 1)) | st.integers(0, int(space.n) - 1).map(
            np.array
        )
    assert isinstance(space, spaces.Box) and space.shape == (1,)
    return st.floats(0.0, 1.0).flatmap(
        lambda x: st.sampled_from(
            [[x], np.array([x]), np.array([x], np.float32), [round(x)], np.array([round(x)])]
        )
    )


def action_sequence(
    data: st.DataObject, space: spaces.Space, count: int, item: st.SearchStrategy[Any]
) -> list[Any]:
    """``count`` actions: a hypothesis-drawn (shrinkable) prefix, then seeded samples."""
    prefix = data.draw(st.lists(item, max_size=min(count, 16)), label="action prefix")
    space = copy.deepcopy(space)
    space.seed(data.draw(st.integers(0, 2**32 - 1), label="action seed"))
    return prefix + [space.sample() for _ in range(count - len(prefix))]


def garbage_single_action(space: spaces.Space) -> st.SearchStrategy[Any]:
    """Things that are not an action of ``space`` for a single env."""
    if isinstance(space, spaces.Discrete):
        n = int(space.n)
        inside = st.integers(0, n - 1)
        return st.one_of(
            st.integers(max_value=-1),
            st.integers(min_value=n),
            st.floats(),
            inside.map(float),
            inside.map(np.float32),
            st.booleans(),
            st.booleans().map(np.bool_),
            NON_NUMERIC,
            inside.map(str),
            inside.map(lambda a: [a]),
            inside.map(lambda a: [a, a]),
            inside.map(lambda a: np.array([a])),
            inside.map(lambda a: np.array([[a]])),
            inside.map(lambda a: np.array(a, dtype=object)),
            inside.map(lambda a: np.array(a, dtype=complex)),
            inside.map(lambda a: [[a], a]),  # ragged
            inside.map(lambda a: np.timedelta64(a, "s")),
        )
    inside = st.floats(0.0, 1.0)
    outside = st.one_of(
        st.floats(max_value=0.0, exclude_max=True),
        st.floats(min_value=1.0, exclude_min=True),
        st.sampled_from([math.nan, math.inf, -math.inf]),
    )
    return st.one_of(
        inside,  # a scalar is not a (1,) action
        inside.map(np.float32),
        outside.map(lambda x: [x]),
        outside.map(lambda x: np.array([x])),
        inside.map(lambda x: [x, x]),
        inside.map(lambda x: [[x]]),
        st.just([]),
        st.booleans().map(lambda b: [b]),
        st.booleans().map(lambda b: np.array([b])),
        NON_NUMERIC,
        st.just([None]),
        inside.map(lambda x: [str(x)]),
        inside.map(lambda x: np.array([complex(x, 0.5)])),
        inside.map(lambda x: [[x], x]),  # ragged
        st.just(np.array([np.timedelta64(0, "s")])),
    )


def garbage_batch_action(space: spaces.Space, num_envs: int) -> st.SearchStrategy[Any]:
    """Things that are not a batch of ``num_envs`` actions of ``space``."""
    position = st.integers(0, num_envs - 1)

    def replace_one(values: list[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.tuples(position, bad).map(
            lambda pair: values[: pair[0]] + [pair[1]] + values[pair[0] + 1 :]
        )

    if isinstance(space, spaces.Discrete):
        n = int(space.n)
        rows = st.lists(st.integers(0, n - 1), min_size=num_envs, max_size=num_envs)
        bad_entry = st.one_of(
            st.integers(max_value=-1),
            st.integers(min_value=n),
            st.none(),
            st.text(max_size=2),
            st.booleans(),  # a bool hidden among ints
            st.just([0]),  # ragged
        )
        return st.one_of(
            rows.map(lambda r: np.array(r, dtype=np.float64)),
            rows.map(lambda r: np.array(r, dtype=np.float32)),
            rows.map(lambda r: [float(a) for a in r]),
            rows.map(lambda r: np.array(r).astype(bool)),
            rows.map(lambda r: np.array(r, dtype=complex)),
            rows.map(lambda r: np.array(r, dtype="m8[s]")),
            rows.map(lambda r: np.array(r, dtype=object)),
            rows.flatmap(lambda r: replace_one(r, bad_entry)),
            rows.map(lambda r: r + r[:1]),
            rows.map(lambda r: r[1:]) if num_envs > 1 else st.just([]),
            rows.map(lambda r: np.array(r)[:, None]),
            rows.map(lambda r: np.array(r)[None, None]),
            st.integers(0, n - 1),  # one action is not a batch
            st.integers(0, n - 1).map(np.array),
            NON_NUMERIC,
        )
    rows = st.lists(st.floats(0.0, 1.0), min_size=num_envs, max_size=num_envs)
    bad_entry = st.one_of(
        st.floats(max_value=0.0, exclude_max=True).map(lambda x: [x]),
        st.floats(min_value=1.0, exclude_min=True).map(lambda x: [x]),
        st.sampled_from([[math.nan], [math.inf], [None], ["0.5"], [0.5, 0.5], []]),
        st.booleans().map(lambda b: [b]),  # a bool hidden among floats
    )
    return st.one_of(
        rows.map(np.array),  # (B,) instead of (B, 1)
        rows.map(lambda r: np.array(r)[:, None].repeat(2, axis=1)),
        rows.map(lambda r: np.array(r + r[:1])[:, None]),
        rows.map(lambda r: np.array(r)[:, None].astype(bool)),
        rows.map(lambda r: np.array(r)[:, None].astype(complex) + 0.5j),
        rows.map(lambda r: np.array(r)[:, None].astype(object)),
        rows.map(lambda r: np.zeros((len(r), 1), "m8[s]")),
        rows.flatmap(lambda r: replace_one([[x] for x in r], bad_entry)),
        st.floats(0.0, 1.0).map(lambda x: [x]),
        NON_NUMERIC,
    )


# -- tests ----------------------------------------------------------------------------------
def test_every_registered_id_has_strategies() -> None:
    registered = sorted(env_id for env_id in gym.registry if env_id.startswith("Hebb-"))
    assert sorted(ENV_IDS) == registered
    for env_id in ENV_IDS:
        assert isinstance(family(env_id), Family)


@pytest.mark.parametrize("env_id", ENV_IDS)
@props(50)
@given(data=st.data())
def test_single_env_episodes_stay_in_their_spaces(env_id: str, data: st.DataObject) -> None:
    fam = family(env_id)
    kwargs = data.draw(fam.kwargs(300), label="kwargs")
    env = make_single(env_id, kwargs)
    rules, layout = env.unwrapped.rules, env.unwrapped.obs_layout
    length, shape = rules.episode_length, env.observation_space.shape
    task = data.draw(st.none() | fam.valid_task(rules), label="task")
    options = None if task is None else {"task": task}
    obs, info = env.reset(seed=data.draw(st.none() | SEEDS, label="seed"), options=options)
    check_observation(obs, env.observation_space, shape)
    if task is not None:
        assert same_task(info["task"], task)
    episode_task = info["task"]
    item = valid_action(env.action_space)
    for t, action in enumerate(action_sequence(data, env.action_space, length, item), 1):
        obs, reward, terminated, truncated, info = env.step(action)
        check_observation(obs, env.observation_space, shape)
        assert isinstance(reward, float) and math.isfinite(reward)
        assert rules.reward_low <= reward <= rules.reward_high
        assert terminated is False
        assert truncated is (t == length)
        assert obs[layout["time"]][0] == np.float32(t / length)
        assert obs[layout["reward"]][0] == np.float32(reward)
        assert obs[layout["bias"]][0] == 1.0
        assert same_task(info["task"], episode_task), "the task changed within the episode"
    obs, _ = env.reset()  # and the env starts again after truncation
    check_observation(obs, env.observation_space, shape)


@pytest.mark.parametrize("env_id", ENV_IDS)
@props(40)
@given(data=st.data())
def test_vector_env_stays_in_its_batched_space_across_autoreset(
    env_id: str, data: st.DataObject
) -> None:
    fam = family(env_id)
    num_envs = data.draw(st.integers(1, 5), label="num_envs")
    kwargs = data.draw(fam.kwargs(100), label="kwargs")
    env = make_vector(env_id, num_envs, kwargs)
    rules, layout = env.rules, env.obs_layout
    length = rules.episode_length
    shape = (num_envs, *env.single_observation_space.shape)
    seed = data.draw(
        st.none() | SEEDS | st.lists(SEEDS, min_size=num_envs, max_size=num_envs), label="seed"
    )
    tasks = data.draw(
        st.none()
        | fam.valid_task(rules).map(lambda task: [task] * num_envs)  # one shared task
        | st.lists(fam.valid_task(rules), min_size=num_envs, max_size=num_envs),
        label="tasks",
    )
    shared = tasks is not None and data.draw(st.booleans(), label="pass one shared task")
    shared = shared and all(task is tasks[0] for task in tasks)
    options = None if tasks is None else {"task": tasks[0] if shared else tasks}
    obs, info = env.reset(seed=seed, options=options)
    check_observation(obs, env.observation_space, shape)
    if tasks is not None:
        for row in range(num_envs):
            assert same_task(row_of(info["task"], row), tasks[row])

    item = st.lists(valid_action(env.single_action_space), min_size=num_envs, max_size=num_envs)
    actions = action_sequence(data, env.action_space, 2 * length + 2, item)
    t, autoreset = 0, False
    for action in actions:
        obs, rewards, terminated, truncated, info = env.step(action)
        check_observation(obs, env.observation_space, shape)
        for row in obs:
            assert row in env.single_observation_space
        assert rewards.shape == (num_envs,) and np.issubdtype(rewards.dtype, np.floating)
        assert np.isfinite(rewards).all()
        assert ((rewards >= rules.reward_low) & (rewards <= rules.reward_high)).all()
        assert terminated.shape == truncated.shape == (num_envs,)
        assert terminated.dtype == truncated.dtype == np.bool_
        assert not terminated.any()
        if autoreset:  # NEXT_STEP: the step after a truncation starts a new episode
            t = 0
            assert (rewards == 0).all() and not truncated.any()
            assert not obs[:, layout["action"]].any() and (obs[:, layout["reward"]] == 0).all()
        else:
            t += 1
            assert truncated.all() if t == length else not truncated.any()
        assert (obs[:, layout["time"]] == np.float32(t / length)).all()
        autoreset = bool(truncated.any())


@pytest.mark.parametrize("env_id", ENV_IDS)
@props(50)
@given(data=st.data())
def test_reported_task_given_back_reproduces_it(env_id: str, data: st.DataObject) -> None:
    fam = family(env_id)
    kwargs = data.draw(fam.kwargs(30), label="kwargs")
    seeds = st.lists(SEEDS, min_size=2, max_size=2, unique=True)

    env = make_single(env_id, kwargs)
    first_seed, second_seed = data.draw(seeds, label="single seeds")
    _, info = env.reset(seed=first_seed)
    first, again = env.reset(seed=second_seed, options={"task": info["task"]})
    assert same_task(again["task"], info["task"])
    replay, _ = env.reset(seed=second_seed, options={"task": info["task"]})
    np.testing.assert_array_equal(replay, first)  # same (seed, options): same episode
    built = data.draw(fam.valid_task(env.unwrapped.rules), label="built task")
    _, given_back = env.reset(seed=second_seed, options={"task": built})
    assert same_task(given_back["task"], built)

    num_envs = data.draw(st.integers(1, 4), label="num_envs")
    vector = make_vector(env_id, num_envs, kwargs)
    first_seed, second_seed = data.draw(seeds, label="vector seeds")
    _, info = vector.reset(seed=first_seed)
    reported = strip_masks(info["task"])  # Gymnasium's "_key" masks are not part of the task
    _, again = vector.reset(seed=second_seed, options={"task": reported})
    for row in range(num_envs):
        assert same_task(row_of(again["task"], row), row_of(reported, row))
    built = data.draw(
        st.lists(fam.valid_task(vector.rules), min_size=num_envs, max_size=num_envs),
        label="built tasks",
    )
    _, given_back = vector.reset(seed=second_seed, options={"task": built})
    for row in range(num_envs):
        assert same_task(row_of(given_back["task"], row), built[row])


@pytest.mark.parametrize("env_id", ENV_IDS)
@props(120)
@given(data=st.data())
def test_invalid_tasks_raise_naming_the_problem(env_id: str, data: st.DataObject) -> None:
    fam = family(env_id)
    kwargs = data.draw(fam.kwargs(20), label="kwargs")
    env = make_single(env_id, kwargs)
    rules = env.unwrapped.rules
    bad, fragments = data.draw(fam.invalid_task(rules), label="invalid task")
    env.reset(seed=0)
    with pytest.raises((ValueError, TypeError)) as excinfo:
        env.reset(seed=1, options={"task": bad})
    assert any(part in message(excinfo) for part in fragments), message(excinfo)
    check_observation(env.reset(seed=2)[0], env.observation_space, env.observation_space.shape)

    num_envs = data.draw(st.integers(1, 4), label="num_envs")
    vector = make_vector(env_id, num_envs, kwargs)
    batch = data.draw(
        st.lists(fam.valid_task(rules), min_size=num_envs, max_size=num_envs), label="batch"
    )
    batch[data.draw(st.integers(0, num_envs - 1), label="bad row")] = bad
    candidates = [batch]
    if not isinstance(bad, list | tuple | np.ndarray):  # a shared task, not a batch of them
        candidates.append(bad)
    for task in candidates:
        with pytest.raises((ValueError, TypeError)) as excinfo:
            vector.reset(seed=1, options={"task": task})
        assert any(part in message(excinfo) for part in fragments), message(excinfo)
    obs, _ = vector.reset(seed=3)
    check_observation(obs, vector.observation_space, vector.observation_space.shape)


@pytest.mark.parametrize("env_id", ENV_IDS)
@props(60)
@given(data=st.data())
def test_invalid_reset_options_raise_naming_them(env_id: str, data: st.DataObject) -> None:
    env = gym.make(env_id)
    vector = gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point")
    unknown_keys = st.one_of(st.text(max_size=6), st.integers()).filter(lambda k: k != "task")
    options = data.draw(
        st.one_of(
            st.dictionaries(unknown_keys, st.none(), min_size=1, max_size=3),
            st.lists(st.integers(), max_size=2),
            st.just([("task", 0)]),
            st.text(max_size=4),
            st.integers(),
        ),
        label="options",
    )
    expected = [repr(key) for key in options] if isinstance(options, dict) else ["options"]
    for reset in (env.reset, vector.reset):
        with pytest.raises((ValueError, TypeError)) as excinfo:
            reset(seed=0, options=options)
        assert all(part in message(excinfo) for part in expected), message(excinfo)


@pytest.mark.parametrize("env_id", ENV_IDS)
@props(120)
@given(data=st.data())
def test_invalid_kwargs_raise_naming_the_kwarg(env_id: str, data: st.DataObject) -> None:
    fam = family(env_id)
    base = data.draw(fam.kwargs(100), label="valid kwargs")
    table = fam.bad_kwargs(base)
    name = data.draw(st.sampled_from(sorted(table)), label="kwarg")
    kwargs = {**base, name: data.draw(table[name], label="bad value")}
    with pytest.raises((ValueError, TypeError)) as excinfo:
        gym.make(env_id, max_episode_steps=base["episode_length"], **kwargs)
    assert name in message(excinfo)
    with pytest.raises((ValueError, TypeError)) as excinfo:
        gym.make_vec(
            env_id,
            num_envs=2,
            vectorization_mode="vector_entry_point",
            max_episode_steps=base["episode_length"],
            **kwargs,
        )
    assert name in message(excinfo)


@pytest.mark.parametrize("env_id", ENV_IDS)
@props(50)
@given(data=st.data())
def test_invalid_env_arguments_raise_naming_them(env_id: str, data: st.DataObject) -> None:
    """``render_mode`` and, for vector envs, ``num_envs`` and ``max_episode_steps``."""
    kwargs = data.draw(family(env_id).kwargs(100), label="valid kwargs")
    render_mode = data.draw(  # no "%": gym.make's own render_mode warning would choke on it
        st.text(max_size=10).filter(lambda m: m not in ("human", "rgb_array") and "%" not in m),
        label="mode",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gym.make warns about the mode before we refuse it
        with pytest.raises((ValueError, TypeError)) as excinfo:
            make_single(env_id, {**kwargs, "render_mode": render_mode})
    assert "render_mode" in message(excinfo)

    name, bad = data.draw(
        st.one_of(
            st.tuples(st.just("num_envs"), bad_int(1, 1_000_000)),
            st.tuples(
                st.just("max_episode_steps"),
                st.one_of(
                    st.integers(max_value=0),
                    st.floats(),
                    st.booleans(),
                    NOT_NUMBERS.filter(lambda v: v is not None),  # None: no limit
                ),
            ),
            st.tuples(
                st.just("render_mode"),
                st.one_of(st.text(max_size=8).filter(lambda m: m != "rgb_array"), st.integers()),
            ),
        ),
        label="vector argument",
    )
    arguments = {"num_envs": 2, "max_episode_steps": kwargs["episode_length"], name: bad}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises((ValueError, TypeError)) as excinfo:
            gym.make_vec(env_id, vectorization_mode="vector_entry_point", **arguments, **kwargs)
    assert name in message(excinfo)


@pytest.mark.parametrize("env_id", ENV_IDS)
@props(30)
@given(data=st.data())
def test_unknown_kwargs_raise_type_error_naming_them(env_id: str, data: st.DataObject) -> None:
    rules_class = gym.make(env_id).unwrapped.rules_class
    known = set(inspect.signature(rules_class).parameters) | {"render_mode", "kwargs"}
    name = data.draw(
        st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(
            lambda n: n not in known | MAKE_KWARGS | MAKE_VEC_KWARGS
        ),
        label="unknown kwarg",
    )
    with pytest.raises(TypeError) as excinfo:
        gym.make(env_id, **{name: 1})
    assert repr(name) in message(excinfo)
    with pytest.raises(TypeError) as excinfo:
        gym.make_vec(env_id, num_envs=2, vectorization_mode="vector_entry_point", **{name: 1})
    assert repr(name) in message(excinfo)


@pytest.mark.parametrize("env_id", ENV_IDS)
@props(60)
@given(data=st.data())
def test_single_env_refuses_garbage_actions_and_stays_usable(
    env_id: str, data: st.DataObject
) -> None:
    kwargs = data.draw(family(env_id).kwargs(12), label="kwargs")
    env = make_single(env_id, kwargs)
    batch, layout = env.unwrapped.batch, env.unwrapped.obs_layout
    length = env.unwrapped.rules.episode_length
    garbage = garbage_single_action(env.action_space)
    env.reset(seed=data.draw(SEEDS, label="seed"))
    item = valid_action(env.action_space)
    for t, action in enumerate(action_sequence(data, env.action_space, length, item), 1):
        for bad in data.draw(st.lists(garbage, max_size=2), label=f"garbage before step {t}"):
            with pytest.raises((ValueError, TypeError)) as excinfo:
                env.step(bad)
            assert "action" in message(excinfo), message(excinfo)
            assert batch.t[0] == t - 1, "a refused action advanced the episode"
        obs, _, terminated, truncated, _ = env.step(action)
        assert obs[layout["time"]][0] == np.float32(t / length)
        assert not terminated and truncated is (t == length)


@pytest.mark.parametrize("env_id", ENV_IDS)
@props(60)
@given(data=st.data())
def test_vector_env_refuses_garbage_actions_and_stays_usable(
    env_id: str, data: st.DataObject
) -> None:
    num_envs = data.draw(st.integers(1, 5), label="num_envs")
    kwargs = data.draw(family(env_id).kwargs(8), label="kwargs")
    env = make_vector(env_id, num_envs, kwargs)
    length, time = env.rules.episode_length, env.obs_layout["time"]
    garbage = garbage_batch_action(env.single_action_space, num_envs)
    env.reset(seed=data.draw(SEEDS, label="seed"))
    item = st.lists(valid_action(env.single_action_space), min_size=num_envs, max_size=num_envs)
    t = 0
    for step, action in enumerate(action_sequence(data, env.action_space, length + 2, item)):
        for bad in data.draw(st.lists(garbage, max_size=2), label=f"garbage before {step}"):
            with pytest.raises((ValueError, TypeError)) as excinfo:
                env.step(bad)
            assert "action" in message(excinfo), message(excinfo)
            assert (env.batch.t == t).all(), "a refused action advanced the episodes"
        obs, _, terminated, truncated, _ = env.step(action)
        t = 0 if t == length else t + 1  # after a truncation comes the autoreset step
        assert (obs[:, time] == np.float32(t / length)).all()
        assert not terminated.any()
        assert truncated.all() if t == length else not truncated.any()


@pytest.mark.parametrize("env_id", ENV_IDS)
@props(25)
@given(data=st.data())
def test_vector_sub_env_replays_single_env_with_offset_seed(
    env_id: str, data: st.DataObject
) -> None:
    """Sub-env ``i`` of a vector env seeded ``s`` plays the single env seeded ``s + i``."""
    fam = family(env_id)
    num_envs = data.draw(st.integers(1, 4), label="num_envs")
    kwargs = data.draw(fam.kwargs(40), label="kwargs")
    seed = data.draw(st.integers(0, 2**63), label="seed")
    vector = make_vector(env_id, num_envs, kwargs)
    task = data.draw(st.none() | fam.valid_task(vector.rules), label="task")
    options = None if task is None else {"task": task}
    length = vector.rules.episode_length
    item = st.lists(valid_action(vector.single_action_space), min_size=num_envs, max_size=num_envs)
    actions = [np.asarray(a) for a in action_sequence(data, vector.action_space, length, item)]
    obs, _ = vector.reset(seed=seed, options=options)
    trace = [(obs, np.zeros(num_envs))]
    for action in actions:
        obs, rewards, *_ = vector.step(action)
        trace.append((obs.copy(), rewards.copy()))
    single = make_single(env_id, kwargs)
    for row in range(num_envs):
        obs, _ = single.reset(seed=seed + row, options=options)
        np.testing.assert_array_equal(obs, trace[0][0][row])
        for action, (vector_obs, vector_rewards) in zip(actions, trace[1:], strict=True):
            obs, reward, *_ = single.step(action[row])
            np.testing.assert_array_equal(obs, vector_obs[row])
            assert reward == vector_rewards[row]


# -- the bugs the properties found, each as its smallest reproduction ------------------------
@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_reversal_bandit_with_episode_length_one_resets_and_steps() -> None:
    env = gym.make("Hebb-ReversalBandit-v0", episode_length=1, max_episode_steps=1)
    env.reset(seed=0)  # numpy ValueError "low >= high" from the reversal-step draw
    *_, truncated, _ = env.step(0)
    assert truncated
    vector = gym.make_vec(
        "Hebb-ReversalBandit-v0",
        num_envs=2,
        vectorization_mode="vector_entry_point",
        episode_length=1,
        max_episode_steps=1,
    )
    vector.reset(seed=0)


def test_maze_task_with_a_bool_coordinate_is_refused() -> None:
    env = gym.make("Hebb-Maze-v0")
    with pytest.raises((ValueError, TypeError), match="task"):
        env.reset(seed=0, options={"task": (True, 3)})  # silently accepted as (1, 3)


def test_cue_reward_task_with_bool_cues_is_refused() -> None:
    env = gym.make("Hebb-CueReward-v0", one_hot=True)
    cues = np.eye(4, 20, dtype=bool)
    with pytest.raises((ValueError, TypeError), match="cue"):
        env.reset(seed=0, options={"task": {"cues": cues, "target": 1}})


def test_ragged_task_error_names_the_task() -> None:
    maze = gym.make("Hebb-Maze-v0")
    with pytest.raises(ValueError, match="task"):
        maze.reset(seed=0, options={"task": [[1], 3]})  # numpy's "inhomogeneous shape" message
    cue = gym.make("Hebb-CueReward-v0", n_cues=2, cue_size=2)
    with pytest.raises(ValueError, match="task"):
        cue.reset(seed=0, options={"task": {"cues": [[1, 1], [1]], "target": 0}})


def test_ragged_actions_error_names_the_actions() -> None:
    env = gym.make("Hebb-Maze-v0")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step([[0], 1])
    vector = gym.make_vec("Hebb-Maze-v0", num_envs=2, vectorization_mode="vector_entry_point")
    vector.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        vector.step([0, [1]])


def test_cue_reward_vector_info_task_can_be_given_back() -> None:
    vector = gym.make_vec("Hebb-CueReward-v0", num_envs=2, vectorization_mode="vector_entry_point")
    _, info = vector.reset(seed=0)
    task = {"cues": info["task"]["cues"], "target": info["task"]["target"]}
    _, again = vector.reset(seed=1, options={"task": task})  # "cues must have shape (4, 20)"
    np.testing.assert_array_equal(again["task"]["cues"], task["cues"])
    np.testing.assert_array_equal(again["task"]["target"], task["target"])


def test_box_actions_refuse_complex_values() -> None:
    env = gym.make("Hebb-Conditioning-v0", continuous=True)
    env.reset(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's ComplexWarning while dropping 1j
        with pytest.raises(TypeError, match="action"):
            env.step(np.array([0.5 + 1j]))  # silently stepped as 0.5


def test_actions_refuse_timedelta_values() -> None:
    maze = gym.make("Hebb-Maze-v0")
    maze.reset(seed=0)
    with pytest.raises(TypeError, match="action"):
        maze.step(np.timedelta64(1, "s"))  # silently stepped as DOWN
    conditioning = gym.make("Hebb-Conditioning-v0", continuous=True)
    conditioning.reset(seed=0)
    with pytest.raises(TypeError, match="action"):
        conditioning.step(np.array([np.timedelta64(0, "s")]))


def test_vector_actions_refuse_bools_mixed_into_a_list() -> None:
    """A single env refuses ``True``; the vector env must refuse it inside a batch too."""
    maze = gym.make_vec("Hebb-Maze-v0", num_envs=2, vectorization_mode="vector_entry_point")
    maze.reset(seed=0)
    with pytest.raises(TypeError, match="action"):
        maze.step([0, True])  # silently stepped as [0, 1]
    box = gym.make_vec(
        "Hebb-Conditioning-v0", num_envs=2, vectorization_mode="vector_entry_point", continuous=True
    )
    box.reset(seed=0)
    with pytest.raises(TypeError, match="action"):
        box.step([[0.5], [True]])  # silently stepped as [[0.5], [1.0]]


def test_vector_max_episode_steps_of_the_wrong_type_is_named() -> None:
    with pytest.raises(TypeError, match="max_episode_steps"):
        gym.make_vec(
            "Hebb-Maze-v0",
            num_envs=2,
            vectorization_mode="vector_entry_point",
            max_episode_steps="200",  # "'<' not supported between instances of 'str' and 'int'"
        )


def test_unknown_reset_options_of_mixed_key_types_are_named() -> None:
    env = gym.make("Hebb-Maze-v0")
    with pytest.raises(ValueError, match="'seed'"):
        env.reset(options={"seed": 1, 2: 3})  # TypeError from sorted() names no option


def test_cue_reward_reset_finishes_when_the_cues_just_fit() -> None:
    """``2**cue_size == n_cues`` is accepted, but rejection sampling of distinct cues then
    needs about ``n**n / n!`` draws: ~1e26 for 64 cues of 6 bits, so reset never returns."""
    env = gym.make("Hebb-CueReward-v0", n_cues=64, cue_size=6)
    with time_limit(2.0):
        env.reset(seed=0)
