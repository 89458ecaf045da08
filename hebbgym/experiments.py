"""Reproduce the papers' comparisons: sweeps of our agents, stable-baselines3 baselines on
the same env ids and step budget, reference policies, final evaluation, statistics, and
the Markdown + PNG section of the results report.

The recipes in ``scripts/reproduce_*.py`` call :func:`reproduce` with a sweep file.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from hebbgym.agents.references import REFERENCE_POLICIES, evaluate_reference
from hebbgym.sweep import SweepConfig, Trial, run_sweep
from hebbgym.train.evaluate import evaluate_agent
from hebbgym.train.loop import METRICS_COLUMNS, load_agent
from hebbgym.train.plots import plot_learning_curves

SB3_ALGORITHMS = ("sb3-a2c", "sb3-recurrent-ppo")
EVALUATION_FILE = "evaluation.json"


def episode_length(env_id: str, env_kwargs: dict[str, Any]) -> int:
    """Steps per episode of a task (all our tasks have a fixed length)."""
    return gym.make(env_id, **env_kwargs).unwrapped.rules.episode_length


def _sb3_model(algorithm: str, env_id: str, seed: int, env_kwargs: dict[str, Any]) -> Any:
    """An SB3 model with its library defaults, except RecurrentPPO's rollout.

    RecurrentPPO's default (8 envs x 128 steps, minibatches of 128, 10 epochs) trains at about
    150 env-steps/s on one core here, 22 hours for the maze's budget. Like our A2C it collects
    one whole episode in each of 30 envs per update and takes 4 epochs of two minibatches,
    which runs about 15 times faster (2.2k env-steps/s on the conditioning task).
    """
    from stable_baselines3.common.env_util import make_vec_env

    if algorithm == "sb3-a2c":
        from stable_baselines3 import A2C

        env = make_vec_env(env_id, n_envs=8, seed=seed, env_kwargs=env_kwargs)
        return A2C("MlpPolicy", env, seed=seed, device="cpu", verbose=0)
    if algorithm == "sb3-recurrent-ppo":
        from sb3_contrib import RecurrentPPO

        envs, length = 30, episode_length(env_id, env_kwargs)
        env = make_vec_env(env_id, n_envs=envs, seed=seed, env_kwargs=env_kwargs)
        return RecurrentPPO(
            "MlpLstmPolicy",
            env,
            n_steps=length,
            batch_size=envs * length // 2,
            n_epochs=4,
            seed=seed,
            device="cpu",
            verbose=0,
        )
    raise ValueError(f"unknown SB3 algorithm {algorithm!r}; known: {list(SB3_ALGORITHMS)}")


def train_sb3(
    algorithm: str,
    env_id: str,
    env_steps: int,
    seed: int,
    run_dir: Path,
    evaluation_episodes: int,
    env_kwargs: dict[str, Any] | None = None,
    batch_episodes: int = 30,
) -> dict[str, Any]:
    """Train an SB3 agent for ``env_steps`` steps, log its training returns as a
    ``metrics.csv`` comparable with ours, and evaluate it on the evaluation episodes, with
    sampled and with greedy (deterministic) actions."""
    import torch

    env_kwargs = env_kwargs or {}
    evaluation = run_dir / EVALUATION_FILE
    if evaluation.exists():  # reused only for the same budget and evaluation episodes
        cached = json.loads(evaluation.read_text())
        if cached["env_steps"] == env_steps and len(cached["returns"]) == evaluation_episodes:
            return cached
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    start = time.perf_counter()
    model = _sb3_model(algorithm, env_id, seed, env_kwargs)
    model.learn(total_timesteps=env_steps)
    seconds = time.perf_counter() - start
    episode_returns = _monitor_returns(model.get_env())
    _write_sb3_metrics(run_dir, episode_returns, batch_episodes, seconds)
    result = {"seconds": seconds, "env_steps": env_steps}
    for key, greedy in (("returns", False), ("greedy_returns", True)):
        returns = evaluate_sb3(model, env_id, evaluation_episodes, 10_000, env_kwargs, greedy)
        result[key] = returns.tolist()
    evaluation.write_text(json.dumps(result))
    return result


def _monitor_returns(env: Any) -> np.ndarray:
    """Training episode returns of all sub-envs, in the order the episodes ended."""
    rewards = env.env_method("get_episode_rewards")
    times = env.env_method("get_episode_times")
    pairs = sorted(
        (t, r) for rs, ts in zip(rewards, times, strict=True) for r, t in zip(rs, ts, strict=True)
    )
    return np.array([r for _, r in pairs], dtype=np.float64)


def _write_sb3_metrics(run_dir: Path, returns: np.ndarray, batch: int, seconds: float) -> None:
    rows = []
    for index in range(len(returns) // batch):
        chunk = returns[index * batch : (index + 1) * batch]
        row = dict.fromkeys(METRICS_COLUMNS, float("nan"))
        row.update(
            episode=(index + 1) * batch,
            batch=index,
            reward_mean=float(chunk.mean()),
            reward_std=float(chunk.std()),
            seconds=seconds * (index + 1) * batch / max(len(returns), 1),
        )
        rows.append(row)
    with open(run_dir / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRICS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def evaluate_sb3(
    model: Any,
    env_id: str,
    episodes: int,
    seed: int,
    env_kwargs: dict[str, Any],
    greedy: bool = False,
    batch: int = 100,
) -> np.ndarray:
    """SB3 agent returns on the same episodes (seeds) as :func:`evaluate_agent` uses."""
    batch = min(batch, episodes)
    env = gym.make_vec(
        env_id, num_envs=batch, vectorization_mode="vector_entry_point", **env_kwargs
    )
    returns = []
    for index in range(-(-episodes // batch)):
        obs, _ = env.reset(seed=seed + index * batch)
        states, starts = None, np.ones(batch, dtype=bool)
        total = np.zeros(batch)
        for _ in range(env.unwrapped.batch.length):
            actions, states = model.predict(
                obs, state=states, episode_start=starts, deterministic=greedy
            )
            obs, reward, _, _, _ = env.step(actions)
            starts[:] = False
            total += reward
        returns.append(total)
    env.close()
    return np.concatenate(returns)[:episodes]


def rank_sum_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Mann-Whitney U (rank-sum) p-value, as the papers compared agents."""
    from scipy.stats import mannwhitneyu

    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def _evaluate_trial(trial: Trial, episodes: int) -> dict[str, Any]:
    """Held-out returns with sampled and greedy actions (each computed once, then cached in
    the trial's ``evaluation.json``; an older file without greedy returns is completed). A
    cache of another checkpoint (the run was extended or resumed since) or of another number
    of episodes is computed again."""
    path = trial.run_dir / EVALUATION_FILE
    result = json.loads(path.read_text()) if path.exists() else {}
    config, agent, progress = load_agent(trial.run_dir)
    if result and (
        result.get("episodes_trained") != int(progress["episodes"])
        or len(result["returns"]) != episodes
    ):
        result = {}
    missing = [key for key in ("returns", "greedy_returns") if key not in result]
    if not missing:
        return result
    start = time.perf_counter()
    for key in missing:
        returns = evaluate_agent(config, agent, episodes, 10_000, greedy=key == "greedy_returns")
        result[key] = returns.tolist()
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
) -> Path:
    """Run (or resume) a task's sweep and the ``sb3`` baselines (any of
    :data:`SB3_ALGORITHMS`; ``()`` for none), evaluate everything on the same episodes, and
    write ``report_dir/<name>.md`` with its learning-curve PNG."""
    unknown = sorted(set(sb3) - set(SB3_ALGORITHMS))
    if unknown:
        raise ValueError(f"unknown SB3 algorithm(s) {unknown}; known: {list(SB3_ALGORITHMS)}")
    sweep = SweepConfig.from_file(sweep_file)
    failed = run_sweep(sweep, cpus=cpus)["failed"]
    trials = sweep.trials()
    env_id = trials[0].config.env_id
    env_kwargs = trials[0].config.env_kwargs
    length = episode_length(env_id, env_kwargs)
    groups: dict[str, list[Path]] = {}
    finals: dict[str, list[float]] = {}
    greedy: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    for trial in trials:
        result = _evaluate_trial(trial, evaluation_episodes)
        groups.setdefault(trial.config.agent, []).append(trial.run_dir)
        finals.setdefault(trial.config.agent, []).append(float(np.mean(result["returns"])))
        greedy.setdefault(trial.config.agent, []).append(_mean_or_nan(result, "greedy_returns"))
        seconds.setdefault(trial.config.agent, []).append(result["seconds"])
    if sb3:
        seeds = sorted({trial.config.seed for trial in trials})
        env_steps = trials[0].config.batches * trials[0].config.batch_size * length
        for algorithm in sb3:
            for seed in seeds:
                run_dir = sweep.directory / f"{algorithm}-seed={seed}"
                result = train_sb3(
                    algorithm, env_id, env_steps, seed, run_dir, evaluation_episodes, env_kwargs
                )
                groups.setdefault(algorithm, []).append(run_dir)
                finals.setdefault(algorithm, []).append(float(np.mean(result["returns"])))
                greedy.setdefault(algorithm, []).append(_mean_or_nan(result, "greedy_returns"))
                seconds.setdefault(algorithm, []).append(result["seconds"])
    references = {
        name: float(
            evaluate_reference(env_id, name, evaluation_episodes, 10_000, **env_kwargs).mean()
        )
        for name in REFERENCE_POLICIES[env_id]
    }
    report_dir = Path(report_dir)
    curves = plot_learning_curves(
        groups,
        report_dir / f"{sweep.name}.png",
        f"{env_id} (median, IQR over seeds)",
        references={k: v for k, v in references.items() if k in ("random", "oracle")},
    )
    page = report_dir / f"{sweep.name}.md"
    text = _markdown(
        sweep,
        env_id,
        env_kwargs,
        finals,
        greedy,
        seconds,
        references,
        curves.name,
        evaluation_episodes,
    )
    if failed:
        text += "\nRuns that stopped early (evaluated at their last good checkpoint):\n\n"
        here = f"{Path.cwd()}/"  # the report names run directories relative to the repository
        text += "".join(
            f"- `{name}`: {message.replace(here, '')}\n" for name, message in sorted(failed.items())
        )
    page.write_text(text)
    return page


def _mean_or_nan(result: dict[str, Any], key: str) -> float:
    return float(np.mean(result[key])) if key in result else float("nan")


def _markdown(
    sweep: SweepConfig,
    env_id: str,
    env_kwargs: dict[str, Any],
    finals: dict[str, list[float]],
    greedy: dict[str, list[float]],
    seconds: dict[str, list[float]],
    references: dict[str, float],
    curves: str,
    evaluation_episodes: int,
) -> str:
    random_mean, oracle_mean = references["random"], references["oracle"]

    def score(value: float) -> float:
        if oracle_mean <= random_mean:
            return float("nan")
        return (value - random_mean) / (oracle_mean - random_mean)

    def p_value(agent: str, table: dict[str, list[float]]) -> str:
        if agent == "modulated" or np.isnan(table[agent]).any():
            return "—"
        return f"{rank_sum_p(np.array(table['modulated']), np.array(table[agent])):.3g}"

    trial = sweep.trials()[0]
    lines = [
        f"## {env_id}" + (f" ({env_kwargs})" if env_kwargs else ""),
        "",
        f"Budget per run: {trial.config.batches * trial.config.batch_size} training episodes; "
        f"{len(next(iter(finals.values())))} seeds per agent; final evaluation on the same "
        f"{evaluation_episodes} held-out episodes for every run (weights frozen, plasticity on), "
        "with actions sampled from the policy and with the most likely action (greedy).",
        "",
        f"![learning curves]({curves})",
        "",
        "| agent | mean reward, sampled (median over seeds) | IQR | normalised score "
        "| p (rank-sum vs modulated) | mean reward, greedy (median) | p, greedy "
        "| train time / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for agent, values in finals.items():
        low, median, high = np.percentile(values, [25, 50, 75])
        lines.append(
            f"| {agent} | {median:.2f} | {low:.2f}–{high:.2f} | {score(median):.2f} "
            f"| {p_value(agent, finals)} | {np.median(greedy[agent]):.2f} "
            f"| {p_value(agent, greedy)} | {np.median(seconds[agent]):.0f} s |"
        )
    for name, value in references.items():
        lines.append(
            f"| reference: {name} | {value:.2f} | — | {score(value):.2f} | — | — | — | — |"
        )
    lines.append("")
    return "\n".join(lines)


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
    parser.add_argument("--episodes", type=int, default=1000, help="evaluation episodes per seed")
    parser.add_argument("--report-dir", default="docs/results")
    args = parser.parse_args()
    algorithms = () if args.no_sb3 else tuple(args.sb3)
    page = reproduce(sweep_file, args.report_dir, args.episodes, sb3=algorithms, cpus=args.cpus)
    print(f"wrote {page}")
