"""The overfit-one-batch verdict (recipe step 2h): a model trained on a handful of samples must memorise them.

:func:`overfit_stop` ends the run as soon as the curve is decisive; :func:`overfit_verdict` judges it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from recipe_callbacks.core.loss_curves import Verdict, levelled_off, plateau_stop
from recipe_callbacks.core.short_training import StopRule

STEADY_RATIO = 0.8
"""A steady fall to this share of the loss at init counts as on course (:func:`falling_steadily`)."""
FROZEN_STEADY_RATIO = 0.6
"""The same for a model with frozen parameters: only what trains was seen to learn, so it must show more."""


def overfit_stop(target: float, allow_negative: bool, *, steady_ratio: float = STEADY_RATIO) -> StopRule:
    """When to stop a run that tries to memorise: the loss reached ``target``, went negative
    (unless allowed), levelled off, or is falling steadily below ``steady_ratio`` of where it
    started (:func:`falling_steadily`)."""

    def rule(losses: Sequence[float]) -> str:
        value = losses[-1]
        if value <= target and (allow_negative or value >= 0):
            return "reached"
        if value < 0 and not allow_negative:
            return "negative"
        if plateau_stop(losses):
            return "levelled off"
        if falling_steadily(losses, ratio=steady_ratio):
            return "falling steadily"
        return ""

    return rule


def falling_steadily(losses: Sequence[float], min_points: int = 16, ratio: float = 0.8) -> bool:
    """Evidence that a run fits its batch, short of memorising it: after at least ``min_points``
    points the loss is at most ``ratio`` of where it started (it fell by 20%), the last point is
    the lowest, the curve has not levelled off, and its recent fall (over the last quarter, at
    least 4 points) keeps at least a quarter of its average rate: it is not bending into a plateau.

    The bugs this check looks for (frozen or unused parameters, a learning rate of zero, a wrong
    sign) leave a flat, levelled-off, rising or negative curve; memorising a language model's batch
    fully would cost hundreds of steps.

    Example:
        >>> falling_steadily([2.0 * 0.95**t for t in range(16)]), falling_steadily([2.0, 0.9] + [0.9] * 14)
        (True, False)
        >>> falling_steadily([2.0 - 0.03 * t for t in range(16)])  # a straight fall of 22%
        True
    """
    n = len(losses)
    if n < min_points or not all(math.isfinite(v) for v in losses) or not losses[0] > 0:
        return False
    if not (min(losses) <= ratio * losses[0] and losses[-1] < min(losses[:-1]) + 1e-12) or levelled_off(losses):
        return False
    w = max(4, n // 4)
    recent = (losses[-w - 1] - losses[-1]) / w
    return recent >= 0.25 * (losses[0] - losses[-1]) / (n - 1)


@dataclass
class OverfitVerdict:
    """One batch overfitted (or not), and why not.

    ``decrease_fraction`` is ``(initial - lowest) / |initial|``; ``levelled_off`` says the curve
    stopped improving (see :func:`levelled_off`).
    """

    status: Verdict
    initial: float
    lowest: float
    final: float
    reached: bool
    negative: bool
    rising: bool
    levelled_off: bool
    decrease_fraction: float
    projected_steps: float = math.nan


def projected_steps(losses: Sequence[float], target: float) -> float:
    """Steps still needed to reach ``target`` at the rate of the last third of the curve (a straight
    line in log loss); ``inf`` when the loss is not falling there, ``nan`` when it cannot be told.

    Example:
        >>> round(projected_steps([1.0, 0.5, 0.25, 0.125], 0.0625), 3)
        1.0
        >>> projected_steps([1.0, 1.0, 1.0], 0.1)
        inf
    """
    tail = [float(v) for v in losses[-max(2, len(losses) // 3) :]]
    if len(tail) < 2 or not all(math.isfinite(v) and v > 0 for v in tail) or not target > 0:
        return math.nan
    slope = (math.log(tail[-1]) - math.log(tail[0])) / (len(tail) - 1)
    if slope >= 0:
        return math.inf
    return max(0.0, (math.log(target) - math.log(tail[-1])) / slope)


def overfit_target(initial: float, target_fraction: float, target_loss: float | None) -> float:
    """The loss that counts as memorised: ``target_loss`` when given, else ``target_fraction`` of
    the loss at init (a cross-entropy or a squared error can reach a tenth of where it started on a
    handful of samples; the fraction needs no knowledge of the loss's scale).

    Example:
        >>> overfit_target(2.3, 0.1, None), overfit_target(2.3, 0.1, 0.05)
        (0.22999999999999998, 0.05)
    """
    if target_loss is not None:
        return target_loss
    return target_fraction * initial if math.isfinite(initial) and initial > 0 else 0.0


def overfit_verdict(
    losses: Sequence[float],
    target_loss: float,
    *,
    allow_negative: bool = False,
    min_decrease: float = 0.01,
    steady_ratio: float = STEADY_RATIO,
    on_course: float = 3.0,
) -> OverfitVerdict:
    """Judge the loss curve of a model trained on one fixed batch.

    ``pass`` when the lowest loss is ``<= target_loss`` (and not negative, unless
    ``allow_negative``), or when it is still falling steadily at a rate that reaches the target
    within ``on_course`` times the steps taken so far (:func:`projected_steps`), or it fell by a
    fifth and is still falling steadily (:func:`falling_steadily`). Otherwise ``fail``
    when the loss went negative, rose, is not finite, fell by less than ``min_decrease`` of its
    initial value, or levelled off above the target; ``warn`` when it is still falling, too slowly
    to tell (more steps would).

    Example:
        >>> overfit_verdict([2.3, 0.5, 0.01], 0.05).status
        'pass'
        >>> overfit_verdict([2.3 * 0.7**t for t in range(12)], 0.01).status  # falling, on course
        'pass'
        >>> overfit_verdict([2.3 - 0.003 * t for t in range(20)], 0.05).status  # slow, still falling
        'warn'
        >>> overfit_verdict([2.3, 1.5] + [1.4] * 16, 0.05).status  # levelled off
        'fail'
        >>> overfit_verdict([2.3, 2.3, 2.3], 0.05).status  # flat
        'fail'
        >>> v = overfit_verdict([2.3, -5.0, -40.0], 0.05)
        >>> v.status, v.negative
        ('fail', True)
    """
    if not losses:
        raise ValueError("overfit_verdict needs a non-empty loss curve")
    finite = [v for v in losses if math.isfinite(v)]
    initial = float(losses[0])
    lowest = min(finite) if finite else math.nan
    final = float(losses[-1])
    negative = not allow_negative and lowest < 0
    rising = math.isfinite(final) and final > initial + 1e-6 * max(1.0, abs(initial))
    ok = math.isfinite(initial) and initial != 0 and len(finite) == len(losses)
    decrease = (initial - lowest) / abs(initial) if ok else math.nan
    levelled = levelled_off(losses)
    reached = math.isfinite(lowest) and lowest <= target_loss and not negative
    projected = projected_steps(losses, target_loss) if ok and not levelled else math.nan
    status: Verdict
    if reached:
        status = "pass"
    elif negative or rising or not ok or not decrease >= min_decrease or levelled:
        status = "fail"
    elif projected <= on_course * (len(losses) - 1) or falling_steadily(losses, ratio=steady_ratio):
        status = "pass"
    else:
        status = "warn"
    return OverfitVerdict(status, initial, lowest, final, reached, negative, rising, levelled, decrease, projected)
