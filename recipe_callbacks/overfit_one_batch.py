"""OverfitOneBatch: recipe step 2h, a model must be able to memorise one small batch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from typing_extensions import override

from recipe_callbacks.core.overfit_curve import (
    FROZEN_STEADY_RATIO,
    STEADY_RATIO,
    OverfitVerdict,
    overfit_stop,
    overfit_target,
    overfit_verdict,
)
from recipe_callbacks.core.pictures import Band, line_chart
from recipe_callbacks.core.short_training import ModelNotes, batch_size_of, take_samples
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.plumbing.batch import BatchResolutionError, BatchToXY, resolve_batch
from recipe_callbacks.plumbing.callback_base import FirstBatchCheck
from recipe_callbacks.plumbing.copy_training import ShortTrainings, require_automatic_optimization, run_cost
from recipe_callbacks.plumbing.finding import OnFail, Status
from recipe_callbacks.plumbing.validation import check_bool, check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


class OverfitOneBatch(FirstBatchCheck):
    """Trains the model on a few samples of the first training batch until it memorises them, and
    says why when it cannot.

    Recipe step 2h, "overfit one batch" (of "as few as two" examples): a model that cannot drive
    the loss on a handful of examples to near its minimum has a bug. The run trains the user's own
    module in place, from its weights at the start of fit, with the user's optimizer class and
    settings (the first optimizer, at its base learning rate, without scheduler) and loss
    (``training_step``), in train mode, under an isolated RNG; afterwards every parameter, buffer,
    gradient and attribute is put back bit for bit (see ``recipe_callbacks.plumbing.copy_training``), so the
    real run, its optimizer, the logged metrics and the RNG are untouched. It does not run again on
    a run resumed from a checkpoint.

    Judged by the curve, not by a fixed step count: the run stops as soon as the loss reaches the target
    (``target_fraction`` of the loss at init, so no knowledge of the loss's scale is needed: a
    tenth of where a cross-entropy or a squared error started; or ``target_loss`` when given), or
    when it levelled off (the best loss of the last quarter of the run, at least 8 steps, improved
    by less than 1% of the decrease so far), or went negative. ``pass`` when the target was reached;
    ``pass`` too when it is on course: the loss fell by 20% (by 40% when some parameters are
    frozen) and is still falling steadily (its recent rate at least a quarter of its average)
    after at least 16 steps (the run stops there: the bugs this check looks for leave a flat,
    levelled-off, rising or negative curve, and memorising a language model's batch fully would
    cost hundreds of steps),
    or at ``max_steps`` it falls at a rate (in log loss, over the last third of the run) that
    reaches the target within three times the steps taken;
    ``fail`` when the loss stayed flat, levelled off above the target, rose, went negative or became
    non-finite; ``warn`` when it was still falling, too slowly to tell (more steps would), or on
    course without reaching the target while some parameters do not train (frozen, without
    gradient or optimizer, a zero learning rate: ``fail`` when it was also too slow). The
    advice lists what it finds: frozen parameters (``requires_grad=False``), trainable parameters
    missing from the optimizer or getting no gradient, a learning rate of zero, dropout on in train
    mode, weight decay, and a rising or negative loss (a wrong sign or a wrong target).

    Cost (``values["cost_steps"]``): measured, the wall time of the whole check (the run, the figure
    and the report) over the median training step of the same run (``values["cost_seconds"]`` is
    the wall time); a count of the passes taken (a step on ``num_samples`` of a ``B``-sample batch
    counting ``num_samples / B``, a forward-only pass a third of that) when the run has too few
    steps to time.

    Args:
        num_samples: how many samples of the first training batch to memorise (all of it if smaller).
        max_steps: the most optimizer steps to take.
        target_fraction: the share of the loss at init that counts as memorised, in (0, 1).
        target_loss: an absolute loss that counts as memorised instead (e.g. for a loss whose
            minimum is not 0).
        allow_negative_loss: accept a negative loss (otherwise it is taken for a wrong sign).
        lr: learning rate for the run; default the user's base rate. Also used (with Adam) when the
            user's optimizer cannot be rebuilt.
        on_fail: ``"warn"``, ``"raise"`` or ``"ignore"`` (see ``RecipeCallback``).
        input_key: where the input is in a batch (only used to count the batch's samples).
        target_key: where the target is in a batch.
        batch_to_xy: a function ``batch -> (x, y)`` for batches of another shape.

    Raises:
        ValueError: an argument out of range (the message names it).
        TypeError: an argument of the wrong type.

    Logged:
        - ``recipe.overfit_one_batch/loss_curve``: figure of the copy's loss per step and the target.
        - ``recipe.overfit_one_batch/finding``: text, the Finding with its values ``initial_loss``,
          ``lowest_loss``, ``final_loss``, ``target_loss`` (the loss before training, the lowest
          reached, the last, the target), ``steps``, ``cost_steps`` (optimizer steps taken and
          their cost), ``num_samples``, ``lr``, ``frozen_params`` (samples used, the learning rate
          of the first parameter group, parameter tensors with ``requires_grad=False``).

    Example::

        trainer = Trainer(callbacks=[OverfitOneBatch(num_samples=2), RecipeReport()])
    """

    sharded_reason: ClassVar[str] = (
        "it trains a copy of the model, and a copy of a sharded model is the whole model gathered on every rank"
    )

    one_off = True

    def __init__(
        self,
        num_samples: int = 2,
        max_steps: int = 60,
        target_fraction: float = 0.1,
        target_loss: float | None = None,
        allow_negative_loss: bool = False,
        lr: float | None = None,
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy)
        owner = type(self).__name__
        self.num_samples = check_int(owner, "num_samples", num_samples)
        self.max_steps = check_int(owner, "max_steps", max_steps)
        self.target_fraction = check_float(owner, "target_fraction", target_fraction, maximum=1.0)
        self.target_loss = (
            None if target_loss is None else check_float(owner, "target_loss", target_loss, minimum=-math.inf)
        )
        self.allow_negative_loss = check_bool(owner, "allow_negative_loss", allow_negative_loss)
        self.lr = None if lr is None else check_float(owner, "lr", lr)

    def _batch_size(self, batch: Any) -> int | None:
        try:
            return int(resolve_batch(batch, self.input_key, self.target_key, self.batch_to_xy).x.shape[0])
        except (BatchResolutionError, IndexError):
            return batch_size_of(batch)

    def _target(self, initial: float) -> float:
        return overfit_target(initial, self.target_fraction, self.target_loss)

    @override
    def check_first_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        require_automatic_optimization(pl_module)
        with self.stopwatch() as watch:  # the whole check: the run, the figure and the report
            size = self._batch_size(batch)
            n = min(self.num_samples, size) if size else None
            small = take_samples(batch, n, size) if n and size else batch
            run = trainer.strategy.broadcast(self._train(trainer, pl_module, small), src=0)
            if run.skipped is not None:
                raise run.skipped
            self._judge(trainer, run, n or 0, n / size if n and size else 1.0)
        self.state_cost(watch.seconds)

    def _train(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> OverfitRun:
        """Train on the batch; plain data, the same on every rank after the broadcast (a skip too)."""

        ratio = _steady_ratio(pl_module)

        def rule(losses: Sequence[float]) -> str:
            return overfit_stop(self._target(losses[0]), self.allow_negative_loss, steady_ratio=ratio)(losses)

        try:
            with ShortTrainings(trainer, pl_module, self.lr) as trainings:
                result = trainings.run([batch], self.max_steps, seed=torch.initial_seed(), stop=rule)
        except CheckSkipped as skip:
            return OverfitRun([], 0, [], [], None, 0.0, ratio, skipped=skip)
        run = result.run
        return OverfitRun(run.losses, run.steps, run.no_grad_params, result.lrs, result.notes, run_cost(run), ratio)

    def _judge(self, trainer: pl.Trainer, run: OverfitRun, n: int, scale: float) -> None:
        target = self._target(run.losses[0])
        v = overfit_verdict(
            run.losses, target, allow_negative=self.allow_negative_loss, steady_ratio=run.steady_ratio
        )
        assert run.notes is not None
        values = {
            "initial_loss": v.initial,
            "lowest_loss": v.lowest,
            "final_loss": v.final,
            "target_loss": target,
            "steps": float(run.steps),
            "cost_steps": run.cost * scale,
            "num_samples": float(n),
            "lr": run.lrs[0] if run.lrs else math.nan,
            "frozen_params": float(run.notes.frozen_tensors),
        }
        self._picture(trainer, run.losses, target)
        status, summary, with_advice = self._verdict_text(v, run, n, target)
        advice = self._advice(v, run.notes, run.lrs, run.no_grad, target) if with_advice else ""
        self.report(trainer, status, summary, values, advice)

    def _verdict_text(self, v: OverfitVerdict, run: OverfitRun, n: int, target: float) -> tuple[Status, str, bool]:
        """The status and summary of the Finding, and whether it needs the advice."""
        assert run.notes is not None
        notes, steps = run.notes, run.steps
        where = f"{n} samples" if n else "the first batch"
        aim = f"target {target:.3g}" + ("" if self.target_loss is not None else f" = {self.target_fraction:g} x init")
        if v.status == "pass" and v.reached:
            summary = (
                f"the model memorised {where} of the first batch: loss {v.initial:.3g} -> {v.lowest:.3g} "
                f"({aim}) in {steps} steps"
            )
            return "pass", summary, False
        causes = bool(notes.frozen_tensors or notes.not_in_optimizer or run.no_grad or any(lr == 0 for lr in run.lrs))
        if v.status == "pass" and causes:
            # On course but short of the target, with parameters that do not train: only what does
            # train was seen to learn; say so (a fine-tuning script that froze layers on purpose can
            # pass target_loss or raise max_steps).
            summary = (
                f"the loss on {where} of the first batch fell {v.initial:.3g} -> {v.lowest:.3g} in {steps} steps "
                f"without reaching the {aim}, with parameters that do not train"
            )
            return "warn", summary, True
        if v.status == "pass":
            summary = (
                f"the model is on course to memorise {where} of the first batch: loss {v.initial:.3g} -> "
                f"{v.lowest:.3g} in {steps} steps, still falling, no plateau; at its recent rate it reaches the "
                f"{aim} in about {v.projected_steps:.0f} more steps"
            )
            return "pass", summary, False
        if v.negative:
            summary = (
                f"the loss on {where} of the first batch went negative ({v.lowest:.3g}), which a "
                "cross-entropy or a squared error never does"
            )
        else:
            how = "levelled off" if v.levelled_off else "stopped" if steps < self.max_steps else "ran out"
            summary = (
                f"the model did not memorise {where} of the first batch: loss {v.initial:.3g} -> lowest "
                f"{v.lowest:.3g}, {aim}; the run {how} after {steps} steps"
            )
        # Still falling but short of the target, with a cause found that keeps a model from fitting
        # (frozen parameters, parameters without gradient or optimizer, a zero learning rate): fail.
        return ("fail" if v.status == "warn" and causes else v.status), summary, True

    def _advice(
        self, v: OverfitVerdict, notes: ModelNotes, lrs: list[float], no_grad: list[str], target: float
    ) -> str:
        """What was found, causes first (each alone can keep a model from fitting), then context."""
        causes: list[str] = []
        if v.negative:
            causes.append(
                f"the loss went negative ({v.lowest:.3g}): a loss with a wrong sign (maximised?) or a "
                "wrong target; set allow_negative_loss=True if your loss can be negative"
            )
        if v.rising:
            causes.append(
                f"the loss rose ({v.initial:.3g} -> {v.final:.3g}) although the optimizer should lower it: a wrong "
                "sign of the loss, a wrong target, or a learning rate far too high"
            )
        zero = [i for i, lr in enumerate(lrs) if lr == 0]
        if zero:
            causes.append(f"the learning rate is 0 in parameter group(s) {zero} of the optimizer")
        if notes.frozen_tensors:
            causes.append(
                f"{notes.frozen_tensors} of {notes.total_tensors} parameter tensors "
                f"({notes.frozen_elements} of {notes.total_elements} values) have requires_grad=False"
            )
        if notes.not_in_optimizer:
            causes.append(f"trainable parameters missing from the optimizer: {_names(notes.not_in_optimizer)}")
        if no_grad:
            causes.append(f"parameters that got no gradient from the loss (unused or detached): {_names(no_grad)}")
        context: list[str] = []
        if v.status == "warn":
            context.append(
                f"the loss is still falling, slowly: raise max_steps (now {self.max_steps}) or lr to see it "
                "reach the target"
            )
        elif v.levelled_off and not (v.rising or v.negative) and v.decrease_fraction >= 0.01:
            context.append(f"the loss levelled off at {v.lowest:.3g}, above the target {target:.3g}")
        if notes.dropout_in_train_mode:
            context.append(
                f"dropout is on in train mode ({_names(notes.dropout_in_train_mode)}): it fights "
                "memorisation; turn it off while overfitting"
            )
        if notes.weight_decay > 0:
            context.append(f"weight_decay={notes.weight_decay:g} in the optimizer pulls the weights back")
        if not causes and v.status == "fail":
            context.append(
                "found no frozen parameter or zero learning rate: check that the target matches the output "
                "(shape, dtype, class indices, a view that mixes samples) and the loss function, or try a "
                "higher lr or a larger model"
            )
        return "; ".join(causes + context) + "."

    def _picture(self, trainer: pl.Trainer, losses: list[float], target: float) -> None:
        finite = [x for x in losses if math.isfinite(x)]
        positive = bool(finite) and all(x > 0 for x in finite) and target > 0
        # A log axis only for a curve that spans a decade (a memorised batch): a curve that fell by a
        # fifth reads as well on a linear one, which draws in about half the time (no minor ticks).
        log_y = positive and max(finite) > 10 * min(finite)
        low = min(target / 100, target) if log_y else 0.0
        self.log_figure(
            trainer, "loss_curve", line_chart, {"loss on the fixed batch": losses},
            title=f"OverfitOneBatch: training on one batch must reach the loss {target:.3g}",
            xlabel="optimizer step", ylabel="loss" + (" (log scale)" if log_y else ""),
            log_y=log_y, band=Band(low, target, "target reached") if positive else None,
            hlines={f"target {target:.3g}": target},
        )


@dataclass
class OverfitRun:
    """What the short run left: plain data, the same on every rank after the broadcast.

    Attributes:
        losses: the loss curve on the fixed batch.
        steps: optimizer steps taken.
        no_grad: trainable parameters that got no gradient from the first backward pass.
        lrs: the learning rate of each parameter group.
        notes: frozen parameters, dropout, weight decay (see ``model_notes``).
        cost: the run's passes in steps on the few samples (see ``run_cost``).
        steady_ratio: the share of the loss at init a steady fall must reach to count as on course.
        skipped: why the run could not train (then raised on every rank).
    """

    losses: list[float]
    steps: int
    no_grad: list[str]
    lrs: list[float]
    notes: ModelNotes | None
    cost: float
    steady_ratio: float
    skipped: CheckSkipped | None = None


def _steady_ratio(pl_module: pl.LightningModule) -> float:
    """How far a steady fall must go to count as on course: further with frozen parameters."""
    frozen = any(not p.requires_grad for p in pl_module.parameters())
    return FROZEN_STEADY_RATIO if frozen else STEADY_RATIO
