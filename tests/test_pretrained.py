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
from hebbgym.train.config import TrainConfig
from hebbgym.train.evaluate import evaluate_agent, evaluate_agent_scores, task_rules
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
    evaluation = {"baseline": {"agent": "lstm", "median_mean_reward": 1.5}}
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


def test_each_shipped_agent_still_beats_the_lstm_baseline_it_was_chosen_against() -> None:
    """The shipped agents, on 300 of the held-out episodes they were chosen on (seed 10000,
    sampled actions): each must stay above the LSTM trials' median on those episodes."""
    shipped = pretrained.available()
    assert "Hebb-Maze-v0" in shipped
    for env_id in shipped:
        info = pretrained.pretrained_info(env_id)
        config, agent, _ = load_agent(pretrained.pretrained_dir(env_id))
        mean = float(np.mean(evaluate_agent(config, agent, 300, seed=10_000)))
        baseline = info["baseline"]["median_mean_reward"]
        assert mean > baseline, (env_id, mean, baseline)


def test_each_shipped_agent_of_an_accuracy_task_meets_the_solved_bar_greedily() -> None:
    """Conditioning and cue-reward judge a run by accuracy (95 % and 90 %); the shipped agents
    of those tasks reach it with greedy actions on 300 held-out episodes."""
    judged = 0
    for env_id in pretrained.available():
        config, agent, _ = load_agent(pretrained.pretrained_dir(env_id))
        rules = task_rules(config.env_id, config.env_kwargs)
        if rules.solved_accuracy is None:
            continue
        scores = evaluate_agent_scores(config, agent, 300, seed=10_000, greedy=True)
        assert scores.accuracy.mean() >= rules.solved_accuracy, (env_id, scores.accuracy.mean())
        judged += 1
    assert judged >= 2  # conditioning and cue-reward ship
