"""Learning curves as PNG (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hebbgym.train.loop import metrics_table


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average that keeps the length (shorter windows at the start)."""
    if window <= 1 or len(values) == 0:
        return values
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(end - window, 0)
    return (cumulative[end] - cumulative[start]) / (end - start)


def seed_percentiles(
    tables: Sequence[Mapping[str, np.ndarray]], window: int = 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Episodes, the 25/50/75th percentiles of smoothed reward over the runs (seeds) that
    reached each point, and how many did. A run that stopped early (diverged) leaves the
    others' curve whole instead of cutting every seed's at its length."""
    tables = [table for table in tables if len(table["episode"])]
    if not tables:
        return np.zeros(0), np.zeros((3, 0)), np.zeros(0, int)
    longest = max(tables, key=lambda table: len(table["episode"]))
    padded = np.full((len(tables), len(longest["episode"])), np.nan)
    for row, table in zip(padded, tables, strict=True):
        row[: len(table["episode"])] = smooth(table["reward_mean"], window)
    counts = np.sum(~np.isnan(padded), axis=0)
    return longest["episode"], np.nanpercentile(padded, [25, 50, 75], axis=0), counts


def plot_learning_curves(
    runs: Mapping[str, Sequence[str | Path]],
    out: str | Path,
    title: str,
    references: Mapping[str, float] | None = None,
    window: int = 20,
) -> Path:
    """Median and inter-quartile range of smoothed episode reward over seeds, per label.

    ``runs`` maps a label (an agent) to its run directories (one per seed); ``references``
    draws horizontal lines (e.g. random and oracle returns).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8.4, 4.2), dpi=110)
    for label, run_dirs in runs.items():
        tables = [metrics_table(run_dir) for run_dir in run_dirs]
        episodes, (low, median, high), counts = seed_percentiles(tables, window)
        if len(episodes) == 0:
            continue
        stopped = int(np.sum(counts < len(tables)))
        name = f"{label} (n={len(tables)}" + (", fewer later" if stopped else "") + ")"
        (line,) = axis.plot(episodes, median, label=name)
        axis.fill_between(episodes, low, high, color=line.get_color(), alpha=0.2)
    for index, (name, value) in enumerate((references or {}).items()):
        axis.axhline(value, color="grey", linestyle=("--", ":", "-.")[index % 3], linewidth=1)
        axis.annotate(
            name, (0.01, value), xycoords=("axes fraction", "data"), fontsize=8, va="bottom"
        )
    axis.set_xlabel("training episodes")
    axis.set_ylabel("reward per episode")
    axis.set_title(title)
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the curves
    axis.grid(alpha=0.3)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out
