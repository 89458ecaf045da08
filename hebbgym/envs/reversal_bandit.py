"""Bernoulli bandit whose good arm reverses within the episode (reversal learning)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from hebbgym.envs.base import EpisodeBatch, HebbEnv, HebbVectorEnv, TaskRules
from hebbgym.envs.checks import check_float, check_int
from hebbgym.envs.rendering import (
    ACCENT,
    AGENT,
    BAD,
    GOOD,
    GRID,
    HEADER_HEIGHT,
    INK,
    MUTED,
    Painter,
)


class ReversalBanditRules(TaskRules):
    """Rules of ``Hebb-ReversalBandit-v0``; see :class:`ReversalBanditEnv`."""

    title = "Hebb-ReversalBandit"
    render_fps = 8
    solved_reference = "thompson-forgetting"

    def __init__(
        self,
        arms: int = 2,
        p_good: float = 0.8,
        p_bad: float = 0.2,
        episode_length: int = 100,
        hazard: float | None = None,
    ) -> None:
        super().__init__(episode_length)
        self.arms = check_int("arms", arms, low=2, high=64)
        self.p_good = check_float("p_good", p_good, low=0.0, high=1.0)
        self.p_bad = check_float("p_bad", p_bad, low=0.0, high=1.0)
        if self.p_good <= self.p_bad:
            raise ValueError(f"p_good ({p_good}) must exceed p_bad ({p_bad}): no arm would be good")
        self.hazard = None if hazard is None else check_float("hazard", hazard, low=0.0, high=1.0)
        self.action_space = spaces.Discrete(self.arms)
        self.channels = {}
        self.channel_low = np.zeros(0, np.float32)
        self.channel_high = np.zeros(0, np.float32)
        self.reward_low, self.reward_high = 0.0, 1.0
        self.frame_size = (560, HEADER_HEIGHT + 150 + 26 * self.arms + 20)

    def sample_task(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.arms))

    def check_task(self, task: Any) -> int:
        if isinstance(task, bool | np.bool_) or not isinstance(task, int | np.integer):
            raise ValueError(f"bandit task must be the initial good arm (an int), got {task!r}")
        if not 0 <= task < self.arms:
            raise ValueError(f"bandit task must be an arm in [0, {self.arms - 1}], got {task}")
        return int(task)

    def reversal_window(self) -> tuple[int, int]:
        """First and last step of the single reversal (without ``hazard``): uniform over the
        whole steps in [T/4, 3T/4]."""
        first = max(1, -(-self.episode_length // 4))
        return first, max(first, 3 * self.episode_length // 4)

    def draw_episode(self, rng: np.random.Generator, task: int) -> dict[str, np.ndarray]:
        steps = self.episode_length + 1
        if self.hazard is None:
            first, last = self.reversal_window()
            switches = np.zeros(steps, dtype=np.int64)
            switches[rng.integers(first, last + 1)] = rng.integers(1, self.arms)
        else:
            switches = (rng.random(steps) < self.hazard) * rng.integers(1, self.arms, size=steps)
            switches[0] = 0
        good_arm = (task + np.cumsum(switches)) % self.arms
        return {"good_arm": good_arm, "payout": rng.random(steps)}

    def step(
        self, episodes: dict[str, np.ndarray], t: np.ndarray, actions: np.ndarray
    ) -> np.ndarray:
        rows = np.arange(len(t))
        good = actions == episodes["good_arm"][rows, t]
        pay_probability = np.where(good, self.p_good, self.p_bad)
        return (episodes["payout"][rows, t] < pay_probability).astype(np.float64)

    def observe(self, episodes: dict[str, np.ndarray], t: np.ndarray) -> np.ndarray:
        return np.zeros((len(t), 0), np.float32)

    def infos(self, episodes: dict[str, np.ndarray], t: np.ndarray) -> dict[str, Any]:
        rows = np.arange(len(t))
        good_arm = episodes["good_arm"]
        previous = good_arm[rows, np.maximum(t - 1, 0)]
        return {
            "task": good_arm[:, 0].copy(),
            "good_arm": good_arm[rows, t].copy(),
            "reversal": good_arm[rows, t] != previous,
        }

    def draw(self, painter: Painter, batch: EpisodeBatch, row: int) -> None:
        step = int(batch.t[row])
        good_now = int(batch.episodes["good_arm"][row, step])
        top = HEADER_HEIGHT + 16
        slot = min(110, (painter.width - 20) // self.arms)
        last_action = int(batch.action_history[row, step - 1]) if step > 0 else -1
        for arm in range(self.arms):
            x = 10 + arm * slot
            probability = self.p_good if arm == good_now else self.p_bad
            painter.rect(
                x,
                top,
                slot - 10,
                70,
                GOOD if arm == good_now else GRID,
                0 if arm == good_now else 2,
            )
            painter.text(x + (slot - 10) / 2, top + 22, f"arm {arm}", INK, 22, center=True)
            painter.text(
                x + (slot - 10) / 2, top + 48, f"p = {probability:.2f}", INK, 18, center=True
            )
            if arm == last_action:
                painter.rect(x - 3, top - 3, slot - 4, 76, AGENT, 3)
        painter.text(
            10, top + 80, "green: good arm now (hidden); blue frame: last choice", MUTED, 16
        )

        left, width = 70, painter.width - 80
        y0 = top + 124
        painter.text(
            10, y0 - 18, "choices over time (green: rewarded, red: not; | reversal)", MUTED, 16
        )
        step_width = width / self.episode_length
        good_arm = batch.episodes["good_arm"][row]
        for arm in range(self.arms):
            y = y0 + arm * 26
            painter.text(10, y, f"arm {arm}", INK, 18)
            painter.rect(left, y, width, 20, GRID, 1)
        for index in range(step):
            arm = int(batch.action_history[row, index])
            rewarded = batch.reward_history[row, index] > 0
            painter.rect(
                left + index * step_width,
                y0 + arm * 26 + 2,
                max(step_width, 1),
                16,
                GOOD if rewarded else BAD,
            )
        for index in np.flatnonzero(good_arm[1 : step + 1] != good_arm[:step]) + 1:
            x = left + index * step_width
            painter.line((x, y0 - 4), (x, y0 + 26 * self.arms), ACCENT, 2)


class ReversalBanditEnv(HebbEnv):
    """A ``arms``-armed Bernoulli bandit whose good arm moves during the episode.

    ## Description
    One arm pays 1 with probability ``p_good`` (0.8), the others with ``p_bad`` (0.2). By
    default the good arm moves once, to another arm, at a step drawn uniformly in
    ``[episode_length/4, 3·episode_length/4]``; with ``hazard`` it moves with that
    probability at every step instead. Nothing but the reward tells the agent which arm is
    good: it must learn it, notice the reversal and learn again, within one episode.

    ## Action Space
    ``Discrete(arms)``: the arm to pull.

    ## Observation Space
    ``Box(float32, (3 + arms,))``: ``bias``, ``time``, ``reward`` (previous), ``action``
    (one-hot previous arm); see ``obs_layout``. There are no task channels.

    ## Rewards
    1 if the pulled arm pays, else 0.

    ## Starting State
    The initial good arm is uniform, or fixed with ``reset(options={"task": arm})``.
    ``info["task"]`` is the initial good arm, ``info["good_arm"]`` the good arm for the next
    pull and ``info["reversal"]`` whether it has just moved.

    ## Episode End
    Truncated after ``episode_length`` steps (100); never terminated.

    ## Arguments
    ``arms=2``, ``p_good=0.8``, ``p_bad=0.2``, ``episode_length=100``, ``hazard=None``,
    ``render_mode``.

    ## Version History
    * v0: initial version.
    """

    rules_class = ReversalBanditRules


class ReversalBanditVectorEnv(HebbVectorEnv):
    """``Hebb-ReversalBandit-v0`` for ``num_envs`` episodes; see :class:`ReversalBanditEnv`."""

    rules_class = ReversalBanditRules
