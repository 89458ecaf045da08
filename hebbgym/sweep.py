"""Grids of training runs (agents × seeds × hyperparameters) on Ray Tune, or one by one.

A sweep is a YAML file::

    name: conditioning
    out_dir: runs/sweeps          # trials go to out_dir/name/<trial>/
    cpus_per_trial: 1
    base:                         # TrainConfig fields shared by every trial
      env_id: Hebb-Conditioning-v0
      episodes: 6000
    grid:                         # TrainConfig field -> values; the trials are the product
      agent: [modulated, rnn]
      seed: [0, 1, 2, 3, 4]
    overrides:                    # optional: settings of the trials with that grid value
      agent:
        rnn: {lr: 0.003}

Each trial is an ordinary run directory (config, checkpoint, metrics), trained by
:func:`hebbgym.train.loop.train`, so any trial can be watched or evaluated like a normal run.
Running a sweep again resumes it: finished trials are skipped, interrupted ones continue
from their last checkpoint; a trial whose directory holds a run with other settings (the
file was edited since) is refused, so old and new settings never mix. Ray is an optional
extra (``pip install 'hebbgym[sweep]'``); on a cluster pass ``address`` and nothing else
changes; ``serial`` trains the trials one after another in this process instead.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hebbgym.train.checkpoint import load_checkpoint
from hebbgym.train.config import TrainConfig
from hebbgym.train.loop import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    RUN_FILES,
    divergence_record,
    load_run_config,
    metrics_table,
    train,
)
from hebbgym.train.plots import plot_learning_curves

INSTALL_HINT = "sweeps need Ray Tune and PyYAML: pip install 'hebbgym[sweep]'"
SUMMARY_FILE = "summary.csv"
CURVES_FILE = "curves.png"
FINAL_FRACTION = 0.1


@dataclass(frozen=True)
class Trial:
    name: str
    config: TrainConfig
    run_dir: Path
    params: dict[str, Any]


@dataclass
class SweepConfig:
    name: str
    grid: dict[str, list[Any]]
    base: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, dict[Any, dict[str, Any]]] = field(default_factory=dict)
    out_dir: Path = Path("runs/sweeps")
    cpus_per_trial: float = 1.0

    @classmethod
    def from_file(cls, path: str | Path) -> SweepConfig:
        """Read a YAML (or JSON) sweep file; unknown keys and fields are errors."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no sweep config there")
        try:
            import yaml
        except ImportError as error:
            raise SystemExit(INSTALL_HINT) from error
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a sweep config is a mapping, got {type(data).__name__}")
        known = {"name", "grid", "base", "overrides", "out_dir", "cpus_per_trial"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown sweep key(s) {unknown}")
        if "name" not in data or "grid" not in data:
            raise ValueError(f"{path}: a sweep config needs 'name' and 'grid'")
        sweep = cls(
            name=str(data["name"]),
            grid=data["grid"],
            base=data.get("base") or {},
            overrides=data.get("overrides") or {},
            out_dir=Path(data.get("out_dir", "runs/sweeps")),
            cpus_per_trial=float(data.get("cpus_per_trial", 1.0)),
        )
        sweep.trials()  # validate every trial's config now, before anything runs
        return sweep

    @property
    def directory(self) -> Path:
        return self.out_dir / self.name

    def trials(self) -> list[Trial]:
        """The product of the grid over the base config, each validated."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"sweep name {self.name!r} must be letters, digits, '_', '.', '-'")
        if not isinstance(self.grid, dict) or not self.grid:
            raise ValueError("grid must map at least one TrainConfig field to a list of values")
        for key, values in self.grid.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid[{key!r}] must be a non-empty list, got {values!r}")
        if self.cpus_per_trial <= 0:
            raise ValueError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        self._check_overrides()
        keys = list(self.grid)
        trials = []
        for values in itertools.product(*(self.grid[key] for key in keys)):
            params = dict(zip(keys, values, strict=True))
            name = "-".join(f"{key}={_slug(value)}" for key, value in params.items())
            threads = max(1, int(self.cpus_per_trial))
            overridden = self._overridden(params)
            try:
                config = TrainConfig.from_dict(
                    {"threads": threads, **self.base, **overridden, **params}
                ).resolved()
            except (TypeError, ValueError) as error:
                raise ValueError(f"trial {name}: {error}") from error
            trials.append(Trial(name, config, (self.directory / name).resolve(), params))
        return trials

    def _overridden(self, params: dict[str, Any]) -> dict[str, Any]:
        """The override settings of a trial's grid values (compared by equality: grid values
        may be dicts or lists), refusing two that set one field."""
        settings: dict[str, Any] = {}
        for key, by_value in self.overrides.items():
            for value, extra in by_value.items():
                if value != params[key]:
                    continue
                clashing = sorted(set(extra) & set(settings))
                if clashing:
                    raise ValueError(f"overrides set {clashing} twice for the trial {params}")
                settings.update(extra)
        return settings

    def _check_overrides(self) -> None:
        """Overrides name a grid field, one of its values, and settings that are not grid
        fields themselves (those would be overridden back by the grid)."""
        if not isinstance(self.overrides, dict):
            raise ValueError(f"overrides must map grid fields to values, got {self.overrides!r}")
        for key, by_value in self.overrides.items():
            if key not in self.grid:
                raise ValueError(f"overrides[{key!r}]: {key!r} is not a grid field")
            if not isinstance(by_value, dict):
                raise ValueError(f"overrides[{key!r}] must map grid values to settings")
            for value, settings in by_value.items():
                if value not in self.grid[key]:
                    raise ValueError(
                        f"overrides[{key!r}][{value!r}]: not one of the grid's {self.grid[key]}"
                    )
                if not isinstance(settings, dict):
                    raise ValueError(f"overrides[{key!r}][{value!r}] must be a mapping")
                clashing = sorted(set(settings) & set(self.grid))
                if clashing:
                    raise ValueError(f"overrides[{key!r}][{value!r}] sets grid field(s) {clashing}")


def _slug(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("_")


def check_saved_config(trial: Trial) -> None:
    """Refuse a trial whose directory holds a run with other settings (say, the sweep file's
    lr changed since): resuming would silently train on with the old ones and the report would
    mix them. Only ``episodes`` may differ, to extend a sweep."""
    if not (trial.run_dir / CONFIG_FILE).exists():
        return
    saved = load_run_config(trial.run_dir).to_dict()
    wanted = trial.config.to_dict()
    changed = [key for key in wanted if key != "episodes" and saved[key] != wanted[key]]
    if changed:
        differences = ", ".join(
            f"{key}: {saved[key]!r} there, {wanted[key]!r} now" for key in changed
        )
        raise ValueError(
            f"trial {trial.name}: {trial.run_dir} holds a run with other settings "
            f"({differences}); move it away or give the sweep another name or out_dir"
        )


def is_finished(trial: Trial) -> bool:
    check_saved_config(trial)
    path = trial.run_dir / CHECKPOINT_FILE
    return path.exists() and load_checkpoint(path).progress["batch"] >= trial.config.batches - 1


def repeated_divergence(trial: Trial) -> str | None:
    """The message of the divergence that resuming ``trial`` would only repeat, or ``None``.

    Training is deterministic, so a run resumed from the checkpoint it diverged from, with the
    same settings, diverges at the same batch again, unless the sweep now stops before that
    batch. Deleting the run's ``diverged.json`` retries it anyway, e.g. on another machine
    (as does ``hebbgym train --resume`` on a run that has a checkpoint).
    """
    record = divergence_record(trial.run_dir)
    if record is None or record["batch"] >= trial.config.batches or is_finished(trial):
        return None
    path = trial.run_dir / CHECKPOINT_FILE
    batch = int(load_checkpoint(path).progress["batch"]) if path.exists() else -1
    return record["message"] if record["checkpoint_batch"] == batch else None


def run_trial(trial: Trial) -> dict[str, Any]:
    """Train one trial to the end, resuming it if a checkpoint exists; finished: no-op."""
    if not is_finished(trial):
        has_checkpoint = (trial.run_dir / CHECKPOINT_FILE).exists()
        leftovers = any((trial.run_dir / name).exists() for name in RUN_FILES)
        train(
            trial.config,
            trial.run_dir,
            resume=has_checkpoint,
            overwrite=leftovers and not has_checkpoint,
            progress=False,
        )
    return trial_result(trial)


def trial_result(trial: Trial) -> dict[str, Any]:
    table = metrics_table(trial.run_dir)
    rewards = table["reward_mean"]
    tail = rewards[-max(1, int(len(rewards) * FINAL_FRACTION)) :] if len(rewards) else rewards
    return {
        "trial": trial.name,
        **{
            key: json.dumps(value) if isinstance(value, dict | list) else value
            for key, value in trial.params.items()
        },
        "env_id": trial.config.env_id,
        "episodes": int(table["episode"][-1]) if len(rewards) else 0,
        "final_reward": float(tail.mean()) if len(tail) else float("nan"),
        "seconds": float(table["seconds"][-1]) if len(rewards) else 0.0,
        "run_dir": str(trial.run_dir),
    }


def aggregate(sweep: SweepConfig) -> tuple[Path, Path | None]:
    """Write ``summary.csv`` (one row per trial) and ``curves.png`` (median/IQR over seeds of
    each combination of the other grid values)."""
    trials = [trial for trial in sweep.trials() if (trial.run_dir / CHECKPOINT_FILE).exists()]
    rows = [trial_result(trial) for trial in trials]
    sweep.directory.mkdir(parents=True, exist_ok=True)
    summary = sweep.directory / SUMMARY_FILE
    columns = list(rows[0]) if rows else ["trial"]
    with open(summary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    groups: dict[str, list[Path]] = {}
    for trial in trials:
        label = ", ".join(f"{k}={v}" for k, v in trial.params.items() if k != "seed") or "all"
        groups.setdefault(label, []).append(trial.run_dir)
    if not groups:
        return summary, None
    env_ids = sorted({trial.config.env_id for trial in trials})
    curves = plot_learning_curves(
        groups, sweep.directory / CURVES_FILE, f"{sweep.name}: {', '.join(env_ids)}"
    )
    return summary, curves


def _ray_trainable(params: dict[str, Any]) -> None:
    from ray import tune

    spec = params["trial"]
    trial = Trial(
        spec["name"], TrainConfig.from_dict(spec["config"]), Path(spec["run_dir"]), spec["params"]
    )
    result = run_trial(trial)
    tune.report({key: value for key, value in result.items() if isinstance(value, int | float)})


def _last_line(error: BaseException) -> str:
    """The message of a trial's error without Ray's traceback decoration."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _run_serially(trials: list[Trial]) -> dict[str, str]:
    """Train ``trials`` one after another in this process; the failed ones' last error lines."""
    failed: dict[str, str] = {}
    for trial in trials:
        try:
            run_trial(trial)
        except Exception as error:  # one failed trial must not stop the others, as under Ray
            failed[trial.run_dir.name] = _last_line(error)
    return failed


def _run_on_ray(
    sweep: SweepConfig, pending: list[Trial], address: str | None, cpus: int | None
) -> dict[str, str]:
    """Train ``pending`` on Ray Tune (a local instance, or the cluster at ``address``); the
    failed ones' last error lines."""
    try:
        import ray
        from ray import tune
    except ImportError as error:
        raise SystemExit(INSTALL_HINT) from error
    if address is None:
        ray.init(
            num_cpus=cpus,
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=False,
        )
    else:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    specs = [
        {
            "name": t.name,
            "config": t.config.to_dict(),
            "run_dir": str(t.run_dir),
            "params": t.params,
        }
        for t in pending
    ]
    tuner = tune.Tuner(
        tune.with_resources(_ray_trainable, {"cpu": sweep.cpus_per_trial}),
        param_space={"trial": tune.grid_search(specs)},
        run_config=tune.RunConfig(
            name=sweep.name,
            storage_path=str((sweep.directory / "ray").resolve()),
            verbose=0,
        ),
    )
    return {
        Path(result.config["trial"]["run_dir"]).name: _last_line(result.error)
        for result in tuner.fit()
        if result.error is not None
    }


def run_sweep(
    sweep: SweepConfig,
    address: str | None = None,
    cpus: int | None = None,
    serial: bool = False,
) -> dict[str, Any]:
    """Run every unfinished trial, then aggregate. Returns the summary rows and the files
    written; a trial that fails is listed under ``failed`` with its last line of error, keeps
    its last good checkpoint, and is retried when the sweep is run again; except a divergence,
    which would repeat (:func:`repeated_divergence`), and stays listed under ``failed``.

    The trials run on Ray Tune (a local instance of ``cpus`` CPUs, or the cluster at
    ``address``), or with ``serial`` one after another in this process, without Ray: on a
    machine shared with other jobs, where Ray's workers (15 niceness steps below this process)
    get only the CPU time the other jobs leave over, or where Ray is not installed."""
    if serial and (address is not None or cpus is not None):
        raise ValueError("a serial sweep runs in this process: it takes no address or cpus")
    trials = sweep.trials()
    pending = [
        trial for trial in trials if not is_finished(trial) and repeated_divergence(trial) is None
    ]
    failed: dict[str, str] = {}
    if pending:
        failed = _run_serially(pending) if serial else _run_on_ray(sweep, pending, address, cpus)
    for trial in trials:
        message = repeated_divergence(trial)
        if message is not None:  # worded alike whether it diverged now or in an earlier run
            failed[trial.run_dir.name] = f"training diverged at {message}"
    summary, curves = aggregate(sweep)
    finished = [trial_result(trial) for trial in trials]
    return {
        "trials": len(trials),
        "ran": len(pending),
        "failed": failed,
        "summary": str(summary),
        "curves": str(curves) if curves else None,
        "final_reward": {row["trial"]: row["final_reward"] for row in finished},
        "median_final_reward": float(np.median([row["final_reward"] for row in finished])),
    }
