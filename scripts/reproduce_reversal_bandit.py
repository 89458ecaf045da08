"""Reproduce the reversal_bandit comparison of the results report.

    python scripts/reproduce_reversal_bandit.py [--no-sb3] [--cpus N | --serial]

Runs (or resumes) the sweep file below and the stable-baselines3 baselines on the same
step budget, evaluates everything on 1000 held-out episodes per seed, and writes
docs/results/reversal_bandit.md with its learning curves.
"""

from hebbgym.experiments import main

if __name__ == "__main__":
    main("sweeps/reversal_bandit.yaml")
