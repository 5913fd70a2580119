"""InputIndependentBaseline: recipe step 2g, the model must learn more from its input than without it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from lightning.pytorch.utilities.seed import isolate_rng
from typing_extensions import override

from recipe_callbacks.batch import BatchToXY, ResolvedBatch
from recipe_callbacks.callback_base import FirstBatchCheck
from recipe_callbacks.copy_training import CopyTrainingSkip, train_copy, trainable_copy
from recipe_callbacks.core.pictures import line_chart
from recipe_callbacks.core.short_training import (
    baseline_verdict,
    take_samples,
)
from recipe_callbacks.finding import OnFail
from recipe_callbacks.validation import check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl


class InputIndependentBaseline(FirstBatchCheck):
    """Trains two copies of the model from the same initial weights on the same samples, one on
    the real inputs and one on inputs set to zero (targets unchanged), and checks that the real
    run reaches a clearly lower loss.

    Recipe step 2g, "input-independent baseline": a model that learns as well from zeros as from
    its data is not using its input: a ``forward`` that ignores ``x``, an input that never reaches
    the network, or a data pipeline that feeds zeros or constants.

    Both copies are ``detached_copy``s of the model at the start of fit, trained for ``steps``
    optimizer steps on the first ``num_samples`` samples of the first training batch (the batch
    ``training_step`` receives, so no data loader is read twice), with the user's own optimizer
    class and settings (the first optimizer of ``configure_optimizers()``, at its base learning
    rate, without scheduler) and the user's own loss (``training_step``), in train mode and under
    an isolated RNG seeded the same for both copies: the real model, its optimizer, the logged
    metrics and the RNG are untouched. It does not run again on a run resumed from a checkpoint.

    The verdict compares the final losses of the two copies. Zeroed inputs often give
    near-uniform outputs whose loss at init is already about what a model without input can
    reach, while the real run starts from random features and needs steps to catch up; that head
    start (``max(0, real_initial_loss - zero_initial_loss)``) is credited to the real run.
    ``relative_gap`` is ``(zero_loss - real_loss + head_start) / (real_initial_loss - real_loss)``:
    the share of the real run's loss decrease that the zero-input run did not match (1 or more:
    the input explains all of it; 0: the model learns nothing from its input; curves that are the
    same give exactly 0). ``pass`` when it is at least ``min_relative_gap``,
    ``fail`` when not, ``warn`` when the real run's loss did not decrease at all (then the
    comparison says nothing; ``OverfitOneBatch`` tells why the model does not learn).

    Cost (``values["cost_steps"]``): ``2 * steps`` optimizer steps (and two forward-only passes,
    a third of a step each), in training-step equivalents: a step on ``num_samples`` samples of a
    ``B``-sample batch counts ``num_samples / B``. With the defaults and batches of 32: about 10.

    Args:
        steps: optimizer steps for each copy.
        num_samples: how many samples of the first training batch to train on (all if smaller).
        min_relative_gap: the smallest ``relative_gap`` that passes, in (0, 1].
        lr: learning rate for the copies; default the user's base rate. Also used (with Adam) when
            the user's optimizer cannot be rebuilt for a copy.
        on_fail: ``"warn"``, ``"raise"`` or ``"ignore"`` (see ``RecipeCallback``).
        input_key: where the input is in a batch (a dict key or a position such as ``"0"``).
        target_key: where the target is in a batch.
        batch_to_xy: a function ``batch -> (x, y)``; the check cannot rebuild such a batch with a
            zero input and skips (give ``input_key`` instead).

    Raises:
        ValueError: an argument out of range (the message names it).
        TypeError: an argument of the wrong type.

    Logged:
        - ``recipe.input_independent_baseline/loss_curves``: figure of both copies' loss per step.
        - ``recipe.input_independent_baseline/finding``: text, the Finding with its values
          ``real_loss``, ``zero_loss`` (final losses on real and zeroed inputs),
          ``real_initial_loss``, ``zero_initial_loss`` (their losses before training), ``gap``,
          ``head_start``, ``relative_gap`` (``zero_loss - real_loss``, the zero run's lower start,
          and the share of the real run's decrease the zero run did not match), ``identical`` (1
          when both curves are the same at every step), ``steps``, ``cost_steps``, ``num_samples``.

    Example::

        trainer = Trainer(callbacks=[InputIndependentBaseline(steps=10), RecipeReport()])
    """

    sharded_reason: ClassVar[str] = (
        "it trains copies of the model, and a copy of a sharded model is the whole model gathered on every rank"
    )

    one_off = True

    def __init__(
        self,
        steps: int = 10,
        num_samples: int = 16,
        min_relative_gap: float = 0.25,
        lr: float | None = None,
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy)
        owner = type(self).__name__
        self.steps = check_int(owner, "steps", steps)
        self.num_samples = check_int(owner, "num_samples", num_samples)
        self.min_relative_gap = check_float(owner, "min_relative_gap", min_relative_gap, maximum=1.0)
        self.lr = None if lr is None else check_float(owner, "lr", lr)

    @override
    def check_first_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        if not pl_module.automatic_optimization:
            self.skip(
                trainer,
                "the model uses manual optimization: its training_step steps its own optimizer, "
                "so a copy cannot be trained with its loss",
            )
            return
        resolved = self.resolve(trainer, batch)
        if resolved is None:
            return
        if resolved.with_input is None:
            self.skip(
                trainer, "the batch comes through batch_to_xy, so it cannot be rebuilt with a zero input", "input_key"
            )
            return
        size = int(resolved.x.shape[0]) if resolved.x.ndim else 1
        n = min(self.num_samples, size)
        payload = trainer.strategy.broadcast(self._train(trainer, pl_module, batch, resolved, n, size), src=0)
        if "skip" in payload:
            self.skip(trainer, payload["skip"], payload.get("argument", ""))
            return
        self._judge(trainer, payload, n, n / size)

    def _train(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        resolved: ResolvedBatch,
        n: int,
        size: int,
    ) -> dict[str, Any]:
        """Train both copies; returns plain data (the same on every rank after the broadcast)."""
        assert resolved.with_input is not None
        real = take_samples(batch, n, size)
        zero = take_samples(resolved.with_input(torch.zeros_like(resolved.x)), n, size)
        x = take_samples(resolved.x, n, size)
        constant = bool(x.numel() > 0 and torch.all(x == x.reshape(-1)[0]))
        curves: dict[str, list[float]] = {}
        steps = 0
        with isolate_rng():
            seed = torch.initial_seed()
            try:
                for name, batches in (("real", [real]), ("zero", [zero])):
                    copy, optimizer = trainable_copy(trainer, pl_module, self.lr)  # same initial weights
                    run = train_copy(copy, optimizer, batches, self.steps, seed=seed)
                    curves[name] = run.losses
                    steps += run.steps
                    del copy, optimizer
            except CopyTrainingSkip as skip:
                return {"skip": skip.reason, "argument": skip.argument}
        return {
            "curves": curves,
            "steps": steps,
            "constant": constant,
            "constant_value": float(x.reshape(-1)[0]) if constant else math.nan,
        }

    def _judge(self, trainer: pl.Trainer, p: dict[str, Any], n: int, scale: float) -> None:
        real, zero = p["curves"]["real"], p["curves"]["zero"]
        v = baseline_verdict(real, zero, self.min_relative_gap)
        forward_only = len(real) + len(zero) - p["steps"]
        values = {
            "real_loss": v.real_final,
            "zero_loss": v.zero_final,
            "real_initial_loss": v.real_initial,
            "zero_initial_loss": v.zero_initial,
            "gap": v.gap,
            "head_start": v.head_start,
            "relative_gap": v.relative_gap,
            "steps": float(p["steps"]),
            "cost_steps": (p["steps"] + forward_only / 3) * scale,
            "num_samples": float(n),
            "identical": float(v.identical),
        }
        chart = line_chart(
            {"real inputs": real, "zero inputs": zero},
            title="InputIndependentBaseline: the loss on real inputs must end clearly below the loss on zeros",
            xlabel="training step of the copies", ylabel="training loss", styles={"zero inputs": "--"},
        )
        self.log_figure(trainer, "loss_curves", chart)
        after = f"after {self.steps} steps on {n} samples"
        share = f"{min(v.relative_gap, 1.0):.0%}" if math.isfinite(v.relative_gap) else "nothing"
        if v.identical:
            summary = (
                f"the loss is the same with zeroed inputs as with the real inputs at all {len(real)} points "
                f"of the curve ({v.real_initial:.3g} -> {v.real_final:.3g}, {self.steps} steps on {n} samples): "
                "the loss does not depend on the input"
            )
            self.report(trainer, "fail", summary, values, self._advice(p))
        elif v.status == "pass":
            summary = (
                f"real inputs: loss {v.real_initial:.3g} -> {v.real_final:.3g}, zeroed inputs: "
                f"{v.zero_initial:.3g} -> {v.zero_final:.3g} {after}; the input explains "
                f"{share} of the decrease (needed {self.min_relative_gap:.0%})"
            )
            self.report(trainer, "pass", summary, values)
        elif not all(math.isfinite(x) for x in (*real, *zero)):
            which = "real" if not all(math.isfinite(x) for x in real) else "zeroed"
            summary = (
                f"the loss with {which} inputs became non-finite {after} (real {v.real_initial:.3g} -> "
                f"{v.real_final:.3g}, zeroed {v.zero_initial:.3g} -> {v.zero_final:.3g}); the runs cannot be "
                "compared"
            )
            advice = (
                "a model that divides by or takes the log of its input cannot take zeros; give "
                "InputIndependentBaseline(lr=...) a smaller learning rate if the real run diverged"
            )
            self.report(trainer, "warn", summary, values, advice)
        elif v.status == "warn":
            summary = (
                f"the real run's loss did not decrease {after} ({v.real_initial:.3g} -> {v.real_final:.3g}), "
                "so the baseline says nothing about the input"
            )
            advice = (
                f"raise steps (now {self.steps}) or lr; OverfitOneBatch finds why a model does not learn "
                "(frozen parameters, a learning rate of zero, a wrong loss)"
            )
            self.report(trainer, "warn", summary, values, advice)
        else:
            summary = (
                f"zeroed inputs: loss {v.zero_initial:.3g} -> {v.zero_final:.3g}, real inputs: "
                f"{v.real_initial:.3g} -> {v.real_final:.3g} {after}; the input explains only "
                f"{share} of the decrease "
                f"(needed {self.min_relative_gap:.0%}); the model is not using its input"
            )
            self.report(trainer, "fail", summary, values, self._advice(p))

    def _advice(self, p: dict[str, Any]) -> str:
        if p["constant"]:
            return (
                f"every input value of the first batch is {p['constant_value']:g}: the data pipeline feeds a "
                "constant; look at what the loader yields (InputVisualizer shows it)"
            )
        where = (
            f"input_key={self.input_key!r}" if self.input_key else "the input found by default; set input_key if wrong"
        )
        return (
            f"check that forward uses x (not a constant, a cached tensor or a buffer), that the input "
            f"reaches the network ({where}), and that the data pipeline does not feed zeros or constants"
        )
