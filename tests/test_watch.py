"""Watching agents: composed frames, what the panels show, determinism, window and errors."""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pygame
import pytest
import torch

import hebbgym.watch as watch
from hebbgym.agents.actor_critic import ActorCritic, build_agent
from hebbgym.train.config import TrainConfig
from hebbgym.train.loop import load_agent, train
from hebbgym.train.rollout import collect_rollout
from hebbgym.watch import PANEL_WIDTH, Layout, watch_agent, watch_run

CONDITIONING = "Hebb-Conditioning-v0"
BANDIT = "Hebb-ReversalBandit-v0"
LENGTH = 12
KWARGS = {CONDITIONING: {"episode_length": LENGTH, "learning_period": 2},
          BANDIT: {"episode_length": LENGTH}}  # fmt: skip


def vector_env(env_id: str) -> gym.vector.VectorEnv:
    return gym.make_vec(
        env_id, num_envs=1, vectorization_mode="vector_entry_point", **KWARGS[env_id]
    )


def setup(env_id: str, kind: str = "modulated") -> tuple[TrainConfig, ActorCritic]:
    env = vector_env(env_id)
    torch.manual_seed(0)
    agent = build_agent(
        kind,
        env.single_observation_space.shape[0],
        env.single_action_space,
        hidden_size=8,
        match_baselines=False,
    )
    env.close()
    config = TrainConfig(env_id=env_id, agent=kind, hidden_size=8, env_kwargs=KWARGS[env_id])
    return config, agent


def env_frame_size(env_id: str) -> tuple[int, int]:
    return gym.make(env_id, **KWARGS[env_id]).unwrapped.rules.frame_size


def crop(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The inside of ``box``, without its 1-pixel frame."""
    x, y, w, h = box
    return frame[y + 1 : y + h - 1, x + 1 : x + w - 1].astype(np.int64)


def test_gif_has_a_frame_per_step_plus_reset_and_panels_beside_the_env(tmp_path) -> None:
    config, agent = setup(CONDITIONING)
    path = tmp_path / "watch.gif"
    returns = watch_agent(config, agent, seed=0, out=path)
    frames = iio.imread(path, index=None, plugin="pillow")
    width, height = env_frame_size(CONDITIONING)
    assert frames.shape[0] == LENGTH + 1
    assert frames.shape[1:3] == (Layout((width, height)).size[1], width + PANEL_WIDTH)
    assert frames.shape[2] > width
    assert len(returns) == 1 and -LENGTH <= returns[0] <= LENGTH
    assert returns[0] == int(returns[0]), "discrete conditioning rewards are -1, 0 or +1"


def test_the_heatmap_shows_the_trace_growing_in_a_plastic_agent(tmp_path) -> None:
    config, agent = setup(CONDITIONING)
    path = tmp_path / "watch.gif"
    watch_agent(config, agent, seed=1, out=path)
    frames = iio.imread(path, index=None, plugin="pillow")
    heatmap = Layout(env_frame_size(CONDITIONING)).heatmap
    first, early, late = (crop(frames[i], heatmap) for i in (0, 1, LENGTH))
    assert first.min() >= 245, "the trace is zero at reset: a white heatmap"
    assert np.abs(late - early).mean() > 5.0, "the heatmap follows the trace"
    assert (np.abs(late - 255).sum(-1) > 60).mean() > 0.3, "a grown trace has colour"


def test_an_rnn_agent_renders_the_no_trace_variant(tmp_path) -> None:
    config, agent = setup(BANDIT, "rnn")
    path = tmp_path / "rnn.gif"
    returns = watch_agent(config, agent, seed=2, out=path, greedy=True)
    frames = iio.imread(path, index=None, plugin="pillow")
    heatmap = Layout(env_frame_size(BANDIT)).heatmap
    # GIF palettes differ a little between frames; the drawing does not change at all.
    np.testing.assert_allclose(crop(frames[1], heatmap), crop(frames[-1], heatmap), atol=3)
    colours = crop(frames[-1], heatmap)
    assert (colours.max(-1) - colours.min(-1)).max() < 30, "grey text only, no colour map"
    expected = collect_rollout(vector_env(BANDIT), agent, 2, None, greedy=True)
    assert returns == [float(expected.rewards.sum())] and 0 <= returns[0] <= LENGTH


def test_returns_are_those_of_the_same_seeded_rollout() -> None:
    config, agent = setup(CONDITIONING)
    greedy = [watch_agent(config, agent, seed=3, greedy=True, episodes=2, fps=1000)
              for _ in range(2)]  # fmt: skip
    env = vector_env(CONDITIONING)
    rollouts = [collect_rollout(env, agent, s, None, greedy=True) for s in (3, 4)]
    assert greedy[0] == greedy[1] == [float(r.rewards.sum()) for r in rollouts]

    sampled = watch_agent(config, agent, seed=3, episodes=2, fps=1000)
    generator = torch.Generator().manual_seed(3)
    rollouts = [collect_rollout(env, agent, s, generator) for s in (3, 4)]
    assert sampled == [float(r.rewards.sum()) for r in rollouts]


def test_bad_arguments_are_refused_before_anything_runs(tmp_path, monkeypatch) -> None:
    config, agent = setup(BANDIT)

    def no_env(*args, **kwargs):
        raise AssertionError("an env was made before the output path was checked")

    monkeypatch.setattr(watch.gym, "make_vec", no_env)
    with pytest.raises(ValueError, match=r"watch\.png"):
        watch_agent(config, agent, out=tmp_path / "watch.png")
    with pytest.raises(ValueError, match=r"\.avi"):
        watch_run(tmp_path / "no-such-run", out=tmp_path / "watch.avi")
    if importlib.util.find_spec("av") is None:
        with pytest.raises(RuntimeError, match="'av'"):
            watch_agent(config, agent, out=tmp_path / "watch.mp4")
    for bad in ({"episodes": 0}, {"seed": -1}, {"fps": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            watch_agent(config, agent, out=tmp_path / "watch.gif", **bad)
    assert list(tmp_path.iterdir()) == []


def test_an_agent_for_another_task_is_refused() -> None:
    config, _ = setup(BANDIT)
    _, conditioning_agent = setup(CONDITIONING)
    with pytest.raises(ValueError, match="inputs"):
        watch_agent(config, conditioning_agent, out=None)
    assert pygame.display.get_surface() is None


def test_human_mode_plays_an_episode_and_closes_the_window() -> None:
    config, agent = setup(BANDIT)
    returns = watch_agent(config, agent, seed=5, greedy=True, fps=1000)
    assert pygame.display.get_surface() is None
    expected = collect_rollout(vector_env(BANDIT), agent, 5, None, greedy=True)
    assert returns == [float(expected.rewards.sum())]


def test_escape_stops_the_window_before_an_episode_ends() -> None:
    config, agent = setup(BANDIT)
    pygame.display.init()
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_ESCAPE))
    assert watch_agent(config, agent, episodes=3, fps=1000) == []
    assert pygame.display.get_surface() is None


def test_watch_run_watches_the_trained_agent(tmp_path) -> None:
    config, _ = setup(BANDIT)
    config.episodes, config.batch_size = 2, 2
    train(config, tmp_path / "run", progress=False)
    path = tmp_path / "run.gif"
    returns = watch_run(tmp_path / "run", seed=7, out=path, greedy=True)
    loaded_config, agent, _ = load_agent(tmp_path / "run")
    assert returns == watch_agent(loaded_config, agent, seed=7, greedy=True, fps=1000)
    assert iio.imread(path, index=None, plugin="pillow").shape[0] == LENGTH + 1
