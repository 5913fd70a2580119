"""What a one-off check costs, measured: its wall time over the median training step of the same run.

A one-off check runs before the run's training steps can be timed, so its cost is stated in two
moves: :class:`Stopwatch` times the check; :class:`StepClock` then times the next training steps
(the interval between consecutive training batches, the first one left out: it holds the one-off
checks themselves) and the cost in step equivalents is ``seconds / median step``.
"""

from __future__ import annotations

import statistics
import time
from types import TracebackType

import torch

#: The cost of one forward pass in training-step equivalents: a training step is a forward pass, a
#: backward pass (about twice a forward) and an update, so a forward is about a third of a step.
FORWARD_PASS_STEPS = 1.0 / 3.0


def _sync() -> None:
    """Wait for queued accelerator work, so that wall time covers it (only where CUDA is in use)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.synchronize()


class Stopwatch:
    """Wall time of a block, queued CUDA work included; ``seconds`` after the block.

    Example:
        >>> with Stopwatch() as watch:
        ...     _ = sum(range(1000))
        >>> watch.seconds > 0
        True
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        _sync()
        self._start = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _sync()
        self.seconds += time.perf_counter() - self._start


class StepClock:
    """The median training step of a run, from the intervals between the starts of consecutive
    training batches; :meth:`tick` at each batch start.

    The first interval is left out (the batch that starts it is the one the one-off checks run on);
    after ``intervals`` more it stops recording (a tick is then a counter check).

    Example:
        >>> clock = StepClock(intervals=3)
        >>> for t in (0.0, 5.0, 6.0, 7.5, 8.5, 9.0):
        ...     clock.tick(now=t)
        >>> clock.done, clock.median()
        (True, 1.0)
    """

    def __init__(self, intervals: int = 32) -> None:
        self.intervals = intervals
        self._times: list[float] = []

    @property
    def done(self) -> bool:
        return len(self._times) >= self.intervals + 2

    def tick(self, now: float | None = None) -> None:
        if not self.done:
            self._times.append(time.perf_counter() if now is None else now)

    def median(self) -> float | None:
        """The median interval, leaving out the first; ``None`` until there is one more."""
        steps = [b - a for a, b in zip(self._times[1:], self._times[2:], strict=False)]
        return statistics.median(steps) if steps else None

    def reset(self) -> None:
        self._times.clear()
