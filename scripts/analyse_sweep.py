"""Split a conditioning sweep's held-out returns by which stimulus is paired.

    python scripts/analyse_sweep.py sweeps/conditioning_independent.yaml [--out-dir docs/results]

Reads the evaluations that ``scripts/reproduce_<task>.py`` cached in each run directory
(greedy actions), writes <sweep name>_split.png and prints each run's two means.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hebbgym.agents.references import evaluate_reference
from hebbgym.analysis import evaluation_tasks, mean_by_task, plot_paired_split
from hebbgym.sweep import SweepConfig
from hebbgym.train.evaluate import EVALUATION_SEED
from hebbgym.train.sb3_baselines import EVALUATION_FILE, SB3_ALGORITHMS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_file", type=Path)
    parser.add_argument("--out-dir", type=Path, default=Path("docs/results"))
    args = parser.parse_args()
    sweep = SweepConfig.from_file(args.sweep_file)
    trials = sweep.trials()
    env_id, env_kwargs = trials[0].config.env_id, trials[0].config.env_kwargs
    if not env_id.startswith("Hebb-Conditioning"):
        raise SystemExit(f"{args.sweep_file}: the split needs a conditioning task, not {env_id}")
    directories = [(t.config.agent, t.config.seed, t.run_dir) for t in trials]
    for algorithm in SB3_ALGORITHMS:
        for seed in sorted({t.config.seed for t in trials}):
            directories.append((algorithm, seed, sweep.directory / f"{algorithm}-seed={seed}"))
    runs: dict[str, list[tuple[float, float]]] = {}
    tasks = None
    for agent, seed, run_dir in directories:
        path = run_dir / EVALUATION_FILE
        if not path.is_file():
            print(f"{agent} seed {seed}: no evaluation yet ({path})")
            continue
        cached = json.loads(path.read_text())
        if "greedy_returns" not in cached:
            print(f"{agent} seed {seed}: no greedy evaluation yet ({path}); rerun the recipe")
            continue
        returns = np.array(cached["greedy_returns"])
        if tasks is None or len(tasks) != len(returns):
            tasks = evaluation_tasks(env_id, len(returns), EVALUATION_SEED, env_kwargs)
        split = mean_by_task(returns, tasks)
        if set(split) != {0, 1}:
            raise SystemExit(f"{path}: needs episodes with each stimulus paired")
        runs.setdefault(agent, []).append((split[0], split[1]))
        print(f"{agent:18s} seed {seed}: S1 paired {split[0]:5.1f}, S2 paired {split[1]:5.1f}")
    if tasks is None:
        raise SystemExit(f"{args.sweep_file}: no evaluated run yet (scripts/reproduce_*.py)")
    references = {}
    for name in ("ideal-observer", "memoryless"):
        returns = evaluate_reference(env_id, name, len(tasks), EVALUATION_SEED, **env_kwargs)
        split = mean_by_task(returns, tasks)
        references[name] = (split[0], split[1])
    out = args.out_dir / f"{sweep.name}_split.png"
    plot_paired_split(runs, references, out, f"{env_id}: held-out reward by paired stimulus")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
