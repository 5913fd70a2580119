"""The LR-schedule core without a Trainer: simulation against hand-derived formulas, copies that
leave the originals alone, and the judgement of planned curves."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as sched

from recipe_callbacks.core import lr_schedule as core
from recipe_callbacks.no_lr_decay_text import issue_text


def opt_sgd(lr: float = 1.0, groups: int = 1, **kw: Any) -> torch.optim.SGD:
    params = [{"params": [nn.Parameter(torch.zeros(2))], "lr": lr * (g + 1)} for g in range(groups)]
    return torch.optim.SGD(params, lr=lr, **kw)


def plan_of(s: Any, interval: str, loop: core.LoopPlan, frequency: int = 1) -> core.PlannedSchedule:
    entry = core.ScheduledStep(s, interval, frequency)  # type: ignore[arg-type]
    return core.simulate_schedule([s.optimizer], [entry], loop)


# ------------------------------------------------------------------ the loop's geometry
@pytest.mark.parametrize(
    ("batches", "accumulate", "epochs", "max_steps"), [(5, 1, 3, -1), (5, 2, 3, -1), (7, 3, 4, 5), (4, 4, 2, -1)]
)
def test_total_steps_matches_lightning_formula(batches: int, accumulate: int, epochs: int, max_steps: int) -> None:
    loop = core.LoopPlan(batches, max_epochs=epochs, max_steps=max_steps, accumulate_grad_batches=accumulate)
    expected = math.ceil(batches / accumulate) * epochs  # Trainer.estimated_stepping_batches
    if max_steps >= 0:
        expected = min(expected, max_steps)
    assert loop.total_steps() == expected
    stepping = [b for b, steps, _ in loop.epoch_batches() if steps]
    assert len(stepping) == math.ceil(batches / accumulate)
    assert stepping[-1] == batches - 1  # the last batch of an epoch always steps


def test_endless_run_is_refused() -> None:
    loop = core.LoopPlan(math.inf, max_epochs=-1)
    assert math.isinf(loop.total_steps())
    with pytest.raises(ValueError, match="no end"):
        core.simulate_schedule([opt_sgd()], [], loop)


# ------------------------------------------------------------------ simulation against formulas
def test_cosine_per_step_matches_closed_form() -> None:
    n = 30
    plan = plan_of(sched.CosineAnnealingLR(opt_sgd(0.5), T_max=n, eta_min=0.01), "step", core.LoopPlan(10, 3))
    k = np.arange(n)
    expected = 0.01 + (0.5 - 0.01) * (1 + np.cos(np.pi * k / n)) / 2
    np.testing.assert_allclose(plan.group_lrs(0), expected, rtol=1e-9)
    assert plan.scheduler_steps == [n] and plan.simulated_steps == n and plan.epochs == 3


def test_step_lr_per_epoch_with_accumulation_and_frequency() -> None:
    # 5 batches, accumulation 2: 3 optimizer steps per epoch; epoch scheduler every 2nd epoch
    loop = core.LoopPlan(5, max_epochs=5, accumulate_grad_batches=2)
    plan = plan_of(sched.StepLR(opt_sgd(1.0), step_size=1, gamma=0.5), "epoch", loop, frequency=2)
    per_epoch = [1.0, 1.0, 0.5, 0.5, 0.25]  # stepped after epochs 2 and 4 (1-based)
    np.testing.assert_allclose(plan.group_lrs(0), np.repeat(per_epoch, 3))
    assert plan.scheduler_steps == [2]


def test_step_interval_counts_batch_index_not_optimizer_steps() -> None:
    # optimizer steps after batches 2, 4, 5 (1-based); frequency 2 fires after batches 2 and 4 only
    loop = core.LoopPlan(5, max_epochs=2, accumulate_grad_batches=2)
    plan = plan_of(sched.StepLR(opt_sgd(1.0), step_size=1, gamma=0.5), "step", loop, frequency=2)
    np.testing.assert_allclose(plan.group_lrs(0), [1, 0.5, 0.25, 0.25, 0.125, 0.0625])
    assert plan.scheduler_steps == [4]


def test_plain_pytorch_loop_is_the_oracle_for_onecycle_with_groups() -> None:
    # the hand-written training loop of the PyTorch docs: optimizer.step() then scheduler.step()
    real = opt_sgd(0.1, groups=2, momentum=0.9)
    oracle_s = sched.OneCycleLR(real, max_lr=[0.1, 0.2], total_steps=12)
    sim = copy.deepcopy(real)
    plan = plan_of(sched.OneCycleLR(sim, max_lr=[0.1, 0.2], total_steps=12), "step", core.LoopPlan(4, 3))
    used = []
    for _ in range(12):
        used.append([g["lr"] for g in real.param_groups])
        real.step()
        oracle_s.step()
    np.testing.assert_allclose(plan.lrs, np.asarray(used), rtol=1e-12)
    assert plan.groups == [(0, 0), (0, 1)]


def test_onecycle_overrun_is_caught_where_torch_raises() -> None:
    plan = plan_of(sched.OneCycleLR(opt_sgd(0.1, momentum=0.9), 0.1, total_steps=6), "step", core.LoopPlan(10))
    assert "Tried to step 7 times" in plan.error and plan.error_step == 7
    assert plan.lrs.shape == (7, 1) and plan.scheduler_steps == [10]  # curve up to the crash, counts to the end
    assert plan.simulated_steps == 10 and not plan.truncated


def test_plateau_is_counted_not_stepped_and_max_steps_ends_mid_epoch() -> None:
    opt = opt_sgd(1.0)
    entry = core.ScheduledStep(sched.ReduceLROnPlateau(opt), "epoch", reduce_on_plateau=True)
    plan = core.simulate_schedule([opt], [entry], core.LoopPlan(4, max_epochs=10, max_steps=10))
    assert plan.scheduler_steps == [2]  # epochs 1 and 2 complete; epoch 3 stops after 2 of 4 batches
    assert plan.scheduler_steps_by_epoch == [[1], [2], [2]]
    assert np.all(plan.group_lrs(0) == 1.0)


def test_long_runs_are_recorded_with_a_stride_and_can_be_truncated() -> None:
    s = sched.CosineAnnealingLR(opt_sgd(1.0), T_max=1000)
    plan = core.simulate_schedule([s.optimizer], [core.ScheduledStep(s, "step")], core.LoopPlan(1000), max_points=100)
    assert plan.stride == 10 and plan.lrs.shape == (100, 1)
    assert plan.planned(20)[0] == pytest.approx((1 + math.cos(math.pi * 20 / 1000)) / 2)  # type: ignore[index]
    assert plan.planned(21) is None
    s = sched.CosineAnnealingLR(opt_sgd(1.0), T_max=1000)
    short = core.simulate_schedule([s.optimizer], [core.ScheduledStep(s, "step")], core.LoopPlan(1000), max_steps=50)
    assert short.truncated and short.simulated_steps == 50


# ------------------------------------------------------------------ copies
def test_copies_leave_the_originals_untouched() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def warmup(self, step: int) -> float:
            return min(1.0, (step + 1) / 5)

    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    lam = sched.LambdaLR(opt, net.warmup)
    seq = sched.SequentialLR(
        opt, [sched.LinearLR(opt, 0.1, total_iters=3), sched.CosineAnnealingLR(opt, T_max=7)], milestones=[3]
    )
    before = (copy.deepcopy(opt.state_dict()), lam.state_dict(), copy.deepcopy(seq.state_dict()), opt.step)
    (opt_c,), (lam_c, seq_c) = core.copy_for_simulation([opt], [lam, seq], keep=[net])
    assert lam_c.lr_lambdas[0].__self__ is net  # the bound method still points at the real model
    assert seq_c.optimizer is opt_c and all(s.optimizer is opt_c for s in seq_c._schedulers)
    entries = [core.ScheduledStep(lam_c, "step"), core.ScheduledStep(seq_c, "step")]
    core.simulate_schedule([opt_c], entries, core.LoopPlan(10))
    after = (opt.state_dict(), lam.state_dict(), seq.state_dict(), opt.step)
    assert before[0] == after[0] and before[1] == after[1] and before[2] == after[2] and before[3] is after[3]
    assert opt_c.param_groups[0]["params"][0] is not next(net.parameters())
    with pytest.raises(RuntimeError, match="never stepped"):
        opt_c.step()


# ------------------------------------------------------------------ judging curves
def test_decay_profile_on_hand_made_curves() -> None:
    steps = np.arange(6)
    warm_then_flat = core.decay_profile(np.array([0.1, 0.5, 1.0, 1.0, 1.0, 1.0]), steps)
    assert not warm_then_flat.decays and warm_then_flat.rise_step == -1 and warm_then_flat.peak_step == 2
    wrap = core.decay_profile(np.array([1.0, 0.5, 0.0, 0.5, 1.0, 0.5]), steps)
    assert wrap.decays and wrap.below_step == 2 and wrap.rise_step == 3
    noisy = core.decay_profile(np.array([1.0, 0.5, 0.3, 0.35, 0.2, 0.1]), steps, rise=0.1)
    assert noisy.rise_step == -1  # a 5% wiggle is not a wrap-around


@dataclass(frozen=True)
class Worded:
    """A core issue with the words NoLRDecayWarning gives it (the core returns status, kind and numbers)."""

    issue: core.ScheduleIssue
    summary: str
    advice: str

    @property
    def status(self) -> str:
        return self.issue.status

    @property
    def values(self) -> dict[str, float]:
        return self.issue.values


def worded(issue: core.ScheduleIssue) -> Worded:
    return Worded(issue, *issue_text(issue))


def run(s: Any, interval: str, loop: core.LoopPlan, stage: str = "final", frequency: int = 1) -> dict[str, Any]:
    entry = core.ScheduledStep(s, interval, frequency)  # type: ignore[arg-type]
    plan = core.simulate_schedule([s.optimizer], [entry], loop)
    return {i.key: worded(i) for i in core.analyze_schedule(plan, [entry], loop, stage=stage)}  # type: ignore[arg-type]


LOOP = core.LoopPlan(10, max_epochs=10)  # 100 optimizer steps, 10 epochs


def test_healthy_schedules_pass_in_the_final_stage() -> None:
    assert run(sched.CosineAnnealingLR(opt_sgd(), T_max=100), "step", LOOP) == {}
    assert run(sched.CosineAnnealingLR(opt_sgd(), T_max=10), "epoch", LOOP) == {}
    assert run(sched.OneCycleLR(opt_sgd(momentum=0.9), 1.0, total_steps=100), "step", LOOP) == {}
    assert run(sched.MultiStepLR(opt_sgd(), [5, 8]), "epoch", LOOP) == {}
    assert run(sched.CosineAnnealingWarmRestarts(opt_sgd(), T_0=20), "step", LOOP).keys() <= {"decays_too_early"}


def test_stage_decides_between_decay_warning_and_no_decay_warning() -> None:
    early = run(sched.CosineAnnealingLR(opt_sgd(), T_max=100), "step", LOOP, stage="early")
    assert list(early) == ["decay_in_early_stage"] and early["decay_in_early_stage"].status == "warn"
    flat = run(sched.ConstantLR(opt_sgd(), factor=1.0), "step", LOOP, stage="final")
    assert list(flat) == ["never_decays"]
    assert run(sched.ConstantLR(opt_sgd(), factor=1.0), "step", LOOP, stage="early") == {}


def test_length_mismatches_and_their_unit_hints() -> None:
    wraps = run(sched.CosineAnnealingLR(opt_sgd(), T_max=10), "step", LOOP)["length:0"]
    assert "wraps around" in wraps.summary and "counted in epochs" in wraps.advice
    short = run(sched.CosineAnnealingLR(opt_sgd(), T_max=100), "epoch", LOOP)["length:0"]
    assert short.values["fraction_reached"] == pytest.approx(9 / 100) and "counted in optimizer steps" in short.advice
    one = run(sched.OneCycleLR(opt_sgd(momentum=0.9), 1.0, total_steps=10), "epoch", LOOP)
    assert one == {}  # total_steps equal to the epochs it is stepped in: no mismatch, no crash
    crash = run(sched.OneCycleLR(opt_sgd(momentum=0.9), 1.0, total_steps=10), "step", LOOP)["length:0"]
    assert "will raise after optimizer step 11" in crash.summary and "counted in epochs" in crash.advice
    never = run(sched.StepLR(opt_sgd(), step_size=30), "epoch", LOOP)["length:0"]
    assert "never decays" in never.summary and "counted in optimizer steps" in never.advice
    missed = run(sched.MultiStepLR(opt_sgd(), [3, 60]), "epoch", LOOP)["length:0"]
    assert missed.values["milestones_missed"] == 1
    poly = run(sched.PolynomialLR(opt_sgd(), total_iters=20), "step", LOOP)
    assert "length:0" in poly and "decays_too_early" not in poly  # one root cause, one finding


def test_too_early_and_never_steps() -> None:
    early = run(sched.MultiStepLR(opt_sgd(), [1, 2], gamma=0.05), "epoch", LOOP)
    assert early["decays_too_early"].values["below_step"] == 20
    never = run(sched.StepLR(opt_sgd(), 1), "step", LOOP, frequency=11)
    assert list(never) == ["never_steps:0", "never_decays"] and "larger than the 10 batches" in never[
        "never_steps:0"
    ].summary
    endless = core.LoopPlan(math.inf, max_epochs=-1, max_steps=50)
    assert "epoch never ends" in run(sched.StepLR(opt_sgd(), 1), "epoch", endless)["never_steps:0"].summary


def test_plateau_groups_are_not_judged() -> None:
    opt = opt_sgd()
    entry = core.ScheduledStep(sched.ReduceLROnPlateau(opt), "epoch", reduce_on_plateau=True)
    plan = core.simulate_schedule([opt], [entry], LOOP)
    assert core.analyze_schedule(plan, [entry], LOOP, stage="final") == []
    early = core.analyze_schedule(plan, [entry], LOOP, stage="early")
    assert [i.key for i in early] == ["decay_in_early_stage"] and "ReduceLROnPlateau" in worded(early[0]).summary


# ------------------------------------------------------------------ optimizer notes
@pytest.mark.parametrize(("lr", "noted"), [(3e-4, False), (3e-3, False), (3.1e-3, True), (2.9e-5, True)])
def test_adam_lr_note_is_ten_times_either_side(lr: float, noted: bool) -> None:
    note = core.adam_lr_issue("Adam", lr)
    assert (note is not None) == noted
    if note is not None:
        assert note.status == "warn" and note.values["ratio_to_3e-4"] == pytest.approx(lr / 3e-4)


def test_decayed_bias_and_norm_params() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 2, bias=False))
    names = core.decayed_bias_and_norm_params(net, [torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-4)])
    assert names == ["0.bias", "1.weight", "1.bias"]
    split = [
        {"params": [net[0].weight, net[3].weight], "weight_decay": 0.1},
        {"params": [net[0].bias, net[1].weight, net[1].bias], "weight_decay": 0.0},
    ]
    assert core.decayed_bias_and_norm_params(net, [torch.optim.AdamW(split)]) == []


def test_core_does_not_import_lightning() -> None:
    source = Path(core.__file__).read_text(encoding="utf-8")
    assert "import lightning" not in source and "from lightning" not in source
