"""Sweeps on a local Ray instance or serially: trials are ordinary runs, and a rerun resumes."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hebbgym.sweep import INSTALL_HINT, SweepConfig, repeated_divergence, run_sweep, run_trial
from hebbgym.train import loop
from hebbgym.train.checkpoint import load_checkpoint
from hebbgym.train.loop import CHECKPOINT_FILE, DIVERGED_FILE, load_agent, metrics_table
from tests.tiny_sweep import write_tiny_sweep

REPOSITORY = Path(__file__).resolve().parents[1]


def assert_same_weights(run_dir: Path, other_run_dir: Path) -> None:
    """The two runs' agents are equal bit for bit."""
    _, agent, _ = load_agent(run_dir)
    _, other, _ = load_agent(other_run_dir)
    for (name, a), (_, b) in zip(
        agent.state_dict().items(), other.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.fixture
def sweep_file(tmp_path: Path) -> Path:
    return write_tiny_sweep(
        tmp_path / "tiny.yaml", ["modulated", "rnn"], [1], episodes=24, checkpoint_every=2
    )


def test_config_is_validated_before_anything_runs(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ngrid: {agent: [modulated, transformer]}\n")
    with pytest.raises(ValueError, match="trial agent=transformer: agent must be one of"):
        SweepConfig.from_file(path)
    path.write_text("name: bad\ngrid: {agent: [rnn]}\nbudget: 3\n")
    with pytest.raises(ValueError, match="unknown sweep key"):
        SweepConfig.from_file(path)
    with pytest.raises(FileNotFoundError):
        SweepConfig.from_file(tmp_path / "missing.yaml")


def test_overrides_give_the_trials_of_one_grid_value_their_own_settings(tmp_path: Path) -> None:
    path = write_tiny_sweep(tmp_path / "over.yaml", ["modulated", "rnn"], [0, 1], episodes=8)
    data = yaml.safe_load(path.read_text())
    data["overrides"] = {"agent": {"rnn": {"lr": 0.003, "hidden_size": 6}}}
    path.write_text(yaml.safe_dump(data))
    trials = {trial.name: trial.config for trial in SweepConfig.from_file(path).trials()}
    assert {trials[f"agent=rnn-seed={s}"].lr for s in (0, 1)} == {0.003}
    assert trials["agent=rnn-seed=1"].hidden_size == 6
    assert {trials[f"agent=modulated-seed={s}"].lr for s in (0, 1)} == {0.01}
    assert trials["agent=modulated-seed=0"].hidden_size == 8
    grid_of_dicts = {**data, "grid": {"env_kwargs": [{"episode_length": 10}, {"arms": 3}]}}
    grid_of_dicts["overrides"] = {"env_kwargs": {}}
    path.write_text(yaml.safe_dump(grid_of_dicts))
    assert len(SweepConfig.from_file(path).trials()) == 2  # dict values, compared not hashed
    two_fields = {"agent": {"rnn": {"lr": 0.003}}, "seed": {1: {"lr": 0.001}}}
    path.write_text(yaml.safe_dump({**data, "overrides": two_fields}))
    with pytest.raises(ValueError, match=r"overrides set \['lr'\] twice"):
        SweepConfig.from_file(path)
    for overrides, message in [
        ({"seeds": {0: {"lr": 1.0}}}, "'seeds' is not a grid field"),
        ({"agent": {"lstm": {"lr": 1.0}}}, "'lstm'.*not one of the grid's"),
        ({"agent": {"rnn": {"seed": 3}}}, r"sets grid field\(s\) \['seed'\]"),
        ({"agent": {"rnn": {"lr": -1.0}}}, "trial agent=rnn-seed=0: .*lr"),
    ]:
        path.write_text(yaml.safe_dump({**data, "overrides": overrides}))
        with pytest.raises(ValueError, match=message):
            SweepConfig.from_file(path)


def test_without_ray_the_command_says_how_to_install(
    sweep_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SystemExit, match=r"pip install 'hebbgym\[sweep\]'"):
        run_sweep(SweepConfig.from_file(sweep_file))
    assert "ray" in INSTALL_HINT.lower()


def test_two_trial_sweep_then_rerun_resumes_without_rerunning(sweep_file: Path) -> None:
    sweep = SweepConfig.from_file(sweep_file)
    modulated, rnn = sweep.trials()
    # A sweep killed earlier: one trial finished, the other stopped after its first checkpoint.
    run_trial(modulated)
    run_trial(dataclasses.replace(rnn, config=dataclasses.replace(rnn.config, episodes=8)))
    finished = (modulated.run_dir / CHECKPOINT_FILE).stat().st_mtime_ns
    assert load_checkpoint(rnn.run_dir / CHECKPOINT_FILE).progress["batch"] == 1

    result = run_sweep(sweep, cpus=2)
    assert result["trials"] == 2 and result["ran"] == 1
    assert (modulated.run_dir / CHECKPOINT_FILE).stat().st_mtime_ns == finished
    assert load_checkpoint(rnn.run_dir / CHECKPOINT_FILE).progress["batch"] == 5
    assert list(metrics_table(rnn.run_dir)["batch"]) == list(range(6))

    # The resumed trial ends where an uninterrupted run ends.
    reference = dataclasses.replace(rnn, run_dir=sweep_file.parent / "reference")
    run_trial(reference)
    assert_same_weights(rnn.run_dir, reference.run_dir)

    with open(result["summary"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["agent"] for row in rows) == ["modulated", "rnn"]
    for row in rows:
        expected = metrics_table(row["run_dir"])["reward_mean"][-1:].mean()
        assert float(row["final_reward"]) == pytest.approx(expected)
        assert int(row["episodes"]) == 24
    assert Path(result["curves"]).stat().st_size > 10_000

    again = run_sweep(sweep, cpus=2)
    assert again["ran"] == 0 and again["final_reward"] == result["final_reward"]


def test_a_changed_sweep_file_is_refused_before_its_old_runs_are_touched(
    sweep_file: Path,
) -> None:
    trial = SweepConfig.from_file(sweep_file).trials()[0]
    run_trial(trial)
    before = {path.name: path.read_bytes() for path in trial.run_dir.iterdir() if path.is_file()}
    changed = write_tiny_sweep(
        sweep_file, ["modulated", "rnn"], [1], episodes=24, checkpoint_every=2, lr=0.003
    )
    with pytest.raises(
        ValueError, match=r"trial agent=modulated-seed=1: .*lr: 0\.01 there, 0\.003 now"
    ):
        run_sweep(SweepConfig.from_file(changed), cpus=1)
    after = {path.name: path.read_bytes() for path in trial.run_dir.iterdir() if path.is_file()}
    assert after == before


def test_a_diverged_trial_is_not_retried_from_the_checkpoint_it_diverged_from(
    sweep_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training is deterministic, so a rerun would only diverge again: the sweep reports the
    divergence instead, alike every time, until the record is deleted."""
    sweep = SweepConfig.from_file(sweep_file)
    modulated, rnn = sweep.trials()
    run_trial(modulated)
    real_loss, calls = loop.a2c_loss, {"n": 0}

    def nan_at_batch_three(*args, **kwargs):
        terms = real_loss(*args, **kwargs)
        calls["n"] += 1
        return terms._replace(total=terms.total * float("nan")) if calls["n"] == 4 else terms

    monkeypatch.setattr(loop, "a2c_loss", nan_at_batch_three)
    with pytest.raises(loop.TrainingDiverged):
        run_trial(rnn)
    monkeypatch.setattr(loop, "a2c_loss", real_loss)
    assert repeated_divergence(modulated) is None
    assert repeated_divergence(rnn).startswith("batch 3: loss is nan")
    stopped = (rnn.run_dir / CHECKPOINT_FILE).stat().st_mtime_ns

    result = run_sweep(sweep, cpus=2)
    assert result["ran"] == 0
    assert list(result["failed"]) == [rnn.run_dir.name]
    assert result["failed"][rnn.run_dir.name].startswith("training diverged at batch 3")
    assert (rnn.run_dir / CHECKPOINT_FILE).stat().st_mtime_ns == stopped

    (rnn.run_dir / DIVERGED_FILE).unlink()  # the way to retry it
    retried = run_sweep(sweep, cpus=2)
    assert retried["ran"] == 1 and retried["failed"] == {}
    assert load_checkpoint(rnn.run_dir / CHECKPOINT_FILE).progress["batch"] == 5


def test_a_divergence_record_counts_only_for_the_checkpoint_and_budget_it_was_made_with(
    sweep_file: Path,
) -> None:
    sweep = SweepConfig.from_file(sweep_file)
    _, rnn = sweep.trials()
    short = dataclasses.replace(rnn, config=dataclasses.replace(rnn.config, episodes=8))
    run_trial(short)  # batches 0 and 1, the checkpoint at batch 1
    record = rnn.run_dir / DIVERGED_FILE

    def diverged(batch: int, checkpoint_batch: int) -> None:
        record.write_text(
            json.dumps({"message": "m", "batch": batch, "checkpoint_batch": checkpoint_batch})
        )

    diverged(3, 1)
    assert repeated_divergence(rnn) == "m"  # from this checkpoint it would diverge again
    diverged(3, -1)
    assert repeated_divergence(rnn) is None  # made before this checkpoint existed
    diverged(3, 1)
    three_batches = dataclasses.replace(rnn, config=dataclasses.replace(rnn.config, episodes=12))
    assert repeated_divergence(three_batches) is None  # it now stops before batch 3
    run_trial(three_batches)
    assert repeated_divergence(three_batches) is None  # finished


def test_a_serial_sweep_trains_in_this_process_without_ray_and_lists_a_failed_trial(
    sweep_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other trials still train when one fails, and the rerun retries only that one."""
    import hebbgym.sweep as sweep_module

    monkeypatch.setitem(sys.modules, "ray", None)
    sweep = SweepConfig.from_file(sweep_file)
    modulated, rnn = sweep.trials()
    real_train = sweep_module.train

    def disk_full_for_rnn(config, run_dir, **kwargs):
        if Path(run_dir) == rnn.run_dir:
            raise OSError("writing the checkpoint:\nNo space left on device")
        return real_train(config, run_dir, **kwargs)

    monkeypatch.setattr(sweep_module, "train", disk_full_for_rnn)
    result = run_sweep(sweep, serial=True)
    assert result["ran"] == 2
    assert result["failed"] == {rnn.run_dir.name: "No space left on device"}
    assert load_checkpoint(modulated.run_dir / CHECKPOINT_FILE).progress["batch"] == 5

    monkeypatch.setattr(sweep_module, "train", real_train)
    retried = run_sweep(sweep, serial=True)
    assert retried["ran"] == 1 and retried["failed"] == {}
    reference = dataclasses.replace(rnn, run_dir=sweep_file.parent / "reference")
    run_trial(reference)
    assert_same_weights(rnn.run_dir, reference.run_dir)


@pytest.mark.parametrize("ray_settings", [{"address": "ray://head:10001"}, {"cpus": 2}])
def test_a_serial_sweep_refuses_ray_settings(sweep_file: Path, ray_settings: dict) -> None:
    with pytest.raises(ValueError, match="serial sweep runs in this process"):
        run_sweep(SweepConfig.from_file(sweep_file), serial=True, **ray_settings)


@pytest.mark.parametrize(
    "sweep_path", sorted((REPOSITORY / "sweeps").glob("*.yaml")), ids=lambda path: path.stem
)
def test_every_shipped_sweep_file_loads_with_valid_trials(sweep_path: Path) -> None:
    sweep = SweepConfig.from_file(sweep_path)
    assert sweep.name == sweep_path.stem  # its page and run directory are named after it
    trials = sweep.trials()
    assert len({trial.run_dir for trial in trials}) == len(trials) >= 5


def test_every_recipe_names_a_shipped_sweep_file() -> None:
    recipes = sorted((REPOSITORY / "scripts").glob("reproduce_*.py"))
    assert recipes
    for recipe in recipes:
        sweep_name = recipe.stem.removeprefix("reproduce_")
        assert f'main("sweeps/{sweep_name}.yaml")' in recipe.read_text(), recipe.name
        assert (REPOSITORY / "sweeps" / f"{sweep_name}.yaml").is_file(), recipe.name
