"""Training: configuration, rollouts, A2C losses, the loop, evaluation."""
