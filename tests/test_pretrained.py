"""Pretrained agents: export, loading through --pretrained, and the shipped ones' scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import hebbgym.pretrained as pretrained
from hebbgym import cli
from hebbgym.agents.references import evaluate_reference
from hebbgym.envs.base import mean_accuracy
from hebbgym.envs.registration import ENVIRONMENTS
from hebbgym.train.config import TrainConfig
from hebbgym.train.evaluate import evaluate_agent, evaluate_agent_scores, is_solved, task_rules
from hebbgym.train.loop import CHECKPOINT_FILE, CONFIG_FILE, load_agent, train

BANDIT = "Hebb-ReversalBandit-v0"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("pretrained") / "run"
    config = TrainConfig(
        env_id=BANDIT,
        agent="modulated",
        episodes=16,
        batch_size=4,
        hidden_size=8,
        env_kwargs={"episode_length": 10},
        threads=1,
    )
    train(config, run_dir, progress=False)
    return run_dir


@pytest.fixture
def exported(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny run exported into a pretrained directory that the package then uses."""
    destination = tmp_path / "pretrained"
    evaluation = {
        "source": "runs/tiny",
        "evaluation": {"episodes": 20, "seed": 10_000, "mean_reward": 2.0},
        "baseline": {"agent": "lstm", "median_mean_reward": 1.5},
    }
    target = pretrained.export_pretrained(tiny_run, evaluation, destination)
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", destination)
    return target


def test_export_writes_weights_only_and_loads_as_the_same_agent(tiny_run, exported) -> None:
    assert exported.name == BANDIT
    assert sorted(p.name for p in exported.iterdir()) == [CHECKPOINT_FILE, CONFIG_FILE]
    with safe_open(str(exported / CHECKPOINT_FILE), framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all(key.startswith("model/") for key in keys)  # no optimizer, no RNG
    _, original, _ = load_agent(tiny_run)
    config, agent, progress = load_agent(exported)
    for (name, a), (_, b) in zip(
        original.state_dict().items(), agent.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert progress["episodes"] == 16 and progress["baseline"]["median_mean_reward"] == 1.5
    assert pretrained.available() == [BANDIT]
    assert pretrained.pretrained_info(BANDIT)["baseline"]["agent"] == "lstm"
    returns = [evaluate_agent(config, a, 20, seed=3) for a in (original, agent)]
    np.testing.assert_array_equal(*returns)


def test_evaluate_and_watch_take_a_pretrained_agent(exported, tmp_path, capsys) -> None:
    cli.main(["evaluate", "--pretrained", BANDIT, "--episodes", "12", "--seed", "2"])
    summary = json.loads(capsys.readouterr().out)
    assert summary["env_id"] == BANDIT and summary["episodes"] == 12
    assert summary["trained_episodes"] == 16
    assert summary["shipped"]["source"] == "runs/tiny"
    assert summary["shipped"]["baseline"] == {"agent": "lstm", "median_mean_reward": 1.5}
    out = tmp_path / "episode.gif"
    cli.main(["watch", "--pretrained", BANDIT, "--out", str(out)])
    assert json.loads(capsys.readouterr().out)["out"] == str(out) and out.stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pretrained", "Hebb-Nope-v0"], "no pretrained agent for 'Hebb-Nope-v0'; available: "),
        ([], "either --run-dir or --pretrained"),
        (["--pretrained", BANDIT, "--run-dir", "runs/x"], "either --run-dir or --pretrained"),
    ],
)
def test_a_missing_or_ambiguous_agent_is_a_one_line_error(exported, capsys, args, message):
    with pytest.raises(SystemExit) as stop:
        cli.main(["evaluate", *args])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_every_registered_task_ships_an_agent() -> None:
    assert pretrained.available() == sorted(ENVIRONMENTS)


def test_each_shipped_agent_keeps_its_standing_against_the_lstm_baseline() -> None:
    """The shipped agents, on 300 of the held-out episodes they were chosen on (seed 10000,
    sampled actions). One chosen ahead of the LSTM trials' median on those episodes must stay
    above it. Where no modulated agent beat the LSTM (the bandit, independent conditioning)
    the best one ships behind it, and must not fall further behind than it was chosen:
    within two standard errors of its own held-out mean."""
    ahead = []
    for env_id in pretrained.available():
        info = pretrained.pretrained_info(env_id)
        config, agent, _ = load_agent(pretrained.pretrained_dir(env_id))
        returns = evaluate_agent(config, agent, 300, seed=10_000)
        mean, sem = float(np.mean(returns)), float(np.std(returns) / np.sqrt(len(returns)))
        baseline = info["baseline"]["median_mean_reward"]
        if pretrained.chosen_ahead_of_baseline(info):
            ahead.append(env_id)
            assert mean > baseline, (env_id, mean, baseline)
        else:
            chosen = info["evaluation"]["mean_reward"]
            assert mean > chosen - 2 * sem, (env_id, mean, chosen, sem)
    assert set(ahead) == {"Hebb-Maze-v0", "Hebb-Conditioning-v0", "Hebb-CueReward-v0"}


def test_each_shipped_agent_meets_its_tasks_solved_bar() -> None:
    """On 300 held-out episodes, by the task's own criterion (:func:`is_solved`): the accuracy
    tasks (conditioning 95 %, cue-reward 90 %) with greedy actions, the bandit (a mean above
    Thompson sampling with forgetting on the same episodes) with sampled ones; the maze has
    no bar."""
    judged = []
    for env_id in pretrained.available():
        config, agent, _ = load_agent(pretrained.pretrained_dir(env_id))
        rules = task_rules(config.env_id, config.env_kwargs)
        greedy = rules.solved_accuracy is not None
        scores = evaluate_agent_scores(config, agent, 300, seed=10_000, greedy=greedy)
        references = {}
        if rules.solved_reference is not None:
            bar = evaluate_reference(env_id, rules.solved_reference, 300, 10_000)
            references[rules.solved_reference] = float(bar.mean())
        mean = float(scores.returns.mean())
        solved = is_solved(rules, mean, mean_accuracy(scores.accuracy), references)
        if solved is None:
            continue
        assert solved, (env_id, mean, mean_accuracy(scores.accuracy), references)
        judged.append(env_id)
    assert sorted(judged) == sorted(set(ENVIRONMENTS) - {"Hebb-Maze-v0"})
