"""End-to-end A2C training speed, in agent-steps per second, of each plastic-core
implementation, measured side by side in one process.

    python benchmarks/training_speed.py [--env Hebb-Maze-v0] [--batches 3] [--threads 2]

One agent-step is one environment step of one episode, forward and backward included
(rollout, loss, backward, Adam step), as ``hebbgym train`` runs it.
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


def agent_steps_per_second(config: TrainConfig, implementation: str, batches: int) -> float:
    env = make_env(config)
    agent = make_agent(config, env)
    agent.core.implementation = implementation
    optimizer = torch.optim.Adam(agent.parameters(), lr=config.lr, eps=config.adam_eps)
    generator = torch.Generator().manual_seed(0)
    collect_rollout(env, agent, 0, generator)  # warm-up: kernels, allocator
    start = time.perf_counter()
    for batch in range(batches):
        rollout = collect_rollout(env, agent, batch, generator)
        terms = a2c_loss(rollout, config.gamma, config.value_coef, config.entropy_coef)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
    elapsed = time.perf_counter() - start
    steps = batches * config.batch_size * env.unwrapped.batch.length
    env.close()
    return steps / elapsed


def _measure(config: TrainConfig, implementation: str, batches: int, threads: int) -> float:
    torch.set_num_threads(threads)
    return agent_steps_per_second(config, implementation, batches)


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
    for impl in ("reference", "fused"):
        with context.Pool(1) as pool:
            results[impl] = pool.apply(_measure, (config, impl, args.batches, args.threads))
    print(f"{args.env}, {args.agent}, batch {config.batch_size}, {args.threads} threads")
    for impl, rate in results.items():
        print(f"  {impl:9s} {rate:8.0f} agent-steps/s  ({rate / results['reference']:.2f}x)")


if __name__ == "__main__":
    main()
