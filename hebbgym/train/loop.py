"""The training loop: A2C over batches of whole episodes, with logs and safe checkpoints.

A run directory holds ``config.json`` (the resolved :class:`TrainConfig`),
``checkpoint.safetensors`` (latest state, replaced atomically), ``metrics.csv`` (one row per
logged batch) and ``tb/`` (TensorBoard). ``resume=True`` continues exactly where the last
checkpoint stopped: same parameters, optimizer moments, sampling RNG and episode seeds, so
a resumed run ends with the parameters of an uninterrupted one. For the same reason a run
that diverged would diverge again from the same checkpoint: it leaves ``diverged.json``
(:func:`divergence_record`) so that a sweep does not retry it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import shutil
import sys
import time
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from hebbgym.agents.actor_critic import ActorCritic, build_agent
from hebbgym.agents.baselines import count_parameters
from hebbgym.train.a2c import a2c_loss, clip_gradients
from hebbgym.train.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    load_checkpoint,
    restore_model,
    restore_training,
    save_checkpoint,
)
from hebbgym.train.config import TASK_PRESETS, TrainConfig
from hebbgym.train.rollout import collect_rollout, episode_seed

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
METRICS_FILE = "metrics.csv"
TENSORBOARD_DIR = "tb"
DIVERGED_FILE = "diverged.json"
METRICS_COLUMNS = (
    "episode",
    "batch",
    "reward_mean",
    "reward_std",
    "loss",
    "policy_loss",
    "value_loss",
    "entropy",
    "grad_norm",
    "modulation_abs_mean",
    "seconds",
    "steps_per_second",
)
RUN_FILES = (CONFIG_FILE, CHECKPOINT_FILE, METRICS_FILE, TENSORBOARD_DIR, DIVERGED_FILE)


class TrainingDiverged(RuntimeError):
    """A loss or gradient became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    batches: int
    episodes: int
    seconds: float
    final_reward_mean: float


def make_env(config: TrainConfig, num_envs: int | None = None) -> gym.vector.VectorEnv:
    """The native vector env of ``config``'s task, ``num_envs`` episodes wide (default: the
    batch size)."""
    return gym.make_vec(
        config.env_id,
        num_envs=config.batch_size if num_envs is None else num_envs,
        vectorization_mode="vector_entry_point",
        **config.env_kwargs,
    )


def make_agent(config: TrainConfig, env: gym.vector.VectorEnv) -> ActorCritic:
    """The agent a config describes, initialised from the run's seed."""
    torch.manual_seed(config.seed)
    hidden = config.hidden_size
    return build_agent(
        config.agent,
        env.single_observation_space.shape[0],
        env.single_action_space,
        hidden if hidden is not None else TASK_PRESETS[config.env_id].hidden_size,
        plastic_rule=config.plastic_rule,
        modulation=config.modulation,
        match_baselines=hidden is None,
    )


def divergence_record(run_dir: Path) -> dict[str, Any] | None:
    """What a run that diverged left behind: ``message``, ``batch`` (the one that diverged)
    and ``checkpoint_batch`` (that of the last good checkpoint it diverged from, -1 for none);
    ``None`` if it did not."""
    path = run_dir / DIVERGED_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        return {
            "message": str(record["message"]),
            "batch": int(record["batch"]),
            "checkpoint_batch": int(record["checkpoint_batch"]),
        }
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a divergence record ({error!r}); delete it") from error


def load_run_config(run_dir: Path) -> TrainConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no run there (config.json missing)")
    try:
        return TrainConfig.from_dict(json.loads(path.read_text())).resolved()
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: not a usable run config ({error})") from error


def load_agent(run_dir: Path) -> tuple[TrainConfig, ActorCritic, dict[str, Any]]:
    """The trained agent of a run directory, its config and training progress."""
    config = load_run_config(run_dir)
    path = Path(run_dir) / CHECKPOINT_FILE
    checkpoint = load_checkpoint(path)
    _check_same_run(config, checkpoint.config, path)
    env = make_env(config)
    agent = make_agent(config, env)
    env.close()
    restore_model(agent, checkpoint, path)
    return config, agent, checkpoint.progress


def _check_same_run(config: TrainConfig, saved: dict[str, Any], path: Path) -> None:
    """A checkpoint must come from the run it is loaded into (all but the budget). A field
    added to the config after the checkpoint was written counts as its default there."""
    current = config.to_dict()
    defaults = {
        f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not MISSING
    }
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    differing = sorted(k for k in current if k != "episodes" and saved.get(k) != current[k])
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} vs {current[k]!r}" for k in differing)
        raise CheckpointError(f"{path} was written by another run config ({details})")


def _prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    existing = [name for name in RUN_FILES if (run_dir / name).exists()]
    if resume and overwrite:
        raise ValueError("choose --resume or --overwrite, not both")
    if existing and not (resume or overwrite):
        raise FileExistsError(
            f"{run_dir} already holds a run ({', '.join(existing)}); "
            "pass --resume to continue it or --overwrite to replace it"
        )
    if resume and not (run_dir / CHECKPOINT_FILE).exists():
        raise FileNotFoundError(f"{run_dir}: nothing to resume (no {CHECKPOINT_FILE})")


def _clear_run_dir(run_dir: Path) -> None:
    for name in RUN_FILES:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace ``path`` with ``rows`` as a ``metrics.csv`` (all columns, atomically)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRICS_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, buffer.getvalue().encode())


def train(
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train ``config`` in ``run_dir``; see the module docstring for what is written."""
    run_dir = Path(run_dir)
    config = config.resolved()
    _prepare_run_dir(run_dir, resume, overwrite)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(checkpoint_path)
        _check_same_run(config, checkpoint.config, checkpoint_path)

    torch.set_num_threads(config.threads)
    env = make_env(config)
    agent = make_agent(config, env)
    print(
        f"{config.agent} agent on {config.env_id}: hidden size {agent.core.hidden_size}, "
        f"{count_parameters(agent):,} parameters",
        file=sys.stderr,
    )
    optimizer = torch.optim.Adam(agent.parameters(), lr=config.lr, eps=config.adam_eps)
    generator = torch.Generator().manual_seed(config.seed)
    start_batch, seconds_before = 0, 0.0
    metrics: list[dict[str, Any]] = []
    if checkpoint is not None:
        restore_model(agent, checkpoint, checkpoint_path)
        restore_training(optimizer, generator, checkpoint)
        start_batch = int(checkpoint.progress["batch"]) + 1
        seconds_before = float(checkpoint.progress["seconds"])
        metrics = [
            row for row in _read_metrics(run_dir / METRICS_FILE) if int(row["batch"]) < start_batch
        ]
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            _clear_run_dir(run_dir)
    for stale in run_dir.glob(".*.tmp-*"):  # left by a write that a crash interrupted
        stale.unlink()
    atomic_write_bytes(run_dir / CONFIG_FILE, json.dumps(config.to_dict(), indent=2).encode())
    write_metrics(run_dir / METRICS_FILE, metrics)
    (run_dir / DIVERGED_FILE).unlink(missing_ok=True)  # this attempt writes its own
    saved_batch = start_batch - 1

    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start_batch)
    bar = tqdm(
        total=config.batches,
        initial=start_batch,
        unit="batch",
        disable=not progress,
        desc=f"{config.agent} on {config.env_id}",
    )
    started = time.perf_counter()
    steps_per_batch = config.batch_size * env.unwrapped.batch.length
    reward_mean = math.nan
    try:
        for batch in range(start_batch, config.batches):
            batch_start = time.perf_counter()
            rollout = collect_rollout(env, agent, episode_seed(config.seed, batch), generator)
            terms = a2c_loss(
                rollout,
                gamma=config.gamma,
                value_coef=config.value_coef,
                entropy_coef=config.entropy_coef,
                entropy_kind=config.entropy_kind,
                gae_lambda=config.gae_lambda,
                modulation_coef=config.modulation_coef,
            )
            if not torch.isfinite(terms.total):
                raise TrainingDiverged(
                    f"batch {batch}: loss is {terms.total.item()} (policy {terms.policy.item()}, "
                    f"value {terms.value.item()}); the last good checkpoint is kept in {run_dir}"
                )
            optimizer.zero_grad()
            terms.total.backward()
            grad_norm = clip_gradients(agent.parameters(), config.grad_clip)
            if not math.isfinite(grad_norm):
                raise TrainingDiverged(
                    f"batch {batch}: gradient norm is {grad_norm}; "
                    f"the last good checkpoint is kept in {run_dir}"
                )
            optimizer.step()

            episode_rewards = rollout.rewards.sum(0).numpy()
            reward_mean = float(episode_rewards.mean())
            elapsed = seconds_before + time.perf_counter() - started
            row = {
                "episode": (batch + 1) * config.batch_size,
                "batch": batch,
                "reward_mean": reward_mean,
                "reward_std": float(episode_rewards.std()),
                "loss": terms.total.item(),
                "policy_loss": terms.policy.item(),
                "value_loss": terms.value.item(),
                "entropy": rollout.entropies.mean().item(),
                "grad_norm": grad_norm,
                "modulation_abs_mean": rollout.modulation.abs().mean().item()
                if rollout.modulation.numel()
                else 0.0,
                "seconds": round(elapsed, 3),
                "steps_per_second": round(steps_per_batch / (time.perf_counter() - batch_start), 1),
            }
            if batch % config.log_every == 0 or batch == config.batches - 1:
                metrics.append(row)
                for key in METRICS_COLUMNS[2:]:
                    writer.add_scalar(key, row[key], batch)
            bar.update(1)
            bar.set_postfix(reward=f"{reward_mean:.2f}", steps_s=f"{row['steps_per_second']:.0f}")
            if (batch + 1) % config.checkpoint_every == 0 or batch == config.batches - 1:
                write_metrics(run_dir / METRICS_FILE, metrics)
                save_checkpoint(
                    checkpoint_path,
                    agent,
                    optimizer,
                    generator,
                    config.to_dict(),
                    {"batch": batch, "episodes": row["episode"], "seconds": elapsed},
                )
                saved_batch = batch
    except TrainingDiverged as error:
        record = {"message": str(error), "batch": batch, "checkpoint_batch": saved_batch}
        atomic_write_bytes(run_dir / DIVERGED_FILE, json.dumps(record).encode())
        raise
    finally:
        bar.close()
        writer.close()
        env.close()
    return TrainResult(
        run_dir=run_dir,
        batches=config.batches,
        episodes=config.batches * config.batch_size,
        seconds=seconds_before + time.perf_counter() - started,
        final_reward_mean=reward_mean,
    )


def metrics_table(run_dir: str | Path) -> dict[str, np.ndarray]:
    """``metrics.csv`` of a run as float columns."""
    rows = _read_metrics(Path(run_dir) / METRICS_FILE)
    return {key: np.array([float(row[key]) for row in rows]) for key in METRICS_COLUMNS}
