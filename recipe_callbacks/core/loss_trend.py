"""Is the training loss going down? A robust trend of the first training losses, on plain floats.

Per-batch losses are noisy (each batch is different), so the verdict rests on medians, not on the
first and last values: the losses are cut into thirds (first, middle, last; the middle third takes
the remainder) and the **relative decrease** is ``(median(first) - median(last)) / |median(first)|``.
The Theil–Sen slope (the median of all pairwise slopes, robust to a few wild batches) is reported
beside it as loss change per step.

Verdicts:
- ``"rising"``: the last third is above the first by more than ``min_decrease`` (relative);
- ``"flat"``: the loss fell by less than ``min_decrease``;
- ``"stalled"``: it fell, but the drop from the middle to the last third is at most ``stall_ratio``
  of the drop from the first to the middle third, and the last median is still above
  ``plateau_fraction`` of the first: the loss stopped far above zero;
- ``"fitted"``: the loss was (about) zero from the start;
- ``"decreasing"``: anything else.

Nothing here imports Lightning; ``LossDecreaseCheck`` collects the losses and calls it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

TrendStatus = Literal["decreasing", "flat", "rising", "stalled", "fitted"]
MIN_LOSSES = 6
_ZERO = 1e-12


def first_non_finite(losses: Sequence[float]) -> int | None:
    """Index of the first NaN or infinite loss, or ``None``.

    Example:
        >>> first_non_finite([1.0, 0.9, float("nan"), float("inf")])
        2
    """
    return next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)


def theil_sen(values: Sequence[float]) -> tuple[float, float]:
    """Theil–Sen line through ``(i, values[i])``: ``(slope, intercept)``.

    The slope is the median of ``(y_j - y_i) / (j - i)`` over all pairs ``i < j``; the intercept is
    the median of ``y_i - slope * i``. A single wild value moves neither.

    Example:
        >>> theil_sen([3.0, 2.0, 100.0, 0.0])
        (-1.0, 3.0)
    """
    n = len(values)
    if n < 2:
        raise ValueError(f"theil_sen: need at least 2 values, got {n}")
    slopes = [(values[j] - values[i]) / (j - i) for i in range(n) for j in range(i + 1, n)]
    slope = float(statistics.median(slopes))
    intercept = float(statistics.median(v - slope * i for i, v in enumerate(values)))
    return slope, intercept


def thirds(values: Sequence[float]) -> tuple[list[float], list[float], list[float]]:
    """Split into first, middle and last thirds; the first and last have ``len // 3`` items each.

    Example:
        >>> thirds([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
        ([1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0])
    """
    k = len(values) // 3
    data = list(values)
    return data[:k], data[k : len(data) - k], data[len(data) - k :]


@dataclass(frozen=True)
class LossTrend:
    """The trend of a run of losses; see the module docstring for the verdicts."""

    steps: int
    first: float
    middle: float
    last: float
    relative_decrease: float
    slope: float
    intercept: float
    status: TrendStatus


def loss_trend(
    losses: Sequence[float],
    *,
    min_decrease: float = 0.05,
    plateau_fraction: float = 0.25,
    stall_ratio: float = 0.1,
) -> LossTrend:
    """Judge a run of finite losses (at least ``MIN_LOSSES`` = 6).

    Example:
        >>> t = loss_trend([2.0, 1.8, 1.6, 1.4, 1.2, 1.0])
        >>> t.status, round(t.relative_decrease, 6), round(t.slope, 6)
        ('decreasing', 0.421053, -0.2)
        >>> loss_trend([1.0, 1.01, 0.99, 1.0, 1.01, 0.99]).status
        'flat'
    """
    if len(losses) < MIN_LOSSES:
        raise ValueError(f"loss_trend: need at least {MIN_LOSSES} losses, got {len(losses)}")
    if first_non_finite(losses) is not None:
        raise ValueError("loss_trend: the losses must be finite; check first_non_finite first")
    head, mid, tail = thirds(losses)
    first, middle, last = (float(statistics.median(part)) for part in (head, mid, tail))
    slope, intercept = theil_sen(losses)
    scale = abs(first)
    if scale < _ZERO:
        relative = 0.0
        status: TrendStatus = "fitted" if abs(last) < _ZERO else ("rising" if last > 0 else "decreasing")
    else:
        relative = (first - last) / scale
        if relative < -min_decrease:
            status = "rising"
        elif relative < min_decrease:
            status = "flat"
        elif first > 0 and last > plateau_fraction * first and (middle - last) <= stall_ratio * (first - middle):
            status = "stalled"
        else:
            status = "decreasing"
    return LossTrend(len(losses), first, middle, last, relative, slope, intercept, status)
