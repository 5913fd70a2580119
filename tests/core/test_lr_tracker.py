"""The schedule tracker: the run's LR against the preview, without a Trainer."""

from __future__ import annotations

import torch
from torch.optim import lr_scheduler as sched

from recipe_callbacks.core import lr_schedule as core
from recipe_callbacks.core.lr_tracker import ScheduleTracker


def _plan(gamma: float, steps: int) -> tuple[torch.optim.SGD, core.PlannedSchedule, core.ScheduledStep]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    entry = core.ScheduledStep(sched.ExponentialLR(opt, gamma=gamma), "step")
    copies, scheds = core.copy_for_simulation([opt], [entry.scheduler])
    plan = core.simulate_schedule(copies, [core.ScheduledStep(scheds[0], "step")], core.LoopPlan(steps))
    return opt, plan, entry


def test_a_run_that_follows_the_preview_matches_at_every_step() -> None:
    opt, plan, entry = _plan(0.9, 20)
    tracker = ScheduleTracker([entry], [1], log_every=5)
    tracker.follow(plan)
    logged = []
    for _ in range(20):
        _, _, log = tracker.optimizer_step(0, [g["lr"] for g in opt.param_groups])
        logged.append(log)
        entry.scheduler.step()
    assert (tracker.compared, tracker.mismatched, tracker.first_mismatch) == (20, 0, None)
    assert sum(logged) == 4 and tracker.scheduler_steps() == [20] == plan.scheduler_steps
    xs, series = tracker.chart()
    assert xs == list(range(20)) and series["actual 0"] == series["planned 0"]


def test_a_skipped_scheduler_step_is_a_mismatch_from_that_step_on() -> None:
    opt, plan, entry = _plan(0.5, 10)
    tracker = ScheduleTracker([entry], [1])
    tracker.follow(plan)
    for n in range(10):
        tracker.optimizer_step(0, [g["lr"] for g in opt.param_groups])
        if n != 3:  # step 3's scheduler step is lost
            entry.scheduler.step()
    assert tracker.mismatched == 6 and tracker.first_mismatch is not None
    assert (tracker.first_mismatch.step, tracker.first_mismatch.planned, tracker.first_mismatch.used) == (
        4, 0.5**4, 0.5**3,
    )
    assert tracker.scheduler_steps() == [9]
