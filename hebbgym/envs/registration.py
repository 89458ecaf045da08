"""Registers every hebbgym id with Gymnasium, single and native vector entry points."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

#: id → (module:class stem, default episode length, fixed kwargs).
ENVIRONMENTS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "Hebb-Conditioning-v0": ("conditioning:Conditioning", 100, {}),
    "Hebb-ConditioningIndependent-v0": ("conditioning:Conditioning", 100, {"independent": True}),
    "Hebb-Maze-v0": ("maze:Maze", 200, {}),
    "Hebb-ReversalBandit-v0": ("reversal_bandit:ReversalBandit", 100, {}),
    "Hebb-CueReward-v0": ("cue_reward:CueReward", 120, {}),
}


def register_all() -> None:
    """Register each id once; safe to call again (re-imports, reloads)."""
    for env_id, (stem, episode_length, kwargs) in ENVIRONMENTS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point=f"hebbgym.envs.{stem}Env",
            vector_entry_point=f"hebbgym.envs.{stem}VectorEnv",
            max_episode_steps=episode_length,
            kwargs=dict(kwargs),
        )
