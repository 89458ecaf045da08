"""A tiny sweep file (reversal bandit, 10-step episodes, 8 hidden units) for the sweep tests."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_tiny_sweep(
    path: Path, agents: list[str], seeds: list[int], episodes: int, **base: object
) -> Path:
    """``path`` with a sweep named after it over ``agents`` x ``seeds`` writing under
    ``path.parent / "sweeps"``; ``base`` adds or overrides config fields."""
    config = {
        "name": path.stem,
        "out_dir": str(path.parent / "sweeps"),
        "cpus_per_trial": 1,
        "base": {
            "env_id": "Hebb-ReversalBandit-v0",
            "episodes": episodes,
            "batch_size": 4,
            "hidden_size": 8,
            "lr": 0.01,
            "env_kwargs": {"episode_length": 10},
            **base,
        },
        "grid": {"agent": agents, "seed": seeds},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
