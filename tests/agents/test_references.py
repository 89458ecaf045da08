"""Reference policies: oracles are perfect or near it, learners are ordered as SPEC measured."""

from __future__ import annotations

from collections import deque

import gymnasium as gym
import numpy as np
import pytest

import hebbgym
from hebbgym.agents.references import (
    REFERENCE_POLICIES,
    ChangePointObserver,
    ConditioningIdealObserver,
    CueRewardIdealObserver,
    CueRewardOracle,
    MazeOracle,
    evaluate_reference,
    reference_policy,
)

BANDIT = "Hebb-ReversalBandit-v0"
BANDIT_LEARNERS = [
    "thompson",
    "thompson-forgetting",
    "ucb1",
    "ucb1-forgetting",
    "win-stay-lose-shift",
]

# Shortest paths from the centre (6, 6) of the 13x13 maze, counted by hand: rows and columns
# with an odd index are open corridors, even ones are broken by pillars.
HAND_DISTANCES_13 = {
    (6, 7): 1,  # right next door
    (7, 6): 1,
    (5, 5): 2,  # up, left
    (6, 9): 5,  # (6, 8) is a pillar: up to row 5, along, back down
    (9, 6): 5,
    (1, 6): 7,  # column 6 blocked at rows 4 and 2: over to column 5, up, back
    (6, 11): 7,
    (1, 1): 10,  # Manhattan distance along row 5 and column 1
    (11, 11): 10,
}


def make_vec(env_id: str, num_envs: int, **kwargs) -> gym.vector.VectorEnv:
    return gym.make_vec(
        env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **kwargs
    )


def bfs(walls: np.ndarray, source: tuple[int, int]) -> dict[tuple[int, int], int]:
    """Shortest-path length from ``source`` to every reachable cell (written for this test)."""
    distance = {source: 0}
    frontier = deque([source])
    while frontier:
        r, c = frontier.popleft()
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if not walls[nr, nc] and (nr, nc) not in distance:
                distance[(nr, nc)] = distance[(r, c)] + 1
                frontier.append((nr, nc))
    return distance


# -- oracle versus random ------------------------------------------------------------------

MARGINS = {
    "Hebb-Conditioning-v0": 60.0,
    "Hebb-ConditioningIndependent-v0": 60.0,
    "Hebb-Maze-v0": 200.0,
    "Hebb-ReversalBandit-v0": 25.0,
    "Hebb-CueReward-v0": 15.0,
}


def test_every_env_id_has_a_random_and_an_oracle_reference() -> None:
    assert set(REFERENCE_POLICIES) == set(hebbgym.ENV_IDS) == set(MARGINS)
    for known in REFERENCE_POLICIES.values():
        assert {"random", "oracle"} <= set(known)


@pytest.mark.parametrize("env_id", sorted(MARGINS))
def test_oracle_is_far_above_random(env_id: str) -> None:
    oracle = evaluate_reference(env_id, "oracle", 200, seed=0)
    random = evaluate_reference(env_id, "random", 200, seed=0)
    assert oracle.shape == random.shape == (200,)
    gap = oracle.mean() - random.mean()
    standard_error = np.sqrt((oracle.var() + random.var()) / 200)
    assert gap > MARGINS[env_id], (oracle.mean(), random.mean())
    assert gap > 20 * standard_error
    # the oracle wins nearly every single episode, not just on average
    assert (oracle > random).mean() > 0.95


def test_maze_references_match_spec_measurements() -> None:
    """SPEC (13x13, 200 steps, no penalty): random ≈ 5, oracle ≈ 269 per episode."""
    oracle = evaluate_reference("Hebb-Maze-v0", "oracle", 200, seed=1)
    random = evaluate_reference("Hebb-Maze-v0", "random", 200, seed=1)
    assert abs(oracle.mean() - 269) < 20, oracle.mean()
    assert abs(random.mean() - 5) < 3, random.mean()
    assert (oracle % 10 == 0).all() and oracle.min() >= 10  # whole rewards, always at least one


@pytest.mark.parametrize("env_id", ["Hebb-Conditioning-v0", "Hebb-ConditioningIndependent-v0"])
def test_conditioning_oracle_is_perfect(env_id: str) -> None:
    returns = evaluate_reference(env_id, "oracle", 100, seed=2)
    np.testing.assert_array_equal(returns, 80.0)  # +1 on each of the 80 scored steps
    returns = evaluate_reference(env_id, "oracle", 50, seed=2, continuous=True)
    np.testing.assert_array_equal(returns, 0.0)  # zero squared error
    random = evaluate_reference(env_id, "random", 50, seed=2, continuous=True)
    assert random.mean() < -20  # E[-(U - t)^2] = -1/3 on 80 steps


# Per scored step the memoryless best is right when no stimulus or only the unpaired one is
# on, wrong when the paired one is on without pain: accuracy 0.65 (exclusive) and 0.825
# (independent), i.e. 80 * (2 * accuracy - 1) = 24 and 52 reward per episode.
@pytest.mark.parametrize(
    ("env_id", "memoryless_level"),
    [("Hebb-Conditioning-v0", 24.0), ("Hebb-ConditioningIndependent-v0", 52.0)],
)
def test_conditioning_learners_bracket_what_memory_is_worth(
    env_id: str, memoryless_level: float
) -> None:
    memoryless = evaluate_reference(env_id, "memoryless", 2000, seed=6)
    ideal = evaluate_reference(env_id, "ideal-observer", 2000, seed=6)
    assert abs(memoryless.mean() - memoryless_level) < 4 * memoryless.std() / np.sqrt(2000)
    # 20 free steps identify the paired stimulus almost always; a wrong guess after them is rare
    assert 78.5 < ideal.mean() < 80.0 and ideal.max() == 80.0
    assert (ideal >= memoryless).mean() > 0.99


@pytest.mark.parametrize("env_id", ["Hebb-Conditioning-v0", "Hebb-ConditioningIndependent-v0"])
def test_the_ideal_observer_learns_from_the_rewards_of_its_answers(env_id: str) -> None:
    # Almost no pain: only the feedback on its answers can tell which stimulus is paired,
    # and one scored step with a single stimulus on is enough (one wrong answer at most).
    ideal = evaluate_reference(env_id, "ideal-observer", 500, 3, pain_prob=0.001)
    assert ideal.mean() > 78.0 and ideal.min() >= 76.0


@pytest.mark.parametrize("continuous", [False, True])
def test_the_ideal_observer_handles_certain_pain(continuous: bool) -> None:
    # pain_prob = 1: a calm step with a stimulus on rules that stimulus out at once
    returns = evaluate_reference(
        "Hebb-ConditioningIndependent-v0",
        "ideal-observer",
        200,
        1,
        pain_prob=1.0,
        continuous=continuous,
    )
    assert np.isfinite(returns).all()
    assert returns.mean() > (79.0 if not continuous else -1.0)


def test_the_ideal_observer_reads_nothing_hidden() -> None:
    env = make_vec("Hebb-ConditioningIndependent-v0", 64)
    observer = ConditioningIdealObserver(env)
    obs, info = env.reset(seed=7)
    observer.reset()
    total = np.zeros(64)
    for _ in range(100):
        obs, reward, _, _, info = env.step(observer.act(obs, {}))  # no info at all
        total += reward
    assert total.mean() > 75
    env.close()


def test_cue_reward_oracle_answers_every_go_step_right() -> None:
    env = make_vec("Hebb-CueReward-v0", 50)
    oracle = CueRewardOracle(env)
    obs, info = env.reset(seed=3)
    oracle.reset()
    go_steps = 0
    for _ in range(120):
        go = info["go"].copy()
        obs, reward, _, _, info = env.step(oracle.act(obs, info))
        np.testing.assert_array_equal(reward, np.where(go, 1.0, 0.0))
        go_steps += go.sum()
    assert go_steps > 50 * 15
    env.close()


@pytest.mark.parametrize("one_hot", [False, True])
def test_cue_reward_ideal_observer_learns_the_target_from_rewards_alone(one_hot: bool) -> None:
    env = make_vec("Hebb-CueReward-v0", 200, one_hot=one_hot)
    observer = CueRewardIdealObserver(env)
    obs, info = env.reset(seed=8)
    observer.reset()
    answers = [[] for _ in range(200)]  # each episode's go-step rewards, in order
    for _ in range(120):
        go = info["go"].copy()
        obs, reward, _, _, info = env.step(observer.act(obs, {}))  # no hidden facts
        for row in np.flatnonzero(go):
            answers[row].append(reward[row])
    env.close()
    # Its first answer is a guess; by the last trial of the episode it is always right.
    assert abs(np.mean([a[0] > 0 for a in answers]) - 0.5) < 0.15
    assert all(a[-1] > 0 for a in answers)
    returns = evaluate_reference("Hebb-CueReward-v0", "ideal-observer", 500, 9, one_hot=one_hot)
    oracle = evaluate_reference("Hebb-CueReward-v0", "oracle", 500, 9, one_hot=one_hot)
    assert 15.0 < returns.mean() < oracle.mean() - 1.0


def test_bandit_oracle_pulls_the_good_arm_and_earns_p_good() -> None:
    returns = evaluate_reference(BANDIT, "oracle", 2000, seed=4)
    assert abs(returns.mean() - 80) < 5 * 4.0 / np.sqrt(2000)  # Binomial(100, 0.8): sd 4


# -- bandit learners -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bandit_returns() -> dict[str, float]:
    names = ["oracle", "random", *BANDIT_LEARNERS]
    return {name: float(evaluate_reference(BANDIT, name, 2000, seed=5).mean()) for name in names}


def test_forgetting_helps_thompson_follow_the_reversal(bandit_returns) -> None:
    # SPEC: 57 without forgetting, 68 with forgetting 0.9; standard errors are about 0.2
    assert bandit_returns["thompson-forgetting"] > bandit_returns["thompson"] + 5


def test_oracle_beats_every_learner_and_every_learner_beats_random(bandit_returns) -> None:
    for name in BANDIT_LEARNERS:
        assert bandit_returns["oracle"] > bandit_returns[name] + 5, name
        assert bandit_returns[name] > bandit_returns["random"] + 3, name


def test_change_point_observer_loses_only_what_cannot_be_known() -> None:
    # Deterministic payouts: the first pull is a coin flip (0.5 expected loss), and the pull
    # at the reversal pays nothing before the next one switches (1 loss), except when the
    # reversal comes at the last step of its window [25, 75], where it is certain.
    env = make_vec(BANDIT, 500, p_good=1.0, p_bad=0.0)
    observer = ChangePointObserver(env)
    obs, _ = env.reset(seed=10)
    observer.reset()
    total = np.zeros(500)
    for _ in range(100):
        obs, reward, _, _, _ = env.step(observer.act(obs, {}))  # nothing hidden
        total += reward
    env.close()
    assert set(np.unique(total)) <= {98.0, 99.0, 100.0}
    assert abs(total.mean() - (98.5 + 1 / 51)) < 4 * 0.55 / np.sqrt(500)


@pytest.mark.parametrize("kwargs", [{}, {"hazard": 0.05}, {"arms": 4}])
def test_change_point_observer_beats_every_other_learner(kwargs: dict) -> None:
    returns = {
        name: evaluate_reference(BANDIT, name, 1000, seed=11, **kwargs).mean()
        for name in ["oracle", "change-point-observer", *BANDIT_LEARNERS]
    }
    best_other = max(returns[name] for name in BANDIT_LEARNERS)
    assert best_other + 2.5 < returns["change-point-observer"] < returns["oracle"], returns


def test_bandit_references_match_spec_measurements(bandit_returns) -> None:
    spec = {
        "oracle": 80,
        "random": 50,
        "thompson": 57,
        "thompson-forgetting": 68,
        "win-stay-lose-shift": 67.5,
    }
    for name, value in spec.items():
        assert abs(bandit_returns[name] - value) < 2.0, (name, bandit_returns[name])


@pytest.mark.parametrize("name", ["random", *BANDIT_LEARNERS])
def test_bandit_learners_never_read_hidden_info(name: str) -> None:
    """Learners may use only the observation: they must run with an empty info dict."""
    env = make_vec(BANDIT, 200)
    policy = reference_policy(BANDIT, name, env, seed=6)
    obs, _ = env.reset(seed=6)
    policy.reset()
    total = np.zeros(200)
    for _ in range(100):
        obs, reward, _, _, _ = env.step(policy.act(obs, {}))
        total += reward
    env.close()
    assert 40 < total.mean() < 80


# -- the maze oracle walks shortest paths --------------------------------------------------


def test_maze_oracle_first_reward_takes_the_hand_counted_shortest_path() -> None:
    goals = list(HAND_DISTANCES_13)
    env = make_vec("Hebb-Maze-v0", len(goals))
    walls = np.asarray(env.unwrapped.rules.walls)
    from_centre = bfs(walls, (6, 6))
    for goal, steps in HAND_DISTANCES_13.items():
        assert from_centre[goal] == steps, goal  # the hand count agrees with a plain BFS
    oracle = MazeOracle(env.unwrapped)
    obs, info = env.reset(seed=0, options={"task": goals})
    first = np.zeros(len(goals), dtype=int)
    for t in range(1, 20):
        obs, reward, _, _, info = env.step(oracle.act(obs, info))
        assert (reward >= 0).all()
        first[(reward == 10) & (first == 0)] = t
    np.testing.assert_array_equal(first, [HAND_DISTANCES_13[g] for g in goals])
    env.close()


@pytest.mark.parametrize("size", [9, 13])
def test_maze_oracle_every_trip_is_a_shortest_path(size: int) -> None:
    """After each teleport the next reward comes exactly BFS(destination, goal) steps later."""
    n = 32
    env = make_vec("Hebb-Maze-v0", n, size=size, wall_penalty=0.1)
    walls = np.asarray(env.unwrapped.rules.walls)
    oracle = MazeOracle(env.unwrapped)
    obs, info = env.reset(seed=size)
    goals = [tuple(int(v) for v in goal) for goal in info["task"]]
    to_goal = {goal: bfs(walls, goal) for goal in set(goals)}
    due = np.array([to_goal[goals[i]][(size // 2, size // 2)] for i in range(n)])
    last = np.zeros(n, dtype=int)
    trips = 0
    for t in range(1, 201):
        obs, reward, _, _, info = env.step(oracle.act(obs, info))
        assert (reward != -0.1).all(), "the oracle bumped into a wall"
        scored = reward == 10
        np.testing.assert_array_equal(scored, t - last == due)
        for i in np.flatnonzero(scored):
            last[i] = t
            due[i] = to_goal[goals[i]][tuple(int(v) for v in info["position"][i])]
            trips += 1
    assert trips > n * 10
    env.close()


# -- reproducibility and bad names ---------------------------------------------------------


@pytest.mark.parametrize(
    ("env_id", "name"),
    [("Hebb-Maze-v0", "random"), (BANDIT, "thompson"), ("Hebb-CueReward-v0", "oracle")],
)
def test_evaluate_reference_is_reproducible(env_id: str, name: str) -> None:
    first = evaluate_reference(env_id, name, 70, seed=11)
    again = evaluate_reference(env_id, name, 70, seed=11)
    other = evaluate_reference(env_id, name, 70, seed=12)
    assert first.shape == (70,)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_deterministic_oracle_does_not_depend_on_the_batch_size() -> None:
    """Episode ``k`` is seeded ``seed + k`` whatever the batching, so an oracle scores the same."""
    wide = evaluate_reference("Hebb-Maze-v0", "oracle", 60, seed=3, num_envs=64)
    narrow = evaluate_reference("Hebb-Maze-v0", "oracle", 60, seed=3, num_envs=7)
    np.testing.assert_array_equal(wide, narrow)


def test_unknown_names_raise() -> None:
    with pytest.raises(ValueError, match="genius"):
        evaluate_reference("Hebb-Maze-v0", "genius", 4)
    with pytest.raises(ValueError, match="thompson"):
        evaluate_reference("Hebb-Maze-v0", "thompson", 4)  # a bandit learner, not a maze one
    with pytest.raises(ValueError, match="CartPole-v1"):
        evaluate_reference("CartPole-v1", "random", 4)  # registered, but no references
    with pytest.raises((ValueError, gym.error.Error), match="Hebb-Nope"):
        evaluate_reference("Hebb-Nope-v0", "random", 4)
    env = make_vec("Hebb-Maze-v0", 2)
    with pytest.raises(ValueError, match="Hebb-Nope-v0"):
        reference_policy("Hebb-Nope-v0", "random", env)
    with pytest.raises(ValueError, match="genius"):
        reference_policy("Hebb-Maze-v0", "genius", env)
    env.close()
    with pytest.raises(ValueError, match="episodes"):
        evaluate_reference("Hebb-Maze-v0", "random", 0)
