"""The shared machinery of every hebbgym task.

Each task writes its rules once, as a :class:`TaskRules` subclass that works on a batch of
``B`` episodes with numpy array operations. :class:`EpisodeBatch` adds what every task has in
common (the clock, the meta-RL observation channels, returns, histories for rendering), and
two thin shells expose it: :class:`HebbEnv` (a ``gymnasium.Env``, a batch of one) and
:class:`HebbVectorEnv` (a ``gymnasium.vector.VectorEnv``, a batch of ``num_envs``). The rules
therefore cannot drift apart between the single and the vector env.

All randomness of an episode is drawn at reset, from that episode's own generator. Sub-env
``i`` of a vector env reset with ``seed=s`` owns the generator that a single env reset with
``seed=s + i`` owns (Gymnasium's ``SyncVectorEnv`` convention), so both produce the same
episodes, bit for bit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from hebbgym.envs.checks import (
    check_box_actions,
    check_discrete_actions,
    check_int,
    check_options,
)
from hebbgym.envs.rendering import Painter, Renderer

RESET_OPTIONS = ("task",)
RENDER_MODES = ["human", "rgb_array"]


class TaskRules(ABC):
    """The rules of one task, written once over a batch of episodes.

    Subclasses set, in ``__init__``: ``action_space`` (single-episode space), ``channels``
    (ordered task-channel names and widths), ``channel_low``/``channel_high`` (bounds of the
    concatenated task channels) and ``reward_low``/``reward_high``.

    An episode's state is a dict of numpy arrays with a leading batch axis, built by stacking
    :meth:`draw_episode` results; :meth:`step` may update the entries that change.
    """

    title: ClassVar[str] = "task"
    render_fps: ClassVar[int] = 4
    #: When the results report calls a run of this task solved: mean :meth:`accuracy` at
    #: least ``solved_accuracy``, or a mean return at least that of the reference policy
    #: ``solved_reference``; ``None`` for both where the task has no such bar (the maze).
    solved_accuracy: ClassVar[float | None] = None
    solved_reference: ClassVar[str | None] = None
    #: What :meth:`accuracy` counts, in words, for the report.
    accuracy_scope: ClassVar[str] = ""
    frame_size: tuple[int, int] = (480, 480)

    action_space: spaces.Discrete | spaces.Box
    channels: dict[str, int]
    channel_low: np.ndarray
    channel_high: np.ndarray
    reward_low: float
    reward_high: float

    def __init__(self, episode_length: int) -> None:
        self.episode_length = check_int("episode_length", episode_length, low=1, high=1_000_000)

    @abstractmethod
    def sample_task(self, rng: np.random.Generator) -> Any:
        """Draw the hidden task of a new episode."""

    @abstractmethod
    def check_task(self, task: Any) -> Any:
        """Return ``task`` in canonical form, or raise ``ValueError``/``TypeError``."""

    @abstractmethod
    def draw_episode(self, rng: np.random.Generator, task: Any) -> dict[str, np.ndarray]:
        """Everything random about one episode, drawn up front, plus its initial state."""

    @abstractmethod
    def step(
        self, episodes: dict[str, np.ndarray], t: np.ndarray, actions: np.ndarray
    ) -> np.ndarray:
        """Apply ``actions`` (validated, batched) at steps ``t``; return the rewards ``(B,)``."""

    @abstractmethod
    def observe(self, episodes: dict[str, np.ndarray], t: np.ndarray) -> np.ndarray:
        """The task channels ``(B, sum(channels))`` seen at steps ``t``."""

    @abstractmethod
    def infos(self, episodes: dict[str, np.ndarray], t: np.ndarray) -> dict[str, Any]:
        """Batched facts hidden from the agent, at least ``"task"``, for references and tests."""

    @abstractmethod
    def draw(self, painter: Painter, batch: EpisodeBatch, row: int) -> None:
        """Draw episode ``row`` of ``batch`` below the shared header."""

    def accuracy(self, batch: EpisodeBatch) -> np.ndarray:
        """Per episode of the finished ``batch``: the fraction of scored answers that were
        right, over the part of the episode the solved criterion looks at (NaN for an episode
        too short to hold one). Only tasks with a ``solved_accuracy`` define it."""
        raise NotImplementedError(f"{self.title} has no accuracy criterion")

    # -- derived, shared by every task -------------------------------------------------------
    @property
    def action_width(self) -> int:
        """Width of the previous-action channel: one-hot for Discrete, the value for Box."""
        if isinstance(self.action_space, spaces.Discrete):
            return int(self.action_space.n)
        return int(self.action_space.shape[0])

    def check_actions(self, actions: Any, batch_shape: tuple[int, ...]) -> np.ndarray:
        """Validate actions for a batch of shape ``batch_shape`` (``()`` for a single env)."""
        space = self.action_space
        if isinstance(space, spaces.Discrete):
            return check_discrete_actions(actions, int(space.n), batch_shape)
        return check_box_actions(
            actions, float(space.low.min()), float(space.high.max()), batch_shape + space.shape
        )

    def encode_actions(self, actions: np.ndarray) -> np.ndarray:
        """The previous-action channel for validated ``actions`` of shape ``(B,)`` or ``(B, d)``."""
        if isinstance(self.action_space, spaces.Discrete):
            return np.eye(self.action_width, dtype=np.float32)[actions]
        return actions.astype(np.float32).reshape(len(actions), -1)

    def observation_layout(self) -> dict[str, slice]:
        """Name → slice of every observation part, task channels first."""
        widths = {**self.channels, "bias": 1, "time": 1, "reward": 1, "action": self.action_width}
        layout, start = {}, 0
        for name, width in widths.items():
            layout[name] = slice(start, start + width)
            start += width
        return layout

    def observation_space(self) -> spaces.Box:
        layout = self.observation_layout()
        size = max(part.stop for part in layout.values())
        low, high = np.zeros(size, np.float32), np.zeros(size, np.float32)
        task_width = sum(self.channels.values())
        low[:task_width], high[:task_width] = self.channel_low, self.channel_high
        low[layout["bias"]], high[layout["bias"]] = (
            0.0,
            1.0,
        )  # always 1; equal bounds upset checkers
        low[layout["time"]], high[layout["time"]] = 0.0, 1.0
        low[layout["reward"]] = min(self.reward_low, 0.0)
        high[layout["reward"]] = max(self.reward_high, 0.0)
        if isinstance(self.action_space, spaces.Discrete):
            low[layout["action"]], high[layout["action"]] = 0.0, 1.0
        else:
            low[layout["action"]] = np.minimum(self.action_space.low, 0.0)
            high[layout["action"]] = np.maximum(self.action_space.high, 0.0)
        return spaces.Box(low, high, dtype=np.float32)

    def check_batch_tasks(self, task: Any, num_envs: int) -> list[Any]:
        """One task for every env: either a single valid task (shared) or ``num_envs`` tasks."""
        try:
            return [self.check_task(task)] * num_envs
        except (TypeError, ValueError) as single_error:
            if isinstance(task, Mapping):  # a batched dict, e.g. a vector env's info["task"]
                fields = {key: value for key, value in task.items() if not key.startswith("_")}
                if not all(_has_length(value, num_envs) for value in fields.values()):
                    raise single_error
                task = [{key: value[i] for key, value in fields.items()} for i in range(num_envs)]
            elif not _has_length(task, num_envs) or isinstance(task, str):
                raise single_error
            return [self.check_task(one) for one in task]


def episode_batch_seeds(episodes: int, batch_size: int, seed: int) -> list[int]:
    """Reset seeds of the batches of ``batch_size`` sub-envs that play the episodes seeded
    ``seed``, ``seed + 1``, ... (at least ``episodes`` of them: callers drop the surplus).

    Sub-env ``i`` of a batch reset with ``s`` plays episode ``s + i``, so every batch size
    plays the same episodes in the same order. That is what lets agents, stable-baselines3
    models and reference policies be scored on one held-out set.
    """
    check_int("episodes", episodes, low=1)
    check_int("batch_size", batch_size, low=1)
    return [seed + start for start in range(0, episodes, batch_size)]


def _has_length(value: Any, length: int) -> bool:
    return isinstance(value, Sequence | np.ndarray) and len(value) == length


class EpisodeBatch:
    """``B`` episodes of one task in lockstep: clock, meta-RL channels, returns and histories."""

    def __init__(self, rules: TaskRules, num_envs: int, time_limit: int | None = None) -> None:
        self.rules = rules
        self.num_envs = check_int("num_envs", num_envs, low=1, high=1_000_000)
        limit = rules.episode_length if time_limit is None else time_limit
        self.length = min(rules.episode_length, check_int("max_episode_steps", limit, low=1))
        self.layout = rules.observation_layout()
        self.obs_size = max(part.stop for part in self.layout.values())
        self.episodes: dict[str, np.ndarray] = {}
        self.rows = np.arange(self.num_envs)
        self.t = np.zeros(self.num_envs, np.int64)
        self.prev_action = np.zeros((self.num_envs, rules.action_width), np.float32)
        self.prev_reward = np.zeros(self.num_envs, np.float64)
        self.episode_return = np.zeros(self.num_envs, np.float64)
        self.action_history = np.zeros((self.num_envs, rules.episode_length), np.float64)
        self.reward_history = np.zeros((self.num_envs, rules.episode_length), np.float64)

    def reset_rows(
        self, rows: np.ndarray, rngs: Sequence[np.random.Generator], tasks: Sequence[Any] | None
    ) -> None:
        """Start new episodes in ``rows``; ``tasks`` (canonical) or ``None`` to sample them."""
        for position, row in enumerate(rows):
            rng = rngs[row]
            task = self.rules.sample_task(rng) if tasks is None else tasks[position]
            drawn = self.rules.draw_episode(rng, task)
            if not self.episodes:
                self.episodes = {
                    key: np.zeros((self.num_envs, *np.shape(value)), np.asarray(value).dtype)
                    for key, value in drawn.items()
                }
            for key, value in drawn.items():
                self.episodes[key][row] = value
        for array in (self.t, self.prev_action, self.prev_reward, self.episode_return):
            array[rows] = 0
        self.action_history[rows] = 0.0
        self.reward_history[rows] = 0.0

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance every episode by one step with validated ``actions``; rewards and truncations."""
        rewards = self.rules.step(self.episodes, self.t, actions)
        step_index = self.t
        self.action_history[self.rows, step_index] = actions.reshape(self.num_envs, -1)[:, 0]
        self.reward_history[self.rows, step_index] = rewards
        self.prev_action = self.rules.encode_actions(actions)
        self.prev_reward = rewards
        self.episode_return = self.episode_return + rewards
        self.t = self.t + 1
        return rewards, self.t >= self.length

    def observations(self) -> np.ndarray:
        obs = np.empty((self.num_envs, self.obs_size), np.float32)
        task_width = sum(self.rules.channels.values())
        obs[:, :task_width] = self.rules.observe(self.episodes, self.t)
        obs[:, self.layout["bias"]] = 1.0
        obs[:, self.layout["time"].start] = self.t / self.rules.episode_length
        obs[:, self.layout["reward"].start] = self.prev_reward
        obs[:, self.layout["action"]] = self.prev_action
        return obs

    def infos(self) -> dict[str, Any]:
        infos = self.rules.infos(self.episodes, self.t)
        infos["episode_return"] = self.episode_return.copy()
        return infos

    def accuracy(self) -> np.ndarray | None:
        """The rules' per-episode :meth:`TaskRules.accuracy` of the episodes just finished
        (``None`` for a task without an accuracy criterion)."""
        if self.rules.solved_accuracy is None:
            return None
        if not (self.t >= self.length).all():
            raise RuntimeError("accuracy is defined on finished episodes only")
        return self.rules.accuracy(self)


class EpisodeScores(NamedTuple):
    """What an evaluation keeps of each held-out episode: its return and, for a task with an
    accuracy criterion, its :meth:`TaskRules.accuracy` (``None`` otherwise)."""

    returns: np.ndarray
    accuracy: np.ndarray | None


def mean_accuracy(accuracy: Sequence[float] | np.ndarray | None) -> float | None:
    """The mean over the episodes that had answers to score; ``None`` where none had (or no
    accuracy was measured)."""
    if accuracy is None:
        return None
    values = np.asarray(accuracy, np.float64)
    scored = values[~np.isnan(values)]
    return float(scored.mean()) if len(scored) else None


class ScoreLog:
    """Collects :class:`EpisodeScores` batch by batch, as the evaluators play them."""

    def __init__(self) -> None:
        self.returns: list[np.ndarray] = []
        self.accuracy: list[np.ndarray] = []

    def add(self, returns: np.ndarray, batch: EpisodeBatch) -> None:
        """The returns of ``batch``'s finished episodes, and their accuracy read off it."""
        self.returns.append(np.asarray(returns, np.float64))
        accuracy = batch.accuracy()
        if accuracy is not None:
            self.accuracy.append(accuracy)

    def scores(self, episodes: int) -> EpisodeScores:
        """The first ``episodes`` episodes (the last batch may hold a surplus)."""
        accuracy = np.concatenate(self.accuracy)[:episodes] if self.accuracy else None
        return EpisodeScores(np.concatenate(self.returns)[:episodes], accuracy)


def _with_masks(infos: dict[str, Any], num_envs: int) -> dict[str, Any]:
    """Gymnasium's vector info convention: every key ``k`` gets a boolean mask ``_k``."""
    masked: dict[str, Any] = {}
    for key, value in infos.items():
        masked[key] = _with_masks(value, num_envs) if isinstance(value, dict) else value
        masked[f"_{key}"] = np.ones(num_envs, dtype=bool)
    return masked


def _row(infos: dict[str, Any], row: int) -> dict[str, Any]:
    """The info dict of one episode out of a batched one."""
    return {
        key: _row(value, row) if isinstance(value, dict) else value[row]
        for key, value in infos.items()
    }


class HebbEnv(gym.Env):
    """A single episode of a task: the :class:`EpisodeBatch` machinery with ``B = 1``.

    Subclasses set ``rules_class`` and document the task in Gymnasium's docstring template.
    Unknown kwargs raise ``TypeError`` naming them.
    """

    rules_class: ClassVar[type[TaskRules]]
    metadata: ClassVar[dict[str, Any]] = {"render_modes": RENDER_MODES, "render_fps": 4}

    def __init__(self, render_mode: str | None = None, **kwargs: Any) -> None:
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(
                f"render_mode must be one of {RENDER_MODES} or None, got {render_mode!r}"
            )
        self.rules = self.rules_class(**kwargs)
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.rules.render_fps}
        self.action_space = self.rules.action_space
        self.observation_space = self.rules.observation_space()
        self.obs_layout = self.rules.observation_layout()
        self.batch = EpisodeBatch(self.rules, 1)
        self._renderer = Renderer(render_mode, self.rules.frame_size, self.rules.render_fps)
        self._needs_reset = True

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        options = check_options(options, RESET_OPTIONS)
        tasks = [self.rules.check_task(options["task"])] if "task" in options else None
        super().reset(seed=seed)
        self.batch.reset_rows(np.array([0]), [self.np_random], tasks)
        self._needs_reset = False
        if self.render_mode == "human":
            self.render()
        return self.batch.observations()[0], _row(self.batch.infos(), 0)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step(), and again after the episode ends")
        actions = self.rules.check_actions(action, ())[np.newaxis]
        rewards, truncated = self.batch.step(actions)
        self._needs_reset = bool(truncated[0])
        if self.render_mode == "human":
            self.render()
        info = _row(self.batch.infos(), 0)
        return self.batch.observations()[0], float(rewards[0]), False, bool(truncated[0]), info

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode to gym.make")
            return None
        if not self.batch.episodes:
            raise RuntimeError("call reset() before render()")
        return self._renderer.render(lambda painter: self._draw(painter))

    def _draw(self, painter: Painter) -> None:
        batch = self.batch
        painter.header(
            self.rules.title,
            step=int(batch.t[0]),
            length=batch.length,
            last_reward=float(batch.prev_reward[0]),
            total=float(batch.episode_return[0]),
        )
        self.rules.draw(painter, batch, 0)

    def close(self) -> None:
        self._renderer.close()
        super().close()


class HebbVectorEnv(VectorEnv):
    """``num_envs`` episodes of a task stepped together by numpy array operations.

    Autoreset is ``NEXT_STEP``: the step after an episode is truncated resets it and returns
    its first observation with reward 0. ``max_episode_steps`` (passed by ``gym.make_vec``)
    truncates like Gymnasium's ``TimeLimit``: at ``min(episode_length, max_episode_steps)``.
    """

    rules_class: ClassVar[type[TaskRules]]
    metadata: ClassVar[dict[str, Any]] = {
        "render_modes": RENDER_MODES,
        "render_fps": 4,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        render_mode: str | None = None,
        max_episode_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        self._renderers: list[Renderer] = []  # first, so close() works if __init__ fails
        if render_mode is not None and render_mode != "rgb_array":
            raise ValueError(
                f"vector envs render only 'rgb_array', got render_mode={render_mode!r}"
            )
        self.rules = self.rules_class(**kwargs)
        if max_episode_steps is not None:
            max_episode_steps = check_int("max_episode_steps", max_episode_steps, low=1)
        if max_episode_steps is not None and max_episode_steps < self.rules.episode_length:
            gym.logger.warn(
                f"max_episode_steps={max_episode_steps} cuts episodes of episode_length="
                f"{self.rules.episode_length}; pass max_episode_steps="
                f"{self.rules.episode_length} too"
            )
        self.batch = EpisodeBatch(self.rules, num_envs, time_limit=max_episode_steps)
        self.num_envs = self.batch.num_envs
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.rules.render_fps}
        self.single_action_space = self.rules.action_space
        self.single_observation_space = self.rules.observation_space()
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.obs_layout = self.rules.observation_layout()
        self._rngs: list[np.random.Generator] = []
        self._autoreset = np.zeros(self.num_envs, dtype=bool)

    def _seed(self, seed: int | Sequence[int] | None) -> None:
        if seed is None:
            if not self._rngs:
                self._rngs = [seeding.np_random(None)[0] for _ in range(self.num_envs)]
            return
        if isinstance(seed, Sequence | np.ndarray):
            seeds = [check_int("seed", one, low=0) for one in seed]
            if len(seeds) != self.num_envs:
                raise ValueError(f"seed list must have {self.num_envs} entries, got {len(seeds)}")
        else:
            first = check_int("seed", seed, low=0)
            seeds = [first + i for i in range(self.num_envs)]
        self._rngs = [seeding.np_random(one)[0] for one in seeds]

    def reset(
        self,
        *,
        seed: int | Sequence[int] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        options = check_options(options, RESET_OPTIONS)
        tasks = (
            self.rules.check_batch_tasks(options["task"], self.num_envs)
            if "task" in options
            else None
        )
        self._seed(seed)
        self.batch.reset_rows(self.batch.rows, self._rngs, tasks)
        self._autoreset[:] = False
        return self.batch.observations(), _with_masks(self.batch.infos(), self.num_envs)

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._rngs:
            raise RuntimeError("call reset() before step()")
        actions = self.rules.check_actions(actions, (self.num_envs,))
        # Every episode has the same fixed length and all start at reset(), so they end
        # together: the step after a truncation restarts the whole batch.
        if self._autoreset.any():
            self.batch.reset_rows(self.batch.rows, self._rngs, None)
            rewards = np.zeros(self.num_envs, np.float64)
            truncated = np.zeros(self.num_envs, dtype=bool)
        else:
            rewards, truncated = self.batch.step(actions)
        self._autoreset = truncated.copy()
        terminated = np.zeros(self.num_envs, dtype=bool)
        infos = _with_masks(self.batch.infos(), self.num_envs)
        return self.batch.observations(), rewards, terminated, truncated, infos

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array'")
            return None
        if not self.batch.episodes:
            raise RuntimeError("call reset() before render()")
        if not self._renderers:
            size, fps = self.rules.frame_size, self.rules.render_fps
            self._renderers = [Renderer("rgb_array", size, fps) for _ in range(self.num_envs)]
        frames = []
        for row, renderer in enumerate(self._renderers):
            frames.append(renderer.render(lambda painter, row=row: self._draw(painter, row)))
        return tuple(frames)

    def _draw(self, painter: Painter, row: int) -> None:
        batch = self.batch
        painter.header(
            self.rules.title,
            step=int(batch.t[row]),
            length=batch.length,
            last_reward=float(batch.prev_reward[row]),
            total=float(batch.episode_return[row]),
        )
        self.rules.draw(painter, batch, row)

    def close_extras(self, **kwargs: Any) -> None:
        for renderer in self._renderers:
            renderer.close()
