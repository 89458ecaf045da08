"""Pavlovian fear conditioning (BOHP 2016, section 4), exclusive and independent stimuli."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from hebbgym.envs.base import EpisodeBatch, HebbEnv, HebbVectorEnv, TaskRules
from hebbgym.envs.checks import check_bool, check_float, check_int
from hebbgym.envs.rendering import ACCENT, BAD, GOOD, GRID, HEADER_HEIGHT, INK, MUTED, Painter

STIMULI = ("S1", "S2")


class ConditioningRules(TaskRules):
    """Rules of ``Hebb-Conditioning-v0`` and ``Hebb-ConditioningIndependent-v0``."""

    title = "Hebb-Conditioning"
    render_fps = 6
    solved_accuracy = 0.95
    accuracy_scope = "right responses after the learning period"
    frame_size = (520, 360)

    def __init__(
        self,
        episode_length: int = 100,
        learning_period: int = 20,
        pain_prob: float = 0.3,
        continuous: bool = False,
        independent: bool = False,
    ) -> None:
        super().__init__(episode_length)
        self.learning_period = check_int(
            "learning_period", learning_period, low=0, high=self.episode_length - 1
        )
        self.pain_prob = check_float("pain_prob", pain_prob, low=0.0, high=1.0)
        if self.pain_prob == 0.0:
            raise ValueError("pain_prob must be > 0: without pain nothing can be conditioned")
        self.continuous = check_bool("continuous", continuous)
        self.independent = check_bool("independent", independent)
        if self.independent:
            self.title = "Hebb-ConditioningIndependent"
        self.action_space = (
            spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
            if self.continuous
            else spaces.Discrete(2)
        )
        self.channels = {"stimuli": 2, "pain": 1}
        self.channel_low = np.zeros(3, np.float32)
        self.channel_high = np.ones(3, np.float32)
        self.reward_low, self.reward_high = (-1.0, 0.0) if self.continuous else (-1.0, 1.0)

    def sample_task(self, rng: np.random.Generator) -> int:
        return int(rng.integers(2))

    def check_task(self, task: Any) -> int:
        if isinstance(task, bool | np.bool_) or not isinstance(task, int | np.integer):
            raise ValueError(f"conditioning task must be the paired stimulus, 0 or 1; got {task!r}")
        if task not in (0, 1):
            raise ValueError(f"conditioning task must be the paired stimulus, 0 or 1; got {task!r}")
        return int(task)

    def draw_episode(self, rng: np.random.Generator, task: int) -> dict[str, np.ndarray]:
        steps = self.episode_length + 1  # the last observation is shown but never answered
        if self.independent:
            stimuli = rng.random((steps, 2)) < 0.5
        else:
            stimuli = np.eye(2, dtype=bool)[rng.integers(2, size=steps)]
        pain = (rng.random(steps) < self.pain_prob) & stimuli[:, task]
        return {"paired": np.int64(task), "stimuli": stimuli, "pain": pain}

    def targets(self, episodes: dict[str, np.ndarray], t: np.ndarray) -> np.ndarray:
        """The correct response at steps ``t``: fear (1) exactly when the paired stimulus is on."""
        rows = np.arange(len(t))
        return episodes["stimuli"][rows, t, episodes["paired"]].astype(np.int64)

    def accuracy(self, batch: EpisodeBatch) -> np.ndarray:
        """Right responses after the learning period (the steps that are rewarded); a
        continuous response counts as fear at 0.5 and above."""
        steps = np.arange(self.learning_period, batch.length)
        if len(steps) == 0:  # cut short by a time limit within the learning period
            return np.full(batch.num_envs, np.nan)
        paired = batch.episodes["paired"][:, None]
        targets = np.take_along_axis(
            batch.episodes["stimuli"][:, steps], paired[:, :, None], axis=2
        )[:, :, 0]
        fear = batch.action_history[:, steps] >= 0.5
        return (fear == targets).mean(axis=1)

    def step(
        self, episodes: dict[str, np.ndarray], t: np.ndarray, actions: np.ndarray
    ) -> np.ndarray:
        target = self.targets(episodes, t)
        if self.continuous:
            rewards = -((actions[:, 0] - target) ** 2)
        else:
            rewards = np.where(actions == target, 1.0, -1.0)
        return np.where(t < self.learning_period, 0.0, rewards)

    def observe(self, episodes: dict[str, np.ndarray], t: np.ndarray) -> np.ndarray:
        rows = np.arange(len(t))
        return np.concatenate(
            [episodes["stimuli"][rows, t], episodes["pain"][rows, t, None]], axis=1
        )

    def infos(self, episodes: dict[str, np.ndarray], t: np.ndarray) -> dict[str, Any]:
        return {"task": episodes["paired"].copy(), "target": self.targets(episodes, t)}

    def draw(self, painter: Painter, batch: EpisodeBatch, row: int) -> None:
        episodes, step = batch.episodes, int(batch.t[row])
        paired = int(episodes["paired"][row])
        stimuli, pain = episodes["stimuli"][row], episodes["pain"][row]
        top = HEADER_HEIGHT + 20
        lights = [
            (STIMULI[0], stimuli[step, 0]),
            (STIMULI[1], stimuli[step, 1]),
            ("pain", pain[step]),
        ]
        for index, (name, on) in enumerate(lights):
            x = 70 + index * 110
            color = (BAD if name == "pain" else ACCENT) if on else GRID
            painter.circle(x, top + 40, 30, color)
            painter.text(x, top + 88, name, INK, 22, center=True)
            if index == paired:
                painter.text(x, top + 108, "paired (hidden)", MUTED, 16, center=True)
        response = batch.action_history[row, step - 1] if step > 0 else 0.0
        painter.circle(420, top + 40, 34, BAD if response >= 0.5 else (140, 200, 140))
        painter.text(420, top + 88, "fear" if response >= 0.5 else "calm", INK, 22, center=True)
        painter.text(420, top + 108, "last response", MUTED, 16, center=True)

        left, width, height = 90, painter.width - 110, 18
        y = top + 140
        painter.rect(
            left,
            y - 4,
            width * self.learning_period / self.episode_length,
            5 * 24 + 4,
            (235, 235, 245),
        )
        painter.text(left, y - 22, "timeline (shaded: free learning period)", MUTED, 16)
        rows = [
            (STIMULI[0], stimuli[:step, 0], lambda v: ACCENT if v else (255, 255, 255)),
            (STIMULI[1], stimuli[:step, 1], lambda v: ACCENT if v else (255, 255, 255)),
            ("pain", pain[:step], lambda v: BAD if v else (255, 255, 255)),
            (
                "fear",
                batch.action_history[row, :step],
                lambda v: BAD if v >= 0.5 else (255, 255, 255),
            ),
            (
                "reward",
                batch.reward_history[row, :step],
                lambda v: GOOD if v > 0 else BAD if v < 0 else GRID,
            ),
        ]
        for index, (name, values, colors) in enumerate(rows):
            painter.text(10, y + index * 24, name, INK, 18)
            painter.timeline(
                left, y + index * 24, width, height, values, colors, self.episode_length
            )


class ConditioningEnv(HebbEnv):
    """Classical fear conditioning: learn, within an episode, which stimulus predicts pain.

    ## Description
    Three sensors: stimuli ``S1``, ``S2`` and ``pain``. Each episode one stimulus is
    *paired* with pain: whenever it is on, pain comes with probability ``pain_prob`` (0.3);
    pain never comes otherwise. The agent must respond with fear exactly when the paired
    stimulus is on, with or without pain. Which stimulus is paired changes every episode,
    so it has to be learned from the first co-occurrences of stimulus and pain. In the
    exclusive variant (``Hebb-Conditioning-v0``) exactly one stimulus is on at each step; in
    ``Hebb-ConditioningIndependent-v0`` each is on with probability 1/2 independently.

    ## Action Space
    ``Discrete(2)``: 0 = calm, 1 = fear. With ``continuous=True``: ``Box(0, 1, (1,))``.

    ## Observation Space
    ``Box(float32, (8,))`` (``(7,)`` when continuous), parts in ``obs_layout``: ``stimuli``
    (S1, S2), ``pain``, ``bias``, ``time``, ``reward`` (previous), ``action`` (previous,
    one-hot or the value).

    ## Rewards
    0 during the first ``learning_period`` steps; then +1 for the correct response and -1
    otherwise, or ``-(a - target)²`` when continuous.

    ## Starting State
    The paired stimulus is 0 or 1 with probability 1/2, or fixed with
    ``reset(options={"task": 0 | 1})``; ``info["task"]`` is the paired stimulus and
    ``info["target"]`` the correct response to the current observation.

    ## Episode End
    Truncated after ``episode_length`` steps (100); never terminated.

    ## Arguments
    ``episode_length=100``, ``learning_period=20``, ``pain_prob=0.3``, ``continuous=False``,
    ``independent`` (set by the id), ``render_mode``.

    ## Version History
    * v0: initial version.
    """

    rules_class = ConditioningRules


class ConditioningVectorEnv(HebbVectorEnv):
    """The conditioning task for ``num_envs`` episodes at once; see :class:`ConditioningEnv`."""

    rules_class = ConditioningRules
