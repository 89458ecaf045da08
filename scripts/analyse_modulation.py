"""Where each neuromodulated run's M(t) ended up against its held-out score, across sweeps.

    python scripts/analyse_modulation.py sweeps/maze.yaml sweeps/reversal_bandit.yaml ...
        [--out docs/results/modulation_vs_score.png]

Reads each trial's ``metrics.csv`` and its held-out evaluation (sampled actions), the one
``scripts/reproduce_<task>.py`` cached or, if missing or of an older checkpoint, a new one;
trials without a checkpoint are skipped and named. Prints one line per run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hebbgym.agents.references import evaluate_reference
from hebbgym.analysis import ModulationOutcome, final_modulation, plot_modulation_vs_score
from hebbgym.experiments import evaluate_trial, normalised_score
from hebbgym.sweep import SweepConfig
from hebbgym.train.evaluate import EVALUATION_SEED
from hebbgym.train.loop import CHECKPOINT_FILE

NEUROMODULATED = ("modulated", "retroactive")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_files", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("docs/results/modulation_vs_score.png"))
    parser.add_argument("--episodes", type=int, default=1000, help="evaluation episodes per run")
    args = parser.parse_args()
    outcomes, scales = [], {}
    for sweep_file in args.sweep_files:
        for trial in SweepConfig.from_file(sweep_file).trials():
            config = trial.config
            if config.agent not in NEUROMODULATED:
                continue
            if not (trial.run_dir / CHECKPOINT_FILE).is_file():
                print(f"{trial.run_dir}: not trained yet")
                continue
            returns = evaluate_trial(trial, args.episodes)["returns"]
            key = (config.env_id, json.dumps(config.env_kwargs, sort_keys=True), len(returns))
            if key not in scales:
                scales[key] = [
                    float(
                        evaluate_reference(
                            config.env_id, name, len(returns), EVALUATION_SEED, **config.env_kwargs
                        ).mean()
                    )
                    for name in ("random", "oracle")
                ]
            outcome = ModulationOutcome(
                task=config.env_id.removeprefix("Hebb-").removesuffix("-v0"),
                agent=config.agent,
                penalised=config.modulation_coef > 0,
                modulation=final_modulation(trial.run_dir),
                score=normalised_score(float(np.mean(returns)), *scales[key]),
            )
            outcomes.append(outcome)
            print(
                f"{outcome.task:24s} {trial.run_dir.name:45s} |M| {outcome.modulation:.2f} "
                f"score {outcome.score:.2f}"
            )
    if not outcomes:
        raise SystemExit("no evaluated neuromodulated run in these sweeps")
    title = "Neuromodulated runs: final |M(t)| against held-out score"
    print(f"wrote {plot_modulation_vs_score(outcomes, args.out, title)}")


if __name__ == "__main__":
    main()
