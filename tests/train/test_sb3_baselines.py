"""SB3 baselines: whole-episode rollouts, checkpointed chunks that survive a kill at any
point, and run directories of other settings refused before anything is overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hebbgym.train import sb3_baselines
from hebbgym.train.sb3_baselines import EVALUATION_FILE, PROGRESS_FILE, train_sb3

BANDIT = "Hebb-ReversalBandit-v0"
SHORT = {"episode_length": 10}  # A2C's rollout (8 envs x 5 steps) and 8 episodes align at 80


class Killed(Exception):
    """Stands for a SIGKILL: nothing after the raising call runs."""


def kill_at_write(monkeypatch: pytest.MonkeyPatch, name_part: str, survive: int) -> None:
    """Let ``survive`` writes of files whose name contains ``name_part`` through, then die
    on the next one before it lands."""
    real_write = sb3_baselines.atomic_write_bytes
    writes = []

    def write(path: Path, data: bytes) -> None:
        if name_part in path.name:
            writes.append(path)
            if len(writes) > survive:
                raise Killed(path)
        real_write(path, data)

    monkeypatch.setattr(sb3_baselines, "atomic_write_bytes", write)


def test_recurrent_ppo_collects_whole_episodes_and_logs_them(tmp_path: Path) -> None:
    # Its rollout is 30 envs x one 10-step episode, so 300 steps give exactly 30 episodes.
    result = train_sb3("sb3-recurrent-ppo", BANDIT, 300, 0, tmp_path, 20, SHORT, batch_episodes=10)
    assert result["env_steps"] == 300
    assert len(result["returns"]) == len(result["greedy_returns"]) == 20
    assert all(0 <= r <= 10 for r in result["returns"])  # a bandit pays 0 or 1 per step
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # header, then 3 batches of 10 training episodes


@pytest.mark.parametrize(("name_part", "survive"), [("sb3_model", 2), (PROGRESS_FILE, 2)])
def test_a_run_killed_while_checkpointing_resumes_to_the_full_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name_part: str, survive: int
) -> None:
    # 800 steps in 5 chunks of 160 (two aligned rollouts of 80): killed writing the third
    # chunk's model, or its progress file after the model landed.
    with monkeypatch.context() as patch:
        kill_at_write(patch, name_part, survive)
        with pytest.raises(Killed):
            train_sb3("sb3-a2c", BANDIT, 800, 0, tmp_path, 10, SHORT, checkpoints=5)
    progress = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert progress["env_steps_done"] == 320 and len(progress["returns"]) == 32
    assert (tmp_path / progress["model"]).exists()  # the progress file's model is whole
    assert not (tmp_path / EVALUATION_FILE).exists()

    result = train_sb3("sb3-a2c", BANDIT, 800, 0, tmp_path, 10, SHORT, checkpoints=5)
    progress = json.loads((tmp_path / PROGRESS_FILE).read_text())
    assert result["env_steps"] == progress["env_steps_done"] == 800
    assert progress["resumes"] == 1 and len(progress["returns"]) == 80  # no episode lost
    assert sorted(p.name for p in tmp_path.glob("sb3_model-*")) == ["sb3_model-800.zip"]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 1 + 80 // 30


def test_a_larger_budget_continues_the_run(tmp_path: Path) -> None:
    first = train_sb3("sb3-a2c", BANDIT, 160, 0, tmp_path, 10, SHORT)
    assert train_sb3("sb3-a2c", BANDIT, 160, 0, tmp_path, 10, SHORT) == first  # cached
    second = train_sb3("sb3-a2c", BANDIT, 320, 0, tmp_path, 10, SHORT)
    assert second["env_steps"] == 320
    assert json.loads((tmp_path / EVALUATION_FILE).read_text())["env_steps"] == 320
    assert len(json.loads((tmp_path / PROGRESS_FILE).read_text())["returns"]) == 32


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (dict(seed=1), "other settings.*seed: saved 0, asked 1"),
        (dict(algorithm="sb3-recurrent-ppo"), "other settings.*algorithm"),
        (dict(env_kwargs={"episode_length": 20}), "other settings.*env_kwargs"),
        (dict(env_steps=80), "trained 160 env steps, more than the budget of 80"),
    ],
)
def test_a_run_of_other_settings_is_refused_and_kept(
    tmp_path: Path, call: dict, message: str
) -> None:
    train_sb3("sb3-a2c", BANDIT, 160, 0, tmp_path, 10, SHORT)
    (tmp_path / EVALUATION_FILE).unlink()  # so the saved run itself is consulted
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    arguments = dict(algorithm="sb3-a2c", env_steps=320, seed=0, env_kwargs=SHORT) | call
    with pytest.raises(ValueError, match=message):
        train_sb3(
            arguments["algorithm"],
            BANDIT,
            arguments["env_steps"],
            arguments["seed"],
            tmp_path,
            10,
            arguments["env_kwargs"],
        )
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_a_cached_evaluation_of_other_settings_is_refused_too(tmp_path: Path) -> None:
    train_sb3("sb3-a2c", BANDIT, 160, 0, tmp_path, 10, SHORT)
    before = (tmp_path / EVALUATION_FILE).read_bytes()
    with pytest.raises(ValueError, match="other settings.*env_kwargs"):
        train_sb3("sb3-a2c", BANDIT, 160, 0, tmp_path, 10, {"episode_length": 10, "p_good": 0.9})
    assert (tmp_path / EVALUATION_FILE).read_bytes() == before


def test_a_budget_between_rollouts_trains_whole_rollouts_and_is_reused(tmp_path: Path) -> None:
    first = train_sb3("sb3-a2c", BANDIT, 100, 0, tmp_path, 10, SHORT)  # rollouts of 40 steps
    assert first["env_steps"] == 100 and first["env_steps_trained"] == 120
    assert train_sb3("sb3-a2c", BANDIT, 100, 0, tmp_path, 10, SHORT) == first


def test_a_resumed_run_trains_on_fresh_episodes(tmp_path: Path, monkeypatch) -> None:
    with monkeypatch.context() as patch:
        kill_at_write(patch, PROGRESS_FILE, 1)
        with pytest.raises(Killed):
            train_sb3("sb3-a2c", BANDIT, 800, 0, tmp_path, 10, SHORT, checkpoints=5)
    progress = sb3_baselines._load_progress(
        tmp_path, {"algorithm": "sb3-a2c", "env_id": BANDIT, "seed": 0, "env_kwargs": SHORT}
    )
    model = sb3_baselines._resume_or_create("sb3-a2c", BANDIT, 0, SHORT, tmp_path, progress, 10)
    # SB3 re-seeds the env with the model's own seed when it loads: that must be the new one
    stride = sb3_baselines.RESUME_SEED_STRIDE
    assert model.seed == stride and model.get_env()._seeds[:2] == [stride, stride + 1]


def test_damaged_progress_or_model_is_named(tmp_path: Path) -> None:
    train_sb3("sb3-a2c", BANDIT, 160, 0, tmp_path, 10, SHORT)
    (tmp_path / EVALUATION_FILE).unlink()
    progress_path = tmp_path / PROGRESS_FILE
    progress = progress_path.read_text()
    model = tmp_path / json.loads(progress)["model"]
    model.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=f"{model.name} is not a readable sb3-a2c checkpoint"):
        train_sb3("sb3-a2c", BANDIT, 320, 0, tmp_path, 10, SHORT)
    progress_path.write_text(progress[: len(progress) // 2])
    with pytest.raises(ValueError, match=f"{PROGRESS_FILE} is not an SB3 progress file"):
        train_sb3("sb3-a2c", BANDIT, 320, 0, tmp_path, 10, SHORT)


def test_unknown_algorithm_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown SB3 algorithm 'sb3-dqn'"):
        train_sb3("sb3-dqn", BANDIT, 160, 0, tmp_path / "run", 10, SHORT)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("algorithm", ["sb3-a2c", "sb3-recurrent-ppo"])
def test_sb3_trains_on_the_native_env_exactly_as_on_its_own_vec_env(algorithm: str) -> None:
    """Same episodes, rewards, resets and bootstrapping info: the weights after training on
    our batched env equal those after training on SB3's DummyVecEnv of Monitors."""
    import torch
    from stable_baselines3.common.env_util import make_vec_env

    def trained(env) -> tuple[dict, np.ndarray]:
        torch.manual_seed(0)
        model = sb3_baselines._sb3_model(algorithm, env, seed=3, length=10)
        model.learn(600 if algorithm == "sb3-a2c" else 900)
        return model.policy.state_dict(), sb3_baselines._monitor_returns(model.get_env())

    n_envs = sb3_baselines.TRAINING_ENVS[algorithm]
    native = trained(sb3_baselines.native_sb3_env(BANDIT, n_envs, 3, **SHORT))
    theirs_env = make_vec_env(BANDIT, n_envs=n_envs, seed=3, env_kwargs=SHORT)
    theirs = trained(theirs_env)
    np.testing.assert_array_equal(native[1], _dummy_returns(theirs_env))
    for name, value in native[0].items():
        assert torch.equal(value, theirs[0][name]), name


def _dummy_returns(env) -> np.ndarray:
    """A DummyVecEnv's Monitor returns, ordered like the native env's (by step, then env)."""
    rewards = env.env_method("get_episode_rewards")
    return np.array(rewards, dtype=np.float64).T.reshape(-1)


@pytest.mark.parametrize("algorithm", ["sb3-a2c", "sb3-recurrent-ppo"])
def test_sb3_evaluation_plays_the_same_episodes_whatever_the_batch(algorithm: str) -> None:
    """Greedy returns of a fixed model on the held-out episodes do not depend on how they are
    batched (episode k is seeded seed + k): the contract the report's comparisons rest on."""
    import torch

    torch.manual_seed(0)
    env = sb3_baselines.native_sb3_env(BANDIT, sb3_baselines.TRAINING_ENVS[algorithm], 3, **SHORT)
    model = sb3_baselines._sb3_model(algorithm, env, seed=3, length=10)
    model.learn(300)  # any weights away from the initial ones
    one = sb3_baselines.evaluate_sb3(model, BANDIT, 23, 50, SHORT, greedy=True, batch=23)
    split = sb3_baselines.evaluate_sb3(model, BANDIT, 23, 50, SHORT, greedy=True, batch=5)
    np.testing.assert_array_equal(one, split)
    shifted = sb3_baselines.evaluate_sb3(model, BANDIT, 22, 51, SHORT, greedy=True, batch=4)
    np.testing.assert_array_equal(one[1:], shifted)  # episode k + 1 of seed 50 is k of seed 51


def test_sampled_sb3_evaluation_is_reproducible_and_leaves_torch_seeding_alone() -> None:
    """SB3 samples from torch's global generator: the evaluation seeds it, so a model evaluated
    twice (as when an older cached evaluation is completed) scores the same, whatever ran
    before, and the caller's generator is where it was."""
    import torch

    env = sb3_baselines.native_sb3_env(BANDIT, 8, 3, **SHORT)
    model = sb3_baselines._sb3_model("sb3-a2c", env, seed=3, length=10)
    first = sb3_baselines.evaluate_sb3(model, BANDIT, 40, 7, SHORT)
    torch.rand(5)  # the global generator moves on, as other work would move it
    state = torch.get_rng_state()
    np.testing.assert_array_equal(sb3_baselines.evaluate_sb3(model, BANDIT, 40, 7, SHORT), first)
    assert torch.equal(torch.get_rng_state(), state)
    other = sb3_baselines.evaluate_sb3(model, BANDIT, 40, 8, SHORT)
    assert not np.array_equal(other[:-1], first[1:])  # another seed samples other actions
