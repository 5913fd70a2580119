"""OverfitOneBatch: recipe step 2h, a model must be able to memorise one small batch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from typing_extensions import override

from recipe_callbacks.core.pictures import Band, line_chart
from recipe_callbacks.core.short_training import (
    ModelNotes,
    OverfitVerdict,
    batch_size_of,
    overfit_stop,
    overfit_target,
    overfit_verdict,
    take_samples,
)
from recipe_callbacks.plumbing.batch import BatchResolutionError, BatchToXY, resolve_batch
from recipe_callbacks.plumbing.callback_base import FirstBatchCheck
from recipe_callbacks.plumbing.copy_training import CopyTrainingSkip, ShortTrainings
from recipe_callbacks.plumbing.finding import OnFail
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
    ``pass`` too when it is on course: the loss fell by 40% and is still falling after at least 16
    steps (the run stops there: the bugs this check looks for leave a flat, levelled-off, rising or
    negative curve, and memorising a language model's batch fully would cost hundreds of steps),
    or at ``max_steps`` it falls at a rate (in log loss, over the last third of the run) that
    reaches the target within three times the steps taken;
    ``fail`` when the loss stayed flat, levelled off above the target, rose, went negative or became
    non-finite; ``warn`` when it was still falling, too slowly to tell (more steps would), or on
    course without reaching the target while some parameters do not train (frozen, without
    gradient or optimizer, a zero learning rate: ``fail`` when it was also too slow). The
    advice lists what it finds: frozen parameters (``requires_grad=False``), trainable parameters
    missing from the optimizer or getting no gradient, a learning rate of zero, dropout on in train
    mode, weight decay, and a rising or negative loss (a wrong sign or a wrong target).

    Cost (``values["cost_steps"]``): measured, the check's wall time over the median training step
    of the same run (``values["cost_seconds"]`` is the wall time); a count of the steps taken
    (a step on ``num_samples`` of a ``B``-sample batch counting ``num_samples / B``) when the run
    has too few steps to time.

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
        if not pl_module.automatic_optimization:
            self.skip(
                trainer,
                "the model uses manual optimization: its training_step steps its own optimizer, "
                "so a short run cannot be trained with its loss",
            )
            return
        with self.stopwatch() as watch:
            size = self._batch_size(batch)
            n = min(self.num_samples, size) if size else None
            small = take_samples(batch, n, size) if n and size else batch
            payload = trainer.strategy.broadcast(self._train(trainer, pl_module, small), src=0)
        if "skip" in payload:
            self.skip(trainer, payload["skip"], payload.get("argument", ""))
            return
        scale = n / size if n and size else 1.0
        self._judge(trainer, payload, n or 0, scale)
        self.state_cost(watch.seconds)

    def _train(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> dict[str, Any]:
        """Train on the batch; returns plain data (the same on every rank after the broadcast)."""
        def rule(losses: Sequence[float]) -> str:
            return overfit_stop(self._target(losses[0]), self.allow_negative_loss)(losses)

        try:
            with ShortTrainings(trainer, pl_module, self.lr) as runs:
                result = runs.run([batch], self.max_steps, seed=torch.initial_seed(), stop=rule)
        except CopyTrainingSkip as skip:
            return {"skip": skip.reason, "argument": skip.argument}
        run = result.run
        return {
            "losses": run.losses, "steps": run.steps, "no_grad": run.no_grad_params, "lrs": result.lrs,
            "notes": result.notes, "stop": run.stop_reason, "in_place": runs.in_place,
        }

    def _judge(self, trainer: pl.Trainer, p: dict[str, Any], n: int, scale: float) -> None:
        losses: list[float] = p["losses"]
        target = self._target(losses[0])
        v = overfit_verdict(losses, target, allow_negative=self.allow_negative_loss)
        notes = p["notes"]
        lrs: list[float] = p["lrs"]
        cost = (p["steps"] + (len(losses) - p["steps"]) / 3) * scale  # a forward-only pass: a third
        values = {
            "initial_loss": v.initial,
            "lowest_loss": v.lowest,
            "final_loss": v.final,
            "target_loss": target,
            "steps": float(p["steps"]),
            "cost_steps": cost,
            "num_samples": float(n),
            "lr": lrs[0] if lrs else math.nan,
            "frozen_params": float(notes.frozen_tensors),
        }
        self._picture(trainer, losses, target)
        where = f"{n} samples" if n else "the first batch"
        aim = f"target {target:.3g}" + ("" if self.target_loss is not None else f" = {self.target_fraction:g} x init")
        if v.status == "pass" and v.reached:
            summary = (
                f"the model memorised {where} of the first batch: loss {v.initial:.3g} -> {v.lowest:.3g} "
                f"({aim}) in {p['steps']} steps"
            )
            self.report(trainer, "pass", summary, values)
            return
        causes = bool(notes.frozen_tensors or notes.not_in_optimizer or p["no_grad"] or any(lr == 0 for lr in lrs))
        if v.status == "pass" and causes:
            # On course but short of the target, with parameters that do not train: only what does
            # train was seen to learn; say so (a fine-tuning script that froze layers on purpose can
            # pass target_loss or raise max_steps).
            summary = (
                f"the loss on {where} of the first batch fell {v.initial:.3g} -> {v.lowest:.3g} in {p['steps']} steps "
                f"without reaching the {aim}, with parameters that do not train"
            )
            self.report(trainer, "warn", summary, values, self._advice(v, notes, lrs, p["no_grad"], target))
            return
        if v.status == "pass":
            summary = (
                f"the model is on course to memorise {where} of the first batch: loss {v.initial:.3g} -> "
                f"{v.lowest:.3g} in {p['steps']} steps, still falling, no plateau; at its recent rate it reaches the "
                f"{aim} in about {v.projected_steps:.0f} more steps"
            )
            self.report(trainer, "pass", summary, values)
            return
        if v.negative:
            summary = (
                f"the loss on {where} of the first batch went negative ({v.lowest:.3g}), which a "
                "cross-entropy or a squared error never does"
            )
        else:
            how = "levelled off" if v.levelled_off else "stopped" if p["steps"] < self.max_steps else "ran out"
            summary = (
                f"the model did not memorise {where} of the first batch: loss {v.initial:.3g} -> lowest "
                f"{v.lowest:.3g}, {aim}; the run {how} after {p['steps']} steps"
            )
        # Still falling but short of the target, with a cause found that keeps a model from fitting
        # (frozen parameters, parameters without gradient or optimizer, a zero learning rate): fail.
        status = v.status
        if status == "warn" and causes:
            status = "fail"
        self.report(trainer, status, summary, values, self._advice(v, notes, lrs, p["no_grad"], target))

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
        positive = all(x > 0 for x in losses if math.isfinite(x)) and target > 0
        chart = line_chart(
            {"loss on the fixed batch": losses},
            title=f"OverfitOneBatch: training on one batch must reach the loss {target:.3g}",
            xlabel="optimizer step", ylabel="loss" + (" (log scale)" if positive else ""),
            log_y=positive, band=Band(min(target / 100, target), target, "target reached") if positive else None,
            hlines={f"target {target:.3g}": target},
        )
        self.log_figure(trainer, "loss_curve", chart)
