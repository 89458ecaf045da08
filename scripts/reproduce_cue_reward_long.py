"""Reproduce docs/results/cue_reward_long.md: the papers' learning rate, 1M episodes per run.

python scripts/reproduce_cue_reward_long.py --no-sb3 [--cpus N | --serial | --trained-only]
"""

from hebbgym.experiments import main

if __name__ == "__main__":
    main("sweeps/cue_reward_long.yaml")
