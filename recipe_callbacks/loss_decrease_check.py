"""LossDecreaseCheck (recipe step 2i): the training loss must go down over the first steps."""

from __future__ import annotations

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

    It reads the loss ``training_step`` returns (or the logged metric ``monitor``) at each batch
    end, no extra forward pass, one value per optimizer step (the batches of an accumulated step
    averaged; Lightning's scaled loss restored; averaged over DDP processes). The losses stay on the
    device and are read in one transfer at each look: after ``num_steps`` steps, then twice and four
    times as many while the trend is unclear, up to ``max_num_steps`` or the end of training. At a
    look it computes the relative decrease of the medians of the first and last thirds with a 99%
    interval from the run's own batch-to-batch noise and the Theil–Sen slope
    (:mod:`recipe_callbacks.core.loss_trend`), and calls the loss flat or rising only with evidence.
    Verdicts (the README's "Reading each check" says more): ``pass`` (a decrease of
    ``min_decrease`` or more, or at the last look a smaller but clear one); ``fail`` (rising;
    flat after ``max_num_steps``, or at once when the trainable weights did not move; a NaN or
    infinite loss, reported at the next look with the step and batch index it happened at);
    ``warn`` (it fell, then stalled above ``plateau_fraction`` of its start); ``skip`` (the noise
    still hides the trend at the last look, or the run ended before ``max_num_steps``).

    One-off: it judges once, then watches nothing. A run resumed before it judged goes on with the
    losses kept in the checkpoint; a resumed run without them (a second ``fit`` of a trained model)
    gets a ``skip`` saying why.

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
          ``relative_decrease``, ``decrease_low``/``decrease_high``, ``first_loss``, ``last_loss``,
          ``slope``, ``steps``, ``max_num_steps``, ``weights_change``, ``cost_steps``; or ``nan_step``,
          ``nan_batch_idx``, ``steps``, ``cost_steps`` for a loss that is not finite.
        - ``recipe.loss_decrease_check/loss_curve``: figure of the watched losses and the trend.

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
        self.losses: list[float] = []  # one per optimizer step read so far: the mean loss of its batches
        self.batches_seen = 0
        self.steps_seen = 0
        # the batch losses not read yet (detached, on the device), with (watched step, global step,
        # batch index, epoch) of each: read in one transfer at the next look
        self._pending: list[torch.Tensor] = []
        self._pending_at: list[tuple[int, int, int, int]] = []
        self._scale = 1.0  # Lightning hands on_train_batch_end the loss divided by the accumulation factor
        self._looks = core.looks(self.num_steps, self.max_num_steps)
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
        self.losses, self.batches_seen, self.steps_seen = [], 0, 0
        self._pending, self._pending_at = [], []
        accumulate = trainer.accumulate_grad_batches
        self._scale = float(accumulate) if pl_module.automatic_optimization and self.monitor is None else 1.0
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
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)  # the step clock
        if self._active:
            self._batch_step = trainer.global_step  # the optimizer step this batch's loss belongs to

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._active:
            return
        self.batches_seen += 1
        loss = self._loss(trainer, outputs)
        step = self._batch_step
        if loss is not None:
            self._pending.append(loss)
            self._pending_at.append((self.steps_seen, step, batch_idx, trainer.current_epoch))
        if trainer.global_step == step:
            return  # the optimizer has not stepped yet (gradient accumulation)
        self.steps_seen += 1
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

    def _loss(self, trainer: pl.Trainer, outputs: Any) -> torch.Tensor | None:
        """This batch's loss, detached and left where it is (no synchronisation); ``None`` when there is none."""
        if self.monitor is not None:
            value = trainer.callback_metrics.get(self.monitor)
            # a copy: the logged tensor may be updated in place before the look reads it
            tensor = value.detach().clone() if isinstance(value, torch.Tensor) else None
        else:
            tensor = loss_from_step_output(outputs)
            tensor = tensor.detach() if tensor is not None else None
        return tensor if tensor is not None and tensor.numel() == 1 else None

    def _read(self, trainer: pl.Trainer | None) -> tuple[list[float], tuple[float, tuple[int, int, int, int]] | None]:
        """The pending batch losses read in one transfer (averaged over the processes when ``trainer``
        is given) as one loss per optimizer step (:func:`~recipe_callbacks.core.loss_trend.step_means`),
        and the first loss that is not finite with where it happened."""
        if not self._pending:
            return [], None
        stacked = torch.stack([t.reshape(()).to(torch.float64) for t in self._pending]) * self._scale
        if trainer is not None and trainer.world_size > 1:
            stacked = trainer.strategy.reduce(stacked, reduce_op="mean")
        values: list[float] = stacked.cpu().tolist()
        means, bad = core.step_means(values, [at[0] for at in self._pending_at])
        return means, None if bad is None else (values[bad], self._pending_at[bad])

    def _finish(self) -> None:
        self._active = False
        self.finish_early()

    def _report_non_finite(self, trainer: pl.Trainer, loss: float, where: tuple[int, int, int, int]) -> None:
        _, step, batch_idx, epoch = where
        values = {"nan_step": float(step), "nan_batch_idx": float(batch_idx), "steps": float(len(self.losses))}
        values["cost_steps"] = 0.0
        self._finish()
        self.report(
            trainer,
            "fail",
            f"the training loss is {loss} at global step {step} (epoch {epoch}, batch index "
            f"{batch_idx}; watched batch {len(self.losses)} of {self.num_steps}); the losses before it were finite",
            values,
            _ADVICE_NAN,
        )

    def _judge(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, final: bool) -> None:
        """One look at the trend: judge, or watch on to the next look (``final``: the last one)."""
        read, non_finite = self._read(trainer)  # with the batches of a step the run ended in
        self.losses += read
        self._pending, self._pending_at = [], []
        if non_finite is not None:
            # the finite losses of the NaN's own optimizer step are not kept (as when it was read at once)
            self._report_non_finite(trainer, *non_finite)
            return
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
            read, non_finite = self._read(None)  # this process's losses not read yet (no collective here)
            state["losses"] = self.losses + (read if non_finite is None else read[:-1])
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        losses = state_dict.get("losses")
        self._restored_losses = [float(v) for v in losses] if isinstance(losses, list) else None
