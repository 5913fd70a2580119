"""The loss trend against hand computations."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from recipe_callbacks.core.loss_trend import MIN_LOSSES, first_non_finite, loss_trend, theil_sen, thirds


def test_theil_sen_is_the_median_of_pairwise_slopes() -> None:
    ys = [5.0, 4.2, 4.4, 3.1, 30.0, 2.2, 2.0]  # one wild batch at index 4
    pairs = [(ys[j] - ys[i]) / (j - i) for i, j in itertools.combinations(range(len(ys)), 2)]
    slope, intercept = theil_sen(ys)
    assert slope == pytest.approx(statistics.median(pairs))
    assert intercept == pytest.approx(statistics.median([y - slope * i for i, y in enumerate(ys)]))
    # The wild value barely moves it: the slope stays that of the underlying decline.
    assert -0.7 < slope < -0.4


def test_theil_sen_of_a_line_is_exact_and_needs_two_points() -> None:
    assert theil_sen([1.0, 3.0, 5.0, 7.0]) == (2.0, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        theil_sen([1.0])


def test_thirds_split() -> None:
    first, middle, last = thirds(list(map(float, range(10))))
    assert (first, middle, last) == ([0.0, 1.0, 2.0], [3.0, 4.0, 5.0, 6.0], [7.0, 8.0, 9.0])


def test_relative_decrease_by_hand() -> None:
    losses = [2.3, 2.1, 2.2, 1.9, 1.5, 1.6, 1.4, 1.0, 0.9, 1.1, 0.8, 0.7]
    # thirds of 4: medians 2.15, 1.45 and 0.85; relative decrease (2.15 - 0.85) / 2.15.
    t = loss_trend(losses)
    assert (t.first, t.middle, t.last) == pytest.approx((2.15, 1.45, 0.85))
    assert t.relative_decrease == pytest.approx((2.15 - 0.85) / 2.15)
    assert t.status == "decreasing"
    assert t.steps == 12


def test_constant_loss_with_batch_noise_is_flat() -> None:
    losses = [1.39, 1.41, 1.38, 1.42] * 8  # four batches cycling, no learning
    t = loss_trend(losses)
    assert t.status == "flat"
    assert abs(t.relative_decrease) < 0.05
    assert t.slope == pytest.approx(0.0, abs=1e-3)


def test_rising_loss() -> None:
    t = loss_trend([1.0 * 1.1**i for i in range(12)])
    assert t.status == "rising"
    assert t.relative_decrease < -0.05
    assert t.slope > 0


def test_loss_that_stalls_far_above_zero_and_one_that_reaches_zero() -> None:
    # Falls from 3 to 1 in the first third, then sits at 1 (a third of where it started).
    stalled = [3.0, 2.0, 1.2, 1.0, 1.01, 0.99, 1.0, 1.01, 0.99]
    t = loss_trend(stalled)
    assert t.status == "stalled"
    assert t.last / t.first > 0.25
    # The same shape ending near zero is a fitted model, not a plateau.
    fitted = [3.0, 2.0, 1.2, 0.02, 0.01, 0.01, 0.01, 0.01, 0.01]
    assert loss_trend(fitted).status == "decreasing"
    # plateau_fraction=1.0 switches the warning off.
    assert loss_trend(stalled, plateau_fraction=1.0).status == "decreasing"


def test_zero_loss_from_the_start_is_fitted() -> None:
    assert loss_trend([0.0] * 6).status == "fitted"


def test_first_non_finite_and_input_checks() -> None:
    assert first_non_finite([1.0, 2.0]) is None
    assert first_non_finite([1.0, math.inf, math.nan]) == 1
    with pytest.raises(ValueError, match=f"at least {MIN_LOSSES}"):
        loss_trend([1.0, 0.5])
    with pytest.raises(ValueError, match="finite"):
        loss_trend([1.0, 0.9, math.nan, 0.8, 0.7, 0.6])
