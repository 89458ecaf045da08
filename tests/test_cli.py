"""The ``hebbgym`` command end to end, as a user runs it: train, evaluate, watch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest

TRAIN = [
    "train",
    "--env", "Hebb-ReversalBandit-v0",
    "--agent", "retroactive",
    "--episodes", "16",
    "--batch-size", "4",
    "--hidden-size", "8",
    "--env-kwargs", '{"episode_length": 10}',
    "--threads", "1",
    "--no-progress",
]  # fmt: skip


def hebbgym(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"}
    command = [sys.executable, "-m", "hebbgym.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = hebbgym(*TRAIN, "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 16 and summary["run_dir"] == str(run_dir)
    assert "22,306" not in result.stdout  # a tiny agent, not the preset one
    assert "parameters" in result.stderr + result.stdout
    return run_dir


def test_evaluate_prints_a_json_summary_with_a_normalised_score(run_dir: Path) -> None:
    result = hebbgym("evaluate", "--run-dir", str(run_dir), "--episodes", "40", "--seed", "3")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["env_id"] == "Hebb-ReversalBandit-v0" and summary["agent"] == "retroactive"
    assert summary["episodes"] == 40 and summary["trained_episodes"] == 16
    random_mean = summary["references"]["random"]["mean"]
    oracle_mean = summary["references"]["oracle"]["mean"]
    expected = (summary["return"]["mean"] - random_mean) / (oracle_mean - random_mean)
    assert summary["score"] == pytest.approx(expected)
    assert 0 <= summary["return"]["mean"] <= 10
    # The bandit's solved bar is Thompson sampling with forgetting; it has no accuracy.
    bar = summary["references"]["thompson-forgetting"]["mean"]
    assert summary["solved"] is (summary["return"]["mean"] >= bar)
    assert "accuracy" not in summary


def test_watch_records_an_episode(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "episode.gif"
    result = hebbgym("watch", "--run-dir", str(run_dir), "--out", str(out), "--greedy")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["out"] == str(out)
    assert iio.improps(out, index=None).shape[0] == 11  # reset frame + 10 steps


def test_errors_are_one_line_and_name_the_problem(run_dir: Path, tmp_path: Path) -> None:
    again = hebbgym(*TRAIN, "--run-dir", str(run_dir))
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    missing = hebbgym("evaluate", "--run-dir", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "config.json missing" in missing.stderr
    bad = hebbgym("train", "--run-dir", str(tmp_path / "x"), "--env", "Hebb-Maze-v0", "--lr", "-1")
    assert bad.returncode == 2 and "lr must be" in bad.stderr
    assert not (tmp_path / "x").exists()
