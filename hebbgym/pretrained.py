"""Pretrained agents shipped with the package: the best modulated agent of each task's sweep.

Each one is a directory ``hebbgym/pretrained/<env id>/`` in the run-directory format
(``config.json`` + ``checkpoint.safetensors``), so everything that loads a run loads it too;
its checkpoint holds the weights only (no optimizer state) and, in its progress metadata,
where it came from and the held-out evaluation it was chosen on, next to the LSTM baseline's
score on the same episodes. Where the modulated agent was chosen ahead of that baseline
(maze, conditioning, cue-reward) ``tests/test_pretrained.py`` checks it still beats it; where
no modulated agent beat the LSTM (the bandit, independent conditioning) the best one ships
all the same, so that every task can be watched, and the test checks it falls no further
behind than it was chosen.

    hebbgym watch --pretrained Hebb-Maze-v0
    hebbgym evaluate --pretrained Hebb-Maze-v0
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from hebbgym.train.checkpoint import FORMAT, atomic_write_bytes, load_checkpoint
from hebbgym.train.loop import CHECKPOINT_FILE, CONFIG_FILE, load_agent

PRETRAINED_DIR = Path(__file__).with_name("pretrained")


def available() -> list[str]:
    """Env ids with a pretrained agent."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / CHECKPOINT_FILE).is_file())


def pretrained_dir(env_id: str) -> Path:
    """The run directory of ``env_id``'s pretrained agent; a clear error where none ships."""
    if env_id not in available():
        raise ValueError(
            f"no pretrained agent for {env_id!r}; available: {', '.join(available()) or 'none'}"
        )
    return PRETRAINED_DIR / env_id


def pretrained_info(env_id: str) -> dict[str, Any]:
    """Where the agent came from and how it was evaluated (its checkpoint's progress)."""
    return load_checkpoint(pretrained_dir(env_id) / CHECKPOINT_FILE).progress


def export_pretrained(
    run_dir: Path, evaluation: dict[str, Any], destination: Path = PRETRAINED_DIR
) -> Path:
    """Write the agent of ``run_dir`` as ``destination/<env id>/``: its config and its weights
    only, with ``evaluation`` (how it was chosen, the baseline it beat) in the metadata."""
    from safetensors.torch import save

    config, agent, progress = load_agent(Path(run_dir))
    target = Path(destination) / config.env_id
    target.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"model/{name}": value.detach().clone().contiguous()
        for name, value in agent.state_dict().items()
    }
    metadata = {
        "format": FORMAT,
        "config": json.dumps(config.to_dict(), sort_keys=True),
        "progress": json.dumps({**progress, **evaluation}, sort_keys=True),
        "param_groups": "[]",
    }
    atomic_write_bytes(target / CHECKPOINT_FILE, save(tensors, metadata=metadata))
    atomic_write_bytes(
        target / CONFIG_FILE, json.dumps(config.to_dict(), indent=2, sort_keys=True).encode()
    )
    return target


def _relative(path: Path) -> str:
    """``path`` relative to the working directory where it lies below it (no machine paths
    in shipped files)."""
    resolved = Path(path).resolve()
    return (
        str(resolved.relative_to(Path.cwd())) if resolved.is_relative_to(Path.cwd()) else str(path)
    )


def chosen_ahead_of_baseline(info: dict[str, Any]) -> bool:
    """Whether a shipped agent's held-out mean was above its LSTM baseline's median when it
    was chosen (``info`` as :func:`pretrained_info` returns it)."""
    return info["evaluation"]["mean_reward"] > info["baseline"]["median_mean_reward"]


def _held_out_means(sweep_file: str | Path, agent: str) -> list[tuple[float, int, Path]]:
    """(mean held-out reward, episodes, run directory) of every ``agent`` trial of a sweep."""
    from hebbgym.sweep import SweepConfig
    from hebbgym.train.sb3_baselines import EVALUATION_FILE

    means = []
    for trial in SweepConfig.from_file(sweep_file).trials():
        if trial.config.agent != agent:
            continue
        path = trial.run_dir / EVALUATION_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: evaluate the sweep first (scripts/reproduce_*.py)")
        returns = json.loads(path.read_text())["returns"]
        means.append((float(np.mean(returns)), len(returns), trial.run_dir))
    if not means:
        raise ValueError(f"{sweep_file}: no {agent} trials to pick from or compare with")
    return means


def export_best_of_sweep(
    sweep_file: str | Path,
    destination: Path = PRETRAINED_DIR,
    baseline_sweep_file: str | Path | None = None,
) -> Path:
    """The modulated trial of an evaluated sweep with the best held-out mean reward, exported
    with the median of the LSTM trials on the same episodes as its baseline: those of
    ``baseline_sweep_file`` where given (an ablation sweep of the modulated agent alone is
    compared with the LSTM of the sweep it varies), else of the same sweep."""
    from hebbgym.train.evaluate import EVALUATION_SEED

    best_mean, episodes, best_dir = max(_held_out_means(sweep_file, "modulated"))
    lstm = _held_out_means(baseline_sweep_file or sweep_file, "lstm")
    baseline: dict[str, Any] = {
        "agent": "lstm",
        "median_mean_reward": float(np.median([mean for mean, _, _ in lstm])),
        "seed_mean_rewards": sorted(mean for mean, _, _ in lstm),
    }
    if baseline_sweep_file is not None:
        baseline["sweep"] = str(baseline_sweep_file)
    evaluation = {
        "source": _relative(best_dir),
        "evaluation": {"episodes": episodes, "seed": EVALUATION_SEED, "mean_reward": best_mean},
        "baseline": baseline,
    }
    return export_pretrained(best_dir, evaluation, destination)
