"""The maze with a hidden reward cell (Differentiable Plasticity 2018, Backpropamine 2019)."""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import numpy as np
from gymnasium import spaces

from hebbgym.envs.base import EpisodeBatch, HebbEnv, HebbVectorEnv, TaskRules
from hebbgym.envs.checks import as_array, check_float, check_int
from hebbgym.envs.rendering import AGENT, GOOD, GRID, HEADER_HEIGHT, MUTED, WALL, Painter


class MazeAction(IntEnum):
    UP = 0
    DOWN = 1
    LEFT = 2
    RIGHT = 3


#: (row, column) displacement of each :class:`MazeAction`.
MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)
#: Offsets of the 3×3 neighbourhood, row-major, that forms the wall channels.
NEIGHBOURHOOD = np.array([(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)], dtype=np.int64)
PATH_SHOWN = 24


def maze_walls(size: int) -> np.ndarray:
    """Boolean wall grid: the border and every interior cell with two even coordinates,
    except the centre, where the agent starts."""
    walls = np.zeros((size, size), dtype=bool)
    walls[0, :] = walls[-1, :] = walls[:, 0] = walls[:, -1] = True
    walls[2:-1:2, 2:-1:2] = True
    walls[size // 2, size // 2] = False
    return walls


class MazeRules(TaskRules):
    """Rules of ``Hebb-Maze-v0``; see :class:`MazeEnv` for the task."""

    title = "Hebb-Maze"
    render_fps = 8

    def __init__(
        self,
        size: int = 13,
        episode_length: int = 200,
        wall_penalty: float = 0.0,
        reward_value: float = 10.0,
    ) -> None:
        super().__init__(episode_length)
        self.size = check_int("size", size, low=5, high=101)
        if self.size % 2 == 0:
            raise ValueError(f"size must be odd so corridors run between pillars, got {size}")
        self.wall_penalty = check_float("wall_penalty", wall_penalty, low=0.0, high=1e6)
        self.reward_value = check_float("reward_value", reward_value, low=0.0, high=1e6)
        if self.reward_value == 0.0:
            raise ValueError("reward_value must be > 0: with no reward there is nothing to find")
        self.walls = maze_walls(self.size)
        self.center = np.array([self.size // 2, self.size // 2], dtype=np.int64)
        self.free_cells = np.argwhere(~self.walls).astype(np.int64)
        is_center = (self.free_cells == self.center).all(axis=1)
        self.reward_candidates = self.free_cells[~is_center]
        self.action_space = spaces.Discrete(len(MazeAction))
        self.channels = {"walls": len(NEIGHBOURHOOD)}
        self.channel_low = np.zeros(len(NEIGHBOURHOOD), np.float32)
        self.channel_high = np.ones(len(NEIGHBOURHOOD), np.float32)
        self.reward_low, self.reward_high = -self.wall_penalty, self.reward_value
        self.tile = max(12, 416 // self.size)
        grid = self.size * self.tile
        self.frame_size = (max(grid + 20, 420), HEADER_HEIGHT + grid + 40)

    def sample_task(self, rng: np.random.Generator) -> tuple[int, int]:
        row, col = self.reward_candidates[rng.integers(len(self.reward_candidates))]
        return int(row), int(col)

    def check_task(self, task: Any) -> tuple[int, int]:
        cell = as_array("maze task", task, ValueError)
        if cell.shape != (2,) or cell.dtype.kind not in "iu":
            raise ValueError(
                f"maze task must be a reward cell (row, col) of two ints, got {task!r}"
            )
        row, col = (int(v) for v in cell)
        if not (0 <= row < self.size and 0 <= col < self.size) or self.walls[row, col]:
            raise ValueError(
                f"reward cell {(row, col)} is not a free cell of the {self.size}x{self.size} maze"
            )
        if (row, col) == tuple(self.center):
            raise ValueError(
                f"reward cell {(row, col)} is the start cell; choose another free cell"
            )
        return row, col

    def draw_episode(
        self, rng: np.random.Generator, task: tuple[int, int]
    ) -> dict[str, np.ndarray]:
        reward_cell = np.array(task, dtype=np.int64)
        away = ~(self.free_cells == reward_cell).all(axis=1)
        destinations = self.free_cells[away]
        teleports = destinations[rng.integers(len(destinations), size=self.episode_length)]
        path = np.zeros((self.episode_length + 1, 2), dtype=np.int16)
        path[0] = self.center
        return {
            "reward_cell": reward_cell,
            "position": self.center.copy(),
            "teleports": teleports,
            "path": path,
        }

    def step(
        self, episodes: dict[str, np.ndarray], t: np.ndarray, actions: np.ndarray
    ) -> np.ndarray:
        rows = np.arange(len(actions))
        position = episodes["position"]
        target = position + MOVES[actions]
        hit_wall = self.walls[target[:, 0], target[:, 1]]
        moved = np.where(hit_wall[:, None], position, target)
        found = (moved == episodes["reward_cell"]).all(axis=1)
        moved = np.where(found[:, None], episodes["teleports"][rows, t], moved)
        episodes["position"][:] = moved
        episodes["path"][rows, t + 1] = moved
        return np.where(hit_wall, -self.wall_penalty, 0.0) + np.where(found, self.reward_value, 0.0)

    def observe(self, episodes: dict[str, np.ndarray], t: np.ndarray) -> np.ndarray:
        cells = episodes["position"][:, None, :] + NEIGHBOURHOOD[None, :, :]
        return self.walls[cells[..., 0], cells[..., 1]]

    def infos(self, episodes: dict[str, np.ndarray], t: np.ndarray) -> dict[str, Any]:
        return {"task": episodes["reward_cell"].copy(), "position": episodes["position"].copy()}

    def draw(self, painter: Painter, batch: EpisodeBatch, row: int) -> None:
        tile = self.tile
        left = (painter.width - self.size * tile) / 2
        top = HEADER_HEIGHT + 6

        def centre(cell: np.ndarray) -> tuple[float, float]:
            return left + (cell[1] + 0.5) * tile, top + (cell[0] + 0.5) * tile

        for r in range(self.size):
            for c in range(self.size):
                color = WALL if self.walls[r, c] else (255, 255, 255)
                painter.rect(left + c * tile, top + r * tile, tile, tile, color)
                painter.rect(left + c * tile, top + r * tile, tile, tile, GRID, 1)
        reward_cell = batch.episodes["reward_cell"][row]
        painter.rect(
            left + reward_cell[1] * tile + 3,
            top + reward_cell[0] * tile + 3,
            tile - 6,
            tile - 6,
            GOOD,
        )
        painter.text(*centre(reward_cell), "R", (255, 255, 255), max(14, tile // 2), center=True)
        step = int(batch.t[row])
        path = batch.episodes["path"][row, max(0, step - PATH_SHOWN) : step + 1]
        for a, b in zip(path[:-1], path[1:], strict=True):
            if np.abs(a.astype(int) - b).sum() == 1:  # skip teleport jumps
                painter.line(centre(a), centre(b), (150, 185, 240), max(2, tile // 8))
        x, y = centre(batch.episodes["position"][row])
        painter.circle(x, y, tile * 0.32, AGENT)
        painter.text(
            left,
            top + self.size * tile + 8,
            "R = hidden reward cell (the agent sees only its 3x3 walls)",
            MUTED,
            18,
        )


class MazeEnv(HebbEnv):
    """A grid maze whose reward cell is hidden and changes every episode.

    ## Description
    The agent starts at the centre of a ``size × size`` grid with walls on the border and on
    every interior cell whose coordinates are both even. One free cell (not the centre) holds
    a reward, fixed for the episode. Entering it pays ``+10`` and teleports the agent to a
    random free cell, so a good agent explores until the first reward, then returns by the
    shortest path again and again: it must learn the location within the episode.

    ## Action Space
    ``Discrete(4)``: :class:`MazeAction` ``UP=0, DOWN=1, LEFT=2, RIGHT=3``.

    ## Observation Space
    ``Box(float32, (16,))``, parts named in ``obs_layout``: ``walls`` (the 3×3 neighbourhood,
    1 = wall, row-major), ``bias`` (1.0), ``time`` (t / episode_length), ``reward`` (previous
    reward), ``action`` (one-hot previous action, zeros at t = 0).

    ## Rewards
    ``reward_value`` (10) on entering the reward cell; ``-wall_penalty`` (default 0) for
    bumping into a wall, which leaves the agent in place; 0 otherwise.

    ## Starting State
    The agent at the centre; the reward cell uniform over the other free cells, or fixed with
    ``reset(options={"task": (row, col)})``. ``info["task"]`` is the reward cell and
    ``info["position"]`` the agent's cell.

    ## Episode End
    Truncated after ``episode_length`` steps (200); never terminated.

    ## Arguments
    ``size=13`` (odd, ≥ 5), ``episode_length=200``, ``wall_penalty=0.0``,
    ``reward_value=10.0``, ``render_mode``. Differentiable Plasticity's setting is
    ``size=11, episode_length=250, wall_penalty=0.1``. Pass ``max_episode_steps`` to
    ``gym.make`` too when you lengthen episodes: its ``TimeLimit`` otherwise cuts them at 200.

    ## Version History
    * v0: initial version.
    """

    rules_class = MazeRules


class MazeVectorEnv(HebbVectorEnv):
    """``Hebb-Maze-v0`` for ``num_envs`` episodes at once; see :class:`MazeEnv`."""

    rules_class = MazeRules
