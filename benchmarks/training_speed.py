"""End-to-end A2C training speed, in agent-steps per second, of the plastic core's
implementations and of the two ways of differentiating an episode, each in a fresh process,
one after the other.

    python benchmarks/training_speed.py [--env Hebb-Maze-v0] [--batches 3] [--threads 2]

One agent-step is one environment step of one episode, forward and backward included
(rollout, loss, backward, Adam step), as ``hebbgym train`` runs it. Settings:

* ``reference, graph of the played steps``: plain autograd ops, one graph node per op and step;
* ``fused, graph of the played steps``: the fused per-step autograd Function;
* ``fused, played + replayed``: what ``hebbgym train`` does: the episode is played without a
  graph, then replayed as one sequence (one C++ call forward, one backward).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import torch

from hebbgym.train.a2c import a2c_loss
from hebbgym.train.config import TrainConfig
from hebbgym.train.loop import make_agent, make_env
from hebbgym.train.rollout import collect_rollout

SETTINGS = {
    "reference, graph of the played steps": ("reference", False),
    "fused, graph of the played steps": ("fused", False),
    "fused, played + replayed": ("fused", True),
}


def agent_steps_per_second(
    config: TrainConfig, implementation: str, replay: bool, batches: int
) -> float:
    env = make_env(config)
    agent = make_agent(config, env)
    agent.core.implementation = implementation
    optimizer = torch.optim.Adam(agent.parameters(), lr=config.lr, eps=config.adam_eps)
    generator = torch.Generator().manual_seed(0)
    collect_rollout(env, agent, 0, generator, replay=replay)  # warm-up: kernels, allocator
    start = time.perf_counter()
    for batch in range(batches):
        rollout = collect_rollout(env, agent, batch, generator, replay=replay)
        terms = a2c_loss(rollout, config.gamma, config.value_coef, config.entropy_coef)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
    elapsed = time.perf_counter() - start
    steps = batches * config.batch_size * env.unwrapped.batch.length
    env.close()
    return steps / elapsed


def _measure(config: TrainConfig, setting: str, batches: int, threads: int) -> float:
    torch.set_num_threads(threads)
    return agent_steps_per_second(config, *SETTINGS[setting], batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="Hebb-Maze-v0")
    parser.add_argument("--agent", default="modulated")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainConfig(env_id=args.env, agent=args.agent).resolved()
    # Each implementation in a fresh process: the fused path tunes the process's allocator,
    # which would otherwise flatter the reference measured after it.
    context = multiprocessing.get_context("spawn")
    results = {}
    for setting in SETTINGS:
        with context.Pool(1) as pool:
            results[setting] = pool.apply(_measure, (config, setting, args.batches, args.threads))
    print(f"{args.env}, {args.agent}, batch {config.batch_size}, {args.threads} threads\n")
    print("| setting | agent-steps/s | vs reference |\n|---|---:|---:|")
    base = results["reference, graph of the played steps"]
    for setting, rate in results.items():
        print(f"| {setting} | {rate:.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
