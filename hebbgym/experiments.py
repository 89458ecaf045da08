"""Reproduce the papers' comparisons: sweeps of our agents, stable-baselines3 baselines on
the same env ids and step budget, reference policies, final evaluation, statistics, and
the Markdown + PNG section of the results report.

The recipes in ``scripts/reproduce_*.py`` call :func:`reproduce` with a sweep file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from hebbgym.agents.references import REFERENCE_POLICIES, evaluate_reference_scores
from hebbgym.envs.base import EpisodeScores, TaskRules, mean_accuracy
from hebbgym.sweep import SweepConfig, Trial, is_finished, run_sweep
from hebbgym.train.evaluate import (
    EVALUATION_SEED,
    evaluate_agent_scores,
    is_solved,
    score_fields,
    task_rules,
)
from hebbgym.train.loop import CHECKPOINT_FILE, load_agent
from hebbgym.train.plots import plot_learning_curves
from hebbgym.train.sb3_baselines import (
    EVALUATION_FILE,
    SB3_ALGORITHMS,
    episode_length,
    sb3_trained,
    train_sb3,
)


def rank_sum_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Mann-Whitney U (rank-sum) p-value, as the papers compared agents."""
    from scipy.stats import mannwhitneyu

    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def normalised_score(value: float, random_mean: float, oracle_mean: float) -> float:
    """``(value - random) / (oracle - random)``: 0 for the random policy, 1 for the oracle
    (NaN where the oracle does not beat random)."""
    if oracle_mean <= random_mean:
        return float("nan")
    return (value - random_mean) / (oracle_mean - random_mean)


def row_label(trial: Trial) -> str:
    """The report row of a trial: its agent, and its other grid values but the seed (so that a
    sweep over, say, a coefficient gets one row per value rather than one pooled row)."""
    others = [
        f"{key}={value}" for key, value in trial.params.items() if key not in ("agent", "seed")
    ]
    return ", ".join([trial.config.agent, *others])


def evaluate_trial(trial: Trial, episodes: int) -> dict[str, Any]:
    """Held-out returns (and the task's accuracy, where it has one) with sampled and greedy
    actions, each computed once, then cached in the trial's ``evaluation.json``; an older file
    without some of them is completed. A cache of another checkpoint (the run was extended or
    resumed since) or of another number of episodes is computed again."""
    path = trial.run_dir / EVALUATION_FILE
    result = json.loads(path.read_text()) if path.exists() else {}
    config, agent, progress = load_agent(trial.run_dir)
    if result and (
        result.get("episodes_trained") != int(progress["episodes"])
        or len(result["returns"]) != episodes
    ):
        result = {}
    wanted = ["returns", "greedy_returns"]
    if task_rules(config.env_id, config.env_kwargs).solved_accuracy is not None:
        wanted += ["accuracy", "greedy_accuracy"]
    modes = sorted({key.startswith("greedy_") for key in wanted if key not in result})
    if not modes:
        return result
    start = time.perf_counter()
    for greedy in modes:
        scores = evaluate_agent_scores(config, agent, episodes, EVALUATION_SEED, greedy)
        result.update(score_fields(scores, greedy))
    result.update(
        seconds=float(progress["seconds"]),
        evaluation_seconds=time.perf_counter() - start,
        episodes_trained=int(progress["episodes"]),
    )
    path.write_text(json.dumps(result))
    return result


def reproduce(
    sweep_file: str | Path,
    report_dir: str | Path = "docs/results",
    evaluation_episodes: int = 1000,
    sb3: tuple[str, ...] = SB3_ALGORITHMS,
    cpus: int | None = None,
    sb3_trained_only: bool = False,
    serial: bool = False,
    trained_only: bool = False,
) -> Path:
    """Run (or resume) a task's sweep and the ``sb3`` baselines (any of
    :data:`SB3_ALGORITHMS`; ``()`` for none), evaluate everything on the same episodes, and
    write ``report_dir/<name>.md`` with its learning-curve PNG. With ``sb3_trained_only`` the
    SB3 runs not yet trained to the budget are left as they are and listed on the page (an SB3
    baseline can take hours per seed on a small machine; the page can show the seeds done).
    ``serial`` trains the sweep's trials one by one in this process, without Ray
    (:func:`hebbgym.sweep.run_sweep`). With ``trained_only`` nothing is trained at all: the
    page shows every trial and SB3 run as far as it has got, each evaluated at its last
    checkpoint, and lists those short of the budget or not started (a sweep that takes a
    cluster or many sessions can be read on the way)."""
    unknown = sorted(set(sb3) - set(SB3_ALGORITHMS))
    if unknown:
        raise ValueError(f"unknown SB3 algorithm(s) {unknown}; known: {list(SB3_ALGORITHMS)}")
    sweep = SweepConfig.from_file(sweep_file)
    failed = {} if trained_only else run_sweep(sweep, cpus=cpus, serial=serial)["failed"]
    sb3_trained_only = sb3_trained_only or trained_only
    trials = sweep.trials()
    env_id = trials[0].config.env_id
    env_kwargs = trials[0].config.env_kwargs
    length = episode_length(env_id, env_kwargs)
    groups: dict[str, list[Path]] = {}
    evaluations: dict[str, list[dict[str, Any]]] = {}  # per report row, one per run
    expected: dict[str, int] = {}  # runs per row when every run is there
    unfinished: dict[str, list[str]] = {}  # with trained_only: per row, how far runs got
    not_started: dict[str, list[int]] = {}  # with trained_only: per row, seeds without a run
    for trial in trials:
        row = row_label(trial)
        expected[row] = expected.get(row, 0) + 1
        if not (trial.run_dir / CHECKPOINT_FILE).exists():
            if trained_only:
                not_started.setdefault(row, []).append(trial.config.seed)
            else:  # it failed before its first checkpoint
                failed.setdefault(trial.run_dir.name, "no checkpoint to evaluate")
            continue
        groups.setdefault(row, []).append(trial.run_dir)
        result = evaluate_trial(trial, evaluation_episodes)
        evaluations.setdefault(row, []).append(result)
        if trained_only and not is_finished(trial):
            budget = trial.config.batches * trial.config.batch_size
            unfinished.setdefault(row, []).append(
                f"seed {trial.config.seed} at {result['episodes_trained']:,} of {budget:,} "
                "episodes (evaluated there)"
            )
    if trained_only and not evaluations:
        raise ValueError(f"{sweep_file}: no trial has a checkpoint yet; nothing to report")
    for row, seeds_left in not_started.items():
        unfinished.setdefault(row, []).append(f"{_seeds(seeds_left)} not started")
    untrained: dict[str, list[int]] = {}
    seeds = sorted({trial.config.seed for trial in trials})
    if sb3:
        env_steps = trials[0].config.batches * trials[0].config.batch_size * length
        for algorithm in sb3:
            expected[algorithm] = len(seeds)
            for seed in seeds:
                run_dir = sweep.directory / f"{algorithm}-seed={seed}"
                if sb3_trained_only and not sb3_trained(
                    algorithm, env_id, env_steps, seed, run_dir, evaluation_episodes, env_kwargs
                ):
                    untrained.setdefault(algorithm, []).append(seed)
                    continue
                result = train_sb3(
                    algorithm, env_id, env_steps, seed, run_dir, evaluation_episodes, env_kwargs
                )
                groups.setdefault(algorithm, []).append(run_dir)
                evaluations.setdefault(algorithm, []).append(result)
    references = {
        name: evaluate_reference_scores(
            env_id, name, evaluation_episodes, EVALUATION_SEED, **env_kwargs
        )
        for name in REFERENCE_POLICIES[env_id]
    }
    report_dir = Path(report_dir)
    curves = plot_learning_curves(
        groups,
        report_dir / f"{sweep.name}.png",
        f"{env_id} (median, IQR over seeds)",
        references={name: float(references[name].returns.mean()) for name in ("random", "oracle")},
    )
    page = report_dir / f"{sweep.name}.md"
    text = _markdown(
        sweep,
        task_rules(env_id, env_kwargs),
        evaluations,
        references,
        curves.name,
        evaluation_episodes,
        expected,
    )
    if unfinished or untrained:
        text += "\nNot yet trained to the budget (the recipe resumes them):\n\n"
        text += "".join(f"- {row}: {'; '.join(notes)}\n" for row, notes in unfinished.items())
        text += "".join(f"- {algorithm}: {_seeds(left)}\n" for algorithm, left in untrained.items())
    if failed:
        text += "\nRuns that stopped early (evaluated at their last good checkpoint, if any):\n\n"
        here = f"{Path.cwd()}/"  # the report names run directories relative to the repository
        text += "".join(
            f"- `{name}`: {message.replace(here, '')}\n" for name, message in sorted(failed.items())
        )
    page.write_text(text)
    return page


def _seeds(seeds: list[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def _mean_or_nan(result: dict[str, Any], key: str) -> float:
    return float(np.mean(result[key])) if key in result else float("nan")


def _solved_cell(rules: TaskRules, runs: list[dict[str, Any]], references: dict[str, float]) -> str:
    """How many of a row's runs meet the task's solved criterion, sampled · greedy."""

    def count(prefix: str) -> str:
        if any(f"{prefix}returns" not in run for run in runs):  # an older evaluation
            return "—"
        verdicts = [
            is_solved(
                rules,
                float(np.mean(run[f"{prefix}returns"])),
                mean_accuracy(run.get(f"{prefix}accuracy")),
                references,
            )
            for run in runs
        ]
        if None in verdicts:  # an evaluation from before accuracies, or nothing to score
            return "—"
        return f"{sum(verdicts)}/{len(verdicts)}"

    return f"{count('')} · {count('greedy_')}"


def _markdown(
    sweep: SweepConfig,
    rules: TaskRules,
    evaluations: dict[str, list[dict[str, Any]]],
    references: dict[str, EpisodeScores],
    curves: str,
    evaluation_episodes: int,
    expected: dict[str, int],
) -> str:
    reference_means = {name: float(scores.returns.mean()) for name, scores in references.items()}

    def score(value: float) -> float:
        return normalised_score(value, reference_means["random"], reference_means["oracle"])

    def p_value(agent: str, table: dict[str, list[float]]) -> str:
        partial = len(table[agent]) < expected[agent]  # a test of the runs done so far: none
        if agent == "modulated" or "modulated" not in table or partial:
            return "—"
        if np.isnan(table[agent]).any():  # an older evaluation without greedy returns
            return "—"
        return f"{rank_sum_p(np.array(table['modulated']), np.array(table[agent])):.3g}"

    def per_run(key: str) -> dict[str, list[float]]:
        return {row: [_mean_or_nan(run, key) for run in runs] for row, runs in evaluations.items()}

    def accuracy_per_run(key: str) -> dict[str, list[float]]:
        return {
            row: [_nan_if_none(mean_accuracy(run.get(key))) for run in runs]
            for row, runs in evaluations.items()
        }

    finals, greedy, seconds = per_run("returns"), per_run("greedy_returns"), per_run("seconds")
    by_accuracy = rules.solved_accuracy is not None
    judged = by_accuracy or rules.solved_reference is not None
    trials = sweep.trials()
    env_id, env_kwargs = trials[0].config.env_id, trials[0].config.env_kwargs
    episodes = trials[0].config.batches * trials[0].config.batch_size
    header = (
        "| agent | mean reward, sampled (median over seeds) | IQR | normalised score "
        "| p (rank-sum vs modulated) | mean reward, greedy (median) | p, greedy "
        "| train time / run |"
    )
    if by_accuracy:
        header += " accuracy, sampled · greedy (median) |"
    if judged:
        header += " runs solved, sampled · greedy |"
    lines = [
        f"## {env_id}" + (f" ({env_kwargs})" if env_kwargs else ""),
        "",
        f"Budget per run: {episodes} training episodes; "
        f"{len({t.config.seed for t in trials})} seeds per agent; final evaluation on the same "
        f"{evaluation_episodes} held-out episodes for every run (weights frozen, plasticity on), "
        "with actions sampled from the policy and with the most likely action (greedy).",
        "",
    ]
    if judged:
        lines += [_criterion_sentence(rules), ""]
    lines += [f"![learning curves]({curves})", "", header, "|---" * (header.count("|") - 1) + "|"]
    accuracy = accuracy_per_run("accuracy")
    greedy_accuracy = accuracy_per_run("greedy_accuracy")
    for agent, values in finals.items():
        low, median, high = np.percentile(values, [25, 50, 75])
        complete = len(values) == expected[agent]
        label = agent if complete else f"{agent} ({len(values)} of {expected[agent]} runs)"
        line = (
            f"| {label} | {median:.2f} | {low:.2f}–{high:.2f} | {score(median):.2f} "
            f"| {p_value(agent, finals)} | {np.median(greedy[agent]):.2f} "
            f"| {p_value(agent, greedy)} | {np.median(seconds[agent]):.0f} s |"
        )
        if by_accuracy:
            line += (
                f" {_percent(np.median(accuracy[agent]))} · "
                f"{_percent(np.median(greedy_accuracy[agent]))} |"
            )
        if judged:
            line += f" {_solved_cell(rules, evaluations[agent], reference_means)} |"
        lines.append(line)
    for name, scores in references.items():
        value = reference_means[name]
        line = f"| reference: {name} | {value:.2f} | — | {score(value):.2f} | — | — | — | — |"
        if by_accuracy:
            line += f" {_percent(_nan_if_none(mean_accuracy(scores.accuracy)))} |"
        if judged:
            line += " — |"
        lines.append(line)
    lines.append("")
    return "\n".join(lines)


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def _percent(value: float) -> str:
    return "—" if np.isnan(value) else f"{100 * value:.1f} %"


def _criterion_sentence(rules: TaskRules) -> str:
    if rules.solved_accuracy is not None:
        return (
            f"A run counts as solved when, on the held-out episodes, its mean accuracy "
            f"({rules.accuracy_scope}) is at least {100 * rules.solved_accuracy:.0f} %."
        )
    return (
        "A run counts as solved when its mean held-out reward is above that of the "
        f"reference `{rules.solved_reference}`."
    )


def main(sweep_file: str) -> None:
    """Command line of the ``scripts/reproduce_*.py`` recipes."""
    import argparse

    parser = argparse.ArgumentParser(description=f"reproduce {sweep_file}")
    parser.add_argument("--no-sb3", action="store_true", help="skip the stable-baselines3 runs")
    parser.add_argument(
        "--sb3",
        nargs="+",
        default=list(SB3_ALGORITHMS),
        choices=SB3_ALGORITHMS,
        help="which stable-baselines3 baselines to run (default: all)",
    )
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray instance")
    parser.add_argument(
        "--sb3-trained-only",
        action="store_true",
        help="leave SB3 runs not yet trained to the budget as they are, listed on the page",
    )
    parser.add_argument(
        "--serial",
        action="store_true",
        help="train the sweep's trials one by one in this process, without Ray",
    )
    parser.add_argument(
        "--trained-only",
        action="store_true",
        help="train nothing: the page shows every run as far as it has got",
    )
    parser.add_argument("--episodes", type=int, default=1000, help="evaluation episodes per seed")
    parser.add_argument("--report-dir", default="docs/results")
    args = parser.parse_args()
    algorithms = () if args.no_sb3 else tuple(args.sb3)
    page = reproduce(
        sweep_file,
        args.report_dir,
        args.episodes,
        sb3=algorithms,
        cpus=args.cpus,
        sb3_trained_only=args.sb3_trained_only,
        serial=args.serial,
        trained_only=args.trained_only,
    )
    print(f"wrote {page}")
