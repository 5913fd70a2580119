"""LossDecreaseCheck (recipe step 2i): the training loss must go down over the first steps."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.parameter import is_lazy
from typing_extensions import override

from recipe_callbacks.core import loss_trend as core
from recipe_callbacks.core.pictures import line_chart
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.plumbing.callback_base import RecipeCallback, sharded_strategy
from recipe_callbacks.plumbing.finding import OnFail
from recipe_callbacks.plumbing.observe import loss_from_step_output
from recipe_callbacks.plumbing.validation import check_float, check_int, check_optional_str

if TYPE_CHECKING:
    import lightning.pytorch as pl

_ADVICE_FLAT = (
    "check the learning rate (0 or far too low; a warmup that starts near 0 needs a larger num_steps), "
    "parameters that do not train (requires_grad=False, or missing from the optimizer), a loss that does "
    "not depend on the model's output (detached, or computed from the wrong tensor), and the data "
    "(labels shuffled independently of the inputs, constant inputs)"
)
_ADVICE_RISING = (
    "the learning rate is probably too high (try 3e-4 with Adam, or 10x lower), or the loss has the "
    "wrong sign; also check the data and the targets"
)
_ADVICE_STALLED = (
    "the loss stopped far above zero: if the model should fit this data, look for a learning rate too "
    "low or decayed too early, frozen layers, labels that do not match the inputs, or a model too small; "
    "if a high floor is expected (noisy targets, a regulariser), raise plateau_fraction"
)
_ADVICE_NAN = (
    "a loss that is not finite: lower the learning rate, clip gradients, look for log(0), division by "
    "zero or sqrt of a negative in the loss, and for NaN/Inf in that batch's inputs and targets"
)


class LossDecreaseCheck(RecipeCallback):
    """Verifies that the training loss decreases over the first ``num_steps`` optimizer steps.

    It reads the loss that ``training_step`` returns (a tensor, or ``dict["loss"]``; or the logged
    metric named by ``monitor``) in ``on_train_batch_end``, so it costs no extra forward pass; the
    losses of the batches of one optimizer step (``accumulate_grad_batches``) are averaged into one
    value per step. After ``num_steps`` optimizer steps it cuts the losses into thirds and computes
    the relative decrease
    ``(median(first third) - median(last third)) / |median(first third)|`` with a 99% confidence
    interval from the batch-to-batch noise of the run itself, and the Theil–Sen slope (see
    ``recipe_callbacks.core.loss_trend``). It calls the loss flat or rising only with evidence.
    When the first ``num_steps`` cannot tell (a noisy loss, or a model that learns slowly at first,
    as transformers trained from scratch do), it watches longer, judging again at twice and four
    times as many steps, up to ``max_num_steps`` or the end of training; the Finding says how long
    it watched. Verdicts:

    - ``pass``: the loss decreases by ``min_decrease`` or more (or, at the last look, by less but
      clearly);
    - ``fail``: the loss is rising (clearly, by more than ``min_decrease``); or flat: clearly within
      ``min_decrease`` after ``max_num_steps``, or at once when the trainable weights did not move
      (less than 1e-4 of their norm: a learning rate of 0, nothing in the optimizer);
    - ``fail``: a NaN or infinite loss, reported at once with the step and batch index;
    - ``warn``: the loss fell but then stalled (the last third barely below the middle one) at
      more than ``plateau_fraction`` of its starting level: far above zero for a task the model
      should fit;
    - ``skip``: at the last look the noise still hides the trend, or a run ended before
      ``max_num_steps`` with a loss that barely moved while the weights do move.

    One-off: it judges once, then watches nothing. A run resumed from a checkpoint taken before it
    judged goes on with the losses kept in the checkpoint; a resumed run without them (a second
    ``fit`` of a trained model) gets a ``skip`` saying why. With gradient accumulation the
    per-batch loss is restored from Lightning's scaled value; under DDP the loss is averaged over
    the processes.

    Args:
        num_steps: how many optimizer steps to watch before the first judgement (at least 6).
        min_decrease: the smallest relative decrease that counts as going down.
        plateau_fraction: warn when the loss stalls above this fraction of its starting level
            (1.0 switches the warning off).
        monitor: read the loss from this logged metric (``trainer.callback_metrics``) instead of the
            ``training_step`` output, e.g. ``"train_loss"`` when ``training_step`` returns nothing.
        on_fail: what a ``fail`` Finding does: ``"warn"``, ``"raise"`` or ``"ignore"``.
        max_num_steps: the most optimizer steps it watches when the first ``num_steps`` cannot tell;
            ``None``: four times ``num_steps``.

    Raises:
        ValueError: an argument out of range.
        TypeError: an argument of the wrong type.

    Logged:
        - ``recipe.loss_decrease_check/finding``: text, the Finding with its values
          ``relative_decrease`` (with ``decrease_low``/``decrease_high``, its 99% interval),
          ``first_loss``, ``last_loss``, ``slope`` (Theil–Sen, loss per step), ``steps`` (watched),
          ``max_num_steps``, ``weights_change`` (relative, when known), ``cost_steps`` (0: it only
          watches) when judged; ``nan_step``, ``nan_batch_idx``, ``steps``, ``cost_steps`` when a loss
          is not finite.
        - ``recipe.loss_decrease_check/loss_curve``: figure of the watched losses, the Theil–Sen
          line and the stall level.

    Example::

        trainer = Trainer(callbacks=[LossDecreaseCheck(num_steps=30), RecipeReport()])
    """

    one_off = True

    def __init__(
        self,
        num_steps: int = 30,
        min_decrease: float = 0.05,
        plateau_fraction: float = 0.25,
        monitor: str | None = None,
        on_fail: OnFail = "warn",
        max_num_steps: int | None = None,
    ) -> None:
        super().__init__(on_fail=on_fail)
        owner = type(self).__name__
        self.num_steps = check_int(owner, "num_steps", num_steps, minimum=core.MIN_LOSSES)
        self.min_decrease = check_float(owner, "min_decrease", min_decrease, maximum=1.0)
        self.plateau_fraction = check_float(owner, "plateau_fraction", plateau_fraction, maximum=1.0)
        self.monitor = check_optional_str(owner, "monitor", monitor)
        self.max_num_steps = (
            4 * self.num_steps
            if max_num_steps is None
            else check_int(owner, "max_num_steps", max_num_steps, minimum=self.num_steps)
        )
        self._looks = core.looks(self.num_steps, self.max_num_steps)
        self.losses: list[float] = []  # one per optimizer step: the mean loss of its batches
        self.batches_seen = 0
        self.steps_seen = 0
        self._step_losses: list[float] = []  # the batches of the optimizer step in progress
        self._restored_losses: list[float] | None = None
        self._weights_at_start: dict[str, torch.Tensor] | None = None
        self._active = False
        self._batch_step = 0
        self._state_key = self._generate_state_key(num_steps=self.num_steps, monitor=self.monitor)

    @property
    @override
    def state_key(self) -> str:
        return self._state_key

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self.losses, self.batches_seen, self.steps_seen, self._step_losses = [], 0, 0, []
        self._looks = core.looks(self.num_steps, self.max_num_steps)
        judged = bool(self._findings)
        if not self.is_resumed(trainer):
            self._active = not self.early_finished
            self._weights_at_start = self._weights(trainer, pl_module)
        elif judged:
            self._active = False
        elif self._restored_losses is not None:  # resumed before it judged: go on where it was
            self.losses, self._active, self.early_finished = list(self._restored_losses), True, False
            self.steps_seen = len(self.losses)
        else:
            self._active = False
            self.finish_early()
            raise CheckSkipped(
                f"this fit starts from trained weights (global step {trainer.global_step}) with no losses of the "
                "first steps kept, so the first steps' trend cannot be judged; it is judged on a fresh run"
            )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_step = trainer.global_step  # the optimizer step this batch's loss belongs to

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._active:
            return
        self.batches_seen += 1
        loss = self._loss(trainer, pl_module, outputs)
        if loss is not None:
            if not math.isfinite(loss):
                self.losses.append(loss)
                self._report_non_finite(trainer, loss, batch_idx)
                return
            self._step_losses.append(loss)
        if trainer.global_step == self._batch_step:
            return  # the optimizer has not stepped yet (gradient accumulation)
        self.steps_seen += 1
        if self._step_losses:
            self.losses.append(sum(self._step_losses) / len(self._step_losses))
            self._step_losses = []
        if self._looks and self.steps_seen >= self._looks[0]:
            self._judge(trainer, pl_module, final=self.steps_seen >= self.max_num_steps)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active:
            self._judge(trainer, pl_module, final=True)

    def _weights(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, torch.Tensor] | None:
        """A small sample of the trainable weights, to tell a model that learns from one that cannot;
        ``None`` under a sharded strategy (each process holds only a part of them)."""
        if sharded_strategy(trainer) is not None:
            return None
        named = ((n, p) for n, p in pl_module.named_parameters() if p.requires_grad and not is_lazy(p))
        return core.weight_sample(named)

    def _loss(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any) -> float | None:
        """This batch's loss as a float, averaged over processes; ``None`` when there is none."""
        if self.monitor is not None:
            value = trainer.callback_metrics.get(self.monitor)
            tensor = value.detach() if isinstance(value, torch.Tensor) else None
        else:
            tensor = loss_from_step_output(outputs)
            tensor = tensor.detach() if tensor is not None else None
            # Lightning hands on_train_batch_end the loss divided by the accumulation factor.
            if tensor is not None and pl_module.automatic_optimization:
                tensor = tensor * trainer.accumulate_grad_batches
        if tensor is None or tensor.numel() != 1:
            return None
        tensor = tensor.to(torch.float64).reshape(())
        if trainer.world_size > 1:
            tensor = trainer.strategy.reduce(tensor, reduce_op="mean")
        return float(tensor)

    def _finish(self) -> None:
        self._active = False
        self.finish_early()

    def _report_non_finite(self, trainer: pl.Trainer, loss: float, batch_idx: int) -> None:
        step = self._batch_step
        values = {"nan_step": float(step), "nan_batch_idx": float(batch_idx), "steps": float(len(self.losses))}
        values["cost_steps"] = 0.0
        self._finish()
        self.report(
            trainer,
            "fail",
            f"the training loss is {loss} at global step {step} (epoch {trainer.current_epoch}, batch index "
            f"{batch_idx}; watched batch {len(self.losses)} of {self.num_steps}); the losses before it were finite",
            values,
            _ADVICE_NAN,
        )

    def _judge(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, final: bool) -> None:
        """One look at the trend: judge, or watch on to the next look (``final``: the last one)."""
        if self._step_losses:  # the batches of a step the run ended in
            self.losses.append(sum(self._step_losses) / len(self._step_losses))
            self._step_losses = []
        if self.batches_seen and not self.losses:
            self._finish()
            reason = (
                f"found no loss in {self.batches_seen} training batches: training_step returned neither "
                "a tensor nor a dict with 'loss'"
                if self.monitor is None
                else f"the metric monitor={self.monitor!r} was not in trainer.callback_metrics"
            )
            raise CheckSkipped(f"{reason}; log the loss and name it", "monitor")
        if len(self.losses) < core.MIN_LOSSES and not final:
            self._looks = [n for n in self._looks if n > self.steps_seen]
            return
        if len(self.losses) < core.MIN_LOSSES:
            self._finish()
            short = f"only {len(self.losses)} optimizer step(s) before training ended"
            fast_dev_run = getattr(trainer, "fast_dev_run", False)  # set by the Trainer at runtime, not typed
            if fast_dev_run:  # a smoke test on purpose: no advice against what the user asked for
                raise CheckSkipped(f"{short} (fast_dev_run={fast_dev_run}); the trend is judged in an ordinary run")
            raise CheckSkipped(f"{short}; need at least {core.MIN_LOSSES} to see a trend", "num_steps")
        trend = core.loss_trend(self.losses, min_decrease=self.min_decrease, plateau_fraction=self.plateau_fraction)
        now = self._weights(trainer, pl_module)
        change = None if now is None or self._weights_at_start is None else core.relative_change(
            self._weights_at_start, now
        )
        capped = self.steps_seen >= self.max_num_steps
        frozen = change is not None and change < core.FROZEN_CHANGE
        action, status = core.verdict(trend.status, final=final, capped=capped, frozen=frozen)
        if action == "watch":
            self._looks = [n for n in self._looks if n > self.steps_seen]
            return
        self._finish()
        self._draw(trainer, trend)
        self._report_trend(trainer, trend, action, status, change)

    def _report_trend(
        self, trainer: pl.Trainer, trend: core.LossTrend, action: core.Action, status: core.TrendStatus,
        change: float | None,
    ) -> None:
        """The Finding of a judged trend: the figures, how long it watched, and what they mean."""
        values = {
            "relative_decrease": trend.relative_decrease,
            "decrease_low": trend.decrease_low,
            "decrease_high": trend.decrease_high,
            "first_loss": trend.first,
            "last_loss": trend.last,
            "slope": trend.slope,
            "steps": float(trend.steps),
            "max_num_steps": float(self.max_num_steps),
            "cost_steps": 0.0,
        }
        if change is not None:
            values["weights_change"] = change
        watched = (
            f"watched {trend.steps} optimizer steps" if trend.steps <= self.num_steps else
            f"watched {trend.steps} optimizer steps, longer than num_steps={self.num_steps} because the first "
            f"{self.num_steps} could not tell (at most max_num_steps={self.max_num_steps})"
        )
        over = (
            f"over the first {trend.steps} optimizer steps the loss went from {trend.first:.4g} to "
            f"{trend.last:.4g} (medians of the first and last thirds): a relative decrease of "
            f"{trend.relative_decrease:.1%} (99% interval {trend.decrease_low:.1%} to {trend.decrease_high:.1%}; "
            f"Theil–Sen slope {trend.slope:.3g} per step; {watched})"
        )
        expected = f"expected a decrease of at least {self.min_decrease:.0%}"
        moved = "" if change is None else f"; the trainable weights moved by {change:.3g} of their norm"
        frozen = change is not None and change < core.FROZEN_CHANGE
        longer = f"set {self.check_name}(max_num_steps=...) or train longer"
        summary, advice = {
            ("fail", "flat"): (f"the loss is flat{moved}" + (", so the model is not learning" if frozen else "")
                               + f"; {expected}", _ADVICE_FLAT),
            ("fail", "rising"): (f"the loss is rising, {expected}", _ADVICE_RISING),
            ("warn", "stalled"): (f"then stalled at {trend.last:.4g} (middle third {trend.middle:.4g}), still above "
                                  f"{self.plateau_fraction:.0%} of where it started", _ADVICE_STALLED),
            ("pass", "slow"): (f"a slow but clear decrease, below min_decrease={self.min_decrease:.0%}", ""),
            ("skip", "flat"): (f"less than the {self.min_decrease:.0%} expected{moved}, but training ended before the "
                               f"max_num_steps={self.max_num_steps} steps a barely moving loss is watched for; "
                               "not judged", longer),
            ("skip", "unclear"): ("the batch-to-batch noise is too large to tell a trend at the end of what it "
                                  "watched; not judged", longer),
        }.get((action, status), ("", ""))
        self.report(trainer, action, f"{over}; {summary}" if summary else over, values, advice)  # type: ignore[arg-type]

    def _draw(self, trainer: pl.Trainer, trend: core.LossTrend) -> None:
        if not trainer.is_global_zero:
            return
        fit = [trend.intercept + trend.slope * i for i in range(trend.steps)]
        self.log_figure(
            trainer, "loss_curve", line_chart,
            {"training loss": self.losses, "Theil-Sen trend": fit},
            title=f"LossDecreaseCheck ({trend.status}): the trend of the first {trend.steps} losses must fall by "
            f"{self.min_decrease:.0%} or more",
            xlabel="watched training batch", ylabel="training loss",
            hlines={f"stall level ({self.plateau_fraction:.0%} of the start)": self.plateau_fraction * trend.first},
            styles={"Theil-Sen trend": "--"},
        )

    # ----------------------------------------------------------------- state
    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._active:  # not judged yet: a resumed run goes on from these
            state["losses"] = list(self.losses)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        losses = state_dict.get("losses")
        self._restored_losses = [float(v) for v in losses] if isinstance(losses, list) else None
