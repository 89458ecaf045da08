"""A seeded learning test: a neuromodulated plastic agent learns fear conditioning with A2C,
and what it learnt lives in its Hebbian plasticity.

Contrast: an ablation of the trained agent (same weights, same held-out episodes):

* the ``modulated`` agent (16 plastic neurons, clip rule, scalar neuromodulator ``M(t)``,
  724 parameters) is trained for real by :func:`~hebbgym.train.loop.train` on
  ``Hebb-Conditioning-v0`` (60-step episodes, 10-step learning period, pain probability 0.3)
  for 15,000 episodes, then evaluated greedily on 500 held-out episodes;
* the same agent with its plasticity switched off, ``M(t) = 0``: the Hebbian trace stays at
  zero, so the network is its own fixed-weight RNN (zeroing ``alpha`` instead gives exactly
  the same returns, which is checked too).

Accuracy is the fraction of correct responses after the learning period,
``(return / 50 + 1) / 2``; reacting to pain alone scores 0.65. Measured with this exact
configuration and the sequence kernels of the fused core, seeds 0-7 (the test uses seed 1):

* intact: 0.953 0.988 0.990 0.981 0.989 0.989 0.990 0.992;
* plasticity off: 0.601 0.632 0.578 0.588 0.666 0.651 0.556 0.727.

A change of the numerics (kernels, summation order) re-draws the trajectory like a change of
seed. With the previous per-step kernels, seeds 0-21: intact >= 0.975 for 19 of 22 (seed 12
at 0.9496, seed 17 stuck at the pain-only level for 20,000 episodes), plasticity off
0.47-0.73; so about one seed in ten fails this test, and seed 0 now passes by a hair.

Why not "plastic vs ``rule="none"`` with the same budget": with these settings a
non-plastic core learns the task as well: ``rule="none"`` with 16 units, seeds 0-5:
0.964 0.994 0.992 0.991 0.712 0.994; ``nn.RNN`` with 21 units (717 parameters), seeds 0-2:
0.993 0.991 0.992. One latched bit suffices, and a tanh RNN can hold it. The two only
differ where A2C gets stuck (entropy 0.01-0.3: both plateau near 0.81 with a latch for one
of the two stimuli only), so asserting that gap would test an optimisation accident. This
test asserts instead that the trained plastic agent *uses* its plasticity: without
within-episode weight change it loses most of what it learnt.

Runtime: 25-30 s for the whole file on a shared 2-core machine (one torch thread); the
numbers above are identical from run to run.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from hebbgym.agents.actor_critic import ActorCritic
from hebbgym.analysis import conditioning_probe
from hebbgym.train.config import TrainConfig
from hebbgym.train.evaluate import evaluate_agent
from hebbgym.train.loop import load_agent, metrics_table, train

EPISODE_LENGTH = 60
LEARNING_PERIOD = 10
SCORED_STEPS = EPISODE_LENGTH - LEARNING_PERIOD
EVAL_EPISODES = 500
EVAL_SEED = 1_000_000  # held-out episodes, not among the training episode seeds

CONFIG = TrainConfig(
    env_id="Hebb-Conditioning-v0",
    agent="modulated",
    seed=1,
    episodes=15_000,  # 500 batches of 30
    batch_size=30,
    hidden_size=16,
    lr=1e-2,
    gamma=0.0,  # the response does not change the future: each step is its own bandit
    entropy_coef=1.0,  # at 0.01-0.3 A2C stalls at ~0.81 (a latch for one stimulus only)
    grad_clip=4.0,
    env_kwargs={"episode_length": EPISODE_LENGTH, "learning_period": LEARNING_PERIOD},
    checkpoint_every=10_000,  # one checkpoint, at the end
    log_every=10,
    threads=1,
)


def accuracy(returns: np.ndarray) -> float:
    """Fraction of correct responses after the learning period (reward +1 right, -1 wrong)."""
    return float(((returns / SCORED_STEPS + 1.0) / 2.0).mean())


def evaluate(agent: ActorCritic) -> np.ndarray:
    return evaluate_agent(CONFIG, agent, EVAL_EPISODES, seed=EVAL_SEED, greedy=True)


def without_plasticity(agent: ActorCritic, switch: str) -> ActorCritic:
    """A copy whose Hebbian term is off: ``M(t) = 0`` (no trace change) or ``alpha = 0``."""
    ablated = copy.deepcopy(agent)
    with torch.no_grad():
        if switch == "modulation":
            ablated.core.modulator.weight.zero_()
            ablated.core.modulator.bias.zero_()
        else:
            ablated.core.alpha.zero_()
    return ablated


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ActorCritic]:
    run_dir = tmp_path_factory.mktemp("conditioning")
    train(CONFIG, run_dir, progress=False)
    _, agent, progress = load_agent(run_dir)
    assert progress["episodes"] == CONFIG.episodes
    return run_dir, agent


def test_training_improves_the_reward(trained: tuple[Path, ActorCritic]) -> None:
    """The training reward (sampled actions, under a strong entropy bonus) rises."""
    table = metrics_table(trained[0])
    first, last = table["reward_mean"][:3].mean(), table["reward_mean"][-3:].mean()
    assert first < 10.0, first  # measured 1.0 (seed 1); chance is 0, pain-only 14.5
    assert last > 20.0, last  # measured 35.9 (seed 1); 25-37 for seeds 0-13 before


def test_plastic_agent_learns_conditioning(trained: tuple[Path, ActorCritic]) -> None:
    score = accuracy(evaluate(trained[1]))
    assert score >= 0.95, f"post-learning-period accuracy {score:.3f} < 0.95"


def test_switching_plasticity_off_loses_what_was_learnt(
    trained: tuple[Path, ActorCritic],
) -> None:
    agent = trained[1]
    intact = accuracy(evaluate(agent))
    no_modulation = evaluate(without_plasticity(agent, "modulation"))
    no_alpha = evaluate(without_plasticity(agent, "alpha"))
    # Both switches remove exactly the plastic term h_{t-1} (alpha * Hebb).
    np.testing.assert_array_equal(no_modulation, no_alpha)
    ablated = accuracy(no_modulation)
    # Measured (seed 1): intact 0.988, without plasticity 0.632.
    assert ablated <= 0.85, f"accuracy without plasticity {ablated:.3f}: plasticity unused?"
    assert intact - ablated >= 0.15, (intact, ablated)


def test_the_probe_finds_part_of_the_association_in_the_trace(
    trained: tuple[Path, ActorCritic],
) -> None:
    """After the learning period the trained agent fears the paired stimulus and not the
    other one; erasing its Hebbian trace (not its activity) narrows that gap: part of the
    association is stored in the plastic weights, part in the recurrent activity."""
    probe = conditioning_probe(CONFIG, trained[1], 300, seed=EVAL_SEED)
    intact = probe["paired stimulus"]["as it is"] - probe["unpaired stimulus"]["as it is"]
    erased = probe["paired stimulus"]["trace erased"] - probe["unpaired stimulus"]["trace erased"]
    # Measured (seed 1): P(fear) 0.72 vs 0.32 as it is, 0.68 vs 0.43 with the trace erased.
    assert intact > 0.3, probe
    assert erased < intact - 0.08, probe
    assert probe["paired stimulus + pain"]["as it is"] > 0.6, probe
