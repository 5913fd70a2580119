"""NoLRDecayWarning: recipe steps 3a and 3c, "Adam with 3e-4 is safe" and "do not trust learning
rate decay defaults".

Before the first step it plays every configured scheduler through the whole planned run on copies
(the real optimizer and schedulers are untouched), stepped exactly as Lightning will step them, and
shows the planned LR curve of every parameter group. It then names the ways a schedule silently goes
wrong; during training it logs the LR actually used, and at the end compares it with the preview.
The math lives in :mod:`recipe_callbacks.core.lr_schedule`; this module collects and reports.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from recipe_callbacks.core import lr_schedule as core
from recipe_callbacks.core.lr_tracker import CHART_POINTS, ScheduleTracker, misplaced_scheduler_keys
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
    Adam at 3e-4 forgives much.

    Before the first step (``on_train_start``) every configured scheduler is copied and stepped
    through the whole planned run as Lightning steps it: ``interval``, ``frequency``, gradient
    accumulation (only batches that step the optimizer count), the batches per epoch,
    ``max_epochs``/``max_steps`` (``trainer.estimated_stepping_batches``). ``ReduceLROnPlateau`` is
    counted but not simulated (its decisions need the metric). Findings (each with its own key):

    - ``decay_in_early_stage`` (warn, ``stage="early"``): any decay at all;
      ``never_decays`` (warn, ``stage="final"``): no decay at all;
    - ``decays_too_early``: the LR under ``min_lr_fraction`` of its peak with more than
      ``end_margin`` of the run left; ``rises_after_decay``: the LR climbs again after a decay;
    - ``length:<k>``: a cosine ``T_max``, OneCycle ``total_steps``, StepLR ``step_size``,
      MultiStep ``milestones`` or Polynomial ``total_iters`` that does not match the times
      scheduler ``k`` is stepped (a cosine that wraps around and rises; a OneCycle that will raise),
      with a hint when the length was counted in the other unit (epochs vs steps);
    - ``never_steps:<k>``: ``frequency`` larger than the batches per epoch (or the epochs);
    - ``misplaced_keys``: ``interval``/``frequency`` at the top level of the dict returned by
      ``configure_optimizers`` (Lightning ignores them there and steps once per epoch);
    - ``manual_not_stepped:<k>``: manual optimisation with a configured scheduler nothing steps;
    - ``plateau_metric:<k>``: a ``ReduceLROnPlateau`` whose monitored metric was not in
      ``trainer.callback_metrics`` when Lightning would have stepped it;
    - ``actual_vs_planned`` (at the end): the LR the run used against the preview, step by step,
      and the number of scheduler steps (e.g. skipped steps);
    - optimizer notes (warn at most): ``adam_lr``, Adam/AdamW more than ``adam_lr_factor`` times
      away from 3e-4; ``weight_decay_bias_norm``, weight decay on biases and norm weights.

    To see the raw dict returned by ``configure_optimizers`` (the misplaced keys vanish from
    Lightning's parsed configuration) the callback wraps ``pl_module.configure_optimizers`` from
    ``setup`` until ``on_fit_start``: the wrapper records the keys of the returned value and passes
    it on unchanged, so the method runs exactly once, as without the callback.

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

    Logged:
        - ``recipe.no_lr_decay_warning/planned_lr``: picture of the planned LR per param group over the
          optimizer steps of the run, at the first step.
        - ``recipe.no_lr_decay_warning/schedule``: text, one line per scheduler (class, interval,
          frequency, times stepped).
        - ``recipe.no_lr_decay_warning/lr_group_<i>``: the LR param group ``i`` used (groups numbered
          across optimizers), every ``log_every_n_steps`` optimizer steps.
        - ``recipe.no_lr_decay_warning/actual_vs_planned``: picture of the actual against the planned
          LR, at the end of training.
        - ``recipe.no_lr_decay_warning/finding``: text, every Finding with its values, e.g.
          ``planned_steps``, ``peak_lr``, ``stepped``, ``T_max``, ``mismatched_steps``.

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
        self.plan: core.PlannedSchedule | None = None
        self._reset_run()

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads state_key around every hook call: build it once.
        key: str | None = self.__dict__.get("_state_key_cache")
        if key is None:
            key = self.__dict__["_state_key_cache"] = self._generate_state_key(stage=self.stage)
        return key

    def finding(self, key: str) -> Finding | None:
        """The current Finding with ``key`` (e.g. ``"decays_too_early"``, ``"length:0"``), or ``None``."""
        return self._findings.get(key)

    def _reset_run(self) -> None:
        self._misplaced: list[str] | None = None
        self._unwrap: Callable[[], None] | None = None
        self.plan = None
        self._tracker = ScheduleTracker([], [])
        self._optimizer_index: dict[int, int] = {}

    # ------------------------------------------------------------------ configure_optimizers' raw dict
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.gate_sharded(trainer)
        if stage != "fit":
            return
        self._reset_run()
        previous = pl_module.__dict__.get("configure_optimizers")
        original = pl_module.configure_optimizers

        @functools.wraps(original)
        def recording(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            self._misplaced = misplaced_scheduler_keys(out)
            return out

        def unwrap() -> None:
            if pl_module.__dict__.get("configure_optimizers") is recording:
                if previous is None:
                    del pl_module.__dict__["configure_optimizers"]
                else:
                    pl_module.__dict__["configure_optimizers"] = previous

        pl_module.__dict__["configure_optimizers"] = recording
        self._unwrap = unwrap

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
        optimizers, configs = list(trainer.optimizers), list(trainer.lr_scheduler_configs)
        self._optimizer_index = {id(o): k for k, o in enumerate(optimizers)}
        entries = [
            core.ScheduledStep(
                c.scheduler,
                "step" if c.interval == "step" else "epoch",
                int(c.frequency),
                bool(c.reduce_on_plateau),
                next((i for i, o in enumerate(optimizers) if o is c.scheduler.optimizer), 0),
            )
            for c in configs
        ]
        self._tracker = ScheduleTracker(
            entries,
            [len(o.param_groups) for o in optimizers],
            start_step=int(trainer.global_step),
            log_every=self.log_every_n_steps or max(1, int(getattr(trainer, "log_every_n_steps", 50) or 1)),
        )
        if self._misplaced:
            self._report_misplaced(trainer, self._misplaced)
        if not optimizers:
            raise CheckSkipped("the module configured no optimizer; there is no learning rate to check")
        self._preview(trainer, pl_module, optimizers, entries)

    def _preview(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        optimizers: list[Optimizer],
        real: list[core.ScheduledStep],
    ) -> None:
        loop = self._loop_plan(trainer)
        if math.isinf(loop.total_steps()) or loop.total_steps() <= loop.start_step:
            self.report(
                trainer,
                "skip",
                f"the run has no planned end to preview (planned optimizer steps: {loop.total_steps()})",
                advice="set Trainer(max_steps=...) or Trainer(max_epochs=...) with a sized training loader",
                key="schedule",
            )
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

    def _loop_plan(self, trainer: pl.Trainer) -> core.LoopPlan:
        return core.LoopPlan(
            batches_per_epoch=float(trainer.num_training_batches),
            max_epochs=-1 if trainer.max_epochs is None else int(trainer.max_epochs),
            max_steps=int(trainer.max_steps),
            accumulate_grad_batches=int(trainer.accumulate_grad_batches),
            accumulate_on_final_batch=bool(trainer.strategy.handles_gradient_accumulation),
            start_epoch=int(trainer.current_epoch),
            start_step=int(trainer.global_step),
        )

    def _log_preview(self, trainer: pl.Trainer, plan: core.PlannedSchedule, optimizers: list[Optimizer]) -> None:
        if not trainer.is_global_zero:
            return
        every = max(1, math.ceil(len(plan.steps) / CHART_POINTS))
        series = {self._group_label(g, plan): plan.group_lrs(g)[::every].tolist() for g in range(len(plan.groups))}
        title = (
            f"NoLRDecayWarning: the planned LR of {plan.epochs} epochs; look for early decay or a fall to 0"
        )
        self.log_figure(trainer, "planned_lr", line_chart, series, x=plan.steps[::every].tolist(), title=title,
                        xlabel="optimizer step", ylabel="learning rate", y_from_zero=True,
                        step=self._tracker.start_step)
        lines = [f"Planned optimizer steps: {plan.simulated_steps} (estimated_stepping_batches: "
                 f"{trainer.estimated_stepping_batches}); epochs: {plan.epochs}.", ""]
        for k, e in enumerate(self._tracker.entries):
            lines.append(
                f"- scheduler {k}: {e.name} on optimizer {e.optimizer_index} "
                f"({type(optimizers[e.optimizer_index]).__name__}), "
                f"interval={e.interval!r}, frequency={e.frequency}, stepped {plan.scheduler_steps[k]} times"
                + (" (metric-driven, not simulated)" if e.reduce_on_plateau else "")
            )
        if not self._tracker.entries:
            lines.append("- no scheduler: the LR stays constant.")
        self.log_text(trainer, "schedule", "\n".join(lines), step=self._tracker.start_step)

    @staticmethod
    def _group_label(g: int, plan: core.PlannedSchedule) -> str:
        opt_i, group_i = plan.groups[g]
        return f"group {g}" if opt_i == 0 else f"group {g} (opt {opt_i}.{group_i})"

    def _judge(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        plan: core.PlannedSchedule,
        entries: list[core.ScheduledStep],
        loop: core.LoopPlan,
        optimizers: list[Optimizer],
    ) -> None:
        issues = core.analyze_schedule(
            plan,
            entries,
            loop,
            stage=self.stage,
            min_lr_fraction=self.min_lr_fraction,
            end_margin=self.end_margin,
            length_tolerance=self.length_tolerance,
        )
        issues += self._optimizer_notes(pl_module, plan, optimizers)
        for issue in issues:
            self.report(trainer, issue.status, issue.summary, issue.values, issue.advice, key=issue.key)
        peaks = [float(plan.group_lrs(g).max()) for g in range(len(plan.groups))] if plan.steps.size else [0.0]
        finals = [float(plan.group_lrs(g)[-1]) for g in range(len(plan.groups))] if plan.steps.size else [0.0]
        mistakes = [i for i in issues if i.status == "fail"]
        summary = (
            f"planned {plan.simulated_steps} optimizer steps over {plan.epochs} epochs with {len(entries)} "
            f"scheduler(s); LR peak {max(peaks):.3g}, last {finals[0]:.3g}; "
            + (f"{len(mistakes)} mistake(s) found." if mistakes else "no schedule mistake found.")
        )
        if not pl_module.automatic_optimization:
            summary += " Manual optimisation: the preview assumes each scheduler steps once per its 'interval'."
        if plan.truncated:
            summary += f" The preview covers the first {plan.simulated_steps} steps only (max_preview_steps)."
        values = {
            "planned_steps": float(plan.simulated_steps),
            "peak_lr": max(peaks),
            "final_lr": finals[0],
            "cost_steps": 0.0,
        }
        if mistakes:  # each mistake is its own Finding already; do not add a row that warns again
            self.log_text(trainer, "plan", "\n".join(f"- {k}: {format_value(v)}" for k, v in values.items()))
        else:
            self.report(trainer, "pass", summary, values, key="schedule")

    def _optimizer_notes(
        self, pl_module: pl.LightningModule, plan: core.PlannedSchedule, optimizers: list[Optimizer]
    ) -> list[core.ScheduleIssue]:
        notes: list[core.ScheduleIssue] = []
        for g, (opt_i, group_i) in enumerate(plan.groups):
            opt = optimizers[opt_i]
            if not isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
                continue
            lr = float(plan.group_lrs(g).max()) if plan.steps.size else float(opt.param_groups[group_i]["lr"])
            note = core.adam_lr_issue(type(opt).__name__, lr, self.adam_lr_factor)
            if note is not None:
                notes.append(note)
                break
        decayed = core.decayed_bias_and_norm_params(pl_module, optimizers)
        if decayed:
            shown = ", ".join(decayed[:4]) + (", ..." if len(decayed) > 4 else "")
            notes.append(
                core.ScheduleIssue(
                    "weight_decay_bias_norm",
                    "warn",
                    f"weight decay applies to {len(decayed)} biases and normalisation weights ({shown}); it pulls "
                    "scales and shifts towards zero instead of regularising features.",
                    {"decayed_bias_norm_params": float(len(decayed))},
                    "put biases and norm weights in a param group with weight_decay=0.0 (as nanoGPT's "
                    "configure_optimizers does) and decay only the weights of Linear/Conv/Embedding layers.",
                )
            )
        return notes

    def _report_misplaced(self, trainer: pl.Trainer, keys: list[str]) -> None:
        shown = ", ".join(repr(k) for k in keys)
        self.report(
            trainer,
            "fail",
            f"configure_optimizers returned {shown} at the top level of its dict, beside 'optimizer' and "
            "'lr_scheduler'; Lightning ignores them there (it only warns about unsupported keys) and steps the "
            "scheduler with its defaults: once per epoch, frequency 1.",
            {"misplaced_keys": float(len(keys))},
            "move them inside the scheduler dict: {'optimizer': opt, 'lr_scheduler': {'scheduler': sched, "
            "'interval': 'step', 'frequency': 1}}.",
            key="misplaced_keys",
        )

    # ------------------------------------------------------------------ during training
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        tracker = self._tracker
        if tracker.has_plateau:
            self._verify_plateaus(trainer)
        tracker.stepped_this_batch = False

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        i = self._optimizer_index.get(id(optimizer), 0)
        if i >= len(self._tracker.opt_steps):
            return
        lrs = [float(group["lr"]) for group in optimizer.param_groups]
        _, offset, log = self._tracker.optimizer_step(i, lrs)
        if log:
            actual = {f"lr_group_{offset + j}": lr for j, lr in enumerate(lrs)}
            self.log_scalars(trainer, actual, step=trainer.global_step)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        tracker = self._tracker
        if tracker.has_plateau:
            tracker.batch_end(batch_idx, pl_module.automatic_optimization)
        else:  # nothing to count but the batches of the epoch
            tracker.batches_this_epoch += 1

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._tracker.batches_this_epoch = 0
        if self._tracker.epochs_done:
            self._verify_plateaus(trainer)
            self._verify_manual(trainer, pl_module, at_end=False)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._verify_plateaus(trainer)
        tracker = self._tracker
        finished = tracker.batches_this_epoch >= trainer.num_training_batches
        tracker.epoch_end(trainer.current_epoch, finished, pl_module.automatic_optimization)

    # ------------------------------------------------------------------ checks that need the run
    def _verify_plateaus(self, trainer: pl.Trainer, *, final: bool = False) -> None:
        for k, missed, expected in self._tracker.missed_plateaus(final=final):
            scheduler = self._tracker.entries[k].scheduler
            config = next((c for c in trainer.lr_scheduler_configs if c.scheduler is scheduler), None)
            self._report_plateau(trainer, k, str(getattr(config, "monitor", None)), missed, expected)

    def _report_plateau(self, trainer: pl.Trainer, k: int, monitor: str, missed: int, expected: int) -> None:
        available = sorted(trainer.callback_metrics)
        self.report(
            trainer,
            "fail",
            f"scheduler {k} (ReduceLROnPlateau) monitors {monitor!r}, but it was not in trainer.callback_metrics "
            f"at {missed} of the {expected} times Lightning would have stepped it (available: {available}); "
            "the LR never reacts to a plateau.",
            {"plateau_missed_steps": float(missed), "plateau_expected_steps": float(expected)},
            f"log {monitor!r} with self.log(...) before the scheduler steps (validation metrics exist only after a "
            "validation run: monitor them with 'interval': 'epoch'), or set 'monitor' inside the lr_scheduler dict "
            "to one of the available keys.",
            key=f"plateau_metric:{k}",
        )

    def _verify_manual(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, at_end: bool) -> None:
        if pl_module.automatic_optimization:
            return
        for k, stepped, due in self._tracker.not_stepped_manually(at_end=at_end):
            self.report(
                trainer,
                "fail",
                f"manual optimisation: scheduler {k} ({self._tracker.entries[k].name}) is configured but nothing "
                f"stepped it in {self._tracker.epochs_done} epoch(s) (the preview expected {due} steps by now); "
                "Lightning does not step schedulers when automatic_optimization is False.",
                {"scheduler_steps": float(stepped), "expected_scheduler_steps": float(due)},
                "call self.lr_schedulers().step() yourself: in training_step after opt.step() for 'interval': "
                "'step', or in on_train_epoch_end for 'epoch'.",
                key=f"manual_not_stepped:{k}",
            )

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
        made = tracker.made()
        complete = made >= plan.simulated_steps and not plan.truncated and not plan.error
        differences: list[str] = []
        values = {"compared_steps": float(tracker.compared), "mismatched_steps": float(tracker.mismatched)}
        first = tracker.first_mismatch
        if first is not None:
            differences.append(
                f"the LR differed from the preview at {tracker.mismatched} of {tracker.compared} compared optimizer "
                f"steps, first at step {first.step} (group {first.group}: planned {first.planned:.6g}, used "
                f"{first.used:.6g})"
            )
        if complete:
            for k, (e, actual_k) in enumerate(zip(tracker.entries, tracker.scheduler_steps(), strict=True)):
                if e.reduce_on_plateau:
                    continue
                values[f"scheduler_{k}_steps"] = float(actual_k)
                if actual_k != plan.scheduler_steps[k]:
                    differences.append(
                        f"scheduler {k} ({e.name}) stepped {actual_k} times, the preview planned "
                        f"{plan.scheduler_steps[k]}"
                    )
        ran = f"the run made {made} of the {plan.simulated_steps} planned optimizer steps"
        if not differences:
            self.report(
                trainer, "pass", f"the LR followed the preview at all {tracker.compared} compared steps; {ran}.",
                values, key="actual_vs_planned",
            )
            return
        self.report(
            trainer,
            "warn",
            "; ".join(differences) + f"; {ran}.",
            values,
            "something other than Lightning's scheduler stepping changed the LR or skipped scheduler steps (an "
            "overridden lr_scheduler_step, manual stepping, another callback that sets the LR); make the schedule "
            "the one you previewed."
            + ("" if pl_module.automatic_optimization else " In manual optimisation step each scheduler once "
               "per its configured 'interval' to match the preview."),
            key="actual_vs_planned",
        )

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
            tracker = self._tracker
            for k, e in enumerate(tracker.entries):
                if e.reduce_on_plateau:
                    config = next((c for c in trainer.lr_scheduler_configs if c.scheduler is e.scheduler), None)
                    expected = max(1, tracker.plateau_expected[k])
                    with contextlib.suppress(RecipeCheckError):  # never replace the user's exception
                        self._report_plateau(trainer, k, str(getattr(config, "monitor", None)), 1, expected)
