"""Learning curves: percentiles over seeds, smoothing, and runs of unequal length."""

from __future__ import annotations

import numpy as np

from hebbgym.train.plots import seed_percentiles, smooth


def _table(rewards: list[float]) -> dict[str, np.ndarray]:
    return {"episode": 10 * np.arange(1, len(rewards) + 1), "reward_mean": np.array(rewards)}


def test_smooth_is_a_trailing_mean_that_keeps_the_length() -> None:
    np.testing.assert_allclose(smooth(np.array([2.0, 4.0, 6.0, 8.0]), 2), [2, 3, 5, 7])


def test_a_run_that_stopped_early_does_not_cut_the_others_curves() -> None:
    runs = [_table([1, 1, 1, 1]), _table([3, 3, 3, 3]), _table([5, 5])]
    episodes, (low, median, high), counts = seed_percentiles(runs, window=1)
    np.testing.assert_array_equal(episodes, [10, 20, 30, 40])
    np.testing.assert_array_equal(counts, [3, 3, 2, 2])
    np.testing.assert_allclose(median, [3, 3, 2, 2])  # the median of the runs still going
    np.testing.assert_allclose(low, [2, 2, 1.5, 1.5])
    np.testing.assert_allclose(high, [4, 4, 2.5, 2.5])


def test_no_finished_batch_gives_an_empty_curve() -> None:
    episodes, percentiles, counts = seed_percentiles([_table([])])
    assert episodes.shape == (0,) and percentiles.shape == (3, 0) and counts.shape == (0,)
