"""SB3 training speed on our native vector env against SB3's own DummyVecEnv of Monitors.

Both train the same model on the same episodes (they are bit-identical, see
tests/train/test_sb3_baselines.py), alternating in one process, so the ratio holds on a
noisy shared machine even when the absolute numbers do not.

    python benchmarks/sb3_training.py [--ids Hebb-Maze-v0] [--rollouts 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from hebbgym.train.sb3_baselines import (
    SB3_ALGORITHMS,
    TRAINING_ENVS,
    _rollout_steps,
    _sb3_model,
    episode_length,
    native_sb3_env,
)


def dummy_env(env_id: str, num_envs: int, seed: int) -> Any:
    from stable_baselines3.common.env_util import make_vec_env

    return make_vec_env(env_id, n_envs=num_envs, seed=seed)


def steps_per_second(algorithm: str, env_id: str, env: Any, rollouts: int) -> float:
    """Env-steps per second of ``rollouts`` rollouts of training (the model as the report
    builds it)."""
    model = _sb3_model(algorithm, env, seed=0, length=episode_length(env_id, {}))
    steps = rollouts * _rollout_steps(model)
    start = time.perf_counter()
    model.learn(steps)
    seconds = time.perf_counter() - start
    env.close()
    return steps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", nargs="*", default=["Hebb-Maze-v0", "Hebb-Conditioning-v0"])
    parser.add_argument("--rollouts", type=int, default=4, help="rollouts per measurement")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| env | algorithm | DummyVecEnv steps/s | native steps/s | native / Dummy |")
    print("|---|---|---|---|---|")
    for env_id in args.ids:
        for algorithm in SB3_ALGORITHMS:
            envs = TRAINING_ENVS[algorithm]
            rollouts = args.rollouts * (100 if algorithm == "sb3-a2c" else 1)
            dummy, native = [], []
            for _ in range(args.repeats):
                for make, speeds in ((dummy_env, dummy), (native_sb3_env, native)):
                    env = make(env_id, envs, 0)
                    speeds.append(steps_per_second(algorithm, env_id, env, rollouts))
            slow, fast = max(dummy), max(native)
            print(f"| {env_id} | {algorithm} | {slow:,.0f} | {fast:,.0f} | {fast / slow:.2f}x |")


if __name__ == "__main__":
    main()
