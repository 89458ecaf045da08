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

    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, run_dirs in runs.items():
        tables = [metrics_table(run_dir) for run_dir in run_dirs]
        length = min(len(table["episode"]) for table in tables)
        if length == 0:
            continue
        episodes = tables[0]["episode"][:length]
        curves = np.stack([smooth(table["reward_mean"][:length], window) for table in tables])
        low, median, high = np.percentile(curves, [25, 50, 75], axis=0)
        (line,) = axis.plot(episodes, median, label=f"{label} (n={len(tables)})")
        axis.fill_between(episodes, low, high, color=line.get_color(), alpha=0.2)
    for index, (name, value) in enumerate((references or {}).items()):
        axis.axhline(value, color="grey", linestyle=("--", ":", "-.")[index % 3], linewidth=1)
        axis.annotate(
            name, (0.01, value), xycoords=("axes fraction", "data"), fontsize=8, va="bottom"
        )
    axis.set_xlabel("training episodes")
    axis.set_ylabel("reward per episode")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out
