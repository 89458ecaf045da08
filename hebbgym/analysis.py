"""What a trained plastic agent does inside an episode: the analyses a reader of the papers
expects, as arrays (tested) and as PNG figures (matplotlib, headless).

* :func:`record_episodes`: M(t), rewards and the final Hebbian trace of a batch of episodes;
* :func:`reward_triggered_average`: M(t) aligned on reward events (median and IQR over
  events), which shows whether the network releases its neuromodulator when it is rewarded;
* :func:`plot_modulation_around_rewards` and :func:`plot_plasticity`: the figures, the latter
  with the fixed weights ``W``, the learned coefficients ``alpha`` and the trace at the end of
  an episode, whose product ``alpha * Hebb`` is what the episode wrote into the network.

* :func:`sensor_weights` and :func:`plot_sensor_weights`: for the conditioning tasks, each
  sensor's weight on the fear response, split into what the fixed weights give and what the
  episode's trace adds (BOHP's Figure 2);
* :func:`conditioning_probe` and :func:`plot_conditioning_probe`: for the conditioning tasks,
  where the learned association lives. After the learning period, the network is shown the
  paired stimulus, the unpaired one, or the paired one with pain, from its state as it is or
  with its Hebbian trace erased: the analogue, for a recurrent plastic network, of BOHP's
  Figure 2 (there, fixed weights carry the pain and plastic ones the stimulus). Erasing the
  activity instead would prove nothing: the plastic term ``h_{t-1} (alpha * Hebb)`` needs it.

* :func:`evaluation_tasks`, :func:`mean_by_task` and :func:`plot_paired_split`: a sweep's
  held-out returns split by the episode's hidden task (on conditioning, which stimulus is
  paired), which tells a run that solves both halves of the task from one that solves one
  half and falls back to a memoryless guess on the other.

* :func:`reversal_aligned`, :func:`switch_delay` and :func:`plot_agent_reversal`: on the
  bandit, how fast a policy moves to the arm that became good after the reversal (the agent
  beside references such as the change-point observer, via :func:`reference_actions`), and
  what its M(t) does meanwhile: does the network signal the surprise of the first unpaid
  pulls?

* :func:`final_modulation` and :func:`plot_modulation_vs_score`: where each neuromodulated
  run's M(t) ended up against how well it did, across tasks; a saturated modulator goes with
  a run that has not learnt.

``scripts/analyse_agent.py`` makes the per-agent figures for a run directory or a pretrained
agent, ``scripts/analyse_sweep.py`` the split of a sweep, ``scripts/analyse_modulation.py``
the modulator figure of several sweeps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from hebbgym.agents.actor_critic import ActorCritic
from hebbgym.agents.plastic import CoreState
from hebbgym.agents.references import reference_policy
from hebbgym.envs.base import episode_batch_seeds
from hebbgym.train.config import TrainConfig
from hebbgym.train.evaluate import EVALUATION_BATCH, EVALUATION_SEED
from hebbgym.train.loop import make_env, metrics_table
from hebbgym.train.rollout import to_env_actions


@dataclass
class EpisodeRecord:
    """A batch of ``B`` episodes of ``T`` steps.

    Attributes:
        rewards: ``[T, B]``.
        modulation: ``[T, B, K]``, M(t) after each step (``K = 0`` without neuromodulation).
        final_hebb: ``[B, N, N]`` trace at the end (``[B, 0, 0]`` without plasticity).
        actions: ``[T, B, ...]``, the actions taken.
        hidden: the episodes' hidden arrays as the env drew them (on the bandit, the good arm
            of every step), ``[B, ...]`` each.
    """

    rewards: np.ndarray
    modulation: np.ndarray
    final_hebb: np.ndarray
    actions: np.ndarray
    hidden: dict[str, np.ndarray]


def _episode_arrays(env: gym.vector.VectorEnv) -> dict[str, np.ndarray]:
    """A copy of the hidden arrays the vector env drew for its current episodes."""
    return {key: value.copy() for key, value in env.unwrapped.batch.episodes.items()}


def record_episodes(
    config: TrainConfig, agent: ActorCritic, episodes: int, seed: int = EVALUATION_SEED
) -> EpisodeRecord:
    """Play ``episodes`` episodes (sampled actions, weights frozen) in one batch."""
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
    env = make_env(config, episodes)
    generator = torch.Generator().manual_seed(seed)
    rewards, modulation, actions = [], [], []
    with torch.no_grad():
        obs, _ = env.reset(seed=seed)
        state = agent.initial_state(episodes)
        for _ in range(env.unwrapped.batch.length):
            out, state = agent.step(torch.as_tensor(obs), state, generator)
            actions.append(to_env_actions(out.action, env.single_action_space))
            obs, reward, _, _, _ = env.step(actions[-1])
            rewards.append(reward.astype(np.float64))
            modulation.append(out.m.numpy().astype(np.float64))
    hidden = _episode_arrays(env)
    env.close()
    return EpisodeRecord(
        np.stack(rewards), np.stack(modulation), state.hebb.numpy(), np.stack(actions), hidden
    )


def reward_triggered_average(
    modulation: np.ndarray, rewards: np.ndarray, window: int, threshold: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """M(t) (mean over its ``K`` components) around every step whose reward exceeds
    ``threshold``: offsets ``-window..window`` and an ``[events, 2 window + 1]`` array.

    Offset 0 is the step that received the reward: M at offset 0 is computed from the state
    *before* the reward is seen (the reward enters the next observation), so a modulatory
    response to the reward shows from offset +1.
    """
    if modulation.shape[-1] == 0:
        raise ValueError("this agent has no neuromodulator (K = 0)")
    signal = modulation.mean(-1)  # [T, B]
    steps, _ = signal.shape
    offsets = np.arange(-window, window + 1)
    rows = [
        signal[t + offsets, b]
        for t, b in zip(*np.nonzero(rewards > threshold), strict=True)
        if t - window >= 0 and t + window < steps
    ]
    return offsets, np.array(rows).reshape(len(rows), len(offsets))


def reversal_aligned(
    actions: np.ndarray,
    good_arm: np.ndarray,
    before: int,
    after: int,
    values: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bandit's pulls around its first reversal: offsets ``-before..after``, whether each
    pull took the arm that is good *after* the reversal (``[episodes, offsets]``, one row per
    episode whose reversal lies far enough from both ends) and ``values`` (say M(t),
    ``[T, B]``) aligned the same way.

    ``actions`` is ``[T, B]``; ``good_arm`` is ``[B, T + 1]`` as the bandit draws it, column
    ``t`` the good arm of pull ``t``. Offset 0 is the first pull after the reversal, which no
    learner can know of yet: how fast the curve climbs from there is how fast it relearns.
    """
    steps, _ = actions.shape
    offsets = np.arange(-before, after + 1)
    moved = good_arm[:, 1:steps] != good_arm[:, : steps - 1]
    choices, aligned = [], []
    for episode in np.flatnonzero(moved.any(axis=1)):
        reversal = int(np.argmax(moved[episode])) + 1
        if reversal - before < 0 or reversal + after >= steps:
            continue
        pulls = actions[reversal + offsets, episode]
        choices.append(pulls == good_arm[episode, reversal])
        if values is not None:
            aligned.append(values[reversal + offsets, episode])
    shape = (len(choices), len(offsets))
    return (
        offsets,
        np.array(choices, dtype=np.float64).reshape(shape),
        np.array(aligned, dtype=np.float64).reshape(shape if values is not None else (0, 0)),
    )


def switch_delay(offsets: np.ndarray, choices: np.ndarray) -> int | None:
    """Pulls after the reversal until the arm that became good is chosen more often than
    not (the first offset >= 0 where its share reaches 0.5); ``None`` if it never does."""
    share = choices.mean(axis=0)
    reached = np.flatnonzero((offsets >= 0) & (share >= 0.5))
    return int(offsets[reached[0]]) if len(reached) else None


def reference_actions(
    env_id: str, name: str, episodes: int, seed: int = EVALUATION_SEED, **env_kwargs: Any
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Actions ``[T, B]`` of reference policy ``name`` on the episodes that
    :func:`record_episodes` plays with the same seed, and their hidden arrays."""
    env = gym.make_vec(
        env_id, num_envs=episodes, vectorization_mode="vector_entry_point", **env_kwargs
    )
    policy = reference_policy(env_id, name, env.unwrapped, seed)
    obs, info = env.reset(seed=seed)
    actions = []
    for _ in range(env.unwrapped.batch.length):
        actions.append(policy.act(obs, info))
        obs, _, _, _, info = env.step(actions[-1])
    hidden = _episode_arrays(env)
    env.close()
    return np.stack(actions), hidden


PROBES = ("paired stimulus", "unpaired stimulus", "paired stimulus + pain")
STATES = ("as it is", "trace erased")


def _after_learning_period(
    config: TrainConfig, agent: ActorCritic, episodes: int, seed: int
) -> tuple[np.ndarray, np.ndarray, CoreState, dict[str, slice]]:
    """Play a conditioning task's learning period: the next observations, each episode's
    paired stimulus, the core state reached and the observation layout."""
    if not config.env_id.startswith("Hebb-Conditioning"):
        raise ValueError(f"this analysis needs a conditioning task, got {config.env_id!r}")
    env = make_env(config, episodes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        obs, info = env.reset(seed=seed)
        state = agent.initial_state(episodes)
        for _ in range(env.unwrapped.rules.learning_period):
            out, state = agent.step(torch.as_tensor(obs), state, generator)
            obs, _, _, _, _ = env.step(to_env_actions(out.action, env.single_action_space))
    layout = env.unwrapped.obs_layout
    env.close()
    return obs, np.asarray(info["task"]), state, layout


def _trace_erased(state: CoreState) -> CoreState:
    return state._replace(
        hebb=torch.zeros_like(state.hebb), eligibility=torch.zeros_like(state.eligibility)
    )


def conditioning_probe(
    config: TrainConfig, agent: ActorCritic, episodes: int, seed: int = EVALUATION_SEED
) -> dict[str, dict[str, float]]:
    """Mean probability of the fear response to each of :data:`PROBES`, one step from the
    state the episodes reached at the end of their learning period, in each of :data:`STATES`
    (trace erased: ``Hebb`` and eligibility set to zero)."""
    obs, paired, state, layout = _after_learning_period(config, agent, episodes, seed)
    rows = np.arange(episodes)
    states = {"as it is": state, "trace erased": _trace_erased(state)}
    result: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for probe in PROBES:
            probe_obs = np.array(obs, copy=True)
            stimuli = probe_obs[:, layout["stimuli"]]
            stimuli[:] = 0.0
            stimulus = paired if probe != "unpaired stimulus" else 1 - paired
            stimuli[rows, stimulus] = 1.0
            probe_obs[:, layout["pain"]] = 1.0 if probe.endswith("pain") else 0.0
            result[probe] = {}
            for name, start in states.items():
                h, _, _ = agent.core.step(torch.as_tensor(probe_obs), start)
                p_fear = torch.softmax(agent.policy.logits(h), dim=-1)[:, 1]
                result[probe][name] = float(p_fear.mean())
    return result


SENSORS = ("paired stimulus", "unpaired stimulus", "pain")
PATHWAYS = ("fixed weights (trace erased)", "written by the episode (alpha * Hebb)")


def sensor_weights(
    config: TrainConfig, agent: ActorCritic, episodes: int, seed: int = EVALUATION_SEED
) -> dict[str, dict[str, tuple[float, float]]]:
    """Each sensor's weight on the fear response after the learning period, split into
    :data:`PATHWAYS` (mean and standard deviation over episodes).

    A sensor's weight is how much switching it on (alone) raises the fear-minus-calm logit one
    step from the state the episode reached; the fixed part is that weight with the trace
    erased, the plastic part what the trace adds to it. BOHP's network (its Figure 2) had
    fixed and plastic weights on the sensors themselves; ours keeps plasticity in the
    recurrent weights, so its sensors' plastic weights are measured through them.
    """
    if getattr(agent.core, "alpha", None) is None:
        raise ValueError("this agent's core has no plasticity coefficients")
    obs, paired, state, layout = _after_learning_period(config, agent, episodes, seed)
    rows, stimuli = np.arange(episodes), layout["stimuli"].start
    channels = {
        "paired stimulus": stimuli + paired,
        "unpaired stimulus": stimuli + 1 - paired,
        "pain": np.full(episodes, layout["pain"].start),
    }
    silent = np.array(obs, copy=True)
    silent[:, layout["stimuli"]] = 0.0
    silent[:, layout["pain"]] = 0.0
    starts = {"as it is": state, "trace erased": _trace_erased(state)}

    def fear_logit(x: np.ndarray, start: CoreState) -> torch.Tensor:
        h, _, _ = agent.core.step(torch.as_tensor(x), start)
        logits = agent.policy.logits(h)
        return logits[:, 1] - logits[:, 0]

    result = {}
    with torch.no_grad():
        baseline = {name: fear_logit(silent, start) for name, start in starts.items()}
        for sensor in SENSORS:
            shown = silent.copy()
            shown[rows, channels[sensor]] = 1.0
            weight = {
                name: fear_logit(shown, start) - baseline[name] for name, start in starts.items()
            }
            fixed = weight["trace erased"]
            parts = (fixed, weight["as it is"] - fixed)
            result[sensor] = {
                name: (float(part.mean()), float(part.std()))
                for name, part in zip(PATHWAYS, parts, strict=True)
            }
    return result


def plot_sensor_weights(
    weights: dict[str, dict[str, tuple[float, float]]], out: str | Path, title: str
) -> Path:
    """Grouped bars of :func:`sensor_weights` (error bars: standard deviation over episodes)."""
    return _grouped_bars(
        SENSORS,
        {name: [weights[sensor][name][0] for sensor in SENSORS] for name in PATHWAYS},
        out,
        title,
        "weight on fear (logit per unit input)",
        errors={name: [weights[sensor][name][1] for sensor in SENSORS] for name in PATHWAYS},
    )


def plot_conditioning_probe(
    probe: dict[str, dict[str, float]], out: str | Path, title: str
) -> Path:
    """Grouped bars of :func:`conditioning_probe`'s fear probabilities."""
    return _grouped_bars(
        PROBES,
        {f"state {name}": [probe[p][name] for p in PROBES] for name in STATES},
        out,
        title,
        "P(fear response)",
        ylim=(0, 1),
    )


def _grouped_bars(
    categories: tuple[str, ...],
    series: dict[str, list[float]],
    out: str | Path,
    title: str,
    ylabel: str,
    errors: dict[str, list[float]] | None = None,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """One group of bars per category, one bar per series (with ``errors`` as error bars);
    a zero line where the values change sign."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 3.6), dpi=110)
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        offset = (k - (len(series) - 1) / 2) * width
        spread = None if errors is None else errors[name]
        axis.bar(np.arange(len(categories)) + offset, values, width, yerr=spread, label=name)
    if min(min(values) for values in series.values()) < 0:
        axis.axhline(0, color="grey", linewidth=1)
    axis.set_xticks(np.arange(len(categories)), categories, fontsize=8)
    if ylim is not None:
        axis.set_ylim(*ylim)
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    return _save(figure, out, plt)


def evaluation_tasks(
    env_id: str,
    episodes: int,
    seed: int = EVALUATION_SEED,
    env_kwargs: dict | None = None,
    batch_size: int = EVALUATION_BATCH,
) -> np.ndarray:
    """The hidden task (``info["task"]``) of each of the ``episodes`` held-out episodes, in
    the order :func:`~hebbgym.train.evaluate.evaluate_agent` and the SB3 evaluation play
    them (:func:`~hebbgym.envs.base.episode_batch_seeds`). Tasks that are one
    number per episode only (the paired stimulus, the first good arm); not cue–reward's."""
    import gymnasium as gym

    batch_size = min(batch_size, episodes)
    env = gym.make_vec(
        env_id, num_envs=batch_size, vectorization_mode="vector_entry_point", **(env_kwargs or {})
    )
    tasks = []
    for batch_seed in episode_batch_seeds(episodes, batch_size, seed):
        _, info = env.reset(seed=batch_seed)
        if isinstance(info["task"], dict):
            env.close()
            raise ValueError(f"{env_id}'s task is not one number per episode")
        tasks.append(np.asarray(info["task"]))
    env.close()
    return np.concatenate(tasks)[:episodes]


def mean_by_task(returns: np.ndarray, tasks: np.ndarray) -> dict[int, float]:
    """Mean return of the episodes of each task value."""
    returns, tasks = np.asarray(returns), np.asarray(tasks)
    if returns.shape != tasks.shape:
        raise ValueError(f"{returns.shape[0]} returns for {tasks.shape[0]} tasks")
    return {int(task): float(returns[tasks == task].mean()) for task in np.unique(tasks)}


def plot_paired_split(
    runs: dict[str, list[tuple[float, float]]],
    references: dict[str, tuple[float, float]],
    out: str | Path,
    title: str,
) -> Path:
    """One point per run: its mean return when S1 is paired against when S2 is; a run on the
    diagonal treats both alike, one in a corner has solved one half of the task only."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.2, 4.6), dpi=110)
    for k, (agent, points) in enumerate(runs.items()):
        x, y = np.array(points).T
        axis.scatter(x, y, s=36, alpha=0.75, label=agent, marker="os^vDP"[k % 6])
    for name, (x, y) in references.items():
        axis.scatter([x], [y], s=90, marker="*", color="black")
        axis.annotate(name, (x, y), textcoords="offset points", xytext=(6, -12), fontsize=8)
    values = [v for points in runs.values() for p in points for v in p]
    values += [v for p in references.values() for v in p]
    low, high = min(values) - 2, max(values) + 2
    axis.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--")
    axis.set_xlim(low, high)
    axis.set_ylim(low, high)
    axis.set_xlabel("mean reward, episodes where S1 is paired")
    axis.set_ylabel("mean reward, episodes where S2 is paired")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8, loc="lower left")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, out, plt)


def final_modulation(run_dir: str | Path, fraction: float = 0.1) -> float:
    """Mean |M(t)| of a run over the last ``fraction`` of its logged batches (``metrics.csv``):
    where its neuromodulator ended up, saturated (near 1) or not."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    values = metrics_table(run_dir)["modulation_abs_mean"]
    if len(values) == 0:
        raise ValueError(f"{run_dir} has no logged batches yet")
    return float(values[-max(1, int(len(values) * fraction)) :].mean())


@dataclass(frozen=True)
class ModulationOutcome:
    """One neuromodulated run: where its modulator ended and how well it did."""

    task: str
    agent: str
    penalised: bool  # trained with a penalty on M(t)^2
    modulation: float  # final_modulation of the run
    score: float  # held-out (agent - random) / (oracle - random)


def plot_modulation_vs_score(
    outcomes: list[ModulationOutcome], out: str | Path, title: str
) -> Path:
    """One point per run: its final mean |M(t)| against its normalised held-out score, colour
    by task, shape by agent, hollow when trained with the M(t)^2 penalty."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7.2, 4.6), dpi=110)
    tasks = sorted({o.task for o in outcomes})
    agents = sorted({o.agent for o in outcomes})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for o in outcomes:
        color = colors[tasks.index(o.task) % len(colors)]
        axis.scatter(
            [o.modulation],
            [o.score],
            s=40,
            marker="o^sD"[agents.index(o.agent) % 4],
            facecolors="none" if o.penalised else color,
            edgecolors=color,
            alpha=0.8,
        )
    for k, task in enumerate(tasks):
        axis.scatter([], [], color=colors[k % len(colors)], label=task)
    for k, agent in enumerate(agents):
        axis.scatter([], [], color="grey", marker="o^sD"[k % 4], label=agent)
    axis.scatter([], [], facecolors="none", edgecolors="grey", label="with M(t)² penalty")
    axis.set_xlim(0, 1)
    axis.set_xlabel("mean |M(t)| over the last 10 % of training")
    axis.set_ylabel("held-out score (0 random, 1 oracle)")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, out, plt)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_modulation_around_rewards(
    record: EpisodeRecord, out: str | Path, title: str, window: int = 8
) -> Path:
    """Median and IQR of M(t) around reward events, around punishments (negative rewards:
    wrong answers, wall hits) where the task has them, and around random steps of the same
    episodes as the control. Backpropamine's mechanism predicts the first two differ in sign
    or size from the third, from offset +1."""
    offsets, events = reward_triggered_average(record.modulation, record.rewards, window)
    _, punished = reward_triggered_average(record.modulation, -record.rewards, window)
    rng = np.random.default_rng(0)
    steps = record.rewards.shape[0]
    shuffled = record.rewards.copy()
    for b in range(shuffled.shape[1]):
        shuffled[:, b] = shuffled[rng.permutation(steps), b]
    _, control = reward_triggered_average(record.modulation, shuffled, window)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.6), dpi=110)
    curves = (
        (f"rewarded steps (n={len(events)})", events),
        (f"punished steps (n={len(punished)})", punished),
        ("random steps", control),
    )
    for label, rows in curves:
        if len(rows) == 0:
            continue
        low, median, high = np.percentile(rows, [25, 50, 75], axis=0)
        (line,) = axis.plot(offsets, median, marker="o", markersize=3, label=label)
        axis.fill_between(offsets, low, high, color=line.get_color(), alpha=0.2)
    axis.axvline(0, color="grey", linewidth=1, linestyle="--")
    axis.set_xlabel("steps from the rewarded step")
    axis.set_ylabel("M(t)")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, out, plt)


def plot_reversal(
    offsets: np.ndarray,
    choices: Mapping[str, np.ndarray],
    modulation: np.ndarray,
    control: np.ndarray,
    out: str | Path,
    title: str,
) -> tuple[Path, dict[str, int | None]]:
    """Top: the share of pulls of the arm that becomes good, around the bandit's reversal,
    per policy (``choices`` as :func:`reversal_aligned` gives them). Bottom, where
    ``modulation`` has rows: the agent's M(t) around the reversal (median and IQR), beside
    ``control``, its M(t) aligned on the reversal step of *another* episode: what M does at
    that point of an episode anyway. Returns the figure and each policy's
    :func:`switch_delay`, which the legend shows."""
    plt = _pyplot()
    panels = 2 if len(modulation) else 1
    figure, axes = plt.subplots(panels, 1, figsize=(6.4, 2.9 * panels), dpi=110, sharex=True)
    axes = np.atleast_1d(axes)
    delays = {label: switch_delay(offsets, rows) for label, rows in choices.items()}
    for label, rows in choices.items():
        after = "never" if delays[label] is None else f"{delays[label]} pulls"
        axes[0].plot(offsets, rows.mean(axis=0), label=f"{label} (past 0.5 after {after})")
    axes[0].set_ylabel("P(arm good after reversal)")
    axes[0].set_ylim(0, 1)
    axes[0].axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    axes[0].legend(fontsize=7, loc="lower right")
    axes[0].set_title(title, fontsize=9)
    if len(modulation):
        for label, rows in (("at the reversal", modulation), ("control", control)):
            low, median, high = np.percentile(rows, [25, 50, 75], axis=0)
            (line,) = axes[1].plot(offsets, median, marker="o", markersize=3, label=label)
            axes[1].fill_between(offsets, low, high, color=line.get_color(), alpha=0.2)
        axes[1].set_ylabel("M(t), median and IQR")
        axes[1].legend(fontsize=7)
    for axis in axes:
        axis.axvline(-0.5, color="grey", linewidth=1, linestyle="--")
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("pulls from the reversal (0: the first pull after it)")
    figure.tight_layout()
    return _save(figure, out, plt), delays


REVERSAL_REFERENCES = ("change-point-observer", "thompson-forgetting")


def plot_agent_reversal(
    config: TrainConfig,
    record: EpisodeRecord,
    others: Mapping[str, EpisodeRecord],
    out: str | Path,
    title: str,
    before: int = 10,
    after: int = 24,
    seed: int = EVALUATION_SEED,
) -> tuple[Path, dict[str, int | None]]:
    """:func:`plot_reversal` of a bandit agent's episodes, recorded with ``seed``, beside
    ``others`` (records of other agents on the same episodes) and the
    :data:`REVERSAL_REFERENCES` played on them, with its M(t) against the control; the figure
    and each policy's :func:`switch_delay`. The defaults fit every episode of the default
    bandit, whose reversal falls in ``[T/4, 3T/4]``."""
    if "good_arm" not in record.hidden:
        raise ValueError(f"the reversal analysis needs the bandit, got {config.env_id!r}")
    good_arm, modulation = record.hidden["good_arm"], record.modulation.mean(-1)
    offsets, choices, at_reversal = reversal_aligned(
        record.actions, good_arm, before, after, modulation
    )
    elsewhere = np.roll(good_arm, 1, axis=0)  # each episode aligned on another's reversal step
    control = reversal_aligned(record.actions, elsewhere, before, after, modulation)[2]
    curves = {f"{config.agent} (this agent)": choices}
    for label, other in others.items():
        curves[label] = reversal_aligned(other.actions, other.hidden["good_arm"], before, after)[1]
    episodes = record.actions.shape[1]
    for name in REVERSAL_REFERENCES:
        actions, hidden = reference_actions(
            config.env_id, name, episodes, seed, **config.env_kwargs
        )
        if not np.array_equal(hidden["good_arm"], good_arm):
            raise ValueError(f"the record was not played on the episodes of seed {seed}")
        curves[name] = reversal_aligned(actions, hidden["good_arm"], before, after)[1]
    return plot_reversal(offsets, curves, at_reversal, control, out, title)


def plot_plasticity(agent: ActorCritic, record: EpisodeRecord, out: str | Path, title: str) -> Path:
    """Heatmaps of ``W``, ``alpha``, the trace at the end of episode 0 and ``alpha * Hebb``."""
    core = agent.core
    if getattr(core, "alpha", None) is None:
        raise ValueError("this agent's core has no plasticity coefficients")
    w = core.w.detach().numpy()
    alpha = np.broadcast_to(core.alpha.detach().numpy(), w.shape)
    hebb = record.final_hebb[0]
    panels = [
        ("fixed weights W", w),
        ("plasticity coefficients alpha", alpha),
        ("Hebb at the episode's end", hebb),
        ("alpha * Hebb (what the episode wrote)", alpha * hebb),
    ]
    plt = _pyplot()
    figure, axes = plt.subplots(1, 4, figsize=(15, 3.9), dpi=72)  # 100x100 noise compresses badly
    for axis, (name, values) in zip(axes, panels, strict=True):
        bound = float(np.abs(values).max()) or 1.0
        image = axis.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("post-synaptic j")
        axis.set_ylabel("pre-synaptic i")
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, out, plt)


def _save(figure, out: str | Path, plt) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out
