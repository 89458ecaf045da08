"""SIGKILL a real ``hebbgym train`` process again and again, then let it finish.

The run must end with the parameters of an uninterrupted run, every checkpoint seen on disk
must load, and ``metrics.csv`` must hold each batch exactly once. Checkpoint writes are
slowed down in the child (by the driver below, not by the package) so that some kills land
while a checkpoint is being written.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hebbgym.train.checkpoint import load_checkpoint
from hebbgym.train.loop import CHECKPOINT_FILE, METRICS_FILE, load_agent

DRIVER = """
import sys, time
import hebbgym.train.checkpoint as checkpoint

real_write = checkpoint.atomic_write_bytes

def slow_write(path, data):
    time.sleep(float(sys.argv[1]))  # widen the window in which a kill hits a write
    real_write(path, data)

checkpoint.atomic_write_bytes = slow_write
from hebbgym.cli import main
print("ready", flush=True)  # imports done: the kill is timed from here, whatever the load
main(sys.argv[2:])
"""

TRAIN_ARGS = [
    "train",
    "--env", "Hebb-ReversalBandit-v0",
    "--agent", "modulated",
    "--seed", "5",
    "--episodes", "160",
    "--batch-size", "4",
    "--hidden-size", "8",
    "--lr", "0.01",
    "--env-kwargs", '{"episode_length": 10}',
    "--checkpoint-every", "2",
    "--threads", "1",
    "--no-progress",
]  # fmt: skip


def command(driver: Path, run_dir: Path, extra: list[str], delay: float) -> list[str]:
    return [sys.executable, str(driver), str(delay), *TRAIN_ARGS, "--run-dir", str(run_dir), *extra]


def check_consistent(run_dir: Path) -> int:
    """Whatever a kill left behind is whole: returns the last checkpointed batch (-1: none)."""
    path = run_dir / CHECKPOINT_FILE
    batch = load_checkpoint(path).progress["batch"] if path.exists() else -1
    if (run_dir / METRICS_FILE).exists():
        with open(run_dir / METRICS_FILE, newline="") as handle:
            batches = [int(row["batch"]) for row in csv.DictReader(handle)]
        assert batches == list(range(len(batches))), "metrics rows duplicated or missing"
        # Metrics are written just before the checkpoint: never behind it; rows past it are
        # dropped on resume (and the final comparison shows none is duplicated).
        assert len(batches) >= batch + 1
    return batch


def test_repeated_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    reference = tmp_path / "reference"
    subprocess.run(command(driver, reference, [], 0.0), check=True, env=env, capture_output=True)

    run_dir = tmp_path / "killed"
    rng = np.random.default_rng(0)
    progress, kills = [], 0
    while kills < 6:
        extra = ["--resume"] if (run_dir / CHECKPOINT_FILE).exists() else ["--overwrite"]
        child = subprocess.Popen(
            command(driver, run_dir, extra, 0.15),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # Importing torch can take seconds on a loaded machine; time the kill from training's
        # start, or every kill could land before the first checkpoint.
        child.stdout.readline()
        time.sleep(float(rng.uniform(0.3, 3.0)))
        if child.poll() is not None:  # finished before the kill: start over to keep killing
            assert child.returncode == 0, child.stderr.read().decode()
            break
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += 1
        progress.append(check_consistent(run_dir))
    assert kills >= 3, "the run must have been killed several times"
    assert max(progress) > 0, "some kills must come after checkpoints were written"

    subprocess.run(
        command(driver, run_dir, ["--resume"], 0.0), check=True, env=env, capture_output=True
    )
    assert check_consistent(run_dir) == 39
    assert not list(run_dir.glob(".*.tmp-*")), "no half-written file is left behind"
    _, expected, _ = load_agent(reference)
    _, resumed, _ = load_agent(run_dir)
    for (name, a), (_, b) in zip(
        expected.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"parameter {name} differs")
