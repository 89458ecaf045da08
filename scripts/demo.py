"""The main job of ``make demo``: train (or load) a Backpropamine agent, plot its learning
curve, and record a rendered episode of it beside its M(t) and Hebbian trace.

    python scripts/demo.py [--out-dir demo] [--episodes N] [--references]

A finished run in ``--out-dir/run`` is loaded instead of retrained; an interrupted one is
resumed. ``--references`` also records one episode of every task with its random and
oracle reference policies.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import hebbgym
from hebbgym.agents.references import evaluate_reference, reference_policy
from hebbgym.recording import record_episode
from hebbgym.train.checkpoint import load_checkpoint
from hebbgym.train.config import TrainConfig
from hebbgym.train.evaluate import evaluate_agent
from hebbgym.train.loop import CHECKPOINT_FILE, load_agent, train
from hebbgym.train.plots import plot_learning_curves
from hebbgym.watch import watch_agent

DEMO_ENV = "Hebb-Conditioning-v0"
# The configuration of tests/train/test_learning.py: shorter episodes learn in ~30 s here.
DEMO_ENV_KWARGS = {"episode_length": 60, "learning_period": 10}


def train_or_load(config: TrainConfig, run_dir: Path) -> None:
    checkpoint = run_dir / CHECKPOINT_FILE
    if checkpoint.exists():
        done = load_checkpoint(checkpoint).progress["episodes"]
        resolved = config.resolved()  # the task preset fills the fields left unset
        if done >= resolved.batches * resolved.batch_size:
            print(f"loading the finished run in {run_dir} ({done} episodes)")
            return
        print(f"resuming {run_dir} from episode {done}")
        train(config, run_dir, resume=True)
        return
    train(config, run_dir, overwrite=run_dir.exists())


def record_references(out_dir: Path, seed: int) -> None:
    for env_id in hebbgym.ENV_IDS:
        for name in ("random", "oracle"):
            total, path = record_episode(
                env_id,
                lambda env, env_id=env_id, name=name: (
                    reference_policy(env_id, name, env.unwrapped, seed).act
                ),
                out_dir / "references" / f"{env_id}-{name}.gif",
                seed=seed,
            )
            print(f"{env_id:34s} {name:7s} return {total:+7.1f} -> {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("demo"))
    parser.add_argument("--episodes", type=int, default=15_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--references", action="store_true")
    args = parser.parse_args()

    start = time.perf_counter()
    run_dir = args.out_dir / "run"
    config = TrainConfig(
        env_id=DEMO_ENV,
        agent="modulated",
        seed=args.seed,
        episodes=args.episodes,
        env_kwargs=DEMO_ENV_KWARGS,
    )
    train_or_load(config, run_dir)
    config, agent, _ = load_agent(run_dir)

    random_mean = evaluate_reference(DEMO_ENV, "random", 300, seed=1, **DEMO_ENV_KWARGS).mean()
    oracle_mean = evaluate_reference(DEMO_ENV, "oracle", 300, seed=1, **DEMO_ENV_KWARGS).mean()
    agent_mean = evaluate_agent(config, agent, 300, seed=1, greedy=True).mean()
    curve = plot_learning_curves(
        {"modulated (Backpropamine)": [run_dir]},
        args.out_dir / "learning_curve.png",
        f"{DEMO_ENV}: reward per episode while training",
        references={"random": random_mean, "oracle": oracle_mean},
    )
    video = args.out_dir / "episode.gif"
    watch_agent(config, agent, seed=args.seed, out=video, greedy=True)
    if args.references:
        record_references(args.out_dir, args.seed)
    score = (agent_mean - random_mean) / (oracle_mean - random_mean)
    print(
        f"{DEMO_ENV} {DEMO_ENV_KWARGS}: trained agent (greedy) {agent_mean:.1f} per episode "
        f"over 300 held-out episodes, accuracy {(agent_mean / oracle_mean + 1) / 2:.1%} "
        f"(random {random_mean:.1f}, oracle {oracle_mean:.1f}, score {score:.2f}); "
        f"curve {curve}, episode {video}; {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
