"""NoLRDecayWarning: recipe steps 3a and 3c, "Adam with 3e-4 is safe" and "do not trust learning
rate decay defaults".

Before the first step it plays every configured scheduler through the whole planned run on copies
(the real optimizer and schedulers are untouched), stepped exactly as Lightning will step them, and
shows the planned LR curve of every parameter group. It then names the ways a schedule silently goes
wrong; during training it logs the LR actually used, and at the end compares it with the preview.
The math lives in :mod:`recipe_callbacks.core.lr_schedule` and :mod:`recipe_callbacks.core.lr_tracker`
(status and numbers); every sentence of its Findings is in :mod:`recipe_callbacks.no_lr_decay_text`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from lightning.fabric.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from recipe_callbacks import no_lr_decay_text as text
from recipe_callbacks.core import lr_schedule as core
from recipe_callbacks.core import lr_tracker as track
from recipe_callbacks.core.pictures import line_chart
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.plumbing.batch import BatchToXY
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import Finding, OnFail, RecipeCheckError, format_value
from recipe_callbacks.plumbing.validation import check_choice, check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch.optim import Optimizer

# Findings about what happened during training (kept across a resume); all others come from the preview.
_HISTORY_KEYS: tuple[str, ...] = ("plateau_metric:", "manual_not_stepped:")


class NoLRDecayWarning(RecipeCallback):
    """Previews the planned learning-rate schedule and flags the ways it silently goes wrong.

    Recipe 3c: keep the LR constant while you build and overfit; add and tune decay at the very
    end, because schedules copied from other code decay at the wrong time for your run. Recipe 3a:
    Adam at 3e-4 forgives much. Before the first step every configured scheduler is copied and
    stepped through the whole planned run as Lightning steps it (``interval``, ``frequency``,
    gradient accumulation, ``max_epochs``/``max_steps``; ``ReduceLROnPlateau`` counted, not
    simulated). Findings, each under its key (:meth:`finding`): ``decay_in_early_stage``
    (``stage="early"``) or ``never_decays`` (``stage="final"``); ``decays_too_early``;
    ``rises_after_decay``; ``length:<k>`` (a ``T_max``, ``total_steps``, ``step_size``,
    ``milestones`` or ``total_iters`` that does not match how often scheduler ``k`` steps, with a
    hint at the unit); ``never_steps:<k>``; ``misplaced_keys`` (``interval``/``frequency`` at the
    top level of ``configure_optimizers``' dict, which the callback sees by wrapping the method from
    ``setup`` to ``on_fit_start``, passing its value on unchanged); ``manual_not_stepped:<k>``;
    ``plateau_metric:<k>``; ``actual_vs_planned`` (at the end); ``adam_lr`` and
    ``weight_decay_bias_norm`` (notes, warn at most).

    Args:
        stage: ``"early"`` (building the baseline: any decay is a warning) or ``"final"`` (tuning
            at the very end: only mistakes, and no decay at all, are).
        min_lr_fraction: the LR counts as "near zero" below this fraction of its peak.
        end_margin: near-zero LR is a mistake when more than this fraction of the run is left.
        length_tolerance: relative slack when matching a scheduler's length to the run.
        adam_lr_factor: the Adam/AdamW note fires beyond this factor away from 3e-4.
        log_every_n_steps: log the actual LR every this many optimizer steps (default: the
            Trainer's ``log_every_n_steps``).
        max_preview_steps: simulate at most this many optimizer steps (a few microseconds each; a longer
            run is previewed over its first ``max_preview_steps`` steps and the Finding says so).
        on_fail: ``"warn"``, ``"raise"`` or ``"ignore"`` (see :class:`RecipeCallback`).
        input_key: unused (the check reads no batch); accepted like every recipe callback.
        target_key: unused, as ``input_key``.
        batch_to_xy: unused, as ``input_key``.

    Raises:
        ValueError: for an unknown ``stage`` or an out-of-range number.
        TypeError: for an argument of the wrong type.

    Logged (under ``recipe.no_lr_decay_warning/``): ``planned_lr`` (picture of the planned LR per
    param group, at the first step); ``schedule`` (text, one line per scheduler); ``lr_group_<i>``
    (the LR group ``i`` used, every ``log_every_n_steps`` optimizer steps); ``actual_vs_planned``
    (picture, at the end); ``finding`` (text, every Finding with its values).

    Example::

        trainer = Trainer(callbacks=[NoLRDecayWarning(stage="early"), RecipeReport()])
    """

    def __init__(
        self,
        stage: Literal["early", "final"] = "early",
        min_lr_fraction: float = 0.01,
        end_margin: float = 0.1,
        length_tolerance: float = 0.1,
        adam_lr_factor: float = 10.0,
        log_every_n_steps: int | None = None,
        max_preview_steps: int = 1_000_000,
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy)
        owner = type(self).__name__
        self.stage: Literal["early", "final"] = check_choice(owner, "stage", stage, ("early", "final"))
        self.min_lr_fraction = check_float(owner, "min_lr_fraction", min_lr_fraction, maximum=1.0)
        self.end_margin = check_float(owner, "end_margin", end_margin, maximum=1.0, inclusive_minimum=True)
        self.length_tolerance = check_float(owner, "length_tolerance", length_tolerance, maximum=1.0)
        self.adam_lr_factor = check_float(owner, "adam_lr_factor", adam_lr_factor, minimum=1.0)
        self.log_every_n_steps = (
            None if log_every_n_steps is None else check_int(owner, "log_every_n_steps", log_every_n_steps)
        )
        self.max_preview_steps = check_int(owner, "max_preview_steps", max_preview_steps)
        self._state_key = self._generate_state_key(stage=self.stage)  # Lightning reads it around every hook call
        self._reset_run()

    @property
    @override
    def state_key(self) -> str:
        return self._state_key

    def _hooks_off(self) -> set[str]:  # the batch hooks count for a ReduceLROnPlateau only: else not called
        off = super()._hooks_off()
        if not getattr(self, "_tracker", None) or self._tracker.has_plateau:
            return off
        return off | {"on_train_batch_start", "on_train_batch_end"}

    def finding(self, key: str) -> Finding | None:
        """The current Finding with ``key`` (e.g. ``"decays_too_early"``, ``"length:0"``), or ``None``."""
        return self._findings.get(key)

    def _reset_run(self) -> None:
        self._misplaced: list[str] | None = None
        self._unwrap: Callable[[], None] | None = None
        self.plan: core.PlannedSchedule | None = None
        self._tracker = track.ScheduleTracker([], [])
        self._optimizer_index: dict[int, int] = {}
        self._sole: Any = None  # the only optimizer of the fit (None with several)

    # ------------------------------------------------------------------ configure_optimizers' raw dict
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.gate_sharded(trainer)
        if stage == "fit":
            self._reset_run()
            self._unwrap = track.record_returned(
                pl_module, "configure_optimizers", lambda out: setattr(self, "_misplaced",
                                                                       track.misplaced_scheduler_keys(out)))

    def _restore_configure_optimizers(self) -> None:
        if self._unwrap is not None:
            self._unwrap()
            self._unwrap = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._restore_configure_optimizers()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore_configure_optimizers()

    # ------------------------------------------------------------------ the preview
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the preview judges the whole run again: findings restored from a checkpoint about the
        # schedule are replaced, what happened during earlier training is kept
        for key in [k for k in self._findings if not k.startswith(_HISTORY_KEYS)]:
            del self._findings[key]
        optimizers = list(trainer.optimizers)
        self._optimizer_index = {id(o): k for k, o in enumerate(optimizers)}
        self._sole = optimizers[0] if len(optimizers) == 1 else None
        entries = track.scheduled_steps(list(trainer.lr_scheduler_configs), optimizers)
        self._tracker = track.ScheduleTracker(
            entries, [len(o.param_groups) for o in optimizers], start_step=int(trainer.global_step),
            log_every=self.log_every_n_steps or max(1, int(getattr(trainer, "log_every_n_steps", 50) or 1)),
        )
        self._refresh_hooks()
        if self._misplaced:
            self._report_misplaced(trainer, self._misplaced)
        if not optimizers:
            raise CheckSkipped("the module configured no optimizer; there is no learning rate to check")
        self._preview(trainer, pl_module, optimizers, entries)

    def _preview(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizers: list[Optimizer],
        real: list[core.ScheduledStep],
    ) -> None:
        loop = track.loop_plan(trainer)
        if math.isinf(loop.total_steps()) or loop.total_steps() <= loop.start_step:
            self.report(trainer, "skip", f"the run has no planned end to preview (planned optimizer steps: "
                        f"{loop.total_steps()})", advice="set Trainer(max_steps=...) or Trainer(max_epochs=...) with "
                        "a sized training loader", key="schedule")
            return
        try:
            copies, scheduler_copies = core.copy_for_simulation(
                optimizers, [e.scheduler for e in real], keep=(pl_module, trainer)
            )
        except Exception as err:  # a scheduler that cannot be copied must not stop the user's training
            self.report(trainer, "skip", f"could not copy the schedulers to simulate them: {err}", key="schedule")
            return
        entries = [
            core.ScheduledStep(s, e.interval, e.frequency, e.reduce_on_plateau, e.optimizer_index)
            for s, e in zip(scheduler_copies, real, strict=True)
        ]
        self.plan = core.simulate_schedule(copies, entries, loop, max_steps=self.max_preview_steps)
        self._tracker.follow(self.plan)
        self._log_preview(trainer, self.plan, optimizers)
        self._judge(trainer, pl_module, self.plan, entries, loop, optimizers)

    def _log_preview(self, trainer: pl.Trainer, plan: core.PlannedSchedule, optimizers: list[Optimizer]) -> None:
        if not trainer.is_global_zero:
            return
        every = max(1, math.ceil(len(plan.steps) / track.CHART_POINTS))
        series = {text.group_label(g, plan): plan.group_lrs(g)[::every].tolist() for g in range(len(plan.groups))}
        title = (
            f"NoLRDecayWarning: the planned LR of {plan.epochs} epochs; look for early decay or a fall to 0"
        )
        self.log_figure(trainer, "planned_lr", line_chart, series, x=plan.steps[::every].tolist(), title=title,
                        xlabel="optimizer step", ylabel="learning rate", y_from_zero=True,
                        step=self._tracker.start_step)
        names = [type(o).__name__ for o in optimizers]
        lines = text.schedule(plan, self._tracker.entries, names, trainer.estimated_stepping_batches)
        self.log_text(trainer, "schedule", lines, step=self._tracker.start_step)

    def _judge(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, plan: core.PlannedSchedule,
        entries: list[core.ScheduledStep], loop: core.LoopPlan, optimizers: list[Optimizer],
    ) -> None:
        issues = core.analyze_schedule(plan, entries, loop, stage=self.stage, min_lr_fraction=self.min_lr_fraction,
                                       end_margin=self.end_margin, length_tolerance=self.length_tolerance)
        issues += track.optimizer_notes(pl_module, plan, optimizers, self.adam_lr_factor)
        for issue in issues:
            summary, advice = text.issue_text(issue)
            self.report(trainer, issue.status, summary, issue.values, advice, key=issue.key)
        peak, final = track.plan_levels(plan)
        mistakes = sum(i.status == "fail" for i in issues)
        summary = text.plan_summary(plan.simulated_steps, plan.epochs, len(entries), peak, final, mistakes,
                                    manual=not pl_module.automatic_optimization, truncated=plan.truncated)
        values = {"planned_steps": float(plan.simulated_steps), "peak_lr": peak, "final_lr": final, "cost_steps": 0.0}
        if mistakes:  # each mistake is its own Finding already; do not add a row that warns again
            self.log_text(trainer, "plan", "\n".join(f"- {k}: {format_value(v)}" for k, v in values.items()))
        else:
            self.report(trainer, "pass", summary, values, key="schedule")

    def _report_misplaced(self, trainer: pl.Trainer, keys: list[str]) -> None:
        summary, advice = text.misplaced(keys)
        self.report(trainer, "fail", summary, {"misplaced_keys": float(len(keys))}, advice, key="misplaced_keys")

    # ------------------------------------------------------------------ during training
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._tracker.has_plateau:  # what the batch steps is counted for ReduceLROnPlateau only
            self._verify_plateaus(trainer)
            self._tracker.stepped_this_batch = False

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        groups = optimizer.param_groups
        lrs = [float(groups[0]["lr"])] if len(groups) == 1 else [float(group["lr"]) for group in groups]
        if optimizer is self._sole and self._tracker.alike(lrs):
            return  # the usual: one optimizer, mostly at the LRs of the step before
        i = self._optimizer_index.get(id(optimizer), 0)
        if i >= len(self._tracker.opt_steps):
            return
        _, offset, log = self._tracker.optimizer_step(i, lrs)
        if log:
            self.log_scalars(trainer, {f"lr_group_{offset + j}": lr for j, lr in enumerate(lrs)}, trainer.global_step)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._tracker.has_plateau:  # without one there is nothing to count (epoch_end needs it for plateaus only)
            self._tracker.batch_end(batch_idx, pl_module.automatic_optimization)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tracker.batches_this_epoch = 0
        if self._tracker.epochs_done:
            self._verify_plateaus(trainer)
            self._verify_manual(trainer, pl_module, at_end=False)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._verify_plateaus(trainer)
        finished = self._tracker.batches_this_epoch >= trainer.num_training_batches
        self._tracker.epoch_end(trainer.current_epoch, finished, pl_module.automatic_optimization)

    # ------------------------------------------------------------------ checks that need the run
    def _verify_plateaus(self, trainer: pl.Trainer, *, final: bool = False) -> None:
        for k, missed, expected in self._tracker.missed_plateaus(final=final):
            self._report_plateau(trainer, k, missed, expected)

    def _report_plateau(self, trainer: pl.Trainer, k: int, missed: int, expected: int) -> None:
        scheduler = self._tracker.entries[k].scheduler
        config = next((c for c in trainer.lr_scheduler_configs if c.scheduler is scheduler), None)
        summary, advice = text.plateau(k, str(getattr(config, "monitor", None)), missed, expected,
                                       sorted(trainer.callback_metrics))
        values = {"plateau_missed_steps": float(missed), "plateau_expected_steps": float(expected)}
        self.report(trainer, "fail", summary, values, advice, key=f"plateau_metric:{k}")

    def _verify_manual(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, at_end: bool) -> None:
        if pl_module.automatic_optimization:
            return
        for k, stepped, due in self._tracker.not_stepped_manually(at_end=at_end):
            summary, advice = text.manual(k, self._tracker.entries[k].name, self._tracker.epochs_done, due)
            values = {"scheduler_steps": float(stepped), "expected_scheduler_steps": float(due)}
            self.report(trainer, "fail", summary, values, advice, key=f"manual_not_stepped:{k}")

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._verify_plateaus(trainer, final=True)
        self._verify_manual(trainer, pl_module, at_end=True)
        if self.plan is not None:
            self._report_actual_vs_planned(trainer, pl_module, self.plan)
            self._log_actual_chart(trainer, self.plan)

    def _report_actual_vs_planned(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, plan: core.PlannedSchedule
    ) -> None:
        tracker = self._tracker
        values = {"compared_steps": float(tracker.compared), "mismatched_steps": float(tracker.mismatched)}
        differ: list[tuple[int, str, int, int]] = []
        if tracker.made() >= plan.simulated_steps and not plan.truncated and not plan.error:  # a complete run
            counts, stepped = tracker.scheduler_differences(plan)
            values.update(counts)
            differ = [(k, tracker.entries[k].name, n, plan.scheduler_steps[k]) for k, n in stepped]
        first = tracker.first_mismatch
        mismatch = None if first is None else (tracker.mismatched, tracker.compared, first)
        summary, advice = text.actual_vs_planned(mismatch, differ, tracker.compared, tracker.made(),
                                                 plan.simulated_steps, automatic=pl_module.automatic_optimization)
        self.report(trainer, "warn" if advice else "pass", summary, values, advice, key="actual_vs_planned")

    def _log_actual_chart(self, trainer: pl.Trainer, plan: core.PlannedSchedule) -> None:
        if not trainer.is_global_zero or not self._tracker.actual_chart or not plan.steps.size:
            return
        xs, series = self._tracker.chart()
        self.log_figure(
            trainer, "actual_vs_planned", line_chart,
            series, x=xs, title="NoLRDecayWarning: the LR used (solid) must lie on the planned LR (dashed)",
            xlabel="optimizer step", ylabel="learning rate", y_from_zero=True,
            styles={name: "--" for name in series if name.startswith("planned")},
        )

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore_configure_optimizers()
        if isinstance(exception, MisconfigurationException) and "ReduceLROnPlateau conditioned on metric" in str(
            exception
        ):
            for k, e in enumerate(self._tracker.entries):
                if e.reduce_on_plateau:
                    with contextlib.suppress(RecipeCheckError):  # never replace the user's exception
                        self._report_plateau(trainer, k, 1, max(1, self._tracker.plateau_expected[k]))
