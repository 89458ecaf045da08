"""The main job of ``make demo``: record one episode of every task with its oracle and
with a random policy, as GIFs in ``--out-dir``, and print a one-line summary each."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import hebbgym
from hebbgym.agents.references import reference_policy
from hebbgym.recording import record_episode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", type=Path, default=Path("demo"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for env_id in hebbgym.ENV_IDS:
        for name in ("random", "oracle"):
            start = time.perf_counter()
            path = args.out_dir / f"{env_id}-{name}.gif"
            total, path = record_episode(
                env_id,
                lambda env, name=name, env_id=env_id: (
                    reference_policy(env_id, name, env.unwrapped, args.seed).act
                ),
                path,
                seed=args.seed,
            )
            seconds = time.perf_counter() - start
            print(f"{env_id:34s} {name:7s} return {total:+7.1f}  -> {path} ({seconds:.1f}s)")


if __name__ == "__main__":
    main()
