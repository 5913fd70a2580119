"""OverfitOneBatch: recipe step 2h, a model must be able to memorise one small batch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from lightning.pytorch.utilities.seed import isolate_rng
from typing_extensions import override

from recipe_callbacks.batch import BatchResolutionError, BatchToXY, resolve_batch
from recipe_callbacks.callback_base import FirstBatchCheck
from recipe_callbacks.copy_training import CopyTrainingSkip, train_copy, trainable_copy
from recipe_callbacks.core.pictures import Band, line_chart
from recipe_callbacks.core.short_training import (
    ModelNotes,
    OverfitVerdict,
    batch_size_of,
    learning_rates,
    model_notes,
    overfit_verdict,
    take_samples,
)
from recipe_callbacks.finding import OnFail
from recipe_callbacks.validation import check_bool, check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


class OverfitOneBatch(FirstBatchCheck):
    """Trains a copy of the model on a few samples of the first training batch until it memorises
    them, and says why when it cannot.

    Recipe step 2h, "overfit one batch": a model that cannot drive the loss on a handful of
    examples to (near) its minimum has a bug. The copy is a ``detached_copy`` of the model at the
    start of fit, trained with the user's own optimizer class and settings (the first optimizer of
    ``configure_optimizers()``, at its base learning rate, without scheduler) on the user's own
    loss (``training_step``), in train mode, under an isolated RNG: the real model, its optimizer,
    the logged metrics and the RNG are untouched. The run stops as soon as the loss reaches
    ``target_loss``; it does not run again on a run resumed from a checkpoint.

    The default ``target_loss=0.05`` suits classification with cross-entropy, whose minimum is 0
    for a model that can memorise; set it for other losses (e.g. a fraction of the targets'
    variance for a mean squared error). ``pass`` when the lowest loss reaches the target;
    ``warn`` when the loss is still falling at the end of ``max_steps`` (a slow learning rate:
    more steps would tell); ``fail`` when it stayed flat, levelled off above the target (less than
    a tenth of its decrease made in the last third of the run), rose, went negative or became
    non-finite. The advice lists what it finds: frozen parameters (``requires_grad=False``),
    trainable parameters missing from the optimizer or getting no gradient, a learning rate of
    zero, dropout on in train mode, weight decay, and a rising or negative loss (a loss with a
    wrong sign or a wrong target).

    Cost (``values["cost_steps"]``): the optimizer steps taken (and one forward-only pass, a third
    of a step), in training-step equivalents: a step on ``num_samples`` samples of a ``B``-sample
    batch counts ``num_samples / B``. With the defaults and batches of 32: 15.1 at most.

    Args:
        num_samples: how many samples of the first training batch to memorise (all of it if smaller).
        max_steps: the most optimizer steps to take.
        target_loss: the loss that counts as memorised.
        allow_negative_loss: accept a negative loss (otherwise it is taken for a wrong sign).
        lr: learning rate for the copy; default the user's base rate. Also used (with Adam) when the
            user's optimizer cannot be rebuilt for a copy.
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

        trainer = Trainer(callbacks=[OverfitOneBatch(num_samples=8, max_steps=60), RecipeReport()])
    """

    sharded_reason: ClassVar[str] = (
        "it trains a copy of the model, and a copy of a sharded model is the whole model gathered on every rank"
    )

    one_off = True

    def __init__(
        self,
        num_samples: int = 8,
        max_steps: int = 60,
        target_loss: float = 0.05,
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
        self.target_loss = check_float(owner, "target_loss", target_loss, minimum=-math.inf)
        self.allow_negative_loss = check_bool(owner, "allow_negative_loss", allow_negative_loss)
        self.lr = None if lr is None else check_float(owner, "lr", lr)

    def _batch_size(self, batch: Any) -> int | None:
        try:
            return int(resolve_batch(batch, self.input_key, self.target_key, self.batch_to_xy).x.shape[0])
        except (BatchResolutionError, IndexError):
            return batch_size_of(batch)

    @override
    def check_first_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        if not pl_module.automatic_optimization:
            self.skip(
                trainer,
                "the model uses manual optimization: its training_step steps its own optimizer, "
                "so a copy cannot be trained with its loss",
            )
            return
        size = self._batch_size(batch)
        n = min(self.num_samples, size) if size else None
        small = take_samples(batch, n, size) if n and size else batch
        payload = trainer.strategy.broadcast(self._train(trainer, pl_module, small), src=0)
        if "skip" in payload:
            self.skip(trainer, payload["skip"], payload.get("argument", ""))
            return
        scale = n / size if n and size else 1.0
        self._judge(trainer, payload, n or 0, scale)

    def _train(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> dict[str, Any]:
        """Train the copy; returns plain data (the same on every rank after the broadcast)."""
        with isolate_rng():
            try:
                copy, optimizer = trainable_copy(trainer, pl_module, self.lr)
                notes = model_notes(copy, optimizer)
                lrs = learning_rates(optimizer)
                run = train_copy(
                    copy, optimizer, [batch], self.max_steps, stop_below=self.target_loss, seed=torch.initial_seed()
                )
            except CopyTrainingSkip as skip:
                return {"skip": skip.reason, "argument": skip.argument}
        return {"losses": run.losses, "steps": run.steps, "no_grad": run.no_grad_params, "lrs": lrs, "notes": notes}

    def _judge(self, trainer: pl.Trainer, p: dict[str, Any], n: int, scale: float) -> None:
        losses: list[float] = p["losses"]
        v = overfit_verdict(losses, self.target_loss, allow_negative=self.allow_negative_loss)
        notes = p["notes"]
        lrs: list[float] = p["lrs"]
        cost = (p["steps"] + (len(losses) - p["steps"]) / 3) * scale  # a forward-only pass: a third
        values = {
            "initial_loss": v.initial,
            "lowest_loss": v.lowest,
            "final_loss": v.final,
            "target_loss": self.target_loss,
            "steps": float(p["steps"]),
            "cost_steps": cost,
            "num_samples": float(n),
            "lr": lrs[0] if lrs else math.nan,
            "frozen_params": float(notes.frozen_tensors),
        }
        self._picture(trainer, losses)
        where = f"{n} samples" if n else "the first batch"
        if v.status == "pass":
            summary = (
                f"a copy memorised {where} of the first batch: loss {v.initial:.3g} -> {v.lowest:.3g} "
                f"(target {self.target_loss:g}) in {p['steps']} steps"
            )
            self.report(trainer, "pass", summary, values)
            return
        if v.negative:
            summary = (
                f"the loss of a copy on {where} of the first batch is negative ({v.lowest:.3g}), which a "
                "cross-entropy or a squared error never is"
            )
        else:
            summary = (
                f"a copy did not memorise {where} of the first batch in {p['steps']} steps: "
                f"loss {v.initial:.3g} -> lowest {v.lowest:.3g}, target {self.target_loss:g}"
            )
        self.report(trainer, v.status, summary, values, self._advice(v, notes, lrs, p["no_grad"]))

    def _advice(self, v: OverfitVerdict, notes: ModelNotes, lrs: list[float], no_grad: list[str]) -> str:
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
            context.append(f"the loss levelled off at {v.lowest:.3g}, above the target {self.target_loss:g}")
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

    def _picture(self, trainer: pl.Trainer, losses: list[float]) -> None:
        positive = all(x > 0 for x in losses if math.isfinite(x)) and self.target_loss > 0
        chart = line_chart(
            {"loss on the fixed batch": losses},
            title=f"OverfitOneBatch: a copy trained on one batch must reach the loss {self.target_loss:g}",
            xlabel="optimizer step of the copy", ylabel="loss" + (" (log scale)" if positive else ""),
            log_y=positive, band=Band(min(self.target_loss / 100, self.target_loss), self.target_loss, "target reached")
            if positive else None,
            hlines={f"target {self.target_loss:g}": self.target_loss},
        )
        self.log_figure(trainer, "loss_curve", chart)
