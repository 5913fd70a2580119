"""FullEvalSet: the exact mean over the whole validation set, with its significant digits (recipe 2c)."""

from __future__ import annotations

import math
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
import torchmetrics
from lightning.pytorch.utilities.model_helpers import is_overridden
from typing_extensions import override

from recipe_callbacks.core import eval_tally as tally_core
from recipe_callbacks.core.cost import FORWARD_PASS_STEPS
from recipe_callbacks.core.eval_stats import LOSSES, LossName, round_to_interval
from recipe_callbacks.core.eval_tally import EXCLUDED, OWN_PASS, Gap, Reading, sized_len
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.core.task import TASKS, Task, logits_of, require_task
from recipe_callbacks.plumbing.batch import BatchToXY, ForwardFn, integer_inputs
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail
from recipe_callbacks.plumbing.loaders import eval_dataloaders, partial_run, user_sampler
from recipe_callbacks.plumbing.observe import observing
from recipe_callbacks.plumbing.ranks import sum_over_ranks
from recipe_callbacks.plumbing.validation import check_choice, check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl

# ----------------------------------------------------------------- the prose of this check, in one place
# Each coverage gap: what happened, and what to do (formatted with the gap's numbers, the stage and its limit).
_GAPS: dict[str, tuple[str, str]] = {
    "limit": ("{limit_name}={limit} evaluated {planned:.0f} of the {batches} batches per process.",
              "Set Trainer({limit_name}=1.0) to evaluate the whole set."),
    "drop_last": ("drop_last=True on the {stage} DataLoader drops the last {dropped} samples (per process) of every "
                  "evaluation.", "Set drop_last=False on the {stage} DataLoader."),
    "ddp_drop_last": ("DistributedSampler(drop_last=True) leaves out {left_out} samples.",
                      "Use DistributedSampler(drop_last=False) for evaluation."),
    "ddp_padding": ("the DistributedSampler padded {n:,} samples to {total:,} over {replicas} processes, so {pad} "
                    "sample(s) are evaluated twice and Lightning's own epoch averages count them twice; FullEvalSet "
                    "left the {excluded} padded evaluation(s) out (n = {count:,}).",
                    "Read FullEvalSet's figure, or make the set size a multiple of {replicas} (or evaluate on one "
                    "device)."),
    "no_distributed_sampler": ("every one of the {world_size} processes evaluated the set without a "
                               "DistributedSampler.", "Keep Trainer(use_distributed_sampler=True) or give the loader "
                               "a DistributedSampler."),
    "random_sampler": ("the sampler RandomSampler(replacement={replacement}, num_samples={num_samples}) does not "
                       "visit each of the {dataset_len:,} samples exactly once.",
                       "Evaluate with shuffle=False (a SequentialSampler)."),
    "custom_sampler": ("the custom sampler {name} {drawn}{how} for a dataset of {dataset_len:,}, so it does not visit "
                       "every sample exactly once.",
                       "Evaluate with a sampler that visits every index once (shuffle=False, no sampler)."),
    "iterable": ("the {stage} set is an IterableDataset of unknown length: FullEvalSet saw {count:,} samples and "
                 "cannot tell whether that is all of it.", "Give the IterableDataset a __len__ so that coverage can "
                 "be checked."),
    "count": ("evaluated {count:,} samples, but the dataset has {dataset_len:,}.",
              "Check the sampler and the limits of the evaluation loop."),
}
# Why a fit left no verdict: no validation at all, an empty val loader, or training ended before the first.
_NO_VALIDATION = {
    "none": ("this fit had no validation: no val dataloader or no validation_step",
             "pass val_dataloaders to fit() (and define validation_step), or run trainer.validate()"),
    "empty": ("the val dataloader of this fit has no batches (an empty set, or limit_val_batches=0)",
              "give the val dataloader samples"),
    "too_early": ("training ended at global step {step}, before the first validation (val_check_interval={interval}, "
                  "check_val_every_n_epoch={every})", "train until a validation runs, or run trainer.validate() after "
                  "fit"),
}
_NOT_FINITE = ("The loss is not finite: a NaN or infinite output or target in the set makes the figure meaningless",
               "look for NaN/Inf targets (missing values) and outputs in the validation set; drop, impute or mask them")
_SMOKE = ("Under {smoke} the Trainer evaluates part of the set on purpose, so this is the figure of that part; "
          "the whole set is judged in an ordinary run")
_OWN_PASS = ("Ran its own forward pass on {own:.0f} batches per process: validation_step did not call self(x) with "
             "the batch input.")


def _figures(reading: Reading) -> list[str]:
    """The figures of a dataloader's summary: the loss, then each metric to the digits its interval supports."""
    scored = f" scored positions (ignore_index -100 left out) of {reading.samples:,} samples"
    parts = [f"loss {reading.loss.text()}{scored if reading.per_position else ''}"]
    for name, value in reading.metrics.items():
        est = reading.interval(name)
        parts.append(f"{name} {round_to_interval(value, est.half_width)}" if est is not None else f"{name} {value:.4g}")
    return parts


def _gap_text(gap: Gap, stage: str) -> tuple[str, str]:
    """A coverage gap's problem and advice, in words."""
    words = {**gap.numbers, "stage": stage, "limit_name": f"limit_{stage}_batches"}
    if gap.kind == "custom_sampler":
        words["drawn"] = f"draws {gap.numbers['length']:,} indices" if gap.numbers["length"] is not None else (
            "draws indices")
        words["how"] = " with replacement" if gap.numbers["replacement"] else ""
    problem, advice = _GAPS[gap.kind]
    return problem.format(**words), advice.format(**words)


class FullEvalSet(RecipeCallback):
    """The exact mean of the loss and metrics over every sample of every evaluation dataloader,
    with its standard error, 95% interval and the number of samples: recipe step 2c.

    Per-sample values are summed in float64, DDP padding left out and the sums of all processes
    added; the mean is reported to the digits its interval supports (``val loss 0.412 ± 0.006,
    n = 1,797``). A setting that kept it from seeing the whole set exactly once (a batch limit,
    ``drop_last=True``, a sampler that skips or repeats indices) is a ``warn`` naming it. A forward
    hook reads the logits when ``validation_step`` calls ``self(x)``; else it runs one no-grad
    forward pass per batch (``cost_steps``).

    Args:
        metrics: names of metrics for the inferred task (``"accuracy"``, ``"f1"``, ``"auroc"``;
            ``"mae"``, ``"mse"``, ``"r2"``), or a dict ``{name: torchmetrics.Metric}`` updated with
            the raw ``forward`` output and the target. ``None``: accuracy (classification) or MAE
            (regression); ``[]``: the loss only. Accuracy, MAE and MSE come exactly from the sums.
        task: ``"multiclass"``, ``"binary"`` or ``"regression"``; inferred from the first batch when
            ``None`` (:func:`~recipe_callbacks.core.task.infer_task`).
        loss: the per-sample loss, from the logits ``forward`` returns (predictions for regression):
            ``"cross_entropy"``, ``"bce_with_logits"``, ``"mse"``, ``"l1"``; the task's default when ``None``.
        num_classes: classes of a multiclass task; the size of the logits' class axis when ``None``.
        confidence: the level of the interval (normal approximation), 0.95 by default.
        on_fail: ``"warn"``, ``"raise"`` or ``"ignore"`` (see :class:`RecipeCallback`).
        input_key: where the input is in a batch (see :class:`RecipeCallback`).
        target_key: where the target is in a batch (see :class:`RecipeCallback`).
        batch_to_xy: a function ``batch -> (x, y)`` (see :class:`RecipeCallback`).
        forward_fn: how to run the model the way your step does (see :class:`RecipeCallback`).

    Raises:
        ValueError: an unknown metric name, task or loss, or a confidence outside (0, 1).
        TypeError: ``metrics`` neither a list of names nor a dict of torchmetrics metrics.

    Logged (by every evaluation epoch; ``<name>`` is ``loss`` and each metric):
        - ``recipe.full_eval_set/<name>``, ``<name>_stderr``, ``num_samples``: the exact mean over
          the (first) val dataloader, its standard error, the unique samples covered; the same
          under ``dataloader_<k>/`` for val dataloader ``k >= 1`` and under ``test/`` for ``trainer.test``.
        - One Finding per dataloader and stage, replaced every epoch, with these values and
          ``<name>_halfwidth``, ``dataset_size``, ``padding_excluded``, ``cost_steps``.

    Example::

        trainer = Trainer(callbacks=[FullEvalSet(metrics=["accuracy", "f1"]), RecipeReport()])
    """

    def __init__(
        self, metrics: list[str] | dict[str, torchmetrics.Metric] | None = None, task: Task | None = None,
        loss: LossName | None = None, num_classes: int | None = None, confidence: float = 0.95,
        on_fail: OnFail = "warn", input_key: str | None = None, target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None, forward_fn: ForwardFn | str | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy, forward_fn)
        owner = type(self).__name__
        self.metric_names, self.metric_objects = tally_core.check_metrics(owner, metrics)
        self.task: Task | None = None if task is None else check_choice(owner, "task", task, TASKS)
        self.loss: LossName | None = None if loss is None else check_choice(owner, "loss", loss, LOSSES)
        self.num_classes = None if num_classes is None else check_int(owner, "num_classes", num_classes, minimum=2)
        self.confidence = check_float(owner, "confidence", confidence, maximum=1.0)
        if self.confidence == 1.0:
            raise ValueError(f"{owner}(confidence={confidence!r}): confidence must be a float in (0.0, 1.0)")
        self._inferred_task: Task | None = None
        self._epoch: tally_core.EvalEpoch | None = None  # while an evaluation epoch runs
        self._warned: dict[str, str] = {}
        self._validated_in_fit = False

    @cached_property
    @override
    def state_key(self) -> str:  # read by Lightning around every hook call: built once
        names = sorted(self.metric_objects) if self.metric_objects is not None else self.metric_names
        return self._generate_state_key(metrics=names, task=self.task, loss=self.loss)

    # ----------------------------------------------------------------- hooks
    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._begin(pl_module, "val")

    @override
    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._begin(pl_module, "test")

    @override
    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        epoch = self._epoch
        if epoch is None:
            return
        epoch.capture.expect(None, None)
        if epoch.skipping(dataloader_idx):
            return
        try:
            resolved = self.resolved(batch)
        except CheckSkipped as err:
            epoch.skip(dataloader_idx, err.reason, err.argument)
            return
        if resolved.y is None:
            epoch.skip(dataloader_idx, "the batch has no target", "target_key")
            return
        epoch.arm(batch, resolved, resolved.x, resolved.y)

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._accumulate(trainer, pl_module, dataloader_idx)

    # trainer.test's batches are collected as validation's (the stage is set when the epoch starts)
    on_test_batch_start = on_validation_batch_start
    on_test_batch_end = on_validation_batch_end

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stage:  # not the sanity check's
            self._finish(trainer, pl_module)

    on_test_epoch_end = on_validation_epoch_end

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._validated_in_fit = False

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validated_in_fit or any(k != "no_validation" for k in self._findings):
            return
        loaders = eval_dataloaders(trainer, "val")
        batches = [b for b in trainer.num_val_batches if b] if loaders else []
        why = "none" if not loaders or not is_overridden("validation_step", pl_module) else (
            "empty" if not batches else "too_early")
        reason, advice = _NO_VALIDATION[why]
        reason = reason.format(step=trainer.global_step, interval=trainer.val_check_interval,
                               every=trainer.check_val_every_n_epoch)
        self.report(trainer, "skip", reason, {}, advice, key="no_validation")

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._end()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._end()

    # ----------------------------------------------------------------- collecting
    @property
    def _stage(self) -> str:
        """``"val"`` or ``"test"`` while an evaluation epoch runs, ``""`` otherwise."""
        return self._epoch.stage if self._epoch is not None else ""

    def _begin(self, pl_module: pl.LightningModule, stage: str) -> None:
        self._end()
        self._epoch = tally_core.EvalEpoch(stage, pl_module)

    def _end(self) -> None:
        if self._epoch is not None:
            self._epoch.close()
            self._epoch = None

    def _accumulate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, idx: int) -> None:
        epoch = self._epoch
        if epoch is None or epoch.capture.expected is None or epoch.capture.target is None:
            return
        tally = epoch.tally(idx, lambda: eval_dataloaders(trainer, self._stage), pl_module.device)
        try:
            if epoch.capture.output is None:  # the step did not call self(x): a forward pass of FullEvalSet's own
                epoch.capture.expected = None  # which must not be captured as the user's call
                tally.own_pass_batches += 1
                try:
                    with observing(pl_module):
                        epoch.capture.output = self.run_model(pl_module, epoch.batch, epoch.resolved)
                except Exception as err:  # e.g. a LightningModule without forward: report it, do not stop training
                    epoch.skip(idx, f"the evaluation step did not call self(x) with the batch input and running the "
                               f"model failed: {err}; set forward_fn", "forward_fn")
                    return
            preds = logits_of(epoch.capture.output)
            if preds is None:
                epoch.skip(idx, "forward returned no tensor to compute a loss from", "forward_fn")
                return
            epoch.add(tally, preds, integer_inputs(epoch.batch, epoch.resolved), self._task_of, self.loss,
                      self.metric_names, self.metric_objects, self.num_classes)
        except Exception as err:  # a shape or dtype FullEvalSet cannot read must not stop the user's training
            epoch.skip(idx, f"could not compute the per-sample loss: {err}", "task" if self.task is None else "loss")
        finally:
            epoch.capture.expect(None, None)

    def _task_of(self, preds: torch.Tensor, target: torch.Tensor) -> Task:
        self._inferred_task = self.task or self._inferred_task or require_task(preds, target)
        return self._inferred_task

    # ----------------------------------------------------------------- reducing and reporting
    def _key(self, dataloader_idx: int) -> str:
        return f"{self._stage}/{dataloader_idx}"

    def _label(self, idx: int) -> str:
        return f"{self._stage} dataloader {idx}" if idx else self._stage

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stage == "val" and not trainer.sanity_checking:
            self._validated_in_fit = True
            self._findings.pop("no_validation", None)
        tallies = self._epoch.tallies if self._epoch is not None else {}
        for idx, loader in enumerate(eval_dataloaders(trainer, self._stage)):
            tally = tallies.get(idx)
            # Every process adds, in the same order, whatever it saw: sums of sums are exact.
            (total,) = sum_over_ranks(trainer, [tally.parts() if tally is not None else tally_core.no_parts()])
            task = self.task or self._inferred_task
            reading = tally_core.read_evaluation(total, tally, self.confidence, trainer.world_size, task,
                                                 self.metric_names, self.metric_objects)
            if reading.skipped:
                reason = tally.skip_reason if tally is not None and tally.skip_reason else (
                    "another process could not read its batches")
                argument = tally.skip_argument if tally is not None else ""
                self.skip(trainer, f"{self._label(idx)}: {reason}", argument, key=self._key(idx))
            elif reading.samples == 0:
                self.skip(trainer, f"{self._label(idx)}: no samples were evaluated", key=self._key(idx))
            else:
                self._report(trainer, idx, loader, reading, tally.notes if tally else [])
        self._end()

    def _report(self, trainer: pl.Trainer, idx: int, loader: Any, reading: Reading, notes: list[str]) -> None:
        key, values = self._key(idx), reading.values()
        prefix = ("test/" if self._stage == "test" else "") + (f"dataloader_{idx}/" if idx else "")
        self.log_scalars(trainer, {f"{prefix}{k}": v for k, v in values.items()
                                   if not k.endswith("_halfwidth") and math.isfinite(v)})
        dataset_len = sized_len(getattr(loader, "dataset", None))
        own = reading.head[OWN_PASS] / max(trainer.world_size, 1)
        values.update(dataset_size=math.nan if dataset_len is None else float(dataset_len),
                      padding_excluded=reading.head[EXCLUDED], cost_steps=own * FORWARD_PASS_STEPS)
        test = self._stage == "test"  # what kept this dataloader from covering its set exactly once:
        gaps = tally_core.coverage_gaps(
            loader, user_sampler(getattr(loader, "sampler", None)),
            planned=(trainer.num_test_batches if test else trainer.num_val_batches)[idx],
            limit=trainer.limit_test_batches if test else trainer.limit_val_batches,
            world_size=trainer.world_size, count=reading.samples, excluded=int(reading.head[EXCLUDED]),
        )
        texts = [_gap_text(gap, self._stage) for gap in gaps]
        problems, advice = [problem for problem, _ in texts], [advice for _, advice in texts]
        summary = f"{self._label(idx)} " + "; ".join(_figures(reading)) + "."
        smoke = partial_run(trainer)
        if smoke and self._stage == "val":  # a partial run on purpose: a figure, but no verdict on the set
            self.report(trainer, "skip", f"{summary} {_SMOKE.format(smoke=smoke)}", values, key=key, log_values=False)
            return
        if own > 0:
            summary += f" {_OWN_PASS.format(own=own)}"
        if notes:
            summary += " " + "; ".join(sorted(set(notes))) + "."
        if problems:
            summary += " Coverage: " + " ".join(problems)
        if not math.isfinite(reading.loss.mean):
            self.report(trainer, "fail", f"{summary} {_NOT_FINITE[0]}", values, _NOT_FINITE[1], key=key,
                        log_values=False)
            return
        # reported every epoch, but a warning only when the coverage problems of this dataloader change
        quiet = bool(problems) and self._warned.get(key) == "|".join(advice)
        self._warned[key] = "|".join(advice) if problems else ""
        on_fail, self.on_fail = self.on_fail, "ignore" if quiet else self.on_fail
        try:
            self.report(trainer, "warn" if problems else "pass", summary, values, " ".join(advice), key=key,
                        log_values=False)
        finally:
            self.on_fail = on_fail
