"""Reproduce docs/results/conditioning_independent_long.md: three times the budget, no SB3."""

from hebbgym.experiments import main

if __name__ == "__main__":
    main("sweeps/conditioning_independent_long.yaml")
