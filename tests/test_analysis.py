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
    SENSORS,
    EpisodeRecord,
    ModulationOutcome,
    conditioning_probe,
    evaluation_tasks,
    final_modulation,
    mean_by_task,
    plot_modulation_around_rewards,
    plot_modulation_vs_score,
    plot_paired_split,
    plot_plasticity,
    plot_sensor_weights,
    record_episodes,
    reward_triggered_average,
    sensor_weights,
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
    flat = EpisodeRecord(record.rewards, np.zeros((40, 8, 0)), record.final_hebb)
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
