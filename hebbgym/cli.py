"""The ``hebbgym`` command: ``train``, ``evaluate``, ``watch`` and ``play``.

Each subcommand is a thin function over the package, parsed by tyro from its signature.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated, Literal

import tyro

import hebbgym

Agent = Literal["modulated", "retroactive", "plastic", "rnn", "lstm"]


def train(
    env: str | None = None,
    agent: Agent | None = None,
    seed: int | None = None,
    episodes: int | None = None,
    run_dir: Path = Path("runs/default"),
    resume: bool = False,
    overwrite: bool = False,
    hidden_size: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    gamma: float | None = None,
    gae_lambda: float | None = None,
    entropy_coef: float | None = None,
    entropy_kind: Literal["entropy", "sum_squares"] | None = None,
    modulation_coef: float | None = None,
    grad_clip: float | None = None,
    plastic_rule: Literal["decay", "oja", "clip"] | None = None,
    env_kwargs: str | None = None,
    checkpoint_every: int | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> None:
    """Train an agent by A2C with backpropagation through whole episodes.

    Unset options take the task's preset (the papers' settings). With --resume the run
    continues from its last checkpoint with the config it was started with; only
    --episodes may change (to extend it).

    Args:
        env: a registered id (default Hebb-Maze-v0).
        agent: modulated (Backpropamine, the default), retroactive, plastic (no
            neuromodulation), rnn, lstm.
        seed: seeds initialisation, sampling and episodes (default 0).
        episodes: total training episodes (default 20000).
        run_dir: where config, checkpoint, metrics.csv and TensorBoard logs go.
        resume: continue the run in run_dir exactly where it stopped.
        overwrite: replace a run already in run_dir.
        modulation_coef: penalty on M(t)^2 that keeps the neuromodulator out of saturation
            (default 0, as in the papers).
        env_kwargs: JSON object of env kwargs, e.g. '{"size": 11}'.
    """
    from hebbgym.train.config import TrainConfig
    from hebbgym.train.loop import load_run_config
    from hebbgym.train.loop import train as run_training

    overrides = {
        "hidden_size": hidden_size,
        "batch_size": batch_size,
        "lr": lr,
        "gamma": gamma,
        "gae_lambda": gae_lambda,
        "entropy_coef": entropy_coef,
        "entropy_kind": entropy_kind,
        "modulation_coef": modulation_coef,
        "grad_clip": grad_clip,
        "plastic_rule": plastic_rule,
        "env_kwargs": _parse_json_object("env_kwargs", env_kwargs),
        "checkpoint_every": checkpoint_every,
        "threads": threads,
    }
    overrides.update(env_id=env, agent=agent, seed=seed)
    given = {key: value for key, value in overrides.items() if value is not None}
    if resume:
        config = load_run_config(run_dir)
        conflicts = [key for key, value in given.items() if getattr(config, key) != value]
        if conflicts:
            raise ValueError(
                f"a resumed run keeps its config; {run_dir} was started with "
                + ", ".join(f"{key}={getattr(config, key)!r}" for key in conflicts)
            )
        if episodes is not None:
            config = dataclasses.replace(config, episodes=episodes)
    else:
        config = TrainConfig(**{"episodes": episodes or 20_000, **given})
    result = run_training(config, run_dir, resume=resume, overwrite=overwrite, progress=progress)
    print(
        json.dumps(
            {
                "run_dir": str(result.run_dir),
                "episodes": result.episodes,
                "seconds": round(result.seconds, 1),
                "final_reward_mean": result.final_reward_mean,
            }
        )
    )


def _parse_json_object(name: str, text: str | None) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--{name.replace('_', '-')} must be a JSON object: {error}") from error
    if not isinstance(value, dict):
        raise ValueError(f"--{name.replace('_', '-')} must be a JSON object, got {text!r}")
    return value


def _agent_dir(run_dir: Path | None, pretrained: str | None) -> Path:
    """The run directory to load: ``run_dir``, or the shipped agent of ``pretrained``."""
    if (run_dir is None) == (pretrained is None):
        raise ValueError("give either --run-dir or --pretrained ENV_ID (one of them)")
    if pretrained is not None:
        from hebbgym.pretrained import pretrained_dir

        return pretrained_dir(pretrained)
    return run_dir


def evaluate(
    run_dir: Path | None = None,
    pretrained: str | None = None,
    episodes: int = 1000,
    seed: int = 0,
    greedy: bool = False,
) -> None:
    """Evaluate a trained agent (weights frozen, plasticity on); print a JSON summary with
    the mean, std and the score normalised between random (0) and the oracle (1), the
    references' returns, and where the task has a bar for it, whether the agent solves it
    (with the accuracy it is judged on, the agent's and the references'); for a shipped
    agent also where it came from and the LSTM baseline it was chosen against.

    Args:
        run_dir: a training run directory.
        pretrained: instead of a run, the shipped agent of this env id (e.g. Hebb-Maze-v0).
        episodes: evaluation episodes.
        seed: seed of the evaluation episodes (the references play the same ones).
        greedy: take the most likely action instead of sampling.
    """
    from hebbgym.train.evaluate import evaluate_run

    agent_dir = _agent_dir(run_dir, pretrained)
    summary = evaluate_run(agent_dir, episodes, seed, greedy)
    if pretrained is not None:
        from hebbgym.pretrained import pretrained_info

        info = pretrained_info(pretrained)
        summary["shipped"] = {key: info[key] for key in ("source", "evaluation", "baseline")}
    print(json.dumps(summary, indent=2))


def watch(
    run_dir: Path | None = None,
    pretrained: str | None = None,
    out: Path | None = None,
    seed: int = 0,
    episodes: int = 1,
    greedy: bool = False,
) -> None:
    """Play an episode of a trained agent beside live plots of M(t), the rewards and the
    Hebbian trace; in a window, or recorded headless to --out episode.gif|.mp4.

    Args:
        run_dir: a training run directory.
        pretrained: instead of a run, the shipped agent of this env id (e.g. Hebb-Maze-v0).
        out: record to this .gif or .mp4 instead of opening a window.
        seed: seed of the episode.
        episodes: how many episodes to play.
        greedy: take the most likely action instead of sampling.
    """
    from hebbgym.watch import watch_run

    agent_dir = _agent_dir(run_dir, pretrained)
    returns = watch_run(agent_dir, seed=seed, out=out, greedy=greedy, episodes=episodes)
    print(json.dumps({"returns": returns, "out": str(out) if out else None}))


def play(
    env_id: Annotated[str, tyro.conf.Positional],
    seed: int | None = None,
    episodes: int | None = None,
) -> None:
    """Play a task from the keyboard in a window (arrows in the maze, digits elsewhere).

    Args:
        env_id: a registered id, e.g. Hebb-Maze-v0.
        seed: seed of the first episode.
        episodes: stop after this many episodes (default: until the window is closed).
    """
    from hebbgym.play import play as play_task

    if env_id not in hebbgym.ENV_IDS:
        raise ValueError(f"unknown env id {env_id!r}; known: {', '.join(hebbgym.ENV_IDS)}")
    play_task(env_id, seed=seed, episodes=episodes)


def sweep(
    config: Path, address: str | None = None, cpus: int | None = None, serial: bool = False
) -> None:
    """Run a grid of trainings (agents × seeds × hyperparameters) on Ray Tune; running it
    again resumes it. Writes summary.csv and curves.png beside the trials.

    Args:
        config: a sweep YAML file (see sweeps/).
        address: an existing Ray cluster, e.g. ray://head:10001 (default: a local instance).
        cpus: CPUs of the local Ray instance (default: all).
        serial: train the trials one after another in this process, without Ray (on a
            machine shared with other jobs, Ray's low-priority workers get little CPU).
    """
    from hebbgym.sweep import SweepConfig, run_sweep

    result = run_sweep(SweepConfig.from_file(config), address=address, cpus=cpus, serial=serial)
    print(json.dumps(result, indent=2))


COMMANDS = {"train": train, "evaluate": evaluate, "watch": watch, "play": play, "sweep": sweep}


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``hebbgym`` console script; errors end with a one-line message."""
    from hebbgym.train.checkpoint import CheckpointError
    from hebbgym.train.loop import TrainingDiverged

    try:
        tyro.extras.subcommand_cli_from_dict(COMMANDS, args=args, prog="hebbgym")
    except (
        ValueError,
        FileExistsError,
        FileNotFoundError,
        CheckpointError,
        TrainingDiverged,
    ) as error:
        print(f"hebbgym: error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()
