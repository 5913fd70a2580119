"""Every sentence NoLRDecayWarning writes: the summary and advice of each of its Findings.

The core (:mod:`recipe_callbacks.core.lr_schedule`, :mod:`recipe_callbacks.core.lr_tracker`)
returns what is wrong as a status, a ``kind`` and numbers; this module, next to the callback,
turns them into words, in one place (the check is too large for its words and its glue to share
one module under the package's module limit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from recipe_callbacks.core.lr_schedule import ADAM_SAFE_LR, PlannedSchedule, ScheduledStep, ScheduleIssue

Text = tuple[str, str]  # (summary, advice)


def _where(f: dict[str, Any]) -> str:
    unit = "optimizer step" if f["interval"] == "step" else "epoch"
    return f"scheduler {f['index']} ({f['name']}, stepped once per {unit}, {f['stepped']} times over the run)"


def _hint(f: dict[str, Any]) -> str:
    """The sentence naming the unit a length was probably counted in (``""`` when none)."""
    name, length, stepped = f["length_name"], f["length"], f["stepped"]
    if f["hint"] == "epochs":
        return (
            f" {name}={length:g} looks counted in epochs (the run has {f['epochs']}) while the scheduler steps after "
            f"every optimizer step ({stepped} times): count {name} in steps (e.g. from "
            "trainer.estimated_stepping_batches) or put 'interval': 'epoch' inside the lr_scheduler dict."
        )
    if f["hint"] == "steps":
        return (
            f" {name}={length:g} looks counted in optimizer steps (the run has {f['steps']}) while the scheduler steps "
            f"once per epoch ({stepped} times): put 'interval': 'step' inside the lr_scheduler dict, or count "
            f"{name} in epochs."
        )
    return ""


def _cosine(i: ScheduleIssue) -> Text:
    f, t_max = i.facts, i.values["T_max"]
    advice = f"set T_max to {f['stepped']} (the number of times the scheduler steps)."
    if i.kind == "cosine_wraps":
        return (f"{_where(f)}: CosineAnnealingLR(T_max={t_max:g}) reaches eta_min after {t_max:g} steps and then "
                f"wraps around: the LR rises again back towards its peak for the remaining {f['stepped'] - t_max:g}.",
                advice)
    return (f"{_where(f)}: CosineAnnealingLR(T_max={t_max:g}) is only {i.values['fraction_reached']:.0%} of the way "
            f"down when the run ends; the last LR is still {f['left']:.0%} of the way from eta_min to the peak.",
            advice)


def _one_cycle(i: ScheduleIssue) -> Text:
    f, total, stepped = i.facts, i.values["total_steps"], i.facts["stepped"]
    if i.kind == "one_cycle_raises":
        return (f"{_where(f)}: OneCycleLR(total_steps={total:g}) will raise after optimizer step {f['error_step']} "
                f"(\"{f['error']}\"); the run needs {stepped} scheduler steps.",
                f"set total_steps={stepped} (e.g. total_steps=trainer.estimated_stepping_batches with "
                "'interval': 'step' inside the lr_scheduler dict).")
    return (f"{_where(f)}: OneCycleLR(total_steps={total:g}) is only {f['reached']:.0%} through its cycle when "
            "the run ends: the LR never anneals to its final value.",
            f"set total_steps={stepped} (e.g. trainer.estimated_stepping_batches with 'interval': 'step').")


def _step(i: ScheduleIssue) -> Text:
    f, size = i.facts, i.values["step_size"]
    return (f"{_where(f)}: StepLR(step_size={size:g}) never decays: the run ends before scheduler step {size:g}.",
            f"choose step_size below {f['stepped']} (or drop the scheduler while the recipe keeps the LR constant).")


def _milestones(i: ScheduleIssue) -> Text:
    f = i.facts
    return (f"{_where(f)}: MultiStepLR milestones {f['missed']} are never reached (the scheduler steps {f['stepped']} "
            f"times; milestones {f['milestones']}).",
            f"put the milestones within the {f['stepped']} scheduler steps of this run.")


def _polynomial(i: ScheduleIssue) -> Text:
    f = i.facts
    return (f"{_where(f)}: PolynomialLR(total_iters={i.values['total_iters']:g}) does not match the {f['stepped']} "
            "scheduler steps: the LR "
            + ("reaches its end long before the run ends." if f["short"] else "never gets to its end."),
            f"set total_iters={f['stepped']}.")


#: Why a scheduler never steps: (why, advice) by the core's reason.
_NEVER_STEPS: dict[str, Callable[[dict[str, Any]], Text]] = {
    "frequency_over_batches": lambda f: (
        f"'frequency': {f['frequency']} is larger than the {f['batches_per_epoch']:g} batches per epoch, and "
        "Lightning counts a 'step' frequency within each epoch ((batch_idx + 1) % frequency)",
        f"use a frequency of at most {f['batches_per_epoch']:g}, or 'interval': 'epoch'."),
    "endless_epoch": lambda f: (
        "the epoch never ends (an endless training loader), so an 'epoch' interval never comes",
        "put 'interval': 'step' inside the lr_scheduler dict."),
    "frequency_over_epochs": lambda f: (
        f"'frequency': {f['frequency']} is larger than the run's {f['epochs']} epochs",
        f"use a frequency of at most {f['epochs']}, or 'interval': 'step'."),
    "no_step": lambda f: (
        "the run has no optimizer step at which its 'frequency' comes round",
        "check 'interval' and 'frequency' inside the lr_scheduler dict."),
}


def _never_steps(i: ScheduleIssue) -> Text:
    f = i.facts
    why, advice = _NEVER_STEPS[f["why"]](f)
    return f"scheduler {f['index']} ({f['name']}) is never stepped in this run: {why}.", advice


_EARLY = "the recipe keeps the LR constant while you build and overfit, and tunes decay at the very end."
_TEXTS: dict[str, Callable[[ScheduleIssue], Text]] = {
    "cosine_wraps": _cosine, "cosine_short": _cosine, "one_cycle_raises": _one_cycle, "one_cycle_short": _one_cycle,
    "step_never_decays": _step, "milestones_missed": _milestones, "polynomial_length": _polynomial,
    "never_steps": _never_steps,
    "decays_too_early": lambda i: (
        f"{i.facts['label']} falls below {i.facts['min_lr_fraction']:g} of its peak ({i.values['peak_lr']:.3g}) at "
        f"optimizer step {i.facts['below_step']} of {i.facts['run_steps']}: {i.facts['left']:.0%} of the run "
        "trains at an LR near zero.",
        "stretch the decay over the whole run (gamma closer to 1, fewer or later milestones, T_max/"
        "total_steps equal to the run's scheduler steps), or keep the LR constant until the final stage."),
    "rises_after_decay": lambda i: (
        f"{i.facts['label']} decays and then rises again from optimizer step {i.facts['rise_step']}: the schedule "
        "wraps around before the run ends.",
        "make the schedule's length match the run (T_max, total_steps), or use a scheduler that stays at its floor."),
    "decay_in_early_stage": lambda i: (
        f"decay is on: {i.facts['label']} goes from {i.values['peak_lr']:.3g} down to {i.values['lowest_lr']:.3g}; "
        + _EARLY,
        "drop the scheduler (or use a constant LR) for now; switch to stage='final' when you add decay on purpose."),
    "plateau_in_early_stage": lambda i: (
        f"decay is on: scheduler {i.facts['index']} (ReduceLROnPlateau) lowers the LR whenever its metric stalls; "
        + _EARLY,
        "drop the scheduler for now; switch to stage='final' when you add decay on purpose."),
    "never_decays": lambda i: (
        f"the final stage has no decay: {i.facts['label']} stays at {i.values['final_lr']:.3g} to the end of the run.",
        "add a decay that ends with the run (e.g. CosineAnnealingLR with T_max=trainer."
        "estimated_stepping_batches and 'interval': 'step'); decay usually buys the last bit of loss."),
    "adam_lr": lambda i: (
        f"{i.facts['optimizer']} runs at lr={i.values['adam_lr']:.3g}, {i.facts['ratio']:.0f}x "
        f"{'above' if i.facts['above'] else 'below'} the recipe's safe {ADAM_SAFE_LR:g}.",
        f"start from lr={ADAM_SAFE_LR:g} with Adam while you build the baseline; tune it later on purpose."),
    "weight_decay_bias_norm": lambda i: (
        f"weight decay applies to {len(i.facts['names'])} biases and normalisation weights "
        f"({', '.join(i.facts['names'][:4]) + (', ...' if len(i.facts['names']) > 4 else '')}); it pulls "
        "scales and shifts towards zero instead of regularising features.",
        "put biases and norm weights in a param group with weight_decay=0.0 (as nanoGPT's "
        "configure_optimizers does) and decay only the weights of Linear/Conv/Embedding layers."),
}


def issue_text(issue: ScheduleIssue) -> Text:
    """The summary and advice of one schedule issue of the core (the unit hint appended to a length's advice).

    Example:
        >>> issue_text(ScheduleIssue("adam_lr", "warn", "adam_lr", {"adam_lr": 0.03},
        ...                          {"optimizer": "Adam", "ratio": 100.0, "above": True}))[0]
        "Adam runs at lr=0.03, 100x above the recipe's safe 0.0003."
    """
    summary, advice = _TEXTS[issue.kind](issue)
    if issue.key.startswith("length:"):
        advice = (advice + _hint(issue.facts)).strip()
    return summary, advice


def plan_summary(steps: int, epochs: int, schedulers: int, peak: float, final: float, mistakes: int, *,
                 manual: bool, truncated: bool) -> str:
    """The summary of the preview's own Finding (``schedule``)."""
    summary = (
        f"planned {steps} optimizer steps over {epochs} epochs with {schedulers} "
        f"scheduler(s); LR peak {peak:.3g}, last {final:.3g}; "
        + (f"{mistakes} mistake(s) found." if mistakes else "no schedule mistake found.")
    )
    if manual:
        summary += " Manual optimisation: the preview assumes each scheduler steps once per its 'interval'."
    if truncated:
        summary += f" The preview covers the first {steps} steps only (max_preview_steps)."
    return summary


def misplaced(keys: list[str]) -> Text:
    """``interval``/``frequency`` at the top level of what ``configure_optimizers`` returned."""
    shown = ", ".join(repr(k) for k in keys)
    return (f"configure_optimizers returned {shown} at the top level of its dict, beside 'optimizer' and "
            "'lr_scheduler'; Lightning ignores them there (it only warns about unsupported keys) and steps the "
            "scheduler with its defaults: once per epoch, frequency 1.",
            "move them inside the scheduler dict: {'optimizer': opt, 'lr_scheduler': {'scheduler': sched, "
            "'interval': 'step', 'frequency': 1}}.")


def plateau(k: int, monitor: str, missed: int, expected: int, available: list[str]) -> Text:
    """A ``ReduceLROnPlateau`` whose metric was missing when Lightning would have stepped it."""
    return (f"scheduler {k} (ReduceLROnPlateau) monitors {monitor!r}, but it was not in trainer.callback_metrics "
            f"at {missed} of the {expected} times Lightning would have stepped it (available: {available}); "
            "the LR never reacts to a plateau.",
            f"log {monitor!r} with self.log(...) before the scheduler steps (validation metrics exist only after a "
            "validation run: monitor them with 'interval': 'epoch'), or set 'monitor' inside the lr_scheduler dict "
            "to one of the available keys.")


def manual(k: int, name: str, epochs: int, due: int) -> Text:
    """A scheduler that nothing steps under manual optimisation."""
    return (f"manual optimisation: scheduler {k} ({name}) is configured but nothing "
            f"stepped it in {epochs} epoch(s) (the preview expected {due} steps by now); "
            "Lightning does not step schedulers when automatic_optimization is False.",
            "call self.lr_schedulers().step() yourself: in training_step after opt.step() for 'interval': "
            "'step', or in on_train_epoch_end for 'epoch'.")


def actual_vs_planned(mismatch: tuple[int, int, Any] | None, differ: list[tuple[int, str, int, int]], compared: int,
                      made: int, planned: int, *, automatic: bool) -> Text:
    """The LR the run used against the preview: ``mismatch`` is ``(mismatched, compared, first)``
    (``first`` with ``step``, ``group``, ``planned``, ``used``), ``differ`` the schedulers
    ``(k, name, stepped, planned)`` that stepped another number of times; advice ``""`` when none."""
    differences = []
    if mismatch is not None:
        mismatched, _, first = mismatch
        differences.append(
            f"the LR differed from the preview at {mismatched} of {compared} compared optimizer "
            f"steps, first at step {first.step} (group {first.group}: planned {first.planned:.6g}, used "
            f"{first.used:.6g})"
        )
    differences += [f"scheduler {k} ({name}) stepped {stepped} times, the preview planned {due}"
                    for k, name, stepped, due in differ]
    ran = f"the run made {made} of the {planned} planned optimizer steps"
    if not differences:
        return f"the LR followed the preview at all {compared} compared steps; {ran}.", ""
    return ("; ".join(differences) + f"; {ran}.",
            "something other than Lightning's scheduler stepping changed the LR or skipped scheduler steps (an "
            "overridden lr_scheduler_step, manual stepping, another callback that sets the LR); make the schedule "
            "the one you previewed."
            + ("" if automatic else " In manual optimisation step each scheduler once "
               "per its configured 'interval' to match the preview."))


def group_label(g: int, plan: PlannedSchedule) -> str:
    """The chart's name of param group ``g`` (counted across optimizers)."""
    opt_i, group_i = plan.groups[g]
    return f"group {g}" if opt_i == 0 else f"group {g} (opt {opt_i}.{group_i})"


def schedule(plan: PlannedSchedule, entries: list[ScheduledStep], optimizers: list[str], estimated: float) -> str:
    """The ``schedule`` text: the planned run and one line per scheduler (``optimizers``: their class names)."""
    lines = [f"Planned optimizer steps: {plan.simulated_steps} (estimated_stepping_batches: "
             f"{estimated}); epochs: {plan.epochs}.", ""]
    for k, e in enumerate(entries):
        lines.append(
            f"- scheduler {k}: {e.name} on optimizer {e.optimizer_index} ({optimizers[e.optimizer_index]}), "
            f"interval={e.interval!r}, frequency={e.frequency}, stepped {plan.scheduler_steps[k]} times"
            + (" (metric-driven, not simulated)" if e.reduce_on_plateau else "")
        )
    if not entries:
        lines.append("- no scheduler: the LR stays constant.")
    return "\n".join(lines)
