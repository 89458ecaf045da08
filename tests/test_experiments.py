"""The results-report recipe end to end on a tiny sweep: trials, an SB3 baseline at the same
step budget, held-out evaluation, statistics and the Markdown section."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from hebbgym.agents.references import evaluate_reference
from hebbgym.experiments import EVALUATION_FILE, rank_sum_p, reproduce
from hebbgym.pretrained import export_best_of_sweep
from hebbgym.sweep import SweepConfig, run_trial
from hebbgym.train.checkpoint import load_checkpoint
from hebbgym.train.evaluate import EVALUATION_SEED
from hebbgym.train.sb3_baselines import sb3_trained, train_sb3
from tests.tiny_sweep import write_tiny_sweep


def test_rank_sum_p_values() -> None:
    # Two fully separated samples of 5: 2 of the 252 orderings are as extreme.
    assert rank_sum_p(np.arange(5.0), np.arange(5.0) + 10) == pytest.approx(2 / 252)
    assert rank_sum_p(np.ones(5), np.ones(5)) == pytest.approx(1.0)
    assert np.isnan(rank_sum_p(np.array([]), np.ones(3)))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("experiments")
    sweep_file = write_tiny_sweep(root / "tiny.yaml", ["modulated", "lstm"], [0, 1], episodes=16)
    page = reproduce(sweep_file, root / "report", 40, sb3=("sb3-a2c",), cpus=2)
    return sweep_file, page


def test_report_has_every_agent_the_baseline_and_the_references(report) -> None:
    sweep_file, page = report
    text = page.read_text()
    sweep = SweepConfig.from_file(sweep_file)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert {"modulated", "lstm", "sb3-a2c", "reference: random", "reference: oracle"} <= set(rows)
    assert "(tiny.png)" in text and (page.parent / "tiny.png").stat().st_size > 10_000
    # Every run is evaluated on the same 40 held-out episodes; the table shows their median.
    means, greedy = [], []
    for trial in sweep.trials():
        result = json.loads((trial.run_dir / EVALUATION_FILE).read_text())
        assert len(result["returns"]) == len(result["greedy_returns"]) == 40
        if trial.config.agent == "lstm":
            means.append(np.mean(result["returns"]))
            greedy.append(np.mean(result["greedy_returns"]))
    assert rows["lstm"].startswith(f"| lstm | {np.median(means):.2f} |")
    assert f"| {np.median(greedy):.2f} |" in rows["lstm"]
    sb3 = json.loads((sweep.directory / "sb3-a2c-seed=0" / EVALUATION_FILE).read_text())
    assert sb3["env_steps"] == 4 * 4 * 10  # the trials' budget: 4 batches of 4 10-step episodes
    p = float(rows["lstm"].split("|")[5])
    assert 0.0 < p <= 1.0
    # The bandit is solved by a run whose reward reaches Thompson sampling with forgetting.
    bar = evaluate_reference(
        "Hebb-ReversalBandit-v0", "thompson-forgetting", 40, EVALUATION_SEED, episode_length=10
    ).mean()
    assert "reference `thompson-forgetting`" in text
    solved = sum(m >= bar for m in means), sum(g >= bar for g in greedy)
    assert rows["lstm"].endswith(f"| {solved[0]}/2 · {solved[1]}/2 |")


def test_rerun_reuses_every_finished_evaluation(report) -> None:
    sweep_file, page = report
    sweep = SweepConfig.from_file(sweep_file)
    files = [t.run_dir / EVALUATION_FILE for t in sweep.trials()]
    files.append(sweep.directory / "sb3-a2c-seed=1" / EVALUATION_FILE)
    stamps = [f.stat().st_mtime_ns for f in files]
    text = page.read_text()
    reproduce(sweep_file, page.parent, 40, sb3=("sb3-a2c",), cpus=2)
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert page.read_text() == text
    # A file written before greedy evaluation existed is completed, its sampled returns kept.
    old = json.loads(files[0].read_text())
    files[0].write_text(json.dumps({k: v for k, v in old.items() if k != "greedy_returns"}))
    reproduce(sweep_file, page.parent, 40, sb3=("sb3-a2c",), cpus=2)
    completed = json.loads(files[0].read_text())
    assert completed["returns"] == old["returns"]
    assert completed["greedy_returns"] == old["greedy_returns"]
    assert page.read_text() == text


def test_best_modulated_trial_is_exported_with_the_lstm_median(report, tmp_path) -> None:
    sweep_file, _ = report
    sweep = SweepConfig.from_file(sweep_file)
    target = export_best_of_sweep(sweep_file, tmp_path)
    info = json.loads((target / "config.json").read_text())
    assert info["agent"] == "modulated" and target.name == "Hebb-ReversalBandit-v0"
    means = {
        str(t.run_dir): np.mean(json.loads((t.run_dir / EVALUATION_FILE).read_text())["returns"])
        for t in sweep.trials()
    }
    progress = load_checkpoint(target / "checkpoint.safetensors").progress
    best = max(v for k, v in means.items() if "modulated" in k)
    assert progress["evaluation"]["mean_reward"] == pytest.approx(best)
    lstm = [v for k, v in means.items() if "lstm" in k]
    assert progress["baseline"]["median_mean_reward"] == pytest.approx(np.median(lstm))
    assert progress["baseline"]["seed_mean_rewards"] == pytest.approx(sorted(lstm))
    assert "sweep" not in progress["baseline"]


def test_an_ablation_sweep_is_compared_with_the_lstm_of_another(report, tmp_path) -> None:
    """A sweep of the modulated agent alone (say, with the M(t)^2 penalty) has no LSTM of its
    own: its best trial is exported against the LSTM trials of the sweep it varies."""
    lstm_sweep, _ = report
    ablation = write_tiny_sweep(
        tmp_path / "ablation.yaml", ["modulated"], [0, 1], episodes=16, modulation_coef=0.01
    )
    reproduce(ablation, tmp_path / "report", 40, sb3=(), serial=True)
    with pytest.raises(ValueError, match="no lstm trials"):
        export_best_of_sweep(ablation, tmp_path / "alone")
    target = export_best_of_sweep(ablation, tmp_path / "shipped", baseline_sweep_file=lstm_sweep)
    progress = load_checkpoint(target / "checkpoint.safetensors").progress
    lstm = [
        np.mean(json.loads((t.run_dir / EVALUATION_FILE).read_text())["returns"])
        for t in SweepConfig.from_file(lstm_sweep).trials()
        if t.config.agent == "lstm"
    ]
    assert progress["baseline"]["median_mean_reward"] == pytest.approx(np.median(lstm))
    assert progress["baseline"]["sweep"] == str(lstm_sweep)
    assert "ablation" in progress["source"]
    assert json.loads((target / "config.json").read_text())["modulation_coef"] == 0.01


def test_export_refuses_a_sweep_not_yet_evaluated(tmp_path) -> None:
    sweep_file = write_tiny_sweep(tmp_path / "raw.yaml", ["modulated", "lstm"], [0], episodes=8)
    with pytest.raises(FileNotFoundError, match="evaluate the sweep first"):
        export_best_of_sweep(sweep_file, tmp_path / "shipped")


def test_unknown_baseline_is_refused(report) -> None:
    with pytest.raises(ValueError, match="unknown SB3 algorithm"):
        reproduce(report[0], report[1].parent, 40, sb3=("sb3-dqn",))


def test_an_evaluation_of_another_checkpoint_or_size_is_computed_again(tmp_path: Path) -> None:
    def trained(episodes: int) -> Path:
        sweep_file = write_tiny_sweep(tmp_path / "grow.yaml", ["modulated"], [0], episodes=episodes)
        run_trial(SweepConfig.from_file(sweep_file).trials()[0])  # so reproduce needs no Ray
        return sweep_file

    sweep_file = trained(8)
    cache = SweepConfig.from_file(sweep_file).trials()[0].run_dir / EVALUATION_FILE
    reproduce(sweep_file, tmp_path / "report", 20, sb3=())
    assert json.loads(cache.read_text())["episodes_trained"] == 8
    sweep_file = trained(16)  # the run is extended: its old evaluation no longer holds
    reproduce(sweep_file, tmp_path / "report", 20, sb3=())
    result = json.loads(cache.read_text())
    assert result["episodes_trained"] == 16 and len(result["greedy_returns"]) == 20
    reproduce(sweep_file, tmp_path / "report", 12, sb3=())
    assert len(json.loads(cache.read_text())["returns"]) == 12


def test_with_sb3_trained_only_the_page_shows_the_seeds_done_and_lists_the_rest(
    tmp_path: Path,
) -> None:
    sweep_file = write_tiny_sweep(tmp_path / "part.yaml", ["modulated"], [0, 1, 2], episodes=8)
    sweep = SweepConfig.from_file(sweep_file)
    budget = 2 * 4 * 10  # 2 batches of 4 10-step episodes
    done, partial = sweep.directory / "sb3-a2c-seed=0", sweep.directory / "sb3-a2c-seed=1"
    train_sb3("sb3-a2c", "Hebb-ReversalBandit-v0", budget, 0, done, 20, {"episode_length": 10})
    train_sb3("sb3-a2c", "Hebb-ReversalBandit-v0", 40, 1, partial, 20, {"episode_length": 10})
    kwargs = {"episode_length": 10}
    assert not sb3_trained("sb3-a2c", "Hebb-ReversalBandit-v0", budget, 1, partial, 20, kwargs)
    assert sb3_trained("sb3-a2c", "Hebb-ReversalBandit-v0", budget, 0, done, 20, kwargs)
    # Trained but evaluated on another number of episodes: its model evaluates without training.
    assert sb3_trained("sb3-a2c", "Hebb-ReversalBandit-v0", budget, 0, done, 25, kwargs)
    with pytest.raises(ValueError, match="other settings"):
        sb3_trained("sb3-a2c", "Hebb-ReversalBandit-v0", budget, 1, done, 20, kwargs)
    before = {path.name: path.stat().st_mtime_ns for path in partial.iterdir()}

    page = reproduce(
        sweep_file, tmp_path / "report", 20, sb3=("sb3-a2c",), sb3_trained_only=True, serial=True
    )
    text = page.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| sb3-a2c"))
    seed0 = json.loads((done / EVALUATION_FILE).read_text())
    assert row.startswith(f"| sb3-a2c (1 of 3 runs) | {np.mean(seed0['returns']):.2f} |")
    assert row.split("|")[5].strip() == "—"  # no p-value from one run
    assert "Not yet trained to the budget (the recipe resumes them):" in text
    assert "\n- sb3-a2c: seeds 1, 2\n" in text
    assert {path.name: path.stat().st_mtime_ns for path in partial.iterdir()} == before
    assert not (sweep.directory / "sb3-a2c-seed=2").exists()


def test_the_solved_column_counts_runs_over_the_bar_and_withholds_a_partial_verdict() -> None:
    from hebbgym.experiments import _solved_cell
    from hebbgym.train.evaluate import task_rules

    cue = task_rules("Hebb-CueReward-v0", {})

    def run(sampled: float, greedy: float | None) -> dict:
        result = {"returns": [0.0], "greedy_returns": [0.0], "accuracy": [sampled, np.nan]}
        if greedy is not None:
            result["greedy_accuracy"] = [greedy]
        return result

    runs = [run(0.95, 0.99), run(0.90, 0.80), run(0.85, 0.91)]
    assert _solved_cell(cue, runs, {}) == "2/3 · 2/3"  # 90 % is solved, NaN episodes left out
    assert _solved_cell(cue, [*runs, run(0.99, None)], {}) == "3/4 · —"  # an older file
    assert _solved_cell(cue, [run(np.nan, 0.9)], {}) == "— · 1/1"  # nothing scored: no verdict
    bandit = task_rules("Hebb-ReversalBandit-v0", {})
    bar = {"thompson-forgetting": 68.0}
    runs = [{"returns": [70.0, 67.0], "greedy_returns": [68.0]}, {"returns": [67.0]}]
    assert _solved_cell(bandit, runs, bar) == "1/2 · —"  # 68.5 over the bar; 68.0 is not
    runs[1]["greedy_returns"] = [75.0]
    assert _solved_cell(bandit, runs, bar) == "1/2 · 1/2"


def test_an_accuracy_task_reports_accuracy_and_completes_older_evaluations(
    tmp_path: Path,
) -> None:
    kwargs = {"episode_length": 12, "learning_period": 4}
    sweep_file = write_tiny_sweep(
        tmp_path / "cond.yaml",
        ["modulated"],
        [0, 1],
        episodes=8,
        env_id="Hebb-Conditioning-v0",
        env_kwargs=kwargs,
    )
    sweep = SweepConfig.from_file(sweep_file)
    sb3_dir = sweep.directory / "sb3-a2c-seed=0"
    train_sb3("sb3-a2c", "Hebb-Conditioning-v0", 2 * 4 * 12, 0, sb3_dir, 30, kwargs)
    page = reproduce(sweep_file, tmp_path / "report", 30, sb3=("sb3-a2c",), serial=True)
    files = [t.run_dir / EVALUATION_FILE for t in sweep.trials()] + [sb3_dir / EVALUATION_FILE]
    results = [json.loads(f.read_text()) for f in files]
    for result in results:
        # Every rewarded step pays +1 or -1: accuracy and reward must tell the same story.
        expected = (np.array(result["greedy_returns"]) / 8 + 1) / 2
        np.testing.assert_allclose(result["greedy_accuracy"], expected)
        assert len(result["accuracy"]) == 30
    text = page.read_text()
    assert "mean accuracy (right responses after the learning period) is at least 95 %" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    sampled = np.median([np.mean(r["accuracy"]) for r in results[:2]])
    greedy = np.median([np.mean(r["greedy_accuracy"]) for r in results[:2]])
    solved = sum(np.mean(r["greedy_accuracy"]) >= 0.95 for r in results[:2])
    assert f"| {100 * sampled:.1f} % · {100 * greedy:.1f} % | " in rows["modulated"]
    assert rows["modulated"].endswith(f"· {solved}/2 |")
    assert "| reference: oracle | 80.00" not in text  # 8 rewarded steps here, not 80
    assert rows["reference: oracle"].endswith("| 100.0 % | — |")

    # Evaluations written before accuracy existed are completed; nothing is trained again.
    model_stamps = {p.name: p.stat().st_mtime_ns for p in sb3_dir.iterdir() if p.suffix == ".zip"}
    for path, result in zip(files, results, strict=True):
        older = {k: v for k, v in result.items() if not k.endswith("accuracy")}
        path.write_text(json.dumps(older))
    assert (
        page.read_text()
        == reproduce(sweep_file, tmp_path / "report", 30, sb3=("sb3-a2c",), serial=True).read_text()
    )
    scores = ("returns", "greedy_returns", "accuracy", "greedy_accuracy")
    for path, result in zip(files, results, strict=True):
        completed = json.loads(path.read_text())
        assert {k: completed[k] for k in scores} == {k: result[k] for k in scores}
    assert {p.name: p.stat().st_mtime_ns for p in sb3_dir.iterdir() if p.suffix == ".zip"} == (
        model_stamps
    )


def test_a_grid_over_another_field_gets_one_row_per_value(tmp_path: Path) -> None:
    import yaml

    sweep_file = write_tiny_sweep(tmp_path / "coef.yaml", ["modulated"], [0, 1], episodes=8)
    config = yaml.safe_load(sweep_file.read_text())
    config["grid"]["modulation_coef"] = [0.0, 0.5]
    sweep_file.write_text(yaml.safe_dump(config, sort_keys=False))
    sweep = SweepConfig.from_file(sweep_file)
    text = reproduce(sweep_file, tmp_path / "report", 10, sb3=(), serial=True).read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    for coef in (0.0, 0.5):
        means = [
            np.mean(json.loads((t.run_dir / EVALUATION_FILE).read_text())["returns"])
            for t in sweep.trials()
            if t.config.modulation_coef == coef
        ]
        assert len(means) == 2
        label = f"modulated, modulation_coef={coef}"
        assert rows[label].startswith(f"| {label} | {np.median(means):.2f} |")


def test_with_trained_only_nothing_trains_and_the_page_says_how_far_each_run_got(
    tmp_path: Path,
) -> None:
    sweep_file = write_tiny_sweep(tmp_path / "far.yaml", ["modulated", "lstm"], [0, 1], episodes=16)
    sweep = SweepConfig.from_file(sweep_file)
    with pytest.raises(ValueError, match="no trial has a checkpoint yet"):
        reproduce(sweep_file, tmp_path / "report", 20, sb3=("sb3-a2c",), trained_only=True)
    finished, short = sweep.trials()[0], sweep.trials()[1]  # modulated seeds 0 and 1
    run_trial(finished)
    # The same run stopped halfway: a resumable checkpoint at 8 of its 16 episodes.
    run_trial(dataclasses.replace(short, config=dataclasses.replace(short.config, episodes=8)))

    def files_of_the_two_runs() -> dict[str, list[tuple[str, int]]]:
        return {
            t.run_dir.name: sorted(
                (p.name, p.stat().st_mtime_ns)
                for p in t.run_dir.iterdir()
                if p.name != EVALUATION_FILE
            )
            for t in (finished, short)
        }

    before = files_of_the_two_runs()

    page = reproduce(sweep_file, tmp_path / "report", 20, sb3=("sb3-a2c",), trained_only=True)
    text = page.read_text()
    rows = {line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")}
    assert "modulated" in rows and not any(row.startswith(("lstm", "sb3")) for row in rows)
    assert "- modulated: seed 1 at 8 of 16 episodes (evaluated there)\n" in text
    assert "- lstm: seeds 0, 1 not started\n" in text
    assert "- sb3-a2c: seeds 0, 1\n" in text
    for trial in sweep.trials()[2:]:
        assert not trial.run_dir.exists()  # nothing was trained
    short_result = json.loads((short.run_dir / EVALUATION_FILE).read_text())
    assert short_result["episodes_trained"] == 8
    assert files_of_the_two_runs() == before  # nothing written but the evaluations
