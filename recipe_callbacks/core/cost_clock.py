"""What a check costs, in training steps: the time spent in its own work over the mean step time.

A check wraps its own work in :meth:`CostClock.own` and brackets the training steps it sees with
:meth:`CostClock.step_started` / :meth:`CostClock.step_ended`; :attr:`CostClock.cost_steps` is its
time over the mean duration of those steps without its own share. Plain wall-clock arithmetic:
nothing here imports Lightning.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager


class CostClock:
    """Own time and step time of one check.

    Example:
        >>> clock = CostClock()
        >>> clock.step_started()
        >>> with clock.own():
        ...     pass
        >>> clock.step_ended()
        >>> clock.cost_steps >= 0.0
        True
    """

    def __init__(self, max_steps: int = 20) -> None:
        self.max_steps = max_steps
        self.own_seconds = 0.0
        self._step_seconds = 0.0
        self._own_in_steps = 0.0
        self._steps = 0
        self._started: float | None = None
        self._own_at_start = 0.0

    @contextmanager
    def own(self) -> Iterator[None]:
        """Count the body as the check's own work."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.own_seconds += time.perf_counter() - start

    def step_started(self) -> None:
        if self._steps < self.max_steps:
            self._started = time.perf_counter()
            self._own_at_start = self.own_seconds

    def step_ended(self) -> None:
        if self._started is None:
            return
        self._step_seconds += time.perf_counter() - self._started
        self._own_in_steps += self.own_seconds - self._own_at_start
        self._steps += 1
        self._started = None

    @property
    def mean_step_seconds(self) -> float:
        """Mean duration of the timed steps without this check's own work (NaN before any)."""
        if not self._steps:
            return math.nan
        return max(self._step_seconds - self._own_in_steps, 1e-9) / self._steps

    @property
    def cost_steps(self) -> float:
        """Own time in training-step equivalents (NaN before a step was timed)."""
        return self.own_seconds / self.mean_step_seconds if self._steps else math.nan
