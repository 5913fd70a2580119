"""Following a run's learning rate against the planned schedule, step by step.

:class:`ScheduleTracker` is the during-training half of NoLRDecayWarning: it counts the optimizer
steps of every optimizer, compares the LR each step used with the preview
(:func:`recipe_callbacks.core.lr_schedule.simulate_schedule`), keeps a bounded curve of the LR
actually used for the chart, and counts how often Lightning would have stepped each
``ReduceLROnPlateau`` and each scheduler under manual optimisation, so that the callback can say
when one was not stepped. It returns numbers; the callback writes the Findings. Nothing here
imports Lightning: the loop's events come in as calls.

A step that is not compared (the preview's recorded steps are every ``stride``-th) costs a
division and a comparison; a compared one reads the LR of each param group once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from recipe_callbacks.core.lr_schedule import PlannedSchedule, ScheduledStep

#: At most about this many points of the actual LR are kept for the chart.
CHART_POINTS = 1000
#: Keys of Lightning's scheduler config that only work inside the "lr_scheduler" dict.
SCHEDULER_ONLY_KEYS: tuple[str, ...] = ("interval", "frequency", "strict", "name", "reduce_on_plateau")


def misplaced_scheduler_keys(optim_conf: Any) -> list[str]:
    """Scheduler keys (``interval``, ``frequency``, ...) at the top level of what
    ``configure_optimizers`` returned, where Lightning ignores them.

    Example:
        >>> misplaced_scheduler_keys({"optimizer": None, "lr_scheduler": None, "interval": "step"})
        ['interval']
        >>> misplaced_scheduler_keys({"optimizer": None, "lr_scheduler": {"scheduler": None, "interval": "step"}})
        []
    """
    if isinstance(optim_conf, dict):
        dicts = [optim_conf]
    elif isinstance(optim_conf, (list, tuple)):
        dicts = [d for d in optim_conf if isinstance(d, dict)]
    else:
        dicts = []
    return sorted({k for d in dicts for k in d if k in SCHEDULER_ONLY_KEYS})


def scheduler_position(entry: ScheduledStep) -> int:
    """How often the scheduler has been stepped so far (its ``last_epoch``)."""
    return int(getattr(entry.scheduler, "last_epoch", 0))


@dataclass(frozen=True)
class Mismatch:
    """The first optimizer step whose LR differed from the preview."""

    step: int
    group: int
    planned: float
    used: float


@dataclass
class ScheduleTracker:
    """The run's LR against the preview, and the scheduler steps Lightning would have made.

    Args:
        entries: the real schedulers with their Lightning configuration, in the Trainer's order.
        group_counts: param groups per optimizer, in the Trainer's order.
        start_step: the global step the run starts (or resumes) at.
        log_every: the optimizer steps between two logged LRs.

    Example:
        >>> t = ScheduleTracker([], [1], start_step=0, log_every=2)
        >>> [t.optimizer_step(0, [0.1]) for _ in range(3)]
        [(0, 0, True), (1, 0, False), (2, 0, True)]
    """

    entries: list[ScheduledStep]
    group_counts: list[int]
    start_step: int = 0
    log_every: int = 1
    plan: PlannedSchedule | None = None
    compared: int = 0
    mismatched: int = 0
    first_mismatch: Mismatch | None = None
    actual_chart: dict[int, list[float]] = field(default_factory=dict)
    epochs_done: int = 0
    batches_this_epoch: int = 0
    stepped_this_batch: bool = False

    def __post_init__(self) -> None:
        self.opt_steps = [0] * len(self.group_counts)
        self.group_offset = [sum(self.group_counts[:i]) for i in range(len(self.group_counts))]
        self.start_positions = [scheduler_position(e) for e in self.entries]
        self.plateau_expected = [0] * len(self.entries)
        self.plateau_reported = [0] * len(self.entries)
        self.manual_reported: set[int] = set()
        self.has_plateau = any(e.reduce_on_plateau for e in self.entries)
        self.skip_groups = {
            self.group_offset[e.optimizer_index] + j
            for e in self.entries
            if e.reduce_on_plateau
            for j in range(self.group_counts[e.optimizer_index])
        }
        self._rows: list[list[float]] = []
        self._first = 0
        self._stride = 1
        self._chart_stride = 1

    def follow(self, plan: PlannedSchedule) -> None:
        """Compare the coming steps with ``plan``."""
        self.plan = plan
        self._chart_stride = plan.stride * max(1, math.ceil(len(plan.steps) / CHART_POINTS))
        # The per-step comparison reads plain Python lists: numpy indexing costs more than the step's
        # whole budget on a fast accelerator step.
        self._rows = plan.lrs.tolist()
        self._first = int(plan.steps[0]) if plan.steps.size else 0
        self._stride = plan.stride

    # ------------------------------------------------------------------ the loop's events
    def optimizer_step(self, index: int, lrs: Sequence[float]) -> tuple[int, int, bool]:
        """Optimizer ``index`` is about to step with ``lrs`` (one per param group): compare them
        with the preview and keep them for the chart. Returns the run's optimizer step, the number
        of the optimizer's first group across optimizers, and whether this step's LR is to be logged."""
        self.stepped_this_batch = True
        n = self.opt_steps[index]
        self.opt_steps[index] = n + 1
        step, offset = self.start_step + n, self.group_offset[index]
        if self.plan is None:
            return step, offset, n % self.log_every == 0
        k, off_stride = divmod(step - self._first, self._stride)  # as PlannedSchedule.planned, on lists
        if k >= 0 and not off_stride and k < len(self._rows):
            self._compare(step, offset, lrs, self._rows[k])
        if n % self._chart_stride == 0 and len(self.actual_chart) <= 2 * CHART_POINTS:
            row = self.actual_chart.setdefault(step, [math.nan] * len(self.plan.groups))
            row[offset : offset + len(lrs)] = lrs
        return step, offset, n % self.log_every == 0

    def _compare(self, step: int, offset: int, lrs: Sequence[float], planned: list[float]) -> None:
        self.compared += 1
        if list(lrs) == planned[offset : offset + len(lrs)] and not self.skip_groups:
            return  # the usual case, exactly the preview's floats
        for j, used in enumerate(lrs):
            g = offset + j
            if g in self.skip_groups:
                continue
            expected = planned[g] if g < len(planned) else math.nan
            if not math.isclose(used, expected, rel_tol=1e-6, abs_tol=1e-12):
                self.mismatched += 1
                if self.first_mismatch is None:
                    self.first_mismatch = Mismatch(step, g, expected, used)
                break

    def batch_start(self) -> None:
        self.stepped_this_batch = False

    def batch_end(self, batch_idx: int, automatic: bool) -> None:
        """A training batch ended: count the ``interval="step"`` plateau steps it would have made."""
        self.batches_this_epoch += 1
        if not self.has_plateau or not automatic or not self.stepped_this_batch:
            return
        for k, e in enumerate(self.entries):
            if e.reduce_on_plateau and e.interval == "step" and (batch_idx + 1) % e.frequency == 0:
                self.plateau_expected[k] += 1

    def epoch_end(self, current_epoch: int, finished: bool, automatic: bool) -> None:
        """A training epoch ended (``finished``: all its batches ran): count the epoch plateau steps."""
        self.epochs_done += 1
        if not self.has_plateau or not automatic or not finished:
            return
        for k, e in enumerate(self.entries):
            if e.reduce_on_plateau and e.interval == "epoch" and (current_epoch + 1) % e.frequency == 0:
                self.plateau_expected[k] += 1

    # ------------------------------------------------------------------ what the run missed
    def missed_plateaus(self, *, final: bool = False) -> list[tuple[int, int, int]]:
        """``(k, missed, expected)`` of each ``ReduceLROnPlateau`` to report now: at its first
        missed step, and once more at the end when more were missed since."""
        out: list[tuple[int, int, int]] = []
        if not self.has_plateau:
            return out
        for k, e in enumerate(self.entries):
            if not e.reduce_on_plateau or not self.plateau_expected[k]:
                continue
            missed = self.plateau_expected[k] - (scheduler_position(e) - self.start_positions[k])
            reported = self.plateau_reported[k]
            if missed <= 0 or (reported and (not final or missed == reported)):
                continue
            self.plateau_reported[k] = missed
            out.append((k, missed, self.plateau_expected[k]))
        return out

    def not_stepped_manually(self, *, at_end: bool) -> list[tuple[int, int, int]]:
        """``(k, stepped, due)`` of each scheduler that manual optimisation never stepped although
        the preview expected ``due`` steps by now (each reported once)."""
        out: list[tuple[int, int, int]] = []
        for k, e in enumerate(self.entries):
            stepped = scheduler_position(e) - self.start_positions[k]
            if k in self.manual_reported or stepped > 0:
                continue
            if self.plan is not None:
                by_epoch = self.plan.scheduler_steps_by_epoch
                done = len(by_epoch) if at_end else min(self.epochs_done, len(by_epoch))
                due = by_epoch[done - 1][k] if done else 0
            else:
                due = 1 if self.epochs_done else 0
            if due > 0:
                self.manual_reported.add(k)
                out.append((k, stepped, due))
        return out

    def scheduler_steps(self) -> list[int]:
        """How often each scheduler stepped during this run."""
        return [scheduler_position(e) - start for e, start in zip(self.entries, self.start_positions, strict=True)]

    def made(self) -> int:
        """Optimizer steps made in this run (the most of any optimizer)."""
        return max(self.opt_steps, default=0)

    def chart(self) -> tuple[list[int], dict[str, list[float]]]:
        """The steps of the actual-LR chart and its series, ``planned <g>`` and ``actual <g>`` per group."""
        xs = sorted(self.actual_chart)
        series: dict[str, list[float]] = {}
        if self.plan is None:
            return xs, series
        planned = [self.plan.planned(x) for x in xs]
        for g in range(len(self.plan.groups)):
            series[f"planned {g}"] = [float(p[g]) if p is not None else math.nan for p in planned]
            series[f"actual {g}"] = [self.actual_chart[x][g] for x in xs]
        return xs, series
