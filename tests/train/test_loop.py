"""The training loop: exact resume, safe run directories and checkpoints, numerical guard."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import hebbgym.train.loop as loop
from hebbgym.train.checkpoint import CheckpointError, load_checkpoint
from hebbgym.train.config import TrainConfig
from hebbgym.train.loop import (
    CHECKPOINT_FILE,
    DIVERGED_FILE,
    METRICS_FILE,
    TrainingDiverged,
    divergence_record,
    load_agent,
    train,
)

TINY = TrainConfig(
    env_id="Hebb-ReversalBandit-v0",
    agent="modulated",
    seed=3,
    episodes=24,
    batch_size=4,
    hidden_size=8,
    lr=1e-2,
    env_kwargs={"episode_length": 10},
    checkpoint_every=2,
    threads=1,
)


def parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    _, agent, _ = load_agent(run_dir)
    return {name: value.detach().clone() for name, value in agent.state_dict().items()}


def metric_batches(run_dir: Path) -> list[int]:
    with open(run_dir / METRICS_FILE, newline="") as handle:
        return [int(row["batch"]) for row in csv.DictReader(handle)]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("full")
    train(TINY, run_dir, progress=False)
    return run_dir


def test_run_directory_contents(uninterrupted: Path) -> None:
    names = {p.name for p in uninterrupted.iterdir()}
    assert names >= {"config.json", CHECKPOINT_FILE, METRICS_FILE, "tb"}
    assert metric_batches(uninterrupted) == list(range(6))
    checkpoint = load_checkpoint(uninterrupted / CHECKPOINT_FILE)
    assert checkpoint.progress["batch"] == 5 and checkpoint.progress["episodes"] == 24
    with open(uninterrupted / METRICS_FILE, newline="") as handle:
        header = next(csv.reader(handle))
    required = ("episode", "reward_mean", "reward_std", "loss", "entropy", "grad_norm", "seconds")
    assert set(required) <= set(header)


def test_training_changes_parameters_deterministically(uninterrupted: Path, tmp_path: Path) -> None:
    train(TINY, tmp_path, progress=False)
    first, second = parameters(uninterrupted), parameters(tmp_path)
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0)
    initial = loop.make_agent(TINY.resolved(), loop.make_env(TINY.resolved())).state_dict()
    assert any(not torch.equal(initial[name], first[name]) for name in first)


def test_extending_a_finished_run_equals_training_longer_at_once(
    uninterrupted: Path, tmp_path: Path
) -> None:
    train(dataclasses.replace(TINY, episodes=12), tmp_path, progress=False)
    train(TINY, tmp_path, resume=True, progress=False)
    for name, value in parameters(uninterrupted).items():
        torch.testing.assert_close(parameters(tmp_path)[name], value, rtol=0, atol=0)
    assert metric_batches(tmp_path) == list(range(6))


def test_resume_after_a_crash_equals_uninterrupted_run(
    uninterrupted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_collect = loop.collect_rollout
    calls = {"n": 0}

    def crash_at_batch_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # batches 0-1 were checkpointed, batch 2 is lost with the crash
            raise KeyboardInterrupt
        return real_collect(*args, **kwargs)

    monkeypatch.setattr(loop, "collect_rollout", crash_at_batch_three)
    with pytest.raises(KeyboardInterrupt):
        train(TINY, tmp_path, progress=False)
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE).progress["batch"] == 1
    monkeypatch.setattr(loop, "collect_rollout", real_collect)
    train(TINY, tmp_path, resume=True, progress=False)
    for name, value in parameters(uninterrupted).items():
        torch.testing.assert_close(parameters(tmp_path)[name], value, rtol=0, atol=0)
    assert metric_batches(tmp_path) == list(range(6)), "no metrics row lost or duplicated"


def test_existing_run_is_refused_without_resume_or_overwrite(uninterrupted: Path) -> None:
    before = snapshot(uninterrupted)
    with pytest.raises(FileExistsError, match="--resume"):
        train(TINY, uninterrupted, progress=False)
    with pytest.raises(ValueError, match="not both"):
        train(TINY, uninterrupted, resume=True, overwrite=True, progress=False)
    assert snapshot(uninterrupted) == before


def test_overwrite_replaces_the_run(tmp_path: Path) -> None:
    train(dataclasses.replace(TINY, episodes=8), tmp_path, progress=False)
    train(dataclasses.replace(TINY, episodes=12), tmp_path, overwrite=True, progress=False)
    assert metric_batches(tmp_path) == [0, 1, 2]


def test_resume_needs_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(TINY, tmp_path, resume=True, progress=False)


def test_resume_refuses_another_config_and_leaves_the_run_intact(uninterrupted: Path) -> None:
    before = snapshot(uninterrupted)
    with pytest.raises(CheckpointError, match="hidden_size"):
        train(dataclasses.replace(TINY, hidden_size=9), uninterrupted, resume=True, progress=False)
    assert snapshot(uninterrupted) == before


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign", "empty"])
def test_damaged_checkpoints_are_named_and_nothing_is_overwritten(
    uninterrupted: Path, tmp_path: Path, damage: str
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name, data in snapshot(uninterrupted).items():
        (run_dir / name).write_bytes(data)
    path = run_dir / CHECKPOINT_FILE
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 100)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        save_file({"weights": torch.zeros(3)}, str(path))
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match=str(path)):
        train(TINY, run_dir, resume=True, progress=False)
    with pytest.raises(CheckpointError, match=CHECKPOINT_FILE):
        load_agent(run_dir)
    assert snapshot(run_dir) == before


def test_non_finite_loss_stops_with_the_batch_and_keeps_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss = loop.a2c_loss
    calls = {"n": 0}

    def nan_at_batch_three(*args, **kwargs):
        terms = real_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            return terms._replace(total=terms.total * float("nan"))
        return terms

    monkeypatch.setattr(loop, "a2c_loss", nan_at_batch_three)
    with pytest.raises(TrainingDiverged, match="batch 3: loss is nan"):
        train(TINY, tmp_path, progress=False)
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE).progress["batch"] == 1
    record = divergence_record(tmp_path)
    assert record is not None and record["checkpoint_batch"] == 1 and record["batch"] == 3
    assert record["message"].startswith("batch 3: loss is nan")

    # An explicit resume retries; once it gets through, the record is gone.
    monkeypatch.setattr(loop, "a2c_loss", real_loss)
    train(TINY, tmp_path, resume=True, progress=False)
    assert divergence_record(tmp_path) is None
    (tmp_path / DIVERGED_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not a divergence record"):
        divergence_record(tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr", -1.0, "lr must be"),
        ("episodes", 0, "episodes must be"),
        ("batch_size", 10_000, "batch_size must be"),
        ("gamma", 1.5, "gamma must be"),
        ("agent", "transformer", "agent must be one of"),
        ("env_id", "Hebb-Nope-v0", "unknown env_id"),
        ("env_kwargs", {"episode_lenght": 3}, "episode_lenght"),
        ("episodes", 2, "at least one batch"),
    ],
)
def test_nonsense_configs_are_refused_up_front(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        train(dataclasses.replace(TINY, **{field: value}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists(), "a refused config must not create the run directory"


def test_a_batch_too_large_for_memory_is_refused_up_front(tmp_path: Path) -> None:
    huge = dataclasses.replace(
        TINY, episodes=4096, batch_size=4096, hidden_size=2048, env_kwargs={"episode_length": 100}
    )
    with pytest.raises(ValueError, match=r"batch_size=4096 .* GiB for backpropagation"):
        train(huge, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
