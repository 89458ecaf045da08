"""stable-baselines3 baselines on our env ids: a model per algorithm, resumable training in
checkpointed chunks, a ``metrics.csv`` comparable with our runs, and evaluation on the same
held-out episodes as our agents.

An SB3 run directory holds ``sb3_progress.json`` (what the run is, how far it got, its
training returns) and the model it names, both written atomically after every chunk, so a run
killed at any point resumes from its last chunk. A resumed run draws fresh training episodes
(its environments are seeded anew), so unlike our own runs it is not bit-identical to an
uninterrupted one.
"""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from hebbgym.envs.base import EpisodeScores, ScoreLog, episode_batch_seeds
from hebbgym.train.checkpoint import atomic_write_bytes
from hebbgym.train.evaluate import EVALUATION_SEED, score_fields, task_rules
from hebbgym.train.loop import METRICS_COLUMNS, METRICS_FILE, write_metrics

SB3_ALGORITHMS = ("sb3-a2c", "sb3-recurrent-ppo")
EVALUATION_FILE = "evaluation.json"
PROGRESS_FILE = "sb3_progress.json"
# A resumed run trains on episodes seeded from seed + stride * resumes: fresh ones, far from
# the held-out episodes (EVALUATION_SEED + k).
RESUME_SEED_STRIDE = 100_000
IDENTITY_KEYS = ("algorithm", "env_id", "seed", "env_kwargs")
TRAINING_ENVS = {"sb3-a2c": 8, "sb3-recurrent-ppo": 30}  # A2C's default; one PPO batch of 30


def episode_length(env_id: str, env_kwargs: dict[str, Any]) -> int:
    """Steps per episode of a task (all our tasks have a fixed length)."""
    return gym.make(env_id, **env_kwargs).unwrapped.rules.episode_length


def _algorithm_class(algorithm: str) -> Any:
    if algorithm == "sb3-a2c":
        from stable_baselines3 import A2C

        return A2C
    if algorithm == "sb3-recurrent-ppo":
        from sb3_contrib import RecurrentPPO

        return RecurrentPPO
    raise ValueError(f"unknown SB3 algorithm {algorithm!r}; known: {list(SB3_ALGORITHMS)}")


def native_sb3_env(env_id: str, num_envs: int, seed: int | None = None, **env_kwargs: Any) -> Any:
    """Our native vector env as a stable-baselines3 ``VecEnv``: the same episodes and rewards
    as ``make_vec_env(env_id, n_envs=num_envs, seed=seed)`` (sub-env ``i`` seeded ``seed + i``,
    reset on the step that ends an episode) and the infos SB3's algorithms read
    (``terminal_observation``, ``TimeLimit.truncated``, ``episode``), so SB3 trains on it bit
    for bit as on its own ``DummyVecEnv`` of Monitors, while the envs step as one numpy
    batch: SB3's A2C trains 1.5 times faster, RecurrentPPO (where the LSTM dominates) 1.1
    times (``benchmarks/sb3_training.py``)."""
    from stable_baselines3.common.vec_env import VecEnv

    class NativeVecEnv(VecEnv):
        def __init__(self) -> None:
            self.env = gym.make_vec(
                env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **env_kwargs
            ).unwrapped
            self.render_mode = None
            super().__init__(
                num_envs, self.env.single_observation_space, self.env.single_action_space
            )
            self.episode_returns: list[list[float]] = [[] for _ in range(num_envs)]
            self.actions = np.zeros(num_envs, np.int64)
            if seed is not None:
                self.seed(seed)

        def reset(self) -> np.ndarray:
            if any(self._options):
                raise ValueError(f"the native {env_id} vector env takes no reset options")
            seeds = None if self._seeds[0] is None else [int(one) for one in self._seeds]
            obs, _ = self.env.reset(seed=seeds)
            self._reset_seeds()
            return obs

        def step_async(self, actions: np.ndarray) -> None:
            self.actions = actions

        def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
            obs, rewards, terminated, truncated, _ = self.env.step(self.actions)
            rewards = rewards.astype(np.float32)  # copied: the reset below zeroes the original
            dones = terminated | truncated
            infos: list[dict[str, Any]] = [{} for _ in range(num_envs)]
            if dones.any():
                if not dones.all():  # our episodes have one fixed length and start together
                    raise RuntimeError(f"{env_id}: sub-envs ended at different steps")
                returns = self.env.batch.episode_return
                for row in range(num_envs):
                    self.episode_returns[row].append(float(returns[row]))
                    infos[row] = {
                        "TimeLimit.truncated": bool(truncated[row] and not terminated[row]),
                        "terminal_observation": obs[row],
                        "episode": {"r": float(returns[row]), "l": int(self.env.batch.length)},
                    }
                obs, _ = self.env.reset()  # the next episodes of every sub-env's own stream
            return obs, rewards, dones, infos

        def close(self) -> None:
            self.env.close()

        def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
            return [getattr(self, attr_name)] * len(list(self._get_indices(indices)))

        def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
            raise AttributeError(f"the native {env_id} vector env has no settable {attr_name!r}")

        def env_method(
            self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any
        ) -> list[Any]:
            if method_name != "get_episode_rewards":
                raise AttributeError(
                    f"the native {env_id} vector env has no method {method_name!r}"
                )
            return [self.episode_returns[i] for i in self._get_indices(indices)]

        def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
            return [False] * len(list(self._get_indices(indices)))

    return NativeVecEnv()


def _training_envs(algorithm: str, env_id: str, seed: int, env_kwargs: dict[str, Any]) -> Any:
    return native_sb3_env(env_id, TRAINING_ENVS[algorithm], seed, **env_kwargs)


def _sb3_model(algorithm: str, env: Any, seed: int, length: int) -> Any:
    """An SB3 model with its library defaults, except RecurrentPPO's rollout.

    RecurrentPPO's default (8 envs x 128 steps, minibatches of 128, 10 epochs) trains at about
    150 env-steps/s on one core here, 22 hours for the maze's budget. Like our A2C it collects
    one whole episode in each of 30 envs per update and takes 4 epochs of two minibatches,
    which runs about 15 times faster (2.2k env-steps/s on the conditioning task).
    """
    model_class = _algorithm_class(algorithm)
    if algorithm == "sb3-a2c":
        return model_class("MlpPolicy", env, seed=seed, device="cpu", verbose=0)
    return model_class(
        "MlpLstmPolicy",
        env,
        n_steps=length,
        batch_size=env.num_envs * length // 2,
        n_epochs=4,
        seed=seed,
        device="cpu",
        verbose=0,
    )


def _rollout_steps(model: Any) -> int:
    """Steps of one SB3 rollout: ``learn`` always trains whole rollouts."""
    return model.n_envs * model.n_steps


def _chunk_steps(model: Any, env_steps: int, checkpoints: int, length: int) -> int:
    """Steps between checkpoints: about ``env_steps / checkpoints``, rounded up to whole
    rollouts that end every sub-env's episode, so a resumed run loses no half episode."""
    aligned = math.lcm(_rollout_steps(model), model.n_envs * length)
    return max(1, math.ceil(env_steps / checkpoints / aligned)) * aligned


def _load_progress(run_dir: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The run's progress so far (a fresh one if none); refuses a run of other settings
    before anything is overwritten."""
    path = run_dir / PROGRESS_FILE
    if not path.exists():
        return {**identity, "env_steps_done": 0, "seconds": 0.0, "resumes": 0, "returns": []}
    try:
        progress = json.loads(path.read_text())
        saved = {key: progress[key] for key in IDENTITY_KEYS}
        int(progress["env_steps_done"]), float(progress["seconds"]), int(progress["resumes"])
        str(progress["model"]), list(progress["returns"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not an SB3 progress file we can read ({error!r})") from error
    _refuse_other_settings(run_dir, saved, identity)
    return progress


def _save_progress(run_dir: Path, model: Any, progress: dict[str, Any]) -> None:
    """The model under a name of its own, then the progress that names it, then every other
    model goes (older ones, and any a kill left behind): a kill at any point leaves a progress
    file whose model exists."""
    name = f"sb3_model-{progress['env_steps_done']}.zip"
    buffer = io.BytesIO()
    model.save(buffer)
    atomic_write_bytes(run_dir / name, buffer.getvalue())
    progress["model"] = name
    atomic_write_bytes(run_dir / PROGRESS_FILE, json.dumps(progress).encode())
    for stale in run_dir.glob("sb3_model-*.zip"):
        if stale.name != name:
            stale.unlink(missing_ok=True)


def train_sb3(
    algorithm: str,
    env_id: str,
    env_steps: int,
    seed: int,
    run_dir: Path,
    evaluation_episodes: int,
    env_kwargs: dict[str, Any] | None = None,
    batch_episodes: int = 30,
    checkpoints: int = 20,
) -> dict[str, Any]:
    """Train (or resume) an SB3 agent for ``env_steps`` steps (rounded up to whole rollouts),
    checkpointing about ``checkpoints`` times on the way, log its training returns as a
    ``metrics.csv`` comparable with ours, and evaluate it on the held-out episodes with
    sampled and with greedy actions. The evaluation is cached in the run directory with the
    settings it belongs to; a directory of other settings is refused."""
    import torch

    env_kwargs = env_kwargs or {}
    _algorithm_class(algorithm)  # an unknown algorithm is refused before anything is written
    if isinstance(checkpoints, bool) or not isinstance(checkpoints, int) or checkpoints < 1:
        raise ValueError(f"checkpoints must be a positive integer, got {checkpoints!r}")
    identity = _identity(algorithm, env_id, seed, env_kwargs)
    cached = _cached_evaluation(run_dir, identity, env_steps, evaluation_episodes)
    if cached is not None:
        return cached
    length = episode_length(env_id, env_kwargs)
    progress = _load_progress(run_dir, identity)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    model = _resume_or_create(algorithm, env_id, seed, env_kwargs, run_dir, progress, length)
    rollout = _rollout_steps(model)
    target = -(-env_steps // rollout) * rollout
    if progress["env_steps_done"] > target:
        raise ValueError(
            f"{run_dir} has trained {progress['env_steps_done']} env steps, more than the "
            f"budget of {env_steps}; use another directory"
        )
    chunk = _chunk_steps(model, env_steps, checkpoints, length)
    earlier_returns = list(progress["returns"])  # episodes of the runs before this resume
    while progress["env_steps_done"] < target:
        start = time.perf_counter()
        model.learn(min(chunk, target - progress["env_steps_done"]), reset_num_timesteps=False)
        progress["env_steps_done"] = int(model.num_timesteps)
        progress["seconds"] += time.perf_counter() - start
        progress["returns"] = earlier_returns + _monitor_returns(model.get_env()).tolist()
        _write_sb3_metrics(
            run_dir, np.array(progress["returns"]), batch_episodes, progress["seconds"]
        )
        _save_progress(run_dir, model, progress)
    result = {
        **identity,
        "seconds": progress["seconds"],
        "env_steps": env_steps,
        "env_steps_trained": progress["env_steps_done"],
    }
    for greedy in (False, True):
        scores = evaluate_sb3_scores(
            model, env_id, evaluation_episodes, EVALUATION_SEED, env_kwargs, greedy
        )
        result.update(score_fields(scores, greedy))
    atomic_write_bytes(run_dir / EVALUATION_FILE, json.dumps(result).encode())
    return result


def sb3_trained(
    algorithm: str,
    env_id: str,
    env_steps: int,
    seed: int,
    run_dir: Path,
    evaluation_episodes: int,
    env_kwargs: dict[str, Any] | None = None,
) -> bool:
    """Whether ``run_dir`` holds this SB3 run trained to ``env_steps``, so that
    :func:`train_sb3` only reads its cached evaluation or evaluates its model, and trains
    nothing. A directory of other settings is refused, as :func:`train_sb3` refuses it."""
    identity = _identity(algorithm, env_id, seed, env_kwargs or {})
    if _cached_evaluation(run_dir, identity, env_steps, evaluation_episodes) is not None:
        return True
    progress = _load_progress(run_dir, identity)
    return progress["env_steps_done"] >= env_steps and (run_dir / progress["model"]).is_file()


def _identity(algorithm: str, env_id: str, seed: int, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The settings an SB3 run directory's files record (:data:`IDENTITY_KEYS`)."""
    return {"algorithm": algorithm, "env_id": env_id, "seed": seed, "env_kwargs": env_kwargs}


def _cached_evaluation(
    run_dir: Path, identity: dict[str, Any], env_steps: int, evaluation_episodes: int
) -> dict[str, Any] | None:
    """The run's cached evaluation if it is of this budget and number of episodes (one of
    other settings is refused), else ``None``. A cache from before accuracies were recorded
    is ``None`` on a task that has one: the model is evaluated again, not retrained."""
    path = run_dir / EVALUATION_FILE
    if not path.exists():
        return None
    cached = _load_evaluation(path, identity)
    if cached["env_steps"] != env_steps or len(cached["returns"]) != evaluation_episodes:
        return None
    rules = task_rules(identity["env_id"], identity["env_kwargs"])
    if rules.solved_accuracy is not None and "accuracy" not in cached:
        return None
    return cached


def _load_evaluation(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """A cached evaluation, refused by name if it is of a run with other settings."""
    try:
        cached = json.loads(path.read_text())
        saved = {key: cached[key] for key in IDENTITY_KEYS}
        int(cached["env_steps"]), list(cached["returns"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not an SB3 evaluation we can read ({error!r})") from error
    _refuse_other_settings(path.parent, saved, identity)
    return cached


def _refuse_other_settings(run_dir: Path, saved: dict[str, Any], identity: dict[str, Any]) -> None:
    differing = {
        key: (saved[key], identity[key]) for key in IDENTITY_KEYS if saved[key] != identity[key]
    }
    if differing:
        details = ", ".join(
            f"{key}: saved {old!r}, asked {new!r}" for key, (old, new) in differing.items()
        )
        raise ValueError(
            f"{run_dir} holds an SB3 run with other settings ({details}); use another directory"
        )


def _resume_or_create(
    algorithm: str,
    env_id: str,
    seed: int,
    env_kwargs: dict[str, Any],
    run_dir: Path,
    progress: dict[str, Any],
    length: int,
) -> Any:
    """A new model, or the checkpointed one on freshly seeded environments (the seed goes to
    ``load`` too: SB3 re-seeds the env with the model's seed when it sets the model up)."""
    if not progress["env_steps_done"]:
        env = _training_envs(algorithm, env_id, seed, env_kwargs)
        return _sb3_model(algorithm, env, seed, length)
    progress["resumes"] += 1
    resumed_seed = seed + RESUME_SEED_STRIDE * progress["resumes"]
    env = _training_envs(algorithm, env_id, resumed_seed, env_kwargs)
    path = run_dir / progress["model"]
    try:
        return _algorithm_class(algorithm).load(path, env=env, device="cpu", seed=resumed_seed)
    except Exception as error:  # a damaged zip surfaces as one of several library errors
        raise ValueError(f"{path} is not a readable {algorithm} checkpoint ({error!r})") from error


def _monitor_returns(env: Any) -> np.ndarray:
    """Training episode returns of all sub-envs, in the order the episodes ended (the
    sub-envs of one step in index order)."""
    per_env = env.env_method("get_episode_rewards")
    return np.array(per_env, dtype=np.float64).T.reshape(-1)


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
    write_metrics(run_dir / METRICS_FILE, rows)


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
    return evaluate_sb3_scores(model, env_id, episodes, seed, env_kwargs, greedy, batch).returns


def evaluate_sb3_scores(
    model: Any,
    env_id: str,
    episodes: int,
    seed: int,
    env_kwargs: dict[str, Any],
    greedy: bool = False,
    batch: int = 100,
) -> EpisodeScores:
    """:func:`evaluate_sb3`'s returns, with the task's accuracy where it has one. SB3 samples
    actions from torch's global generator: it is seeded with ``seed`` for the evaluation
    (and restored after), so that evaluating a model twice gives the same returns."""
    import torch

    batch = min(batch, episodes)
    env = gym.make_vec(
        env_id, num_envs=batch, vectorization_mode="vector_entry_point", **env_kwargs
    )
    log = ScoreLog()
    with torch.random.fork_rng(devices=[]):  # the models run on the CPU
        torch.manual_seed(seed)
        for batch_seed in episode_batch_seeds(episodes, batch, seed):
            obs, _ = env.reset(seed=batch_seed)
            states, starts = None, np.ones(batch, dtype=bool)
            total = np.zeros(batch)
            for _ in range(env.unwrapped.batch.length):
                actions, states = model.predict(
                    obs, state=states, episode_start=starts, deterministic=greedy
                )
                obs, reward, _, _, _ = env.step(actions)
                starts[:] = False
                total += reward
            log.add(total, env.unwrapped.batch)
    env.close()
    return log.scores(episodes)
