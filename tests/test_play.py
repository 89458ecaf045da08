"""Keyboard play, driven by scripted pygame events under the dummy video driver."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pygame
import pytest

from hebbgym.envs.maze import MazeAction
from hebbgym.play import key_to_action, run_play


def keydown(key: int) -> pygame.event.Event:
    return pygame.event.Event(pygame.KEYDOWN, key=key)


def scripted(*batches: list) -> callable:
    queue = list(batches)
    return lambda: queue.pop(0) if queue else [pygame.event.Event(pygame.QUIT)]


def test_keys_map_to_actions() -> None:
    maze = gym.make("Hebb-Maze-v0")
    assert key_to_action(maze, pygame.K_UP) == MazeAction.UP
    assert key_to_action(maze, pygame.K_d) == MazeAction.RIGHT
    assert key_to_action(maze, pygame.K_1) is None
    bandit = gym.make("Hebb-ReversalBandit-v0", arms=3)
    assert key_to_action(bandit, pygame.K_2) == 2
    assert key_to_action(bandit, pygame.K_3) is None
    cue = gym.make("Hebb-CueReward-v0")
    assert key_to_action(cue, pygame.K_y) == 1 and key_to_action(cue, pygame.K_n) == 0
    continuous = gym.make("Hebb-Conditioning-v0", continuous=True)
    np.testing.assert_array_equal(key_to_action(continuous, pygame.K_1), [1.0])


def test_a_scripted_player_finishes_episodes_and_quits() -> None:
    env = gym.make("Hebb-Maze-v0", render_mode="human", episode_length=4)
    reports: list[str] = []
    events = scripted(
        [keydown(pygame.K_UP), keydown(pygame.K_x), keydown(pygame.K_UP)],
        [keydown(pygame.K_LEFT), keydown(pygame.K_LEFT)],
        [keydown(pygame.K_DOWN)],
        [keydown(pygame.K_ESCAPE), keydown(pygame.K_UP)],
    )
    returns = run_play(env, events, seed=0, report=reports.append)
    assert len(returns) == 1 and reports == [f"episode 1: return {returns[0]:+.1f}"]
    assert env.unwrapped.batch.t[0] == 1, "the second episode got one step before Escape"
    env.close()


def test_max_episodes_stops_the_session() -> None:
    env = gym.make("Hebb-ReversalBandit-v0", render_mode="human", episode_length=2)
    events = scripted([keydown(pygame.K_0)] * 3, [keydown(pygame.K_1)] * 3)
    assert len(run_play(env, events, seed=1, max_episodes=2, report=lambda _: None)) == 2
    env.close()


@pytest.mark.parametrize("args", [["play", "Hebb-Nope-v0"], ["play"]])
def test_cli_rejects_bad_play_arguments(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hebbgym.cli", *args], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "Hebb-Nope-v0" in result.stderr or "required" in (result.stderr + result.stdout).lower()
