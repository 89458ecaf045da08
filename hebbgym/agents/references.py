"""Reference policies: the floor (random), the ceilings (oracles, which read the hidden task)
and learners that see only what the agent sees (ideal observers, the memoryless best, classic
bandit learners).

They give every learning curve its scale: the results report normalises a score as
``(agent - random) / (oracle - random)``. All are batched: ``act`` takes the observations
``(B, D)`` and the vector env's ``info`` of the same step, and returns ``B`` actions, so
they run on the native vector envs at full speed. Oracles may read hidden facts from
``info`` (the reward cell, the paired stimulus, the good arm); learners may not.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hebbgym.envs.base import EpisodeScores, HebbVectorEnv, ScoreLog, episode_batch_seeds
from hebbgym.envs.maze import MOVES


class Policy(Protocol):
    """A batched policy for ``B`` episodes in lockstep."""

    def reset(self) -> None:
        """Forget everything: a new batch of episodes starts."""

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """Actions for observations ``obs`` of shape ``(B, D)``."""


class RandomPolicy:
    """Uniform actions: the floor every score is measured from."""

    def __init__(self, env: HebbVectorEnv, seed: int | None = None) -> None:
        self.space = env.single_action_space
        self.num_envs = env.num_envs
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        if isinstance(self.space, spaces.Discrete):
            return self.rng.integers(int(self.space.n), size=self.num_envs)
        low, high = self.space.low, self.space.high
        return self.rng.uniform(low, high, size=(self.num_envs, *self.space.shape))


def maze_distances(walls: np.ndarray) -> np.ndarray:
    """``distances[r, c]`` is the grid of shortest-path lengths to cell ``(r, c)`` (BFS);
    walls and unreachable cells get a large value."""
    size = walls.shape[0]
    far = np.iinfo(np.int32).max // 2
    distances = np.full((size, size, size, size), far, dtype=np.int32)
    for source in np.argwhere(~walls):
        grid = distances[source[0], source[1]]
        grid[tuple(source)] = 0
        frontier = deque([tuple(source)])
        while frontier:
            r, c = frontier.popleft()
            for dr, dc in MOVES:
                nr, nc = r + dr, c + dc
                if not walls[nr, nc] and grid[nr, nc] == far:
                    grid[nr, nc] = grid[r, c] + 1
                    frontier.append((nr, nc))
    return distances


class MazeOracle:
    """Knows the reward cell and walks a shortest path to it, every time."""

    def __init__(self, env: HebbVectorEnv, seed: int | None = None) -> None:
        self.distances = maze_distances(env.rules.walls)
        self.rows = np.arange(env.num_envs)

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        goal, position = info["task"], info["position"]
        neighbours = position[:, None, :] + MOVES[None, :, :]
        to_goal = self.distances[goal[:, 0], goal[:, 1]]
        costs = to_goal[self.rows[:, None], neighbours[..., 0], neighbours[..., 1]]
        return np.argmin(costs, axis=1)


class ConditioningOracle:
    """Knows the paired stimulus: fear exactly when it is on."""

    def __init__(self, env: HebbVectorEnv, seed: int | None = None) -> None:
        self.stimuli = env.obs_layout["stimuli"]
        self.continuous = isinstance(env.single_action_space, spaces.Box)
        self.rows = np.arange(env.num_envs)

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        target = obs[:, self.stimuli][self.rows, info["task"]].round().astype(np.int64)
        return target[:, None].astype(np.float32) if self.continuous else target


class ConditioningIdealObserver:
    """The Bayes-optimal learner: fear when the posterior probability that the paired
    stimulus is on now exceeds one half.

    Only what the agent sees is used. Under "stimulus k is paired", a step with pain but k
    off is impossible and a step with k on and no pain has likelihood ``1 - pain_prob``, so
    the posterior needs two counts per stimulus. After the learning period, the reward of
    the previous answer (in this step's observation) says whether the paired stimulus was on
    then, which rules out the hypothesis it contradicts (discrete form; in the continuous
    form the squared error of an answer of 0.5 says nothing, and the observer uses pain
    only). With ``memory=False`` it judges each step by its stimuli and pain alone: the best
    policy of those, the level of a network that learns nothing within the episode (a
    reactive policy of the whole observation can do a little better on the exclusive
    variant, where its previous action and reward carry one step of history). In the
    continuous form it answers the probability itself, which minimises the expected squared
    error.
    """

    def __init__(self, env: HebbVectorEnv, seed: int | None = None, memory: bool = True) -> None:
        self.stimuli, self.pain = env.obs_layout["stimuli"], env.obs_layout["pain"]
        self.action, self.reward = env.obs_layout["action"], env.obs_layout["reward"]
        self.continuous = isinstance(env.single_action_space, spaces.Box)
        self.previous_stimuli = np.zeros((env.num_envs, 2), dtype=bool)
        with np.errstate(divide="ignore"):  # pain_prob = 1: -inf, a calm step rules out
            self.log_calm = np.log1p(-env.rules.pain_prob)  # log P(no pain | paired on)
        self.memory = memory
        self.impossible = np.zeros((env.num_envs, 2), dtype=bool)
        self.calm_steps = np.zeros((env.num_envs, 2))

    def reset(self) -> None:
        self.impossible[:] = False
        self.calm_steps[:] = 0.0
        self.previous_stimuli[:] = False

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        if not self.memory:
            self.reset()
        stimuli = obs[:, self.stimuli] > 0.5
        pain = obs[:, self.pain.start] > 0.5
        reward = obs[:, self.reward.start]
        if self.memory and not self.continuous:
            scored = reward != 0  # 0 in the learning period (and at the first step)
            feared = obs[:, self.action][:, 1] > 0.5
            was_on = feared == (reward > 0)  # was the paired stimulus on at the last step
            self.impossible |= scored[:, None] & (self.previous_stimuli != was_on[:, None])
        self.previous_stimuli = stimuli
        self.impossible |= pain[:, None] & ~stimuli
        self.calm_steps += ~pain[:, None] & stimuli
        # (no calm step contributes nothing, also where pain_prob = 1 makes log_calm -inf)
        calm = np.multiply(
            self.calm_steps,
            self.log_calm,
            out=np.zeros_like(self.calm_steps),
            where=self.calm_steps > 0,
        )
        log_likelihood = np.where(self.impossible, -np.inf, calm)
        posterior = np.exp(log_likelihood - log_likelihood.max(axis=1, keepdims=True))
        posterior /= posterior.sum(axis=1, keepdims=True)
        fear_probability = (posterior * stimuli).sum(axis=1)
        if self.continuous:
            return fear_probability[:, None].astype(np.float32)
        return (fear_probability > 0.5).astype(np.int64)


class CueRewardOracle:
    """Knows the target cue; answers 1 at a go step if it was shown since the last go."""

    def __init__(self, env: HebbVectorEnv, seed: int | None = None) -> None:
        self.cue, self.go = env.obs_layout["cue"], env.obs_layout["go"]
        self.seen = np.zeros(env.num_envs, dtype=bool)
        self.rows = np.arange(env.num_envs)

    def reset(self) -> None:
        self.seen[:] = False

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        task = info["task"]
        target_cue = task["cues"][self.rows, task["target"]]
        self.seen |= (obs[:, self.cue] == target_cue).all(axis=1)
        go = obs[:, self.go.start] > 0.5
        actions = (self.seen & go).astype(np.int64)
        self.seen[go] = False
        return actions


class CueRewardIdealObserver:
    """The Bayes-optimal learner: keeps the cues it could still be, answers 1 when most of
    them were shown in this trial, and rules out the rest once the answer's reward is seen.

    Only what the agent sees is used: cues are told apart by their values, in the order they
    first appear, and the answer's correctness is read from the next step's reward. The
    feedback is noise-free, so elimination is exact, and either answer reveals the truth, so
    answering greedily gives up no information: the score it reaches is the ceiling of what
    can be learnt within an episode (the oracle's is not).
    """

    def __init__(self, env: HebbVectorEnv, seed: int | None = None) -> None:
        self.cue, self.go = env.obs_layout["cue"], env.obs_layout["go"]
        self.reward = env.obs_layout["reward"]
        n_cues, batch = env.rules.n_cues, env.num_envs
        self.rows = np.arange(batch)
        self.known_cues = np.zeros((batch, n_cues, env.rules.cue_size), np.float32)
        self.n_known = np.zeros(batch, np.int64)
        self.possible = np.ones((batch, n_cues), dtype=bool)
        self.in_trial = np.zeros((batch, n_cues), dtype=bool)
        self.answer = np.zeros(batch, dtype=bool)
        self.answered = np.zeros(batch, dtype=bool)

    def reset(self) -> None:
        self.n_known[:] = 0
        self.possible[:] = True
        self.in_trial[:] = False
        self.answered[:] = False

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        right = obs[:, self.reward.start] > 0
        learnt = self.answered  # last step was a go step: its reward is seen now
        truth = np.where(right, self.answer, ~self.answer)
        self.possible[learnt] &= ~(self.in_trial[learnt] ^ truth[learnt, None])
        self.in_trial[learnt] = False
        self.answered[:] = False
        cue = obs[:, self.cue]
        shown = np.abs(cue).sum(axis=1) > 0
        matches = (self.known_cues == cue[:, None]).all(axis=2)
        matches &= np.arange(self.known_cues.shape[1]) < self.n_known[:, None]
        new = shown & ~matches.any(axis=1)
        self.known_cues[self.rows[new], self.n_known[new]] = cue[new]
        matches[self.rows[new], self.n_known[new]] = True
        self.n_known += new
        self.in_trial |= matches & shown[:, None]
        go = obs[:, self.go.start] > 0.5
        in_pair = (self.possible & self.in_trial).sum(axis=1)
        self.answer = go & (2 * in_pair > self.possible.sum(axis=1))
        self.answered = go
        return self.answer.astype(np.int64)


class BanditOracle:
    """Always pulls the arm that is good right now."""

    def __init__(self, env: HebbVectorEnv, seed: int | None = None) -> None:
        pass

    def reset(self) -> None:
        pass

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        return info["good_arm"].astype(np.int64)


class _BanditLearner:
    """Shared bookkeeping of bandit learners: per-arm (discounted) pulls and rewards,
    read from the previous-action and previous-reward channels of the observation."""

    def __init__(
        self, env: HebbVectorEnv, seed: int | None = None, forgetting: float = 1.0
    ) -> None:
        if not 0.0 < forgetting <= 1.0:
            raise ValueError(f"forgetting must be in (0, 1], got {forgetting}")
        self.forgetting = forgetting
        self.action, self.reward = env.obs_layout["action"], env.obs_layout["reward"]
        self.arms = int(env.single_action_space.n)
        self.num_envs = env.num_envs
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self.pulls = np.zeros((self.num_envs, self.arms))
        self.wins = np.zeros((self.num_envs, self.arms))

    def observe(self, obs: np.ndarray) -> None:
        chosen = obs[:, self.action]  # one-hot, all zeros at t = 0
        reward = obs[:, self.reward.start : self.reward.start + 1]
        self.pulls = self.forgetting * self.pulls + chosen
        self.wins = self.forgetting * self.wins + chosen * reward


class ThompsonSampling(_BanditLearner):
    """Beta-Bernoulli Thompson sampling; ``forgetting < 1`` discounts old evidence so it
    can follow reversals."""

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        self.observe(obs)
        samples = self.rng.beta(1.0 + self.wins, 1.0 + self.pulls - self.wins)
        return np.argmax(samples, axis=1)


class UCB1(_BanditLearner):
    """UCB1 (Auer et al. 2002); with ``forgetting < 1`` it is discounted UCB."""

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        self.observe(obs)
        total = self.pulls.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            bonus = np.sqrt(2.0 * np.log(np.maximum(total, 1.0)) / self.pulls)
            value = np.where(self.pulls > 0, self.wins / self.pulls + bonus, np.inf)
        noise = self.rng.random(value.shape) * 1e-9  # random tie-breaking
        return np.argmax(value + noise, axis=1)


class WinStayLoseShift(_BanditLearner):
    """Repeat a rewarded arm, switch to another arm after a failure."""

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        previous = obs[:, self.action]
        started = previous.sum(axis=1) > 0
        last = np.argmax(previous, axis=1)
        won = obs[:, self.reward.start] > 0
        other = (last + self.rng.integers(1, self.arms, size=self.num_envs)) % self.arms
        first = self.rng.integers(self.arms, size=self.num_envs)
        return np.where(started, np.where(won, last, other), first)


class ChangePointObserver:
    """The Bayesian change-point observer: the exact posterior over which arm is good, given
    the task's own reversal statistics (the single reversal's window, or the hazard), and the
    arm most likely to be good.

    Acting greedily on the posterior is optimal with two arms and ``p_good = 1 - p_bad`` (the
    defaults), where either arm's reward says as much about which one is good; with more arms
    it is a strong learner, not the proven optimum. The posterior is over (good arm, whether
    the single reversal has happened), so a reversal can happen at most once without
    ``hazard`` and at any step with it.
    """

    def __init__(self, env: HebbVectorEnv, seed: int | None = None) -> None:
        rules = env.rules
        self.action, self.reward = env.obs_layout["action"], env.obs_layout["reward"]
        self.arms, self.num_envs = rules.arms, env.num_envs
        self.p_good, self.p_bad, self.hazard = rules.p_good, rules.p_bad, rules.hazard
        self.window = rules.reversal_window()
        self.reset()

    def reset(self) -> None:
        self.t = 0
        # belief[:, 0] before the single reversal (always, with a hazard), [:, 1] after it
        self.belief = np.zeros((self.num_envs, 2, self.arms))
        self.belief[:, 0] = 1.0 / self.arms

    def _reversal_probability(self, t: int) -> float:
        """P(the good arm moves at step t | it has not moved yet)."""
        if self.hazard is not None:
            return self.hazard
        first, last = self.window
        return 1.0 / (last - t + 1) if first <= t <= last else 0.0

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        if self.t > 0:  # the previous step's arm and reward arrive in this observation
            chosen = obs[:, self.action] > 0.5
            paid = obs[:, self.reward.start, None] > 0.5
            pay = np.where(chosen, self.p_good, self.p_bad)  # P(payout | good arm = column)
            self.belief *= np.where(paid, pay, 1.0 - pay)[:, None, :]
            self.belief /= self.belief.sum(axis=(1, 2), keepdims=True)
            probability = self._reversal_probability(self.t)
            moving = self.belief[:, 0] * probability
            self.belief[:, 0] -= moving
            arrived = (moving.sum(axis=1, keepdims=True) - moving) / (self.arms - 1)
            self.belief[:, 0 if self.hazard is not None else 1] += arrived
        self.t += 1
        return np.argmax(self.belief.sum(axis=1), axis=1)


PolicyFactory = Callable[[HebbVectorEnv, int | None], Policy]

_CONDITIONING_REFERENCES: dict[str, PolicyFactory] = {
    "random": RandomPolicy,
    "oracle": ConditioningOracle,
    "ideal-observer": ConditioningIdealObserver,
    "memoryless": lambda env, seed: ConditioningIdealObserver(env, seed, memory=False),
}
REFERENCE_POLICIES: dict[str, dict[str, PolicyFactory]] = {
    "Hebb-Conditioning-v0": dict(_CONDITIONING_REFERENCES),
    "Hebb-ConditioningIndependent-v0": dict(_CONDITIONING_REFERENCES),
    "Hebb-Maze-v0": {"random": RandomPolicy, "oracle": MazeOracle},
    "Hebb-ReversalBandit-v0": {
        "random": RandomPolicy,
        "oracle": BanditOracle,
        "thompson": ThompsonSampling,
        "thompson-forgetting": lambda env, seed: ThompsonSampling(env, seed, forgetting=0.9),
        "ucb1": UCB1,
        "ucb1-forgetting": lambda env, seed: UCB1(env, seed, forgetting=0.9),
        "win-stay-lose-shift": WinStayLoseShift,
        "change-point-observer": ChangePointObserver,
    },
    "Hebb-CueReward-v0": {
        "random": RandomPolicy,
        "oracle": CueRewardOracle,
        "ideal-observer": CueRewardIdealObserver,
    },
}


def reference_policy(env_id: str, name: str, env: HebbVectorEnv, seed: int | None = None) -> Policy:
    """The reference ``name`` for ``env_id``, built for the vector env ``env``."""
    if env_id not in REFERENCE_POLICIES:
        raise ValueError(
            f"no reference policies for {env_id!r}; known: {sorted(REFERENCE_POLICIES)}"
        )
    known = REFERENCE_POLICIES[env_id]
    if name not in known:
        raise ValueError(f"unknown reference {name!r} for {env_id}; known: {sorted(known)}")
    return known[name](env, seed)


def evaluate_reference(
    env_id: str,
    name: str,
    episodes: int,
    seed: int = 0,
    num_envs: int = 64,
    **env_kwargs: Any,
) -> np.ndarray:
    """Returns of ``episodes`` episodes of reference ``name`` (seeded, reproducible)."""
    return evaluate_reference_scores(env_id, name, episodes, seed, num_envs, **env_kwargs).returns


def evaluate_reference_scores(
    env_id: str,
    name: str,
    episodes: int,
    seed: int = 0,
    num_envs: int = 64,
    **env_kwargs: Any,
) -> EpisodeScores:
    """:func:`evaluate_reference`'s returns, with the task's accuracy where it has one."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    num_envs = min(num_envs, episodes)
    if name not in REFERENCE_POLICIES.get(env_id, {}):
        reference_policy(env_id, name, None)  # raises the error naming what is known
    env = gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **env_kwargs
    )
    policy = reference_policy(env_id, name, env.unwrapped, seed)
    log = ScoreLog()
    for batch_seed in episode_batch_seeds(episodes, num_envs, seed):
        obs, info = env.reset(seed=batch_seed)
        policy.reset()
        total = np.zeros(num_envs)
        for _ in range(env.unwrapped.batch.length):
            obs, reward, _, _, info = env.step(policy.act(obs, info))
            total += reward
        log.add(total, env.unwrapped.batch)
    env.close()
    return log.scores(episodes)
