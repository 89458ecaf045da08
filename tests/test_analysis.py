"""Analyses of trained agents: recorded episodes, reward-triggered M(t), and their figures."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from hebbgym.agents.actor_critic import build_agent
from hebbgym.analysis import (
    PATHWAYS,
    PROBES,
    REVERSAL_REFERENCES,
    SENSORS,
    EpisodeRecord,
    ModulationOutcome,
    conditioning_probe,
    evaluation_tasks,
    final_modulation,
    mean_by_task,
    plot_agent_reversal,
    plot_modulation_around_rewards,
    plot_modulation_vs_score,
    plot_paired_split,
    plot_plasticity,
    plot_reversal,
    plot_sensor_weights,
    record_episodes,
    reference_actions,
    reversal_aligned,
    reward_triggered_average,
    sensor_weights,
    switch_delay,
)
from hebbgym.envs.base import episode_batch_seeds
from hebbgym.train.config import TrainConfig
from hebbgym.train.evaluate import EVALUATION_SEED, evaluate_agent
from hebbgym.train.loop import METRICS_COLUMNS, METRICS_FILE, write_metrics

MAZE = TrainConfig(env_id="Hebb-Maze-v0", hidden_size=10, env_kwargs={"episode_length": 40})


def _agent(kind: str = "modulated"):
    env = gym.make("Hebb-Maze-v0")
    torch.manual_seed(0)
    agent = build_agent(
        kind, env.observation_space.shape[0], env.action_space, 10, match_baselines=False
    )
    env.close()
    return agent


def test_reward_triggered_average_aligns_modulation_on_reward_steps() -> None:
    steps, batch, window = 30, 2, 5
    rewards = np.zeros((steps, batch))
    rewards[[10, 20, 2, 27], [0, 1, 1, 0]] = 10.0  # the last two are too close to an end
    modulation = np.zeros((steps, batch, 2))
    modulation[11, 0] = modulation[21, 1] = (1.0, 3.0)  # M responds one step after a reward
    offsets, events = reward_triggered_average(modulation, rewards, window)
    assert offsets.tolist() == list(range(-5, 6))
    assert events.shape == (2, 11)
    expected = np.zeros(11)
    expected[window + 1] = 2.0  # the mean over M's two components
    np.testing.assert_array_equal(events, [expected, expected])
    _, none = reward_triggered_average(modulation, np.zeros_like(rewards), window)
    assert none.shape == (0, 11)
    with pytest.raises(ValueError, match="no neuromodulator"):
        reward_triggered_average(np.zeros((steps, batch, 0)), rewards, window)


def test_recorded_episodes_are_the_evaluation_episodes() -> None:
    agent = _agent()
    record = record_episodes(MAZE, agent, episodes=6, seed=4)
    assert record.rewards.shape == (40, 6) and record.modulation.shape == (40, 6, 1)
    assert record.final_hebb.shape == (6, 10, 10) and np.abs(record.final_hebb).max() > 0
    assert np.all(np.abs(record.modulation) <= 1.0)  # tanh
    returns = evaluate_agent(MAZE, agent, 6, seed=4)
    np.testing.assert_allclose(record.rewards.sum(0), returns)
    with pytest.raises(ValueError, match="episodes"):
        record_episodes(MAZE, agent, episodes=0)


def test_reversal_aligned_takes_each_episodes_first_reversal_and_skips_those_near_an_end():
    steps = 20
    good_arm = np.zeros((4, steps + 1), dtype=np.int64)
    good_arm[0, 8:] = 1  # reversal at pull 8
    good_arm[1, 12:] = 1  # at pull 12, and back at 15: only the first one counts
    good_arm[1, 15:] = 0
    good_arm[2, 18:] = 1  # too close to the end for 4 pulls after it
    # episode 3 never reverses
    actions = np.zeros((steps, 4), dtype=np.int64)
    actions[10:, 0] = 1  # moves two pulls after its reversal
    actions[12:, 1] = 1  # at once
    values = np.arange(steps * 4, dtype=np.float64).reshape(steps, 4)
    offsets, choices, aligned = reversal_aligned(actions, good_arm, 3, 4, values)
    assert offsets.tolist() == [-3, -2, -1, 0, 1, 2, 3, 4]
    np.testing.assert_array_equal(choices, [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(aligned[0], values[5:13, 0])
    np.testing.assert_array_equal(aligned[1], values[9:17, 1])
    assert switch_delay(offsets, choices) == 0  # the mean reaches 0.5 at offset 0
    assert switch_delay(offsets, choices[:1]) == 2
    assert switch_delay(offsets, np.zeros((2, 8))) is None
    assert reversal_aligned(actions, good_arm, 3, 4)[2].shape == (0, 0)


def test_references_around_the_reversal_the_oracle_at_once_the_learners_after_evidence():
    bandit = "Hebb-ReversalBandit-v0"
    curves = {}
    for name in ("oracle", "change-point-observer", "thompson-forgetting"):
        actions, hidden = reference_actions(bandit, name, 200, seed=3)
        assert actions.shape == (100, 200) and hidden["good_arm"].shape == (200, 101)
        offsets, curves[name], _ = reversal_aligned(actions, hidden["good_arm"], 10, 24)
        assert len(curves[name]) == 200  # every reversal lies in [25, 75]
    assert (
        curves["oracle"][:, offsets < 0].max() == 0 and curves["oracle"][:, offsets >= 0].min() == 1
    )
    delays = {name: switch_delay(offsets, rows) for name, rows in curves.items()}
    assert delays["oracle"] == 0
    assert 1 <= delays["change-point-observer"] < delays["thompson-forgetting"] <= 15


@pytest.fixture(scope="module")
def bandit_record() -> tuple[TrainConfig, EpisodeRecord]:
    config = TrainConfig(env_id="Hebb-ReversalBandit-v0", hidden_size=8)
    env = gym.make("Hebb-ReversalBandit-v0")
    torch.manual_seed(0)
    agent = build_agent(
        "modulated", env.observation_space.shape[0], env.action_space, 8, match_baselines=False
    )
    env.close()
    return config, record_episodes(config, agent, episodes=30, seed=5)


def test_recorded_actions_replay_the_recorded_rewards(bandit_record) -> None:
    """The bandit's rewards follow from the recorded actions and hidden arrays alone."""
    _, record = bandit_record
    good = record.actions == record.hidden["good_arm"][:, :-1].T
    probability = np.where(good, 0.8, 0.2)
    paid = probability > record.hidden["payout"][:, :-1].T
    np.testing.assert_array_equal(record.rewards, paid.astype(np.float64))
    assert 0 < good.mean() < 1
    _, reference_hidden = reference_actions("Hebb-ReversalBandit-v0", "oracle", 30, seed=5)
    for key, value in record.hidden.items():  # the references play the very same episodes
        np.testing.assert_array_equal(reference_hidden[key], value)


def test_agent_reversal_figure_names_every_policy_and_refuses_other_tasks(
    bandit_record, tmp_path
) -> None:
    config, record = bandit_record
    path, delays = plot_agent_reversal(
        config, record, {"same": record}, tmp_path / "r.png", "t", seed=5
    )
    assert iio.imread(path).shape[0] > 500  # two panels: this agent has a modulator
    assert list(delays) == ["modulated (this agent)", "same", *REVERSAL_REFERENCES]
    assert delays["same"] == delays["modulated (this agent)"]
    assert delays["change-point-observer"] is not None
    with pytest.raises(ValueError, match="not played on the episodes of seed 6"):
        plot_agent_reversal(config, record, {}, tmp_path / "r.png", "t", seed=6)
    maze = record_episodes(MAZE, _agent(), episodes=2)
    with pytest.raises(ValueError, match="needs the bandit"):
        plot_agent_reversal(MAZE, maze, {}, tmp_path / "m.png", "t")


def test_reversal_figure_with_and_without_the_modulator_panel(tmp_path) -> None:
    offsets = np.arange(-2, 5)
    choices = {"a": np.tile([0, 0, 0, 1, 1, 1, 1], (3, 1)).astype(float)}
    modulation = np.random.default_rng(0).normal(size=(3, 7))
    two, delays = plot_reversal(
        offsets, choices, modulation, modulation + 1, tmp_path / "2.png", "t"
    )
    assert delays == {"a": 1}
    one, _ = plot_reversal(
        offsets, choices, np.zeros((0, 7)), np.zeros((0, 7)), tmp_path / "1.png", "t"
    )
    assert iio.imread(two).shape[0] > 1.8 * iio.imread(one).shape[0]


def test_figures_are_written_and_refuse_agents_without_what_they_show(tmp_path) -> None:
    agent = _agent()
    record = record_episodes(MAZE, agent, episodes=8, seed=1)
    record.rewards[5, 0] = 10.0  # at least one reward event, whatever the untrained agent did
    modulation = plot_modulation_around_rewards(record, tmp_path / "m.png", "M", window=3)
    plasticity = plot_plasticity(agent, record, tmp_path / "p.png", "plasticity")
    assert iio.imread(modulation).shape[:2] == (396, 660)
    assert iio.imread(plasticity).shape[:2] == (280, 1080)
    rnn = _agent("rnn")
    with pytest.raises(ValueError, match="no plasticity"):
        plot_plasticity(rnn, record, tmp_path / "r.png", "rnn")
    flat = EpisodeRecord(
        record.rewards, np.zeros((40, 8, 0)), record.final_hebb, record.actions, record.hidden
    )
    with pytest.raises(ValueError, match="no neuromodulator"):
        plot_modulation_around_rewards(flat, tmp_path / "f.png", "none")


def test_conditioning_probe_erases_only_the_trace_and_refuses_other_tasks() -> None:
    config = TrainConfig(env_id="Hebb-Conditioning-v0", env_kwargs={"learning_period": 5})
    env = gym.make("Hebb-Conditioning-v0")
    torch.manual_seed(0)
    probes = {}
    for kind in ("modulated", "rnn"):
        agent = build_agent(
            kind, env.observation_space.shape[0], env.action_space, 8, match_baselines=False
        )
        if kind == "modulated":
            with torch.no_grad():
                agent.core.alpha.fill_(2.0)  # a trace that matters
        probes[kind] = conditioning_probe(config, agent, 50, seed=3)
    for probe in PROBES:
        assert probes["rnn"][probe]["as it is"] == probes["rnn"][probe]["trace erased"]  # none
        for value in probes["modulated"][probe].values():
            assert 0.0 < value < 1.0
    plastic = probes["modulated"]["paired stimulus"]
    assert plastic["as it is"] != plastic["trace erased"]
    with pytest.raises(ValueError, match="conditioning task"):
        conditioning_probe(MAZE, _agent(), 4)


def test_sensor_weights_split_each_sensor_into_its_fixed_and_plastic_parts(tmp_path) -> None:
    config = TrainConfig(env_id="Hebb-Conditioning-v0", env_kwargs={"learning_period": 5})
    env = gym.make("Hebb-Conditioning-v0")
    torch.manual_seed(0)
    agent = build_agent(
        "modulated", env.observation_space.shape[0], env.action_space, 8, match_baselines=False
    )
    fixed, plastic = PATHWAYS
    with torch.no_grad():
        agent.core.alpha.zero_()
    untraced = sensor_weights(config, agent, 40, seed=3)
    assert all(untraced[sensor][plastic] == (0.0, 0.0) for sensor in SENSORS)
    assert all(abs(untraced[sensor][fixed][0]) > 1e-4 for sensor in SENSORS)
    with torch.no_grad():
        agent.core.alpha.fill_(2.0)  # a trace that matters
    weights = sensor_weights(config, agent, 40, seed=3)
    for sensor in SENSORS:
        assert (
            weights[sensor][fixed] != untraced[sensor][fixed]
        )  # the trace also shaped the state reached
        assert abs(weights[sensor][plastic][0]) > 1e-4 and weights[sensor][plastic][1] > 0
    image = plot_sensor_weights(weights, tmp_path / "s.png", "sensors")
    assert iio.imread(image).shape[:2] == (396, 715)
    with pytest.raises(ValueError, match="no plasticity"):
        sensor_weights(config, _agent("rnn"), 4)
    with pytest.raises(ValueError, match="conditioning task"):
        sensor_weights(MAZE, _agent(), 4)


def test_the_split_by_paired_stimulus_is_aligned_with_the_evaluation_episodes(tmp_path) -> None:
    """A memoryless policy that fears whenever S2 is on is perfect exactly on the episodes
    where S2 is paired; the split shows that only if tasks and returns line up."""
    env_id, episodes, batch = "Hebb-ConditioningIndependent-v0", 250, 100
    env = gym.make_vec(env_id, num_envs=batch, vectorization_mode="vector_entry_point")
    stimuli = env.unwrapped.obs_layout["stimuli"]
    returns = []
    for index in range(3):  # batches seeded like evaluate_agent's, the last one cut short
        obs, _ = env.reset(seed=EVALUATION_SEED + index * batch)
        total = np.zeros(batch)
        for _ in range(100):
            obs, reward, _, _, _ = env.step((obs[:, stimuli][:, 1] > 0.5).astype(np.int64))
            total += reward
        returns.append(total)
    env.close()
    returns = np.concatenate(returns)[:episodes]
    tasks = evaluation_tasks(env_id, episodes)
    assert tasks.shape == (episodes,) and set(np.unique(tasks)) == {0, 1}
    split = mean_by_task(returns, tasks)
    assert split[1] == 80.0 and split[0] < 40.0
    with pytest.raises(ValueError, match="250 returns for 100 tasks"):
        mean_by_task(returns, tasks[:100])
    out = plot_paired_split(
        {"fear when S2": [(split[0], split[1])]}, {"ideal": (79.5, 79.5)}, tmp_path / "s.png", "t"
    )
    assert iio.imread(out).shape[2] in (3, 4)


def test_every_batch_size_plays_the_same_held_out_episodes() -> None:
    """Episode k of an evaluation is the single env seeded EVALUATION_SEED + k, whatever the
    batching: the contract that lets agents, SB3 models and references share one held-out set."""
    env_id, episodes = "Hebb-ConditioningIndependent-v0", 23
    singles = []
    for k in range(episodes):
        env = gym.make(env_id)
        singles.append(env.reset(seed=EVALUATION_SEED + k)[1]["task"])
        env.close()
    for batch_size in (1, 5, 23, 100):
        tasks = evaluation_tasks(env_id, episodes, batch_size=batch_size)
        assert tasks.tolist() == singles, batch_size
    assert episode_batch_seeds(23, 5, 7) == [7, 12, 17, 22, 27]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        episode_batch_seeds(10, 0, 0)


def test_final_modulation_is_the_mean_over_the_last_tenth_of_training(tmp_path: Path) -> None:
    rows = []
    for batch in range(40):
        row = dict.fromkeys(METRICS_COLUMNS, 0.0)
        row.update(batch=batch, episode=batch + 1, modulation_abs_mean=0.9 if batch >= 36 else 0.1)
        rows.append(row)
    write_metrics(tmp_path / METRICS_FILE, rows)
    assert final_modulation(tmp_path) == pytest.approx(0.9)  # the last 4 of 40 batches
    assert final_modulation(tmp_path, fraction=1.0) == pytest.approx(0.18)
    with pytest.raises(ValueError, match="fraction"):
        final_modulation(tmp_path, fraction=0.0)
    write_metrics(tmp_path / METRICS_FILE, [])
    with pytest.raises(ValueError, match="no logged batches"):
        final_modulation(tmp_path)
    outcomes = [
        ModulationOutcome("Maze", "modulated", False, 0.15, 0.27),
        ModulationOutcome("Maze", "retroactive", True, 0.95, 0.0),
    ]
    out = plot_modulation_vs_score(outcomes, tmp_path / "m.png", "t")
    assert iio.imread(out).shape[2] in (3, 4)
