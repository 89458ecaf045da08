"""Env-steps per second: each native vector env against SyncVectorEnv of the single env.

Both run side by side in one process with the same pre-drawn random actions, so the ratio
is meaningful on a noisy shared machine even when the absolute numbers are not.

    python benchmarks/env_throughput.py [--ids Hebb-Maze-v0] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import copy
import time

import gymnasium as gym

import hebbgym

BATCH_SIZES = (1, 16, 64, 256)


def steps_per_second(envs: gym.vector.VectorEnv, min_seconds: float, seed: int = 0) -> float:
    """Step ``envs`` with random actions for at least ``min_seconds``; env-steps per second."""
    space = copy.deepcopy(envs.action_space)
    space.seed(seed)
    actions = [space.sample() for _ in range(64)]
    envs.reset(seed=seed)
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds:
        for action in actions:
            envs.step(action)
        steps += len(actions)
    return steps * envs.num_envs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", nargs="*", default=list(hebbgym.ENV_IDS))
    parser.add_argument("--seconds", type=float, default=0.5, help="time per measurement")
    args = parser.parse_args()
    print(f"{'env id':34s} {'B':>4s} {'native steps/s':>15s} {'sync steps/s':>13s} {'ratio':>7s}")
    for env_id in args.ids:
        for num_envs in BATCH_SIZES:
            native = gym.make_vec(
                env_id, num_envs=num_envs, vectorization_mode="vector_entry_point"
            )
            sync = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync")
            fast = steps_per_second(native, args.seconds)
            slow = steps_per_second(sync, args.seconds)
            print(
                f"{env_id:34s} {num_envs:4d} {fast:15,.0f} {slow:13,.0f} {fast / slow:6.1f}x",
                flush=True,
            )
            native.close()
            sync.close()


if __name__ == "__main__":
    main()
