"""What a short run's loss curve shows: it levelled off, its step-to-step noise, two curves the same.

Pure functions on lists of losses, shared by the verdicts of ``InputIndependentBaseline``
(:mod:`recipe_callbacks.core.baseline_curves`) and ``OverfitOneBatch``
(:mod:`recipe_callbacks.core.overfit_curve`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

Verdict = Literal["pass", "warn", "fail"]


def plateau_window(points: int, minimum: int = 8) -> int:
    """How many recent points a plateau must last: a quarter of the curve, at least ``minimum``."""
    return max(minimum, points // 4)


def levelled_off(losses: Sequence[float], window: int | None = None, *, min_progress: float = 0.01) -> bool:
    """True when the last ``window`` points improved on the best loss before them by at most
    ``min_progress`` of the decrease made so far: the curve has levelled off (a flat curve counts).

    Needs at least ``2 * window`` points (default window: :func:`plateau_window`); a non-finite
    curve never counts as levelled off.

    Example:
        >>> levelled_off([2.0] * 16), levelled_off([2.0 - 0.1 * t for t in range(16)])
        (True, False)
        >>> levelled_off([2.0, 1.0] + [0.7] * 14)  # fell, then stopped
        True
    """
    w = plateau_window(len(losses)) if window is None else window
    if len(losses) < 2 * w or not all(math.isfinite(v) for v in losses):
        return False
    before, recent = min(losses[:-w]), min(losses[-w:])
    total = max(0.0, float(losses[0]) - min(before, recent))
    return before - recent <= min_progress * total + 1e-7 * max(1.0, abs(before))


def step_noise(losses: Sequence[float]) -> float:
    """The step-to-step noise of a loss curve (a standard deviation), from the second differences of
    its second half (a smooth trend has none); 0 for a deterministic smooth curve.

    Example:
        >>> step_noise([1.0 - 0.01 * t for t in range(20)]) < 1e-12
        True
        >>> 0.1 < step_noise([1.0 + (0.1 if t % 2 else -0.1) for t in range(40)]) < 0.3
        True
    """
    tail = [float(v) for v in losses[len(losses) // 2 :] if math.isfinite(v)]
    second = [abs(tail[i + 1] - 2 * tail[i] + tail[i - 1]) for i in range(1, len(tail) - 1)]
    if not second:
        return 0.0
    second.sort()
    return 1.4826 * second[len(second) // 2] / math.sqrt(6.0)


def identical_curves(a: Sequence[float], b: Sequence[float], rtol: float = 1e-6) -> bool:
    """True when ``a`` and ``b`` agree (to ``rtol``) at every point they share (at least one)."""
    n = min(len(a), len(b))
    return n > 0 and all(abs(a[i] - b[i]) <= rtol * max(1.0, abs(a[i])) for i in range(n))


def plateau_stop(losses: Sequence[float]) -> str:
    """Stop a run whose loss levelled off (see :func:`levelled_off`)."""
    return "levelled off" if levelled_off(losses) else ""
