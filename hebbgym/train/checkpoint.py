"""Checkpoints as one safetensors file: weights, optimizer, RNG state and JSON metadata.

Nothing is ever unpickled. A checkpoint is written to a temporary file in the same
directory, flushed to disk and then renamed over the old one, so a crash at any moment
leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch import nn

FORMAT = "hebbgym-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, foreign, or from another run."""


class Checkpoint(NamedTuple):
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]
    progress: dict[str, Any]
    param_groups: list[dict[str, Any]]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, whole."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    config: dict[str, Any],
    progress: dict[str, Any],
) -> None:
    """Write model, optimizer and sampling-RNG state plus ``config``/``progress`` atomically."""
    tensors = {
        f"model/{name}": value.detach().clone().contiguous()
        for name, value in model.state_dict().items()
    }
    optimizer_state = optimizer.state_dict()
    for index, state in optimizer_state["state"].items():
        for key, value in state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim/{index}/{key}"] = tensor.detach().clone().contiguous()
    tensors["rng/torch"] = generator.get_state().clone()
    metadata = {
        "format": FORMAT,
        "config": json.dumps(config, sort_keys=True),
        "progress": json.dumps(progress, sort_keys=True),
        "param_groups": json.dumps(optimizer_state["param_groups"]),
    }
    atomic_write_bytes(Path(path), save(tensors, metadata=metadata))


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint; a missing, truncated, corrupt or foreign file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint file there")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a hebbgym checkpoint "
            f"(format {metadata.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        return Checkpoint(
            tensors=tensors,
            config=json.loads(metadata["config"]),
            progress=json.loads(metadata["progress"]),
            param_groups=json.loads(metadata["param_groups"]),
        )
    except (KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: damaged checkpoint metadata ({error})") from error


def restore_model(model: nn.Module, checkpoint: Checkpoint, path: Path) -> None:
    """Load the weights, naming any missing, unexpected or mis-shaped tensor."""
    weights = {
        key[len("model/") :]: value
        for key, value in checkpoint.tensors.items()
        if key.startswith("model/")
    }
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(
        f"{key} {tuple(weights[key].shape)} vs {tuple(value.shape)}"
        for key, value in expected.items()
        if key in weights and weights[key].shape != value.shape
    )
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} does not fit this agent: "
            f"missing {missing}, unexpected {unexpected}, shapes {wrong}"
        )
    model.load_state_dict(weights)


def restore_training(
    optimizer: torch.optim.Optimizer, generator: torch.Generator, checkpoint: Checkpoint
) -> None:
    """Load the optimizer's moments and the sampling RNG, to continue exactly."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in checkpoint.tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": checkpoint.param_groups})
    generator.set_state(checkpoint.tensors["rng/torch"])
