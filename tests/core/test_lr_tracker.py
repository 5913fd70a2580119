"""The schedule tracker: the run's LR against the preview, without a Trainer."""

from __future__ import annotations

import math

import pytest
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


def _constant_plan(steps: int, lr: float = 0.1) -> core.PlannedSchedule:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    copies, _ = core.copy_for_simulation([opt], [])
    return core.simulate_schedule(copies, [], core.LoopPlan(steps))


def _oracle(plan: core.PlannedSchedule, used: list[float]) -> tuple[int, int, int | None, dict[int, float]]:
    """Every step compared and charted on its own: (compared, mismatched, first mismatched step, chart)."""
    compared, mismatched, first, chart = 0, 0, None, {}
    for step, lr in enumerate(used):
        planned = plan.planned(step)
        if planned is not None:
            compared += 1
            if not math.isclose(lr, float(planned[0]), rel_tol=1e-6, abs_tol=1e-12):
                mismatched += 1
                first = step if first is None else first
        chart[step] = lr
    return compared, mismatched, first, chart


@pytest.mark.parametrize("change_at", [0, 1, 7, 49, 50, 51, 123, 299])
def test_a_changed_lr_is_caught_at_any_step_while_unchanged_steps_are_not_compared_one_by_one(
    change_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = _constant_plan(300)
    used = [0.1 if s < change_at else 0.05 for s in range(300)]
    tracker = ScheduleTracker([], [1], log_every=50)
    tracker.follow(plan)
    calls = []
    original = ScheduleTracker._compare
    monkeypatch.setattr(ScheduleTracker, "_compare", lambda self, *a: (calls.append(a[0]), original(self, *a))[1])
    logged = [tracker.optimizer_step(0, [lr])[2] for lr in used]
    compared, mismatched, first, chart = _oracle(plan, used)
    assert (tracker.compared, tracker.mismatched) == (compared, mismatched) == (300, 300 - change_at)
    assert tracker.first_mismatch is not None and tracker.first_mismatch.step == first == change_at
    assert (tracker.first_mismatch.planned, tracker.first_mismatch.used) == (0.1, 0.05)
    assert {s: row[0] for s, row in tracker.actual_chart.items()} == chart
    assert [s for s, log in enumerate(logged) if log] == [0, 50, 100, 150, 200, 250]
    # the steps at the LR of the step before are compared together: two comparisons per logged
    # stretch (its logged step, the rest in one go) and two more at the change (was: one per step)
    assert len(calls) <= 2 * 6 + 2


def test_deferred_steps_agree_with_a_step_by_step_comparison_on_a_step_schedule() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    entry = core.ScheduledStep(sched.StepLR(opt, step_size=30, gamma=0.5), "step")
    copies, scheds = core.copy_for_simulation([opt], [entry.scheduler])
    plan = core.simulate_schedule(copies, [core.ScheduledStep(scheds[0], "step")], core.LoopPlan(200))
    tracker = ScheduleTracker([entry], [1], log_every=7)
    tracker.follow(plan)
    used = []
    for n in range(200):
        lr = opt.param_groups[0]["lr"]
        used.append(lr)
        tracker.optimizer_step(0, [lr])
        if n not in (95, 140):  # two scheduler steps lost: the LR lags the plan from step 96 on
            entry.scheduler.step()
        if n == 20:  # read in the middle of a stretch: the counts so far, and the stretch goes on
            assert (tracker.compared, tracker.mismatched) == (21, 0)
    compared, mismatched, first, chart = _oracle(plan, used)
    assert (tracker.compared, tracker.mismatched, tracker.first_mismatch.step) == (compared, mismatched, first)
    assert mismatched > 0 and first == 120
    assert {s: row[0] for s, row in tracker.actual_chart.items()} == chart
