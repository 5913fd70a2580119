"""Following a run's learning rate against the planned schedule, step by step.

:class:`ScheduleTracker` is the during-training half of NoLRDecayWarning: it counts the optimizer
steps of every optimizer, compares the LR each step used with the preview
(:func:`recipe_callbacks.core.lr_schedule.simulate_schedule`), keeps a bounded curve of the LR
actually used for the chart, and counts how often Lightning would have stepped each
``ReduceLROnPlateau`` and each scheduler under manual optimisation, so that the callback can say
when one was not stepped. It returns numbers; the callback writes the Findings. Nothing here
imports Lightning: the loop's events come in as calls.

With one optimizer, a step whose LR is that of the step before, inside a stretch where the preview's
LR does not change either and before the next logged step, costs one comparison of two lists: its
comparison with the preview and its chart point are those of the step before, and are counted in one
go when the stretch ends (at the next step that differs, or when the counts are read).
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from recipe_callbacks.core.lr_schedule import (
    LoopPlan,
    PlannedSchedule,
    ScheduledStep,
    ScheduleIssue,
    adam_lr_issue,
    decayed_bias_and_norm_params,
)

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


def record_returned(owner: Any, name: str, seen: Callable[[Any], None]) -> Callable[[], None]:
    """Wrap the method ``name`` of ``owner`` (on the instance) so that ``seen`` gets what it returns
    (the value passed on unchanged, the method run exactly once per call); returns the function that
    puts the method back (a no-op once something else replaced the wrapper).

    Example:
        >>> class M:
        ...     def f(self) -> int:
        ...         return 3
        >>> m, got = M(), []
        >>> unwrap = record_returned(m, "f", got.append)
        >>> m.f(), got
        (3, [3])
        >>> unwrap(); "f" in m.__dict__
        False
    """
    previous = owner.__dict__.get(name)
    original = getattr(owner, name)

    @functools.wraps(original)
    def recording(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        seen(out)
        return out

    def unwrap() -> None:
        if owner.__dict__.get(name) is recording:
            if previous is None:
                del owner.__dict__[name]
            else:
                owner.__dict__[name] = previous

    owner.__dict__[name] = recording
    return unwrap


def scheduled_steps(configs: Sequence[Any], optimizers: Sequence[Any]) -> list[ScheduledStep]:
    """Lightning's scheduler configurations (``scheduler``, ``interval``, ``frequency``,
    ``reduce_on_plateau``) as :class:`ScheduledStep` entries, each with its optimizer's index."""
    return [
        ScheduledStep(
            c.scheduler,
            "step" if c.interval == "step" else "epoch",
            int(c.frequency),
            bool(c.reduce_on_plateau),
            next((i for i, o in enumerate(optimizers) if o is c.scheduler.optimizer), 0),
        )
        for c in configs
    ]


def loop_plan(trainer: Any) -> LoopPlan:
    """The loop's geometry read from a Trainer (batches per epoch, limits, accumulation, resume point)."""
    return LoopPlan(
        batches_per_epoch=float(trainer.num_training_batches),
        max_epochs=-1 if trainer.max_epochs is None else int(trainer.max_epochs),
        max_steps=int(trainer.max_steps),
        accumulate_grad_batches=int(trainer.accumulate_grad_batches),
        accumulate_on_final_batch=bool(trainer.strategy.handles_gradient_accumulation),
        start_epoch=int(trainer.current_epoch),
        start_step=int(trainer.global_step),
    )


def plan_levels(plan: PlannedSchedule) -> tuple[float, float]:
    """The highest planned LR of any group and the last planned LR of the first (0.0, 0.0 for an empty plan)."""
    if not plan.steps.size:
        return 0.0, 0.0
    return max(float(plan.group_lrs(g).max()) for g in range(len(plan.groups))), float(plan.group_lrs(0)[-1])


def optimizer_notes(
    module: torch.nn.Module, plan: PlannedSchedule, optimizers: Sequence[torch.optim.Optimizer], adam_lr_factor: float
) -> list[ScheduleIssue]:
    """The notes on the optimizers: Adam/AdamW far from 3e-4 (the first such group), weight decay on
    biases and normalisation weights (``facts["names"]``: the parameters)."""
    notes: list[ScheduleIssue] = []
    for g, (opt_i, group_i) in enumerate(plan.groups):
        opt = optimizers[opt_i]
        if not isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
            continue
        lr = float(plan.group_lrs(g).max()) if plan.steps.size else float(opt.param_groups[group_i]["lr"])
        note = adam_lr_issue(type(opt).__name__, lr, adam_lr_factor)
        if note is not None:
            notes.append(note)
            break
    decayed = decayed_bias_and_norm_params(module, optimizers)
    if decayed:
        notes.append(ScheduleIssue("weight_decay_bias_norm", "warn", "weight_decay_bias_norm",
                                   {"decayed_bias_norm_params": float(len(decayed))}, {"names": decayed}))
    return notes


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
        self._run_ends: list[int] = []  # the rows after which the preview's LR changes
        self._first = 0
        self._stride = 1
        self._chart_stride = 1
        self._compared = 0
        self._mismatched = 0
        self._first_mismatch: Mismatch | None = None
        self._chart: dict[int, list[float]] = {}
        # the deferred steps (one optimizer only): from step count ``_run_first`` on, the steps before
        # ``_run_until`` at the LRs ``_run`` are alike (see the module docstring)
        self._run: list[float] | None = None
        self._run_first = 0
        self._run_until = 0

    @property
    def compared(self) -> int:
        """The optimizer steps whose LR was compared with the preview."""
        self._settle(self.made())
        return self._compared

    @property
    def mismatched(self) -> int:
        """The compared steps whose LR differed from the preview."""
        self._settle(self.made())
        return self._mismatched

    @property
    def first_mismatch(self) -> Mismatch | None:
        """The first compared step whose LR differed from the preview, or ``None``."""
        self._settle(self.made())
        return self._first_mismatch

    @property
    def actual_chart(self) -> dict[int, list[float]]:
        """``{optimizer step: LR of every group}`` for the chart, at most about ``2 * CHART_POINTS`` steps."""
        self._settle(self.made())
        return self._chart

    def follow(self, plan: PlannedSchedule) -> None:
        """Compare the coming steps with ``plan``."""
        self.plan = plan
        self._chart_stride = plan.stride * max(1, math.ceil(len(plan.steps) / CHART_POINTS))
        # The per-step comparison reads plain Python lists: numpy indexing costs more than the step's
        # whole budget on a fast accelerator step.
        self._rows = plan.lrs.tolist()
        changes = (plan.lrs[1:] != plan.lrs[:-1]).any(axis=1) if len(self._rows) > 1 else []
        self._run_ends = [int(k) for k in np.flatnonzero(changes)]
        self._first = int(plan.steps[0]) if plan.steps.size else 0
        self._stride = plan.stride

    # ------------------------------------------------------------------ the loop's events
    def optimizer_step(self, index: int, lrs: Sequence[float]) -> tuple[int, int, bool]:
        """Optimizer ``index`` is about to step with ``lrs`` (one per param group): compare them
        with the preview and keep them for the chart. Returns the run's optimizer step, the number
        of the optimizer's first group across optimizers, and whether this step's LR is to be logged."""
        if index == 0 and self.alike(lrs):
            return self.start_step + self.opt_steps[0] - 1, 0, False
        self.stepped_this_batch = True
        n = self.opt_steps[index]
        self.opt_steps[index] = n + 1
        return self._step(index, n, lrs)

    def alike(self, lrs: Sequence[float]) -> bool:
        """The sole optimizer is about to step at the LRs of the step before, within a deferred stretch:
        counted (compared and charted when the stretch ends; never a logged step) and ``True``; else
        ``False`` and nothing done (:meth:`optimizer_step` takes it)."""
        n = self.opt_steps[0]
        if n < self._run_until and lrs == self._run:
            self.opt_steps[0] = n + 1
            self.stepped_this_batch = True
            return True
        return False

    def _step(self, index: int, n: int, lrs: Sequence[float]) -> tuple[int, int, bool]:
        """One step compared and charted on its own (the steps deferred before it counted first)."""
        self._settle(n)
        self._run, self._run_until = None, 0
        step, offset = self.start_step + n, self.group_offset[index]
        if self.plan is None:
            return step, offset, n % self.log_every == 0
        k, off_stride = divmod(step - self._first, self._stride)  # as PlannedSchedule.planned, on lists
        if k >= 0 and not off_stride and k < len(self._rows):
            self._compare(step, offset, lrs, self._rows[k])
        if n % self._chart_stride == 0 and len(self._chart) <= 2 * CHART_POINTS:
            row = self._chart.setdefault(step, [math.nan] * len(self.plan.groups))
            row[offset : offset + len(lrs)] = lrs
        if len(self.opt_steps) == 1:
            self._defer(n + 1, list(lrs))
        return step, offset, n % self.log_every == 0

    def _defer(self, first: int, lrs: list[float]) -> None:
        """Let the steps from step count ``first`` on at ``lrs`` be counted later, up to the next
        logged step and to the end of the preview's stretch of one LR."""
        until = first + (-first) % self.log_every  # the next logged step
        s = self.start_step + first
        k = max(0, -((self._first - s) // self._stride))  # the first preview row at or after it
        if k < len(self._rows):
            end = bisect.bisect_left(self._run_ends, k)
            if end < len(self._run_ends):  # the preview's LR changes after row _run_ends[end]
                until = min(until, self._first + (self._run_ends[end] + 1) * self._stride - self.start_step)
        self._run, self._run_first, self._run_until = lrs, first, until

    def _settle(self, end: int) -> None:
        """Count the deferred steps before step count ``end``: their comparisons (all alike, one
        preview row) and their chart points."""
        first, lrs = self._run_first, self._run
        if lrs is None or end <= first or self.plan is None:
            return
        self._run_first = end
        s_lo, s_hi, stride = self.start_step + first, self.start_step + end, self._stride
        k_lo = max(0, -((self._first - s_lo) // stride))
        k_hi = min(len(self._rows), -((self._first - s_hi) // stride))
        if k_hi > k_lo:
            before = self._mismatched
            self._compare(self._first + k_lo * stride, 0, lrs, self._rows[k_lo])
            self._compared += k_hi - k_lo - 1
            if self._mismatched > before:
                self._mismatched += k_hi - k_lo - 1
        width = len(self.plan.groups)
        for n in range(first + (-first) % self._chart_stride, end, self._chart_stride):
            if len(self._chart) > 2 * CHART_POINTS:
                break
            self._chart.setdefault(self.start_step + n, [math.nan] * width)[: len(lrs)] = lrs

    def _compare(self, step: int, offset: int, lrs: Sequence[float], planned: list[float]) -> None:
        self._compared += 1
        if list(lrs) == planned[offset : offset + len(lrs)] and not self.skip_groups:
            return  # the usual case, exactly the preview's floats
        for j, used in enumerate(lrs):
            g = offset + j
            if g in self.skip_groups:
                continue
            expected = planned[g] if g < len(planned) else math.nan
            if not math.isclose(used, expected, rel_tol=1e-6, abs_tol=1e-12):
                self._mismatched += 1
                if self._first_mismatch is None:
                    self._first_mismatch = Mismatch(step, g, expected, used)
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

    def scheduler_differences(self, plan: PlannedSchedule) -> tuple[dict[str, float], list[tuple[int, int]]]:
        """After a complete run: ``scheduler_<k>_steps`` of every simulated scheduler, and ``(k, stepped)``
        of those that stepped another number of times than the preview planned."""
        values: dict[str, float] = {}
        differ: list[tuple[int, int]] = []
        for k, (e, actual_k) in enumerate(zip(self.entries, self.scheduler_steps(), strict=True)):
            if e.reduce_on_plateau:
                continue
            values[f"scheduler_{k}_steps"] = float(actual_k)
            if actual_k != plan.scheduler_steps[k]:
                differ.append((k, actual_k))
        return values, differ

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
