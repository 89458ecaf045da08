"""The demo script's training step: a second ``make demo`` loads the finished run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hebbgym.train.config import TrainConfig
from hebbgym.train.loop import CHECKPOINT_FILE

SCRIPT = Path(__file__).parents[1] / "scripts" / "demo.py"


def _demo_module():
    spec = importlib.util.spec_from_file_location("demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_finished_run_is_loaded_not_trained_again(tmp_path: Path, capsys) -> None:
    demo = _demo_module()
    config = TrainConfig(  # batch_size left unset, as in the demo: the task preset fills it in
        env_id="Hebb-Conditioning-v0",
        episodes=60,
        hidden_size=8,
        env_kwargs={"episode_length": 10, "learning_period": 2},
        threads=1,
    )
    assert config.batch_size is None
    run_dir = tmp_path / "run"
    demo.train_or_load(config, run_dir)
    stamp = (run_dir / CHECKPOINT_FILE).stat().st_mtime_ns
    capsys.readouterr()
    demo.train_or_load(config, run_dir)
    assert "loading the finished run" in capsys.readouterr().out
    assert (run_dir / CHECKPOINT_FILE).stat().st_mtime_ns == stamp
