"""Playing an episode without a graph and replaying it (what training does) against keeping
the graph of the played steps: same actions, values, losses and gradients, for every core."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

from hebbgym.agents.actor_critic import AGENT_KINDS, ActorCritic, build_agent
from hebbgym.train.a2c import a2c_loss
from hebbgym.train.rollout import collect_rollout

ENVS = {  # a Discrete-action and a Box-action task, short episodes
    "Hebb-Maze-v0": {"episode_length": 23},
    "Hebb-Conditioning-v0": {"episode_length": 17, "learning_period": 3, "continuous": True},
}


def _setup(kind: str, env_id: str) -> tuple[gym.vector.VectorEnv, ActorCritic]:
    env = gym.make_vec(env_id, num_envs=5, vectorization_mode="vector_entry_point", **ENVS[env_id])
    torch.manual_seed(3)
    agent = build_agent(
        kind, env.single_observation_space.shape[0], env.single_action_space, hidden_size=12
    )
    if agent.core.__class__.__name__ == "PlasticCore" and agent.core.alpha is not None:
        with torch.no_grad():  # plasticity strong enough to shape the episode
            agent.core.alpha.uniform_(0.2, 0.8)
    return env, agent


def _rollout_and_grads(env, agent, replay: bool):
    generator = torch.Generator().manual_seed(11)
    agent.zero_grad(set_to_none=True)
    rollout = collect_rollout(env, agent, 7, generator, replay=replay)
    loss = a2c_loss(rollout, gamma=0.9, value_coef=0.1, entropy_coef=0.05)
    loss.total.backward()
    return rollout, loss, {n: p.grad.clone() for n, p in agent.named_parameters()}


@pytest.mark.parametrize("env_id", list(ENVS))
@pytest.mark.parametrize("kind", AGENT_KINDS)
def test_replay_gives_the_played_episode_and_its_gradients(kind, env_id) -> None:
    env, agent = _setup(kind, env_id)
    replayed, replay_loss, replay_grads = _rollout_and_grads(env, agent, replay=True)
    played, played_loss, played_grads = _rollout_and_grads(env, agent, replay=False)
    # The same actions were taken (Box actions up to rounding: the played forward with and
    # without a graph may take different ATen kernels).
    torch.testing.assert_close(replayed.rewards, played.rewards, rtol=1e-5, atol=1e-6)
    for name in ("log_probs", "entropies", "values", "modulation"):
        torch.testing.assert_close(
            getattr(replayed, name), getattr(played, name), rtol=1e-5, atol=1e-6, msg=name
        )
    torch.testing.assert_close(replay_loss.total, played_loss.total, rtol=1e-5, atol=1e-5)
    assert replay_grads.keys() == played_grads.keys()
    for name, grad in played_grads.items():
        assert grad.abs().sum() > 0, name  # every parameter is trained
        torch.testing.assert_close(replay_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # Training differentiates the replay only: no graph was kept while playing.
    assert replayed.log_probs.grad_fn is not None
    env.close()


def test_replay_recomputes_the_played_activations_bit_for_bit_on_the_fused_core() -> None:
    env, agent = _setup("modulated", "Hebb-Maze-v0")
    played = []
    collect_rollout(
        env, agent, 7, torch.Generator().manual_seed(11), on_step=lambda out, _: played.append(out)
    )
    first, _ = env.reset(seed=7)
    obs = _observations(env, played, first)
    replay = agent.replay(obs, torch.stack([s.action for s in played]))
    assert torch.equal(replay.h.detach(), torch.stack([s.h for s in played]))
    assert torch.equal(replay.m.detach(), torch.stack([s.m for s in played]))
    env.close()


def _observations(env, played, first):
    """The observations of an episode, re-stepped with its recorded actions."""
    obs = [torch.as_tensor(first)]
    for step in played[:-1]:
        nxt, *_ = env.step(step.action.numpy())
        obs.append(torch.as_tensor(nxt))
    return torch.stack(obs)


def test_rollout_under_no_grad_keeps_no_graph() -> None:
    env, agent = _setup("modulated", "Hebb-Maze-v0")
    with torch.no_grad():
        rollout = collect_rollout(env, agent, 7, torch.Generator().manual_seed(11))
    assert rollout.log_probs.grad_fn is None and rollout.values.shape == (23, 5)
    env.close()
