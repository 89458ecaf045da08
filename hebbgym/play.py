"""Play any hebbgym task yourself, from the keyboard, in a pygame window.

Arrow keys (or WASD) move in the maze; number keys pick action ``0..9`` elsewhere (and
``y``/``n`` answer 1/0). Escape or closing the window quits. Playing a task is the quickest
way to feel what the agent must learn within one episode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import gymnasium as gym
import numpy as np

import hebbgym  # noqa: F401  (registers the ids)
from hebbgym.envs.maze import MazeAction
from hebbgym.envs.rendering import import_pygame


def key_to_action(env: gym.Env, key: int) -> Any | None:
    """The action a key stands for in ``env``, or ``None`` if the key means nothing there."""
    pygame = import_pygame()
    space = env.action_space
    if env.spec is not None and env.spec.id.startswith("Hebb-Maze"):
        arrows = {
            pygame.K_UP: MazeAction.UP, pygame.K_w: MazeAction.UP,
            pygame.K_DOWN: MazeAction.DOWN, pygame.K_s: MazeAction.DOWN,
            pygame.K_LEFT: MazeAction.LEFT, pygame.K_a: MazeAction.LEFT,
            pygame.K_RIGHT: MazeAction.RIGHT, pygame.K_d: MazeAction.RIGHT,
        }  # fmt: skip
        return int(arrows[key]) if key in arrows else None
    letters = {pygame.K_y: 1, pygame.K_n: 0}
    digit = key - pygame.K_0 if pygame.K_0 <= key <= pygame.K_9 else letters.get(key)
    if digit is None:
        return None
    if isinstance(space, gym.spaces.Discrete):
        return digit if digit < space.n else None
    return np.array([min(float(digit), 1.0)], dtype=np.float32)


def run_play(
    env: gym.Env,
    events: Callable[[], Iterable[Any]],
    seed: int | None = None,
    max_episodes: int | None = None,
    report: Callable[[str], None] = print,
) -> list[float]:
    """Step ``env`` with the actions of key presses from ``events`` until quit; returns
    each finished episode's return. ``events`` is ``pygame.event.get`` when a person plays."""
    pygame = import_pygame()
    env.reset(seed=seed)
    returns: list[float] = []
    total = 0.0
    while max_episodes is None or len(returns) < max_episodes:
        pending = list(events())
        if not pending:
            pygame.time.wait(15)  # a person is thinking: do not spin the CPU
        for event in pending:
            if event.type == pygame.QUIT or (
                event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE
            ):
                return returns
            if event.type != pygame.KEYDOWN:
                continue
            action = key_to_action(env, event.key)
            if action is None:
                continue
            _, reward, terminated, truncated, _ = env.step(action)
            total += reward
            if terminated or truncated:
                returns.append(total)
                report(f"episode {len(returns)}: return {total:+.1f}")
                total = 0.0
                env.reset()
                if max_episodes is not None and len(returns) >= max_episodes:
                    break
    return returns


def play(
    env_id: str, seed: int | None = None, episodes: int | None = None, **env_kwargs: Any
) -> list[float]:
    """Open ``env_id`` in a window and play it from the keyboard."""
    env = gym.make(env_id, render_mode="human", **env_kwargs)
    print(__doc__.split("\n\n")[1].replace("\n", " "))
    try:
        return run_play(env, import_pygame().event.get, seed=seed, max_episodes=episodes)
    finally:
        env.close()
