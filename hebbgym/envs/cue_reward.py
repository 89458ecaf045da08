"""Cue–reward association (Backpropamine 2019): which of four random cues is the target?"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from gymnasium import spaces

from hebbgym.envs.base import EpisodeBatch, HebbEnv, HebbVectorEnv, TaskRules
from hebbgym.envs.checks import as_array, check_bool, check_int
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

BLANK = -1


class CueRewardRules(TaskRules):
    """Rules of ``Hebb-CueReward-v0``; see :class:`CueRewardEnv`."""

    title = "Hebb-CueReward"
    render_fps = 4
    solved_accuracy = 0.9
    accuracy_scope = "right answers at the go steps of the episode's second half"

    def __init__(
        self,
        n_cues: int = 4,
        cue_size: int = 20,
        one_hot: bool = False,
        episode_length: int = 120,
    ) -> None:
        super().__init__(episode_length)
        self.n_cues = check_int("n_cues", n_cues, low=2, high=64)
        self.cue_size = check_int("cue_size", cue_size, low=1, high=1024)
        self.one_hot = check_bool("one_hot", one_hot)
        if self.one_hot and self.cue_size < self.n_cues:
            raise ValueError(f"one_hot cues need cue_size >= n_cues ({n_cues}), got {cue_size}")
        if not self.one_hot and 2**self.cue_size < self.n_cues:
            raise ValueError(f"cue_size={cue_size} cannot hold {n_cues} distinct ±1 cues")
        self.action_space = spaces.Discrete(2)
        self.channels = {"cue": self.cue_size, "go": 1}
        self.channel_low = np.concatenate([np.full(self.cue_size, -1.0), [0.0]]).astype(np.float32)
        self.channel_high = np.ones(self.cue_size + 1, np.float32)
        self.reward_low, self.reward_high = -1.0, 1.0
        self.fixed_cues = np.eye(self.n_cues, self.cue_size, dtype=np.int8)
        self.tile = max(4, min(22, 440 // self.cue_size))
        self.frame_size = (
            max(560, self.cue_size * self.tile + 140),
            HEADER_HEIGHT + 40 * self.n_cues + 200,
        )

    def sample_task(self, rng: np.random.Generator) -> dict[str, Any]:
        target = int(rng.integers(self.n_cues))
        if self.one_hot:
            return {"cues": self.fixed_cues.copy(), "target": target}
        if self.cue_size <= 30:  # draw distinct bit patterns directly: no retry loop
            codes = rng.choice(2**self.cue_size, size=self.n_cues, replace=False)
            bits = (codes[:, None] >> np.arange(self.cue_size)) & 1
            return {"cues": (2 * bits - 1).astype(np.int8), "target": target}
        while True:  # 2**31+ patterns: a repeat is all but impossible, but never return one
            cues = np.where(rng.random((self.n_cues, self.cue_size)) < 0.5, -1, 1).astype(np.int8)
            if len(np.unique(cues, axis=0)) == self.n_cues:
                return {"cues": cues, "target": target}

    def check_task(self, task: Any) -> dict[str, Any]:
        if not isinstance(task, Mapping) or set(task) != {"cues", "target"}:
            raise ValueError(
                f"cue-reward task must be a dict with keys 'cues' and 'target', got {task!r}"
            )
        cues, target = as_array("task cues", task["cues"], ValueError), task["target"]
        if cues.dtype.kind not in "iuf":
            raise ValueError(f"task cues must be numbers, got dtype {cues.dtype}")
        if cues.shape != (self.n_cues, self.cue_size):
            raise ValueError(
                f"task cues must have shape {(self.n_cues, self.cue_size)}, got {cues.shape}"
            )
        allowed = (0, 1) if self.one_hot else (-1, 1)
        if not np.isin(cues, allowed).all():
            raise ValueError(f"task cue values must be in {allowed}")
        if len(np.unique(cues, axis=0)) != self.n_cues:
            raise ValueError("task cues must be distinct, or the target is ambiguous")
        if isinstance(target, bool | np.bool_) or not isinstance(target, int | np.integer):
            raise ValueError(f"task target must be a cue index (int), got {target!r}")
        if not 0 <= target < self.n_cues:
            raise ValueError(f"task target must be in [0, {self.n_cues - 1}], got {target}")
        return {"cues": cues.astype(np.int8), "target": int(target)}

    def draw_episode(self, rng: np.random.Generator, task: dict[str, Any]) -> dict[str, np.ndarray]:
        """Trials of 5–8 steps: 1–2 blanks, cue, 0–1 blank, other cue, 0–1 blank, go, response."""
        steps = self.episode_length + 1
        max_trials = steps // 5 + 1
        lead = rng.integers(1, 3, size=max_trials)
        gaps = rng.integers(0, 2, size=(max_trials, 2))
        first = rng.integers(self.n_cues, size=max_trials)
        second = (first + rng.integers(1, self.n_cues, size=max_trials)) % self.n_cues
        shown = np.full(steps, BLANK, np.int64)
        go = np.zeros(steps, bool)
        answer = np.zeros(steps, np.int64)
        trial = np.zeros(steps, np.int64)
        t = 0
        for index in range(max_trials):
            start = t
            t += lead[index]
            for cue, gap in ((first[index], gaps[index, 0]), (second[index], gaps[index, 1])):
                if t < steps:
                    shown[t] = cue
                t += 1 + gap
            if t < steps:
                go[t] = True
                answer[t] = task["target"] in (first[index], second[index])
            t += 2  # the go step and the response step, when the reward is seen
            trial[start : min(t, steps)] = index
            if t >= steps:
                break
        return {
            "cues": task["cues"],
            "target": np.int64(task["target"]),
            "shown": shown,
            "go": go,
            "answer": answer,
            "trial": trial,
        }

    def accuracy(self, batch: EpisodeBatch) -> np.ndarray:
        """Right answers at the go steps of the episode's second half: by then a learner has
        had half an episode of rewards to find the target, and chance is 1/2."""
        length = batch.length
        go = batch.episodes["go"][:, :length] & (np.arange(length) >= length // 2)
        right = batch.action_history[:, :length] == batch.episodes["answer"][:, :length]
        answered = go.sum(axis=1)
        with np.errstate(invalid="ignore"):  # 0/0: a short episode without such a go step
            return (right & go).sum(axis=1) / answered

    def step(
        self, episodes: dict[str, np.ndarray], t: np.ndarray, actions: np.ndarray
    ) -> np.ndarray:
        rows = np.arange(len(t))
        scored = episodes["go"][rows, t]
        right = actions == episodes["answer"][rows, t]
        return np.where(scored, np.where(right, 1.0, -1.0), 0.0)

    def observe(self, episodes: dict[str, np.ndarray], t: np.ndarray) -> np.ndarray:
        rows = np.arange(len(t))
        shown = episodes["shown"][rows, t]
        cues = episodes["cues"][rows, np.maximum(shown, 0)] * (shown >= 0)[:, None]
        return np.concatenate([cues, episodes["go"][rows, t, None]], axis=1)

    def infos(self, episodes: dict[str, np.ndarray], t: np.ndarray) -> dict[str, Any]:
        rows = np.arange(len(t))
        return {
            "task": {"cues": episodes["cues"].copy(), "target": episodes["target"].copy()},
            "go": episodes["go"][rows, t].copy(),
            "answer": episodes["answer"][rows, t].copy(),
        }

    def draw(self, painter: Painter, batch: EpisodeBatch, row: int) -> None:
        episodes, step = batch.episodes, int(batch.t[row])
        cues, target = episodes["cues"][row], int(episodes["target"][row])
        shown_now = int(episodes["shown"][row, step])
        tile, left, top = self.tile, 110, HEADER_HEIGHT + 16
        painter.text(10, top - 4, "the episode's cues (target hidden from the agent)", MUTED, 16)
        for index, cue in enumerate(cues):
            y = top + 16 + index * 40
            label = f"cue {index}" + (" *" if index == target else "")
            painter.text(10, y + 4, label, GOOD if index == target else INK, 20)
            for bit, value in enumerate(cue):
                color = INK if value > 0 else (255, 255, 255)
                painter.rect(left + bit * tile, y, tile - 2, 26, color)
                painter.rect(left + bit * tile, y, tile - 2, 26, GRID, 1)
            if index == shown_now:
                painter.rect(left - 4, y - 4, self.cue_size * tile + 6, 34, ACCENT, 3)
        y = top + 24 + 40 * self.n_cues
        if episodes["go"][row, step]:
            painter.text(10, y, "GO: was the target (*) among this trial's two cues?", AGENT, 20)
        elif shown_now >= 0:
            painter.text(10, y, f"showing cue {shown_now}", INK, 20)
        else:
            painter.text(10, y, "blank", MUTED, 20)
        go_steps = np.flatnonzero(episodes["go"][row, :step])
        painter.text(10, y + 34, "answers (green: right, red: wrong):", MUTED, 16)
        for index, go_step in enumerate(go_steps):
            right = batch.reward_history[row, go_step] > 0
            answered = int(batch.action_history[row, go_step])
            x = 10 + (index % 20) * 26
            yy = y + 56 + (index // 20) * 30
            painter.rect(x, yy, 22, 22, GOOD if right else BAD)
            painter.text(
                x + 11, yy + 11, "Y" if answered else "N", (255, 255, 255), 18, center=True
            )
        if len(go_steps):
            accuracy = float(np.mean(batch.reward_history[row, go_steps] > 0))
            painter.text(
                10, y + 130, f"accuracy {accuracy:.0%} over {len(go_steps)} trials", INK, 20
            )


class CueRewardEnv(HebbEnv):
    """Learn within an episode which of several random cues is rewarded.

    ## Description
    Each episode draws ``n_cues`` (4) random cues, vectors of ``cue_size`` (20) values in
    {-1, +1}, and picks one as the target. The episode is a series of trials of 5–8 steps:
    1–2 blank steps, one cue, 0–1 blank, another cue, 0–1 blank, a *go* step (go bit on), and
    a response step. At the go step the agent answers 1 if the target was one of the trial's
    two cues, else 0, and sees the reward at the response step. The target is never shown as
    such: it must be inferred from rewards, within the episode.

    ## Action Space
    ``Discrete(2)``: the answer; it counts only at go steps.

    ## Observation Space
    ``Box(float32, (cue_size + 7,))``, parts in ``obs_layout``: ``cue`` (the cue shown, zeros
    when blank), ``go``, ``bias``, ``time``, ``reward`` (previous), ``action`` (previous, one-hot).

    ## Rewards
    +1 for a right answer at a go step, -1 for a wrong one, 0 at every other step.

    ## Starting State
    Random distinct cues and target, or fixed with
    ``reset(options={"task": {"cues": array (n_cues, cue_size), "target": int}})``.
    ``info["task"]`` holds both; ``info["go"]`` and ``info["answer"]`` describe the current step.

    ## Episode End
    Truncated after ``episode_length`` steps (120); never terminated.

    ## Arguments
    ``n_cues=4``, ``cue_size=20``, ``one_hot=False`` (fixed one-hot cues, an easier ablation),
    ``episode_length=120``, ``render_mode``.

    ## Version History
    * v0: initial version.
    """

    rules_class = CueRewardRules


class CueRewardVectorEnv(HebbVectorEnv):
    """``Hebb-CueReward-v0`` for ``num_envs`` episodes at once; see :class:`CueRewardEnv`."""

    rules_class = CueRewardRules
