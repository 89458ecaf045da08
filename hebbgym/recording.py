"""Record rendered episodes to GIF or MP4 (imageio), for any batched actor.

An *actor* is any callable ``(obs (1, D), info) -> actions (1, ...)``: a reference policy's
``act``, or a trained agent's. Episodes run on the native vector env with one episode, so
the same code records references and agents.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

Actor = Callable[[np.ndarray, dict[str, Any]], np.ndarray]
VIDEO_SUFFIXES = (".gif", ".mp4")


def write_video(frames: list[np.ndarray], path: str | Path, fps: int) -> Path:
    """Write ``frames`` (H, W, 3 uint8) to ``path``; the suffix picks GIF or MP4."""
    import imageio.v3 as iio

    path = Path(path)
    if path.suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"video path must end in one of {VIDEO_SUFFIXES}, got {str(path)!r}")
    if not frames:
        raise ValueError("no frames to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gif":
        iio.imwrite(path, np.stack(frames), duration=1000 / fps, loop=0, plugin="pillow")
    else:
        try:
            iio.imwrite(path, np.stack(frames), fps=fps, plugin="pyav")
        except (ImportError, ModuleNotFoundError) as error:
            raise RuntimeError(
                "MP4 needs the 'av' package (pip install av); use a .gif path instead"
            ) from error
    return path


def play_episode(
    env: gym.vector.VectorEnv,
    actor: Actor,
    seed: int,
    on_step: Callable[[np.ndarray, dict[str, Any]], None] | None = None,
) -> float:
    """Run one full episode of a one-episode vector env; returns its return."""
    obs, info = env.reset(seed=seed)
    if on_step is not None:
        on_step(obs, info)
    total = 0.0
    for _ in range(env.unwrapped.batch.length):
        obs, reward, _, _, info = env.step(actor(obs, info))
        total += float(reward[0])
        if on_step is not None:
            on_step(obs, info)
    return total


def record_episode(
    env_id: str,
    make_actor: Callable[[gym.vector.VectorEnv], Actor],
    path: str | Path,
    seed: int = 0,
    **env_kwargs: Any,
) -> tuple[float, Path]:
    """Play one episode of ``env_id`` with the actor built for its env and record it."""
    env = gym.make_vec(
        env_id,
        num_envs=1,
        vectorization_mode="vector_entry_point",
        render_mode="rgb_array",
        **env_kwargs,
    )
    frames: list[np.ndarray] = []
    total = play_episode(
        env, make_actor(env), seed, on_step=lambda *_: frames.append(env.render()[0])
    )
    fps = env.metadata["render_fps"]
    env.close()
    return total, write_video(frames, path, fps)
