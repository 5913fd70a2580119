"""The short-training core against plain PyTorch and hand-derived numbers, without a Trainer."""

from __future__ import annotations

import copy
import math
from collections import namedtuple
from typing import Any

import pytest
import torch
from torch import nn

from recipe_callbacks.core.baseline_curves import baseline_verdict, next_horizon
from recipe_callbacks.core.loss_curves import levelled_off
from recipe_callbacks.core.overfit_curve import (
    FROZEN_STEADY_RATIO,
    falling_steadily,
    overfit_stop,
    overfit_target,
    overfit_verdict,
)
from recipe_callbacks.core.short_training import (
    ShortTrainingError,
    batch_size_of,
    first_optimizer,
    learning_rates,
    model_notes,
    params_without_grad,
    rebuild_optimizer,
    take_samples,
    train_for,
    use_initial_lr,
    user_optimizer,
)


def _mse(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)) for _ in range(2)]


def test_train_for_matches_a_plain_pytorch_loop() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.3), nn.Linear(5, 1))
    twin = copy.deepcopy(net)
    batches = _data()
    run = train_for(net, _mse, torch.optim.Adam(net.parameters(), lr=0.01), batches, 5, seed=7)

    torch.manual_seed(7)  # the oracle: the textbook loop, batches cycled
    opt = torch.optim.Adam(twin.parameters(), lr=0.01)
    expected = []
    for step in range(5):
        opt.zero_grad()
        loss = _mse(twin, batches[step % 2])
        expected.append(loss.item())
        loss.backward()
        opt.step()
    with torch.no_grad():
        expected.append(_mse(twin, batches[5 % 2]).item())

    assert run.losses == expected
    assert run.steps == 5 and not run.reached_target
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def _dropout_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.Dropout(0.3), nn.Linear(5, 1))


def _continued(stop: Any, first: int, total: int) -> tuple[Any, Any, nn.Module]:
    """A run of ``first`` steps continued to ``total`` (model and Adam carried over as a caller
    that put them back would), next to one uninterrupted run of ``total`` steps from the same start."""
    net, batches = _dropout_net(), _data()
    twin = copy.deepcopy(net)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    early = train_for(net, _mse, opt, batches, first, seed=7, stop=stop, resumable=True)
    torch.manual_seed(123)  # whatever the caller draws in between is not the run's
    later = train_for(net, _mse, opt, batches, total, stop=stop, resume=early)
    whole = train_for(twin, _mse, torch.optim.Adam(twin.parameters(), lr=0.01), batches, total, seed=7, stop=stop)
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), twin.parameters(), strict=True))
    return later, whole, twin


def test_a_continued_run_equals_an_uninterrupted_run_bit_for_bit() -> None:
    later, whole, _ = _continued(None, 3, 9)
    assert later.losses == whole.losses and len(whole.losses) == 10  # dropout draws: the RNG is carried on
    assert later.steps == whole.steps == 9
    assert (later.fresh_steps, later.fresh_evals) == (6, 1)  # only the new steps (and the loss after them)


def test_a_continued_run_stops_where_an_uninterrupted_one_would() -> None:
    def rule(losses: Any) -> str:  # fires at the 6th loss: inside the continuation
        return "sixth" if len(losses) == 6 else ""

    later, whole, _ = _continued(rule, 3, 9)
    assert later.losses == whole.losses and later.stop_reason == whole.stop_reason == "sixth"
    assert later.steps == whole.steps == 5


def test_a_continued_run_is_cut_where_the_new_rule_fires_on_the_earlier_losses() -> None:
    net, batches = _dropout_net(), _data()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    early = train_for(net, _mse, opt, batches, 6, seed=7, resumable=True)
    later = train_for(net, _mse, opt, batches, 20, stop=lambda losses: "now" if len(losses) == 3 else "", resume=early)
    assert later.losses == early.losses[:3] and later.steps == 2 and later.stop_reason == "now"
    assert (later.fresh_steps, later.fresh_evals) == (0, 0)  # nothing trained
    with pytest.raises(ValueError, match="cannot continue a run of 6 steps to 4"):
        train_for(net, _mse, opt, batches, 4, resume=early)


def test_train_for_stops_when_the_target_is_reached() -> None:
    net = nn.Linear(1, 1)
    with torch.no_grad():
        net.weight.fill_(0.0)
        net.bias.fill_(0.0)
    batch = (torch.ones(2, 1), torch.ones(2, 1))
    # Gradient descent on (w + b - 1)^2 with lr 0.1 shrinks the residual by 1 - 0.4 per step:
    # losses 1, 0.36, 0.1296, ... -> 0.6^(2k) <= 0.05 first at k = 3.
    run = train_for(net, _mse, torch.optim.SGD(net.parameters(), lr=0.1), [batch], 100, stop_below=0.05)
    assert run.reached_target
    assert run.steps == 3
    assert run.losses == pytest.approx([1.0, 0.36, 0.1296, 0.6**6])


def test_train_for_stops_on_a_non_finite_loss_and_refuses_no_loss() -> None:
    net = nn.Linear(1, 1)
    run = train_for(net, lambda m, b: torch.tensor(float("nan")), torch.optim.SGD(net.parameters(), lr=0.1), [0], 5)
    assert run.steps == 0 and math.isnan(run.losses[0])
    with pytest.raises(ShortTrainingError, match="no loss tensor"):
        train_for(net, lambda m, b: None, torch.optim.SGD(net.parameters(), lr=0.1), [0], 5)
    with pytest.raises(ShortTrainingError, match="no batch"):
        train_for(net, _mse, torch.optim.SGD(net.parameters(), lr=0.1), [], 5)


def test_train_for_names_parameters_without_gradient() -> None:
    class HalfUsed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(3, 1)
            self.unused = nn.Linear(3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    net = HalfUsed()
    run = train_for(net, _mse, torch.optim.SGD(net.parameters(), lr=0.1), _data(), 2)
    assert run.no_grad_params == ["unused.weight", "unused.bias"]
    assert params_without_grad(net) == ["unused.weight", "unused.bias"]


def test_first_optimizer_reads_every_configure_optimizers_form() -> None:
    p = nn.Parameter(torch.zeros(1))
    a, b = torch.optim.SGD([p], lr=0.1), torch.optim.Adam([p], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(a, 1)
    assert first_optimizer(a) is a
    assert first_optimizer([a, b]) is a
    assert first_optimizer((a, b)) is a
    assert first_optimizer(([a, b], [sched])) is a
    assert first_optimizer({"optimizer": b, "lr_scheduler": {"scheduler": sched}}) is b
    assert first_optimizer([{"optimizer": b}, {"optimizer": a}]) is b
    assert first_optimizer(None) is None
    assert first_optimizer({"lr_scheduler": sched}) is None


def test_rebuild_optimizer_copies_groups_and_settings_onto_the_copy() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    opt = torch.optim.AdamW(
        [{"params": net[0].parameters(), "lr": 0.5}, {"params": net[1].parameters(), "weight_decay": 0.0}],
        lr=0.1,
        betas=(0.8, 0.9),
        weight_decay=0.3,
    )
    twin = copy.deepcopy(net)
    new = rebuild_optimizer(opt, net, twin)
    assert type(new) is torch.optim.AdamW
    assert [g["lr"] for g in new.param_groups] == [0.5, 0.1]
    assert [g["weight_decay"] for g in new.param_groups] == [0.3, 0.0]
    assert new.param_groups[0]["betas"] == (0.8, 0.9)
    assert new.param_groups[1]["params"][0] is twin[1].weight
    with pytest.raises(ShortTrainingError, match="not the model's"):
        rebuild_optimizer(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1), net, twin)


class _Configured(nn.Linear):
    def __init__(self, conf: str) -> None:
        super().__init__(2, 1)
        self.conf = conf

    def configure_optimizers(self) -> Any:
        if self.conf == "trainer":
            raise RuntimeError("Net is not attached to a `Trainer`.")
        opt = torch.optim.SGD(self.parameters(), lr=0.4)
        # a linear warm-up from 0: the optimizer's lr is 0 right after the scheduler is built
        warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: step / 10)
        return {"optimizer": opt, "lr_scheduler": warmup}


def test_user_optimizer_uses_the_base_lr_and_falls_back_to_the_trainers_optimizer() -> None:
    model = _Configured("ok")
    opt = user_optimizer(model, model)
    assert learning_rates(opt) == [0.4]  # not the warm-up's 0
    assert user_optimizer(model, model, lr=0.02).param_groups[0]["lr"] == 0.02

    source, broken = _Configured("trainer"), _Configured("trainer")
    trainer_opt = torch.optim.Adam(source.parameters(), lr=0.003)
    opt = user_optimizer(broken, source, [trainer_opt])
    assert type(opt) is torch.optim.Adam and learning_rates(opt) == [0.003]
    assert all(p is q for p, q in zip(opt.param_groups[0]["params"], broken.parameters(), strict=True))
    with pytest.raises(ShortTrainingError, match="not attached"):
        user_optimizer(broken, source)
    assert type(user_optimizer(broken, source, lr=0.01)) is torch.optim.Adam


def test_use_initial_lr_undoes_a_scheduler() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.0)
    assert learning_rates(opt) == [0.0]
    use_initial_lr(opt)
    assert learning_rates(opt) == [1.0]


def test_model_notes_counts_what_keeps_a_model_from_fitting() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.2), nn.Dropout(0.0), nn.Linear(3, 1)).train()
    for p in net[0].parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD([net[3].weight], lr=0.1, weight_decay=0.01)
    notes = model_notes(net, opt)
    assert (notes.frozen_tensors, notes.total_tensors) == (2, 4)
    assert (notes.frozen_elements, notes.total_elements) == (2 * 3 + 3, 2 * 3 + 3 + 3 + 1)
    assert notes.not_in_optimizer == ["3.bias"]
    assert notes.dropout_in_train_mode == ["1"]  # p = 0 is no dropout
    assert notes.weight_decay == 0.01
    assert model_notes(net.eval(), opt).dropout_in_train_mode == []


def test_take_samples_cuts_every_batched_tensor() -> None:
    Pair = namedtuple("Pair", ["x", "y"])
    batch = {"x": torch.arange(12).reshape(6, 2), "y": torch.arange(6), "mean": torch.ones(2), "name": "b"}
    small = take_samples(batch, 2, 6)
    assert small["x"].tolist() == [[0, 1], [2, 3]] and small["y"].tolist() == [0, 1]
    assert small["mean"].shape == (2,) and small["name"] == "b"
    pair = take_samples(Pair(torch.zeros(6, 1), [torch.arange(6)]), 3, 6)
    assert isinstance(pair, Pair) and pair.x.shape == (3, 1) and pair.y[0].tolist() == [0, 1, 2]
    assert batch_size_of(batch) == 6 and batch_size_of([["a"], (torch.zeros(5, 2),)]) == 5
    assert batch_size_of("no tensors") is None


def test_baseline_verdict_against_hand_computed_numbers() -> None:
    # separated: the last 3 real points are below the zero curve by more than 1% of it
    v = baseline_verdict([2.5, 2.0, 1.5, 1.0], [2.3, 2.2, 2.1, 2.0], 0.01)
    assert v.status == "pass" and v.separated and v.gap == pytest.approx(1.0)
    assert v.margin == pytest.approx(0.02)
    # the real run started higher and ended only 0.005 below: not separated
    assert baseline_verdict([2.5, 2.2, 2.1, 1.995], [2.3, 2.1, 2.05, 2.0], 0.01).status == "fail"
    v = baseline_verdict([2.0, 1.5, 1.2], [2.0, 1.5, 1.2], 0.01)
    assert v.status == "fail" and v.identical
    # the real run learned nothing: no verdict on the input
    assert baseline_verdict([2.0, 2.0], [1.0, 0.9], 0.01).status == "warn"
    assert baseline_verdict([2.0, float("nan")], [2.0, 1.0], 0.01).status == "warn"
    # a levelled-off zero curve is extended by its lowest value
    v = baseline_verdict([2.3, 2.0, 1.8, 1.7, 1.6], [2.3, 1.9, 1.9], 0.01, zero_levelled=True)
    assert v.status == "pass" and v.gap == pytest.approx(0.3)


def test_overfit_verdict_cases() -> None:
    v = overfit_verdict([2.0, 0.5, 0.04], 0.05)
    assert v.status == "pass" and v.reached
    v = overfit_verdict([2.0 * 0.9**t for t in range(20)], 0.05)  # on course: 0.27 at 19 steps, 16 more
    assert v.status == "pass" and not v.reached and v.projected_steps == pytest.approx(16.0, abs=0.5)
    assert overfit_verdict([2.0 - 0.002 * t for t in range(20)], 0.05).status == "warn"  # too slow to tell
    v = overfit_verdict([2.0, 1.2] + [1.1] * 16, 0.05)
    assert v.status == "fail" and v.levelled_off
    assert overfit_verdict([2.0, 2.0, 2.0], 0.05).status == "fail"  # flat: lr 0, frozen
    assert overfit_verdict([2.0, 1.999, 1.998], 0.05).status == "fail"  # fell 0.1% < 1%
    v = overfit_verdict([2.0, 2.5, 3.0], 0.05)
    assert v.status == "fail" and v.rising
    v = overfit_verdict([-1.0], 0.05)
    assert v.status == "fail" and v.negative
    assert overfit_verdict([-1.0, -3.0], -2.0, allow_negative=True).status == "pass"
    assert overfit_verdict([2.0, float("inf")], 0.05).status == "fail"
    assert overfit_target(2.3, 0.1, None) == pytest.approx(0.23) and overfit_target(2.3, 0.1, 0.5) == 0.5



def test_a_steady_fall_of_a_fifth_stops_the_run_and_passes() -> None:
    # a language model's first steps on two samples: about 1.3% a step, straight (GPT-2 of the zoo)
    curve = [4.5 * (1 - 0.013 * t) for t in range(40)]
    rule = overfit_stop(0.45, allow_negative=False)
    stopped = next(t for t in range(1, 41) if rule(curve[:t]))
    assert stopped == 17 and rule(curve[:stopped]) == "falling steadily"  # 17 points: 4.5 -> 3.56, a fifth
    assert overfit_verdict(curve[:stopped], 0.45).status == "pass"
    # a model with frozen parameters must fall further (40%) before its run stops
    frozen = overfit_stop(0.45, allow_negative=False, steady_ratio=FROZEN_STEADY_RATIO)
    assert not frozen(curve[:stopped]) and frozen(curve[:32]) == "falling steadily"
    assert overfit_verdict(curve[:stopped], 0.45, steady_ratio=FROZEN_STEADY_RATIO).status == "warn"


def test_a_fall_that_bends_into_a_plateau_is_not_steady() -> None:
    # fell by 40% in 6 steps, then 0.2% a step: the recent rate is far below the average
    bend = [2.0 * 0.92**t for t in range(6)] + [1.3 - 0.002 * t for t in range(12)]
    assert bend[-1] < 0.8 * bend[0] and not levelled_off(bend)
    assert not falling_steadily(bend)
    assert falling_steadily([2.0 * 0.97**t for t in range(18)])  # an exponential fall keeps its pace
    assert not falling_steadily([2.0 * 0.97**t for t in range(15)])  # too few points yet


def test_the_baseline_rounds_grow_by_a_step_of_8() -> None:
    # each round continues the runs, so short rounds cost little: 8 steps further, up to max_steps
    assert next_horizon(8, 60) == 16 and next_horizon(56, 60) == 60
    assert next_horizon(8, 10) == 10 and next_horizon(8, 60, step=24) == 32


def test_baseline_verdict_is_undecided_only_when_the_real_run_is_ahead_at_the_end() -> None:
    # ahead by 0.01 at each of the last three points, the margin 5% of about 1.8: undecided
    ahead = baseline_verdict([2.3, 2.0, 1.8, 1.7], [2.3, 2.01, 1.81, 1.71], 0.05)
    assert ahead.status == "skip" and not ahead.separated and 0 < ahead.gap < ahead.margin
    # level with the zero run at the end (not below): the input does not help
    assert baseline_verdict([2.3, 2.0, 1.8, 1.71], [2.3, 2.01, 1.81, 1.71], 0.05).status == "fail"
    # ahead at the last point only
    assert baseline_verdict([2.3, 2.02, 1.82, 1.70], [2.3, 2.01, 1.81, 1.71], 0.05).status == "fail"


def test_baseline_verdict_is_undecided_when_both_runs_memorised_their_samples() -> None:
    # a masked LM on four samples: both runs end near 0 (the zero-input one by position alone)
    both = baseline_verdict([4.5, 1.0, 0.1, 0.03, 0.028], [4.5, 0.9, 0.1, 0.03, 0.027], 0.01)
    assert both.status == "skip" and both.memorised and not both.separated
    # only the real run memorised: it separated, a pass
    assert baseline_verdict([4.5, 1.0, 0.1, 0.03, 0.028], [4.5, 3.0, 2.9, 2.9, 2.9], 0.01).status == "pass"
    # the zero run memorised and the real one did not: the input does not help
    assert baseline_verdict([4.5, 3.0, 2.9, 2.9, 2.9], [4.5, 1.0, 0.1, 0.03, 0.027], 0.01).status == "fail"


def test_a_run_whose_step_draws_from_python_or_numpy_cannot_be_continued() -> None:
    # their states are taken once per run (cheap), so a step that moved them leaves no state to continue from;
    # a caller then trains the longer run afresh, which gives the same curve
    import random

    import numpy as np

    net, batches = _dropout_net(), _data()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    assert train_for(net, _mse, opt, batches, 3, seed=7, resumable=True).rng is not None
    for draw in (random.random, np.random.rand):

        def noisy(model: nn.Module, batch: Any, draw: Any = draw) -> torch.Tensor:
            return _mse(model, batch) * (1.0 + 0.0 * draw())

        assert train_for(net, noisy, opt, batches, 3, seed=7, resumable=True).rng is None
