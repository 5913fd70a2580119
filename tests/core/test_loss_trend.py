"""The loss trend against hand computations."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest
import torch

from recipe_callbacks.core.loss_trend import (
    FROZEN_CHANGE,
    MIN_LOSSES,
    first_non_finite,
    looks,
    loss_trend,
    relative_change,
    shift_interval,
    theil_sen,
    thirds,
    verdict,
    weight_sample,
)


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


def test_shift_interval_is_the_order_statistics_of_the_differences() -> None:
    first, last = [5.0, 6.0, 7.0, 8.0, 9.0, 10.0], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    diffs = sorted(a - b for a in first for b in last)  # 36 differences
    # K = floor(36 / 2 - 2.576 * sqrt(6 * 6 * 13 / 12)) = floor(18 - 16.09) = 1 at 99%; 8 at z = 1.
    assert shift_interval(first, last) == (diffs[0], diffs[35])
    k = math.floor(18 - 1.0 * math.sqrt(39))
    assert shift_interval(first, last, z=1.0) == (diffs[k - 1], diffs[36 - k])
    with pytest.raises(ValueError, match="at least one value"):
        shift_interval([], [1.0])


def test_shift_interval_covers_no_shift_at_about_its_level() -> None:
    # Oracle: pure noise (no trend) of 30 losses; the 99% interval of first-vs-last third must hold 0
    # in about 99% of runs, so "flat or rising only with evidence" holds for noise.
    rng = random.Random(0)
    runs = 400
    held = 0
    for _ in range(runs):
        losses = [1.0 + rng.gauss(0.0, 0.2) for _ in range(30)]
        head, _, tail = thirds(losses)
        low, high = shift_interval(head, tail)
        held += low <= 0.0 <= high
    assert held / runs >= 0.97


def test_noise_is_never_a_rise_and_a_plateau_is_flat_only_with_evidence() -> None:
    rng = random.Random(1)
    # A 1:9 label mix: losses jumping between 0.05 and 0.6 around a slow decrease (the zoo's imbalanced task).
    noisy = [0.3 * (1 - i / 200) + rng.choice([-0.25, -0.2, 0.0, 0.1, 0.3]) for i in range(30)]
    t = loss_trend(noisy)
    assert t.status == "unclear" and t.decrease_low < 0 < t.decrease_high
    # A transformer's plateau at log 2 with small noise, falling 1% in 30 steps: flat with evidence.
    plateau = [0.693 * (1 - 0.0003 * i) + rng.gauss(0.0, 0.005) for i in range(30)]
    assert loss_trend(plateau).status == "flat"
    # A steady slow decrease with little noise is clear, though below min_decrease.
    slow = [1.0 - 0.001 * i + rng.gauss(0.0, 0.001) for i in range(30)]
    assert loss_trend(slow).status == "slow"


def test_verdicts_watch_on_when_the_window_cannot_tell() -> None:
    for status in ("flat", "slow", "unclear"):
        assert verdict(status, final=False, capped=False, frozen=False) == ("watch", status)
    assert verdict("decreasing", final=False, capped=False, frozen=True) == ("pass", "decreasing")
    assert verdict("stalled", final=False, capped=False, frozen=False) == ("warn", "stalled")
    assert verdict("rising", final=False, capped=False, frozen=False) == ("fail", "rising")
    assert verdict("rising", final=False, capped=False, frozen=True) == ("fail", "flat")  # weights did not move
    assert verdict("slow", final=True, capped=False, frozen=False) == ("pass", "slow")
    assert verdict("flat", final=True, capped=False, frozen=False) == ("skip", "flat")
    assert verdict("flat", final=True, capped=True, frozen=False) == ("fail", "flat")
    assert verdict("unclear", final=True, capped=True, frozen=False) == ("skip", "unclear")
    assert looks(12, 48) == [12, 24, 48] and looks(6, 7) == [6, 7]


def test_weights_change_over_a_sample() -> None:
    w = torch.arange(3000, dtype=torch.float32).reshape(30, 100)
    sample = weight_sample([("w", w), ("b", torch.ones(3))])
    assert sample["w"].dtype == torch.float64 and sample["w"].numel() == 1024 and sample["b"].numel() == 3
    moved = weight_sample([("w", w + 1.0), ("b", torch.ones(3))])
    expected = math.sqrt(1024) / math.sqrt(float((w.reshape(-1)[:1024].double() ** 2).sum()) + 3)
    assert relative_change(sample, moved) == pytest.approx(expected)
    assert relative_change(sample, sample) == 0.0 < FROZEN_CHANGE
    assert relative_change(sample, {"other": torch.zeros(1)}) is None
