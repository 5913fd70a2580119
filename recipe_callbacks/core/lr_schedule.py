"""Learning-rate schedules planned before the first step, and the ways they silently go wrong.

Recipe step 3c: *do not trust learning rate decay defaults*. A schedule copied from other code
decays at the wrong time for this run: a cosine whose ``T_max`` was counted in epochs while the
scheduler steps every batch wraps around and rises again; a OneCycle ``total_steps`` that does not
match the run never finishes (or crashes); the LR reaches ~0 long before the end. This module

1. copies optimizers and schedulers so that they can be stepped without touching the real ones
   (:func:`copy_for_simulation`),
2. steps the copies through the whole planned run exactly as Lightning 2.x's training loop steps
   the real ones (:func:`simulate_schedule`), giving the LR every parameter group will use at every
   optimizer step, and
3. judges the planned curve (:func:`decay_profile`, :func:`length_issues`, :func:`analyze_schedule`).

It never imports Lightning: the loop's geometry comes in as numbers (:class:`LoopPlan`).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler as sched

ADAM_SAFE_LR = 3e-4
"""The recipe's "Adam with 3e-4 is safe" learning rate (row 3a)."""

Interval = Literal["step", "epoch"]
Stage = Literal["early", "final"]
# Schedulers that rise again by design: a rise after a decay is not a mistake for them.
CYCLIC_BY_DESIGN: tuple[type, ...] = (sched.CosineAnnealingWarmRestarts, sched.CyclicLR)


# --------------------------------------------------------------------------- the loop's geometry
@dataclass(frozen=True)
class LoopPlan:
    """How many optimizer steps a run makes, and where its epochs end.

    Args:
        batches_per_epoch: training batches per epoch (``math.inf`` for an endless loader).
        max_epochs: epochs to run; ``-1`` for no limit (then ``max_steps`` ends the run).
        max_steps: optimizer steps to run; ``-1`` for no limit.
        accumulate_grad_batches: batches per optimizer step.
        accumulate_on_final_batch: the strategy accumulates across the end of an epoch (DeepSpeed);
            otherwise the last batch of an epoch always steps the optimizer, as Lightning does.
        start_epoch: the epoch the run starts (or resumes) at.
        start_step: optimizer steps already made (when resuming).

    Example:
        >>> LoopPlan(batches_per_epoch=5, max_epochs=3, accumulate_grad_batches=2).total_steps()
        9
    """

    batches_per_epoch: float
    max_epochs: int = 1
    max_steps: int = -1
    accumulate_grad_batches: int = 1
    accumulate_on_final_batch: bool = False
    start_epoch: int = 0
    start_step: int = 0

    def steps_per_epoch(self) -> float:
        """Optimizer steps in one full epoch."""
        if math.isinf(self.batches_per_epoch):
            return math.inf
        b, a = int(self.batches_per_epoch), self.accumulate_grad_batches
        return b // a if self.accumulate_on_final_batch else math.ceil(b / a)

    def total_steps(self) -> float:
        """Optimizer steps of the whole run, counted from step 0 (``math.inf`` when unbounded)."""
        per_epoch = self.steps_per_epoch()
        by_epochs = math.inf if self.max_epochs < 0 else per_epoch * self.max_epochs
        if self.max_epochs >= 0 and per_epoch == 0:
            by_epochs = 0
        limit = math.inf if self.max_steps < 0 else self.max_steps
        total = min(by_epochs, limit)
        return total if math.isinf(total) else int(total)

    def epoch_batches(self) -> Iterator[tuple[int, bool, bool]]:
        """``(batch_idx, steps_optimizer, is_last_batch)`` for every batch of one epoch.

        Lightning steps the optimizer when ``batch_idx + 1`` is a multiple of the accumulation, and
        on the last batch of the epoch (unless the strategy accumulates across epochs).
        """
        b = 0
        while b < self.batches_per_epoch:
            ready = b + 1
            is_last = ready == self.batches_per_epoch
            steps = ready % self.accumulate_grad_batches == 0 or (is_last and not self.accumulate_on_final_batch)
            yield b, steps, is_last
            b += 1


@dataclass
class ScheduledStep:
    """One configured scheduler and how Lightning steps it (its ``LRSchedulerConfig``).

    Args:
        scheduler: the (copied) torch LR scheduler.
        interval: ``"step"`` (after optimizer steps) or ``"epoch"`` (at the end of an epoch).
        frequency: step it every ``frequency`` intervals; for ``"step"`` Lightning counts
            ``batch_idx + 1`` within the epoch, for ``"epoch"`` ``current_epoch + 1``.
        reduce_on_plateau: a metric-driven scheduler (not simulated: its decisions need metrics).
        optimizer_index: which of the optimizers it drives.
    """

    scheduler: Any
    interval: Interval = "epoch"
    frequency: int = 1
    reduce_on_plateau: bool = False
    optimizer_index: int = 0

    @property
    def name(self) -> str:
        return type(self.scheduler).__name__


# --------------------------------------------------------------------------- copies
def _copy_optimizer(optimizer: Optimizer) -> Optimizer:
    # copy.copy goes through Optimizer.__getstate__/__setstate__: a new object without the step
    # wrapper a scheduler patched onto the original; then nothing mutable is left shared.
    clone = copy.copy(optimizer)
    clone.defaults = dict(optimizer.defaults)
    clone.state = defaultdict(dict)
    clone.param_groups = [
        {k: ([torch.zeros(1) for _ in v] if k == "params" else copy.deepcopy(v)) for k, v in group.items()}
        for group in optimizer.param_groups
    ]
    clone._opt_called = True  # type: ignore[attr-defined]  # silences "scheduler before optimizer"

    def step(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a copy made for the LR simulation is never stepped as an optimizer")

    step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]  # what schedulers look for
    clone.step = step  # type: ignore[method-assign,assignment]
    return clone


def copy_for_simulation(
    optimizers: Sequence[Optimizer], schedulers: Sequence[Any], keep: Iterable[object] = ()
) -> tuple[list[Optimizer], list[Any]]:
    """Copies of ``optimizers`` and ``schedulers`` that can be stepped without touching the originals.

    Each optimizer copy has the same class and param-group hyperparameters, one-element placeholder
    tensors instead of the parameters and no state (moments are not needed for the LR). The
    schedulers are deep-copied with their ``optimizer`` pointing at the copies. Objects in ``keep``
    (the model, the trainer: what a ``LambdaLR`` bound method may reach) are shared, not copied.

    Raises:
        ValueError: when a scheduler copy does not drive one of the optimizer copies.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(2))
        >>> opt = torch.optim.SGD([p], lr=1.0)
        >>> s = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        >>> (opt_c,), (s_c,) = copy_for_simulation([opt], [s])
        >>> s_c.step()
        >>> opt_c.param_groups[0]["lr"], opt.param_groups[0]["lr"]
        (0.5, 1.0)
    """
    clones = [_copy_optimizer(opt) for opt in optimizers]
    memo: dict[int, Any] = {id(obj): obj for obj in keep}
    memo.update({id(opt): clone for opt, clone in zip(optimizers, clones, strict=True)})
    copies = copy.deepcopy(list(schedulers), memo)
    for s in copies:
        if not any(getattr(s, "optimizer", None) is c for c in clones):
            raise ValueError(f"{type(s).__name__} does not drive one of the configured optimizers")
    return clones, copies


# --------------------------------------------------------------------------- simulation
@dataclass
class PlannedSchedule:
    """The LR each parameter group will use at each optimizer step of the planned run.

    ``lrs[i, g]`` is the LR of group ``g`` at optimizer step ``steps[i]`` (recorded every ``stride``
    steps); ``groups[g]`` is ``(optimizer_index, param_group_index)``. ``scheduler_steps[k]`` is how
    often scheduler ``k`` is stepped (for metric-driven ones: how often Lightning would step it).
    ``scheduler_start[k]`` is scheduler ``k``'s ``last_epoch`` before the simulation (its steps
    before a resume). ``error`` is what a scheduler raised (e.g. OneCycleLR stepped past ``total_steps``) after
    ``error_step`` optimizer steps, where the real run will crash: the curve is recorded up to there,
    the scheduler steps are counted for the whole run.
    """

    steps: np.ndarray
    lrs: np.ndarray
    groups: list[tuple[int, int]]
    scheduler_steps: list[int]
    scheduler_steps_by_epoch: list[list[int]] = field(default_factory=list)
    scheduler_start: list[int] = field(default_factory=list)
    total_steps: float = 0
    simulated_steps: int = 0
    epochs: int = 0
    stride: int = 1
    truncated: bool = False
    error: str = ""
    error_step: int = -1

    def planned(self, step: int) -> np.ndarray | None:
        """The LRs (one per group) planned at optimizer ``step``, or ``None`` when not recorded."""
        first = int(self.steps[0]) if self.steps.size else 0
        offset = step - first
        if offset < 0 or offset % self.stride:
            return None
        i = offset // self.stride
        return self.lrs[i] if i < self.lrs.shape[0] else None

    def group_lrs(self, g: int) -> np.ndarray:
        """The planned curve of group ``g``, shape ``(len(steps),)``."""
        return self.lrs[:, g]


def _read_lrs(optimizers: Sequence[Optimizer]) -> list[float]:
    return [float(group["lr"]) for opt in optimizers for group in opt.param_groups]


class _Simulation:
    """The state of one run of :func:`simulate_schedule`: counts, the recorded curve, the first error."""

    def __init__(self, optimizers: Sequence[Optimizer], schedulers: Sequence[ScheduledStep], stride: int) -> None:
        self.optimizers = optimizers
        self.stride = stride
        self.per_step = [(k, e) for k, e in enumerate(schedulers) if e.interval == "step"]
        self.per_epoch = [(k, e) for k, e in enumerate(schedulers) if e.interval != "step"]
        self.counts = [0] * len(schedulers)
        self.by_epoch: list[list[int]] = []
        self.steps: list[int] = []
        self.lrs: list[list[float]] = []
        self.dead: set[int] = set()
        self.error, self.error_step = "", -1
        self.step = self.made = 0

    def advance(self, k: int, entry: ScheduledStep) -> None:
        """Scheduler ``k`` steps (counted; metric-driven ones and ones that raised are not stepped)."""
        self.counts[k] += 1
        if entry.reduce_on_plateau or k in self.dead:
            return
        try:
            entry.scheduler.step()
        except Exception as err:  # what raises here raises in the real run, after the same optimizer step
            self.dead.add(k)
            if not self.error:
                self.error, self.error_step = f"{entry.name}: {type(err).__name__}: {err}", self.step

    def optimizer_step(self, batch_idx: int) -> None:
        """One optimizer step: record the LR it uses, then step the ``interval="step"`` schedulers."""
        if self.made % self.stride == 0 and not self.error:  # after an error the curve is fiction: counts only
            self.steps.append(self.step)
            self.lrs.append(_read_lrs(self.optimizers))
        self.step, self.made = self.step + 1, self.made + 1
        for k, entry in self.per_step:
            if (batch_idx + 1) % entry.frequency == 0:
                self.advance(k, entry)

    def epoch(self, loop: LoopPlan, epoch: int, budget: int) -> bool:
        """Run one epoch; ``True`` when the step budget is used up."""
        done = False
        for batch_idx, steps_optimizer, is_last in loop.epoch_batches():
            if steps_optimizer:
                self.optimizer_step(batch_idx)
            if is_last:
                for k, entry in self.per_epoch:
                    if (epoch + 1) % entry.frequency == 0:
                        self.advance(k, entry)
            if self.made >= budget:
                done = True
                break
        self.by_epoch.append(list(self.counts))
        return done


def simulate_schedule(
    optimizers: Sequence[Optimizer],
    schedulers: Sequence[ScheduledStep],
    loop: LoopPlan,
    *,
    max_steps: int = 1_000_000,
    max_points: int = 100_000,
) -> PlannedSchedule:
    """Step ``schedulers`` (copies!) through the planned run as Lightning 2.x's training loop does.

    The rules (``lightning/pytorch/loops/training_epoch_loop.py``): after each batch that steps the
    optimizer, every ``interval="step"`` scheduler steps when ``(batch_idx + 1) % frequency == 0``;
    after the last batch of an epoch every ``interval="epoch"`` scheduler steps when
    ``(current_epoch + 1) % frequency == 0``; the LR an optimizer step uses is the one set before
    that batch's scheduler steps. ``ReduceLROnPlateau`` schedulers are counted, not stepped.

    Args:
        optimizers: the (copied) optimizers, in the Trainer's order.
        schedulers: the (copied) schedulers with their Lightning configuration.
        loop: the run's geometry.
        max_steps: simulate at most this many optimizer steps (``truncated`` says when it stopped).
        max_points: record at most about this many steps (every ``stride``-th step).

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([p], lr=1.0)
        >>> s = ScheduledStep(torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5), "epoch")
        >>> plan = simulate_schedule([opt], [s], LoopPlan(batches_per_epoch=2, max_epochs=3))
        >>> plan.group_lrs(0).tolist(), plan.scheduler_steps
        ([1.0, 1.0, 0.5, 0.5, 0.25, 0.25], [3])
    """
    total = loop.total_steps()
    if math.isinf(total):
        raise ValueError("simulate_schedule: the run has no end (set max_steps or max_epochs)")
    budget = max(0, int(min(total - loop.start_step, max_steps)))
    run = _Simulation(optimizers, schedulers, stride=max(1, math.ceil(budget / max(1, max_points))))
    run.step = loop.start_step
    start_positions = [int(getattr(e.scheduler, "last_epoch", 0)) for e in schedulers]
    epoch, done = loop.start_epoch, budget == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while not done and (loop.max_epochs < 0 or epoch < loop.max_epochs):
            done = run.epoch(loop, epoch, budget)
            epoch += 1
    groups = [(i, j) for i, opt in enumerate(optimizers) for j in range(len(opt.param_groups))]
    return PlannedSchedule(
        steps=np.asarray(run.steps, dtype=np.int64),
        lrs=np.asarray(run.lrs, dtype=np.float64).reshape(len(run.lrs), len(groups)),
        groups=groups,
        scheduler_steps=run.counts,
        scheduler_steps_by_epoch=run.by_epoch,
        scheduler_start=start_positions,
        total_steps=total,
        simulated_steps=run.made,
        epochs=epoch - loop.start_epoch,
        stride=run.stride,
        truncated=run.made < total - loop.start_step,
        error=run.error,
        error_step=run.error_step,
    )


# --------------------------------------------------------------------------- judging a curve
@dataclass(frozen=True)
class DecayProfile:
    """The shape of one planned LR curve.

    ``below_step``: first step after the peak where the LR is under ``fraction * peak`` (-1: never);
    ``rise_step``: first step where the LR climbs back more than ``rise * peak`` above the lowest LR
    seen since a real decay (-1: never); ``decays``: the LR falls by more than 1% after its peak.
    """

    peak: float
    peak_step: int
    final: float
    lowest_after_peak: float
    below_step: int
    rise_step: int
    decays: bool


def decay_profile(
    lrs: np.ndarray, steps: np.ndarray, *, fraction: float = 0.01, rise: float = 0.1, decay_tolerance: float = 0.01
) -> DecayProfile:
    """Peak, end, first step under ``fraction`` of the peak, and a rise after a decay.

    Example:
        >>> lr = np.array([1.0, 0.5, 0.001, 0.5, 1.0])
        >>> p = decay_profile(lr, np.arange(5))
        >>> p.below_step, p.rise_step, p.decays
        (2, 3, True)
    """
    lr = np.asarray(lrs, dtype=np.float64)
    if lr.size == 0:
        return DecayProfile(0.0, -1, 0.0, 0.0, -1, -1, False)
    peak_i = int(np.argmax(lr))
    peak = float(lr[peak_i])
    after = lr[peak_i:]
    lowest = float(after.min())
    below = np.nonzero(after < fraction * peak)[0]
    below_step = int(steps[peak_i + below[0]]) if below.size and peak > 0 else -1
    running_min = np.minimum.accumulate(after)
    decayed = running_min < (1.0 - decay_tolerance) * peak
    rising = decayed & (after > running_min + rise * peak)
    rise_i = np.nonzero(rising)[0]
    rise_step = int(steps[peak_i + rise_i[0]]) if rise_i.size else -1
    return DecayProfile(
        peak=peak,
        peak_step=int(steps[peak_i]),
        final=float(lr[-1]),
        lowest_after_peak=lowest,
        below_step=below_step,
        rise_step=rise_step,
        decays=bool(lowest < (1.0 - decay_tolerance) * peak),
    )


@dataclass(frozen=True)
class ScheduleIssue:
    """One thing wrong (or worth a note) with a planned schedule: the Finding's key, status and values,
    what is wrong (``kind``) and the facts its text needs beyond the values (names, labels, lists).
    The words are the callback's (``NoLRDecayWarning``); nothing here writes prose."""

    key: str
    status: Literal["warn", "fail"]
    kind: str
    values: dict[str, float]
    facts: dict[str, Any] = field(default_factory=dict)


def unit_hint(length: float, interval: str, stepped: int, epochs: int, steps: int) -> str:
    """``"epochs"`` when ``length`` fits the run counted in epochs much better than in the scheduler's
    own steps (it steps every optimizer step), ``"steps"`` for the other way round, else ``""``.

    Example:
        >>> unit_hint(10, "step", 100, 10, 100), unit_hint(100, "epoch", 10, 10, 100)
        ('epochs', 'steps')
        >>> unit_hint(100, "step", 100, 10, 100)
        ''
    """
    other = epochs if interval == "step" else steps
    if stepped <= 0 or other <= 0 or other == stepped:
        return ""
    here, there = length / stepped, length / other
    if not (0 < there <= 1.1 and (here > 1.1 or here < 0.25 * there)):
        return ""
    return "epochs" if interval == "step" else "steps"


@dataclass(frozen=True)
class _Length:
    """What every length rule needs: the scheduler, how often it steps in the run, and the run's size."""

    entry: ScheduledStep
    index: int
    stepped: int
    epochs: int
    steps: int
    tolerance: float
    error: str
    error_step: int

    @property
    def bounds(self) -> tuple[float, float]:
        return (1.0 - self.tolerance) * self.stepped, (1.0 + self.tolerance) * self.stepped

    def issue(self, kind: str, values: dict[str, float], length_name: str, length: float,
              **facts: Any) -> ScheduleIssue:
        hint = unit_hint(length, self.entry.interval, self.stepped, self.epochs, self.steps)
        return ScheduleIssue(f"length:{self.index}", "fail", kind, {"stepped": float(self.stepped), **values}, {
            "index": self.index, "name": self.entry.name, "interval": self.entry.interval, "stepped": self.stepped,
            "epochs": self.epochs, "steps": self.steps, "hint": hint, "length_name": length_name, "length": length,
            **facts,
        })


def _cosine_length(s: Any, c: _Length) -> list[ScheduleIssue]:
    t_max, (lo, hi), stepped = float(s.T_max), c.bounds, c.stepped
    if t_max < lo:
        return [c.issue("cosine_wraps", {"T_max": t_max}, "T_max", t_max)]
    if t_max > hi:
        reached = (stepped - 1) / t_max
        left = 0.5 * (1 + math.cos(math.pi * reached))
        return [c.issue("cosine_short", {"T_max": t_max, "fraction_reached": reached}, "T_max", t_max, left=left)]
    return []


def _one_cycle_length(s: Any, c: _Length) -> list[ScheduleIssue]:
    total, stepped = float(s.total_steps), c.stepped
    if c.error and c.entry.name in c.error:
        found = c.issue("one_cycle_raises", {"total_steps": total, "error_step": float(c.error_step)},
                        "total_steps", total, error=c.error.split(": ", 2)[-1], error_step=c.error_step)
        return [found]
    if total > c.bounds[1]:
        return [c.issue("one_cycle_short", {"total_steps": total}, "total_steps", total, reached=stepped / total)]
    return []


def _step_length(s: Any, c: _Length) -> list[ScheduleIssue]:
    size = float(s.step_size)
    if (c.stepped - 1) // size >= 1:
        return []
    return [c.issue("step_never_decays", {"step_size": size}, "step_size", size)]


def _multi_step_length(s: Any, c: _Length) -> list[ScheduleIssue]:
    milestones = sorted(int(m) for m in s.milestones)
    missed = [m for m in milestones if m > c.stepped - 1]
    if not missed:
        return []
    values = {"milestone_max": float(milestones[-1]), "milestones_missed": float(len(missed))}
    return [c.issue("milestones_missed", values, "milestones", float(milestones[-1]), missed=missed,
                    milestones=milestones)]


def _polynomial_length(s: Any, c: _Length) -> list[ScheduleIssue]:
    iters, (lo, hi) = float(s.total_iters), c.bounds
    if lo <= iters <= hi:
        return []
    return [c.issue("polynomial_length", {"total_iters": iters}, "total_iters", iters, short=iters < lo)]


def _chained_length(s: Any, c: _Length) -> list[ScheduleIssue]:
    out: list[ScheduleIssue] = []
    for child in getattr(s, "_schedulers", []):
        sub = ScheduledStep(child, c.entry.interval, c.entry.frequency, optimizer_index=c.entry.optimizer_index)
        out += length_issues(sub, c.index, c.stepped, epochs=c.epochs, steps=c.steps, tolerance=c.tolerance)
    return out


#: One length rule per scheduler class (the first class in this order that the scheduler is an instance of).
LENGTH_RULES: tuple[tuple[type, Callable[[Any, _Length], list[ScheduleIssue]]], ...] = (
    (sched.CosineAnnealingLR, _cosine_length),
    (sched.OneCycleLR, _one_cycle_length),
    (sched.StepLR, _step_length),
    (sched.MultiStepLR, _multi_step_length),
    (sched.PolynomialLR, _polynomial_length),
    (sched.ChainedScheduler, _chained_length),
)


def length_issues(
    entry: ScheduledStep,
    index: int,
    stepped: int,
    *,
    epochs: int,
    steps: int,
    tolerance: float = 0.1,
    error: str = "",
    error_step: int = -1,
) -> list[ScheduleIssue]:
    """Does the scheduler's length (``T_max``, ``total_steps``, ``step_size``, ``milestones``,
    ``total_iters``) match the ``stepped`` times Lightning will step it over the whole run?

    ``epochs`` and ``steps`` are the run's length in epochs and optimizer steps (for the hint that
    names the unit the length was probably counted in: :func:`unit_hint`). ``error`` is what the
    simulation caught. The rule of each scheduler class is in :data:`LENGTH_RULES`.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> s = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD([p], lr=1.0), T_max=10)
        >>> issues = length_issues(ScheduledStep(s, "step"), 0, 40, epochs=10, steps=40)
        >>> [(i.key, i.kind, i.values["T_max"]) for i in issues]
        [('length:0', 'cosine_wraps', 10.0)]
    """
    if stepped <= 0:
        return []
    rule = next((r for cls, r in LENGTH_RULES if isinstance(entry.scheduler, cls)), None)
    if rule is None:
        return []
    return rule(entry.scheduler, _Length(entry, index, stepped, epochs, steps, tolerance, error, error_step))


def _never_steps(entry: ScheduledStep, index: int, loop: LoopPlan, epochs: int) -> ScheduleIssue:
    if entry.interval == "step" and entry.frequency > loop.batches_per_epoch:
        why = "frequency_over_batches"
    elif entry.interval == "epoch" and math.isinf(loop.batches_per_epoch):
        why = "endless_epoch"
    elif entry.interval == "epoch":
        why = "frequency_over_epochs"
    else:
        why = "no_step"
    return ScheduleIssue(
        f"never_steps:{index}",
        "fail",
        "never_steps",
        {"frequency": float(entry.frequency), "batches_per_epoch": float(loop.batches_per_epoch)},
        {"index": index, "name": entry.name, "why": why, "frequency": entry.frequency,
         "batches_per_epoch": loop.batches_per_epoch, "epochs": epochs},
    )


@dataclass
class _Curves:
    """The planned curves of a run sorted for the curve rules of :func:`analyze_schedule`."""

    schedulers: Sequence[ScheduledStep]
    run_steps: int
    end: int
    stage: Stage
    min_lr_fraction: float
    plateau: set[int]
    too_early: list[tuple[str, DecayProfile]] = field(default_factory=list)
    rising: list[tuple[str, DecayProfile]] = field(default_factory=list)
    decaying: list[tuple[str, DecayProfile]] = field(default_factory=list)
    flat: list[tuple[str, DecayProfile]] = field(default_factory=list)


def _scheduler_issues(
    plan: PlannedSchedule, schedulers: Sequence[ScheduledStep], loop: LoopPlan, length_tolerance: float
) -> tuple[list[ScheduleIssue], set[int]]:
    """Never-stepped schedulers and mismatched lengths, and the optimizers they drive."""
    issues: list[ScheduleIssue] = []
    flagged: set[int] = set()
    run_steps = int(plan.simulated_steps)
    # lengths are judged over the whole run, including what came before a resume
    epochs, all_steps = loop.start_epoch + plan.epochs, loop.start_step + run_steps
    for k, entry in enumerate(schedulers):
        stepped = plan.scheduler_steps[k]
        if stepped == 0 and run_steps > 0:
            issues.append(_never_steps(entry, k, loop, epochs))
            flagged.add(entry.optimizer_index)
            continue
        if plan.truncated:
            continue
        before = plan.scheduler_start[k] if k < len(plan.scheduler_start) else 0
        found = length_issues(entry, k, before + stepped, epochs=epochs, steps=all_steps, tolerance=length_tolerance,
                              error=plan.error, error_step=plan.error_step)
        if found:
            flagged.add(entry.optimizer_index)
        issues += found
    return issues, flagged


def _sort_curves(plan: PlannedSchedule, curves: _Curves, flagged: set[int], end_margin: float) -> None:
    cyclic = {e.optimizer_index for e in curves.schedulers if isinstance(e.scheduler, CYCLIC_BY_DESIGN)}
    for g, (opt_i, _) in enumerate(plan.groups):
        if opt_i in curves.plateau or plan.steps.size == 0:
            continue
        prof = decay_profile(plan.group_lrs(g), plan.steps, fraction=curves.min_lr_fraction)
        label = f"group {g}" if len(plan.groups) > 1 else "the LR"
        if opt_i not in flagged:
            if prof.below_step >= 0 and curves.end - prof.below_step > end_margin * curves.run_steps:
                curves.too_early.append((label, prof))
            if prof.rise_step >= 0 and opt_i not in cyclic:
                curves.rising.append((label, prof))
        (curves.decaying if prof.decays else curves.flat).append((label, prof))


def _decays_too_early(c: _Curves) -> list[ScheduleIssue]:
    if not c.too_early:
        return []
    label, prof = c.too_early[0]
    values = {"peak_lr": prof.peak, "below_step": float(prof.below_step), "planned_steps": float(c.run_steps)}
    left = (c.end - prof.below_step) / max(1, c.run_steps)
    return [ScheduleIssue("decays_too_early", "fail", "decays_too_early", values,
                          {"label": label, "min_lr_fraction": c.min_lr_fraction, "left": left,
                           "below_step": prof.below_step, "run_steps": c.run_steps})]


def _rises_after_decay(c: _Curves) -> list[ScheduleIssue]:
    if not c.rising:
        return []
    label, prof = c.rising[0]
    values = {"peak_lr": prof.peak, "rise_step": float(prof.rise_step)}
    return [ScheduleIssue("rises_after_decay", "fail", "rises_after_decay", values,
                          {"label": label, "rise_step": prof.rise_step})]


def _decay_in_early_stage(c: _Curves) -> list[ScheduleIssue]:
    if c.stage != "early":
        return []
    if c.decaying:
        label, prof = c.decaying[0]
        values = {"peak_lr": prof.peak, "lowest_lr": prof.lowest_after_peak}
        return [ScheduleIssue("decay_in_early_stage", "warn", "decay_in_early_stage", values, {"label": label})]
    if not c.plateau:
        return []
    k = next(k for k, e in enumerate(c.schedulers) if e.reduce_on_plateau)
    values = {"plateau_schedulers": float(sum(e.reduce_on_plateau for e in c.schedulers))}
    return [ScheduleIssue("decay_in_early_stage", "warn", "plateau_in_early_stage", values, {"index": k})]


def _never_decays(c: _Curves) -> list[ScheduleIssue]:
    if c.stage != "final" or not c.flat or c.decaying:
        return []
    label, prof = c.flat[0]
    values = {"final_lr": prof.final, "peak_lr": prof.peak}
    return [ScheduleIssue("never_decays", "warn", "never_decays", values, {"label": label})]


#: The rules on the planned curves, in the order their Findings are reported.
CURVE_RULES: tuple[Callable[[_Curves], list[ScheduleIssue]], ...] = (
    _decays_too_early, _rises_after_decay, _decay_in_early_stage, _never_decays,
)


def analyze_schedule(
    plan: PlannedSchedule,
    schedulers: Sequence[ScheduledStep],
    loop: LoopPlan,
    *,
    stage: Stage = "early",
    min_lr_fraction: float = 0.01,
    end_margin: float = 0.1,
    length_tolerance: float = 0.1,
) -> list[ScheduleIssue]:
    """Everything wrong with a planned schedule, for the recipe ``stage``.

    Per scheduler: never stepped, a length that does not match the run (and a OneCycle that will
    raise). Per parameter group (groups driven by ``ReduceLROnPlateau`` are left out, their curve is
    not known in advance; groups whose scheduler already has a length issue are not judged twice):
    the LR under ``min_lr_fraction`` of its peak with more than ``end_margin`` of the run left; the
    LR rising again after a decay (not for schedulers cyclic by design); in the ``"early"`` stage
    any decay, a ``ReduceLROnPlateau`` included (a warning: the recipe keeps the LR constant until
    the end); in the ``"final"`` stage no decay at all (a warning). The curve rules are
    :data:`CURVE_RULES`.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([p], lr=1.0)
        >>> entry = ScheduledStep(torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5), "step")
        >>> loop = LoopPlan(batches_per_epoch=40)
        >>> plan = simulate_schedule([opt], [entry], loop)
        >>> [i.key for i in analyze_schedule(plan, [entry], loop, stage="final")]
        ['decays_too_early']
    """
    issues, flagged = _scheduler_issues(plan, schedulers, loop, length_tolerance)
    run_steps = int(plan.simulated_steps)
    curves = _Curves(
        schedulers, run_steps, end=int(plan.steps[0]) + run_steps if plan.steps.size else 0, stage=stage,
        min_lr_fraction=min_lr_fraction, plateau={e.optimizer_index for e in schedulers if e.reduce_on_plateau},
    )
    _sort_curves(plan, curves, flagged, end_margin)
    for rule in CURVE_RULES:
        issues += rule(curves)
    return issues


def adam_lr_issue(optimizer_name: str, lr: float, factor: float = 10.0) -> ScheduleIssue | None:
    """A note when Adam/AdamW runs more than ``factor`` times away from the recipe's 3e-4.

    Example:
        >>> adam_lr_issue("Adam", 3e-2).facts
        {'optimizer': 'Adam', 'ratio': 100.0, 'above': True}
        >>> adam_lr_issue("Adam", 1e-3) is None
        True
    """
    ratio = max(lr, ADAM_SAFE_LR) / min(lr, ADAM_SAFE_LR) if lr > 0 else 0.0
    if lr <= 0 or ratio <= factor * (1 + 1e-9):
        return None
    values = {"adam_lr": lr, "ratio_to_3e-4": lr / ADAM_SAFE_LR}
    return ScheduleIssue("adam_lr", "warn", "adam_lr", values,
                         {"optimizer": optimizer_name, "ratio": ratio, "above": lr > ADAM_SAFE_LR})


# Modules whose weights are scales and shifts, not features: weight decay should not pull them to 0.
NORM_TYPES: tuple[type[torch.nn.Module], ...] = (
    torch.nn.modules.batchnorm._NormBase,
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    torch.nn.LocalResponseNorm,
    *((torch.nn.RMSNorm,) if hasattr(torch.nn, "RMSNorm") else ()),
)


def decayed_bias_and_norm_params(module: torch.nn.Module, optimizers: Sequence[Optimizer]) -> list[str]:
    """Names of biases and normalisation-layer parameters in param groups with ``weight_decay > 0``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
        >>> decayed_bias_and_norm_params(net, [torch.optim.AdamW(net.parameters())])
        ['0.bias', '1.weight', '1.bias']
        >>> decayed_bias_and_norm_params(net, [torch.optim.Adam(net.parameters())])
        []
    """
    norm_ids = {id(p) for m in module.modules() if isinstance(m, NORM_TYPES) for p in m.parameters(recurse=False)}
    names = {id(p): n for n, p in module.named_parameters()}
    out: list[str] = []
    for opt in optimizers:
        for group in opt.param_groups:
            if float(group.get("weight_decay", 0.0) or 0.0) <= 0:
                continue
            for p in group["params"]:
                name = names.get(id(p), "")
                if id(p) in norm_ids or name == "bias" or name.endswith(".bias"):
                    out.append(name or f"<unnamed {tuple(p.shape)}>")
    return out
