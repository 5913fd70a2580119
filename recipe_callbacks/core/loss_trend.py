"""Is the training loss going down? A robust trend of the first training losses, on plain floats,
judged only with evidence.

Per-batch losses are noisy (each batch is different), so the verdict rests on medians and ranks,
not on the first and last values: the losses are cut into thirds (first, middle, last; the middle third
takes the remainder) and the **relative decrease** is ``(median(first) - median(last)) / |median(first)|``.
Its confidence interval comes from the batch-to-batch noise the run itself shows: the distribution-free
interval of the shift between the first and the last third (the order statistics of all differences
``first_i - last_j`` at ranks ``K`` and ``N + 1 - K``, ``K = N / 2 - z * sqrt(k k (2k + 1) / 12)`` from
the Mann–Whitney variance, at least the smallest and largest difference), over ``|median(first)|``.
The Theil–Sen slope (the median of all pairwise slopes) is reported beside it as loss change per step.

Statuses (:func:`loss_trend`), each claimed only when the interval shows it:
- ``"rising"``: the whole interval is a rise, and the loss rose by more than ``min_decrease``;
- ``"decreasing"``: the whole interval is a decrease, and the loss fell by ``min_decrease`` or more;
- ``"stalled"``: decreasing, but the drop from the middle to the last third is at most ``stall_ratio``
  of the drop from the first to the middle third, and the last median is still above
  ``plateau_fraction`` of the first: the loss stopped far above zero;
- ``"slow"``: the whole interval is a decrease, smaller than ``min_decrease``;
- ``"flat"``: the interval allows neither a decrease nor a rise of ``min_decrease``;
- ``"unclear"``: the noise is too large for the window to tell;
- ``"fitted"``: the loss was (about) zero from the start.

:func:`verdict` turns a status into what the check does: judge now, or watch longer (up to a cap)
and judge at the last look, where what is still unclear is an honest skip.

Nothing here imports Lightning; ``LossDecreaseCheck`` collects the losses and calls it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

TrendStatus = Literal["decreasing", "slow", "flat", "rising", "stalled", "fitted", "unclear"]
Action = Literal["pass", "warn", "fail", "skip", "watch"]
MIN_LOSSES = 6
#: Two-sided 99% normal quantile: the slope's interval is Sen's 99% confidence interval.
Z = 2.576
#: Weights that moved by less than this fraction of their norm over the window count as not moving.
FROZEN_CHANGE = 1e-4
#: How many values of each parameter tensor :func:`weight_sample` keeps.
SAMPLE_PER_TENSOR = 1024
_ZERO = 1e-12


def first_non_finite(losses: Sequence[float]) -> int | None:
    """Index of the first NaN or infinite loss, or ``None``.

    Example:
        >>> first_non_finite([1.0, 0.9, float("nan"), float("inf")])
        2
    """
    return next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)


def step_means(values: Sequence[float], steps: Sequence[int]) -> tuple[list[float], int | None]:
    """One loss per optimizer step, the mean of its batches' losses (``steps[i]`` is the step of
    ``values[i]``; a step's batches are consecutive), and the index of the first value that is not
    finite (``None`` when all are). The means stop there: the NaN itself ends the list, the finite
    batches of its own step before it are left out.

    Example:
        >>> step_means([1.0, 3.0, 4.0], [0, 0, 1])
        ([2.0, 4.0], None)
        >>> step_means([1.0, 3.0, 5.0, float("nan")], [0, 0, 1, 1])
        ([2.0, nan], 3)
    """
    means: list[float] = []
    group: list[float] = []
    for i, value in enumerate(values):
        if i and steps[i] != steps[i - 1]:
            means.append(sum(group) / len(group))
            group = []
        if not math.isfinite(value):
            return [*means, value], i
        group.append(value)
    return [*means, sum(group) / len(group)] if group else means, None


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
    slopes = _pairwise_slopes(values)
    slope = float(statistics.median(slopes))
    intercept = float(statistics.median(v - slope * i for i, v in enumerate(values)))
    return slope, intercept


def _pairwise_slopes(values: Sequence[float]) -> list[float]:
    n = len(values)
    return [(values[j] - values[i]) / (j - i) for i in range(n) for j in range(i + 1, n)]


def shift_interval(first: Sequence[float], last: Sequence[float], z: float = Z) -> tuple[float, float]:
    """Distribution-free confidence interval of the shift ``first - last`` between two samples: the
    differences ``first_i - last_j`` of rank ``K`` and ``N + 1 - K`` (1-based, ``N`` differences),
    ``K = floor(N / 2 - z * sqrt(a b (a + b + 1) / 12))``, at least 1 (with very few values that is
    the range of the differences, which then covers less than the nominal level).

    Example:
        >>> shift_interval([4.0, 4.5, 4.0, 4.5], [1.0, 1.5, 1.0, 1.5])
        (2.5, 3.5)
        >>> lo, hi = shift_interval([1.0, 1.3, 0.8, 1.1], [1.2, 0.9, 1.0, 0.8])
        >>> lo < 0 < hi
        True
    """
    if not first or not last:
        raise ValueError("shift_interval: both samples need at least one value")
    diffs = sorted(x - y for x in first for y in last)
    count = len(diffs)
    k = max(1, math.floor(count / 2 - z * math.sqrt(len(first) * len(last) * (len(first) + len(last) + 1) / 12)))
    return diffs[k - 1], diffs[count - k]


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
    """The trend of a run of losses; see the module docstring for the statuses.

    ``decrease_low``/``decrease_high`` is the confidence interval of ``relative_decrease`` (negative: a rise).
    """

    steps: int
    first: float
    middle: float
    last: float
    relative_decrease: float
    slope: float
    intercept: float
    decrease_low: float
    decrease_high: float
    status: TrendStatus


def loss_trend(
    losses: Sequence[float],
    *,
    min_decrease: float = 0.05,
    plateau_fraction: float = 0.25,
    stall_ratio: float = 0.1,
    z: float = Z,
) -> LossTrend:
    """Judge a run of finite losses (at least ``MIN_LOSSES`` = 6).

    Example:
        >>> t = loss_trend([2.0, 1.8, 1.6, 1.4, 1.2, 1.0])
        >>> t.status, round(t.relative_decrease, 6), round(t.slope, 6)
        ('decreasing', 0.421053, -0.2)
        >>> loss_trend([1.0, 1.01, 0.99, 1.0, 1.01, 0.99] * 2).status
        'flat'
        >>> loss_trend([1.0, 1.5, 0.6, 1.2, 0.7, 1.4]).status  # noise too large to tell
        'unclear'
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
        relative = low = high = 0.0
        status: TrendStatus = "fitted" if abs(last) < _ZERO else ("rising" if last > 0 else "decreasing")
    else:
        relative = (first - last) / scale
        shift_low, shift_high = shift_interval(head, tail, z)
        low, high = shift_low / scale, shift_high / scale
        if high < 0 and relative < -min_decrease:
            status = "rising"
        elif low > 0 and relative >= min_decrease:
            far = first > 0 and last > plateau_fraction * first
            stalled = far and (middle - last) <= stall_ratio * (first - middle)
            status = "stalled" if stalled else "decreasing"
        elif low > 0:
            status = "slow"
        elif -min_decrease < low and high < min_decrease:
            status = "flat"
        else:
            status = "unclear"
    return LossTrend(
        len(losses), first, middle, last, relative, slope, intercept, low, high, status
    )


def looks(num_steps: int, max_num_steps: int) -> list[int]:
    """The window lengths at which the trend is judged: ``num_steps``, then doubling, up to the cap.

    Example:
        >>> looks(30, 120), looks(30, 100), looks(30, 30)
        ([30, 60, 120], [30, 60, 100], [30])
    """
    out = [num_steps]
    while out[-1] < max_num_steps:
        out.append(min(2 * out[-1], max_num_steps))
    return out


def weight_sample(
    named: Iterable[tuple[str, torch.Tensor]], per_tensor: int = SAMPLE_PER_TENSOR
) -> dict[str, torch.Tensor]:
    """A float64 CPU copy of the first ``per_tensor`` values of every named tensor: enough to see
    whether the weights move, at a small fixed cost whatever the model's size. One transfer when the
    tensors share a device.

    Example:
        >>> {k: v.tolist() for k, v in weight_sample([("w", torch.ones(2, 3)), ("b", torch.zeros(1))], 4).items()}
        {'w': [1.0, 1.0, 1.0, 1.0], 'b': [0.0]}
    """
    names, heads = [], []
    for name, t in named:
        names.append(name)
        heads.append(t.detach().reshape(-1)[:per_tensor].to(torch.float64))
    if len({h.device for h in heads}) != 1:  # none, or spread over devices: a copy each
        return {name: h.to("cpu", copy=True) for name, h in zip(names, heads, strict=True)}
    host = torch.cat(heads).cpu()
    return dict(zip(names, torch.split(host, [h.numel() for h in heads]), strict=True))


def relative_change(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor]) -> float | None:
    """``||after - before|| / ||before||`` over the tensors both hold with the same shape (``inf``
    for a change from all zeros, 0 for none); ``None`` when they share no tensor.

    Example:
        >>> relative_change({"w": torch.tensor([3.0, 4.0])}, {"w": torch.tensor([3.0, 4.5]), "new": torch.ones(1)})
        0.1
        >>> relative_change({"w": torch.zeros(2)}, {"w": torch.zeros(2)}), relative_change({}, {})
        (0.0, None)
    """
    common = [k for k, v in before.items() if k in after and after[k].shape == v.shape]
    if not common:
        return None
    change = math.sqrt(sum(float(torch.sum((after[k] - before[k]) ** 2)) for k in common))
    norm = math.sqrt(sum(float(torch.sum(before[k] ** 2)) for k in common))
    if change == 0.0:
        return 0.0
    return change / norm if norm > 0 else math.inf


def verdict(status: TrendStatus, *, final: bool, capped: bool, frozen: bool) -> tuple[Action, TrendStatus]:
    """What to do with a trend at one look: ``(action, status)``; the status may become ``"flat"``.

    ``final``: the last look (the cap ``max_num_steps`` reached, or the end of training); ``capped``:
    the cap was reached; ``frozen``: the trainable weights moved by less than ``FROZEN_CHANGE`` of
    their norm over the window.

    A decrease of ``min_decrease`` passes (or warns when it stalled) at once, a rise fails at once.
    A loss that is not clearly going down while the weights did not move is flat for certain (the
    model cannot learn): ``fail`` at once, whatever the noise made of it. A flat (with evidence),
    slow or unclear trend is watched longer; at the last look slow passes, flat fails once watched
    up to the cap (a run that ends sooner gets a skip) and unclear is a skip: noise never makes an alarm.

    Example:
        >>> verdict("unclear", final=False, capped=False, frozen=False)
        ('watch', 'unclear')
        >>> verdict("unclear", final=False, capped=False, frozen=True)
        ('fail', 'flat')
        >>> verdict("flat", final=True, capped=True, frozen=False)
        ('fail', 'flat')
        >>> verdict("flat", final=True, capped=False, frozen=False)
        ('skip', 'flat')
    """
    if status in ("decreasing", "fitted"):
        return "pass", status
    if status == "stalled":
        return "warn", status
    if frozen and status != "slow":
        return "fail", "flat"
    if status == "rising":
        return "fail", status
    if not final:
        return "watch", status
    if status == "slow":
        return "pass", status
    return ("fail" if status == "flat" and capped else "skip"), status
