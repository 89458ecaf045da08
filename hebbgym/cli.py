"""The ``hebbgym`` command: ``hebbgym play ENV_ID`` (and the training commands)."""

from __future__ import annotations

from typing import Annotated

import tyro

import hebbgym


def play(
    env_id: Annotated[str, tyro.conf.Positional],
    seed: int | None = None,
    episodes: int | None = None,
) -> None:
    """Play a task from the keyboard in a window (arrows in the maze, digits elsewhere).

    Args:
        env_id: a registered id, e.g. Hebb-Maze-v0.
        seed: seed of the first episode.
        episodes: stop after this many episodes (default: until the window is closed).
    """
    from hebbgym.play import play as play_task

    if env_id not in hebbgym.ENV_IDS:
        raise SystemExit(f"unknown env id {env_id!r}; known: {', '.join(hebbgym.ENV_IDS)}")
    play_task(env_id, seed=seed, episodes=episodes)


COMMANDS = {"play": play}


def main(args: list[str] | None = None) -> None:
    tyro.extras.subcommand_cli_from_dict(COMMANDS, args=args, prog="hebbgym")


if __name__ == "__main__":
    main()
