"""Input checks that fail loudly, with the offending name and value in the message.

Every env kwarg, reset option and action passes through here, so a user who writes
``episode_length=0`` or steps with ``2.0`` instead of ``2`` learns exactly what is wrong
instead of getting a numpy broadcasting surprise twenty calls later.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """Return ``value`` as an int, or raise if it is not an integer within ``[low, high]``."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if isinstance(value, np.timedelta64):
        raise TypeError(f"{name} must be an integer, got {value!r} (timedelta64)")
    value = int(value)
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_float(
    name: str, value: Any, low: float | None = None, high: float | None = None
) -> float:
    """Return ``value`` as a finite float within ``[low, high]``, or raise."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool; integers are refused so ``1`` cannot hide a typo."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_options(options: Mapping[str, Any] | None, allowed: tuple[str, ...]) -> dict[str, Any]:
    """Refuse unknown reset options by name instead of ignoring them."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    unknown = sorted(set(options) - set(allowed), key=repr)
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}; allowed: {list(allowed)}")
    return dict(options)


def as_array(name: str, value: Any, bool_error: type[Exception] = TypeError) -> np.ndarray:
    """``np.asarray`` that refuses ragged nesting and bools hidden in lists by name, instead
    of numpy's generic message or a silent ``True -> 1``."""
    if _holds_bool(value):
        raise bool_error(f"{name} must not contain bools, got {value!r}")
    try:
        return np.asarray(value)
    except ValueError as error:
        raise ValueError(f"{name} must be a rectangular array, got {value!r}") from error


def _holds_bool(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return any(isinstance(item, bool | np.bool_) or _holds_bool(item) for item in value)
    return False


def check_discrete_actions(actions: Any, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """Validate integer actions of a ``Discrete(n)`` space, batched to ``shape``."""
    array = as_array("actions", actions)
    if array.dtype.kind not in "iu":  # refuses bools, floats, complex, timedelta, objects
        raise TypeError(
            f"actions must be integers in [0, {n - 1}], got {actions!r} (dtype {array.dtype})"
        )
    if array.shape != shape:
        raise ValueError(f"actions must have shape {shape}, got {array.shape}")
    bad = (array < 0) | (array >= n)
    if bad.any():
        raise ValueError(f"actions must lie in [0, {n - 1}], got {array[bad].tolist()}")
    return array.astype(np.int64, copy=False)


def check_box_actions(actions: Any, low: float, high: float, shape: tuple[int, ...]) -> np.ndarray:
    """Validate real-valued actions batched to ``shape``: finite and inside ``[low, high]``."""
    array = as_array("actions", actions)
    if array.dtype.kind not in "iuf":  # refuses bools, complex, timedelta, objects
        raise TypeError(f"actions must be real numbers, got {actions!r} (dtype {array.dtype})")
    if array.shape != shape:
        raise ValueError(f"actions must have shape {shape}, got {array.shape}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"actions must be finite, got {array.ravel().tolist()}")
    if ((array < low) | (array > high)).any():
        raise ValueError(f"actions must lie in [{low}, {high}], got {array.ravel().tolist()}")
    return array
