"""FullEvalSet: the exact mean over the whole validation set, with its significant digits (recipe 2c)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch
import torchmetrics
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DistributedSampler
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from recipe_callbacks.core import eval_tally as tally_core
from recipe_callbacks.core.cost import FORWARD_PASS_STEPS
from recipe_callbacks.core.eval_stats import DEFAULT_LOSS, LOSSES, LossName, MeanEstimate, round_to_interval
from recipe_callbacks.core.eval_tally import EXCLUDED, OWN_PASS, READY, SKIPPED, Gap, Tally, sized_len
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.core.task import TASKS, Task, aligned, logits_of, require_task
from recipe_callbacks.plumbing.batch import BatchToXY, ForwardFn, ResolvedBatch, integer_inputs
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail
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


def _gap_text(gap: Gap, stage: str) -> tuple[str, str]:
    """A coverage gap's problem and advice, in words."""
    words = {**gap.numbers, "stage": stage, "limit_name": f"limit_{stage}_batches"}
    if gap.kind == "custom_sampler":
        words["drawn"] = f"draws {gap.numbers['length']:,} indices" if gap.numbers["length"] is not None else (
            "draws indices")
        words["how"] = " with replacement" if gap.numbers["replacement"] else ""
    problem, advice = _GAPS[gap.kind]
    return problem.format(**words), advice.format(**words)


def _smoke_mode(trainer: pl.Trainer) -> str:
    """``"fast_dev_run=..."`` or ``"overfit_batches=..."`` when the run is partial on purpose, else ``""``."""
    fast_dev_run = getattr(trainer, "fast_dev_run", False)  # set by the Trainer at runtime, not typed
    if fast_dev_run:
        return f"fast_dev_run={fast_dev_run}"
    overfit = getattr(trainer, "overfit_batches", 0)
    return f"overfit_batches={overfit}" if overfit else ""


def _user_sampler(sampler: Any) -> Any:
    """The sampler that decides which indices an evaluation visits: the loader's own, the user's
    sampler inside Lightning's ``DistributedSamplerWrapper`` under DDP, ``None`` for a plain
    ``DistributedSampler`` (whose coverage is judged on its own).

    The one read of a private Lightning attribute in the package: the wrapper keeps the user's
    sampler only as ``_sampler`` of its dataset (a ``_DatasetSamplerWrapper``), and no public
    attribute or method gives it back; without it a custom sampler that skips or repeats indices
    would go unseen under DDP.
    """
    if not isinstance(sampler, DistributedSampler):
        return sampler
    return getattr(sampler.dataset, "_sampler", None) if isinstance(sampler, DistributedSamplerWrapper) else None


class FullEvalSet(RecipeCallback):
    """The exact mean of the loss and metrics over every sample of every evaluation dataloader,
    with its standard error, 95% interval and the number of samples: recipe step 2c.

    Lightning's epoch figures are averages of per-batch values; a ``limit_val_batches`` below 1,
    ``drop_last=True`` or a custom sampler leave samples out, and under DDP the padding of the
    ``DistributedSampler`` evaluates some samples twice. ``FullEvalSet`` sums per-sample values
    in float64 (count, sum, sum of squares; memory does not grow with the set), leaves the DDP
    padding out (which positions of each shard are padding is known from the sampler), adds the
    sums of all processes itself and reports the mean rounded to the digits its interval
    supports, e.g. ``val loss 0.412 ± 0.006, n = 1,797``. A setting that kept it from seeing the
    whole set exactly once makes the Finding a ``warn`` that names the setting.

    It costs no extra forward pass when ``validation_step`` calls ``self(x)`` with the batch
    input: a forward hook, active only during evaluation batches, reads the logits. Otherwise it
    runs one forward pass per batch itself (eval mode, no grad, isolated RNG) and says so in
    ``values["cost_steps"]`` (a forward pass counted as a third of a training step).

    The per-sample loss is computed by FullEvalSet from the logits (``loss``): cross-entropy for a
    multiclass task, BCE with logits for a binary one, MSE for regression; ``forward`` must return
    logits (or predictions, for regression). Metrics are torchmetrics metrics; the standard error
    of a metric is known when it is a mean of per-sample values (accuracy, MAE, MSE): those are
    computed exactly from the float64 sums (the same definitions as torchmetrics' micro
    ``Accuracy``, ``MeanAbsoluteError``, ``MeanSquaredError``); the others are torchmetrics metrics.

    Args:
        metrics: names of metrics to build for the inferred task (``"accuracy"``, ``"f1"``,
            ``"auroc"`` for classification; ``"mae"``, ``"mse"``, ``"r2"`` for regression), or a
            dict ``{name: torchmetrics.Metric}`` (given in code; updated with the raw
            ``forward`` output and the target). ``None``: accuracy for classification, MAE for
            regression. ``[]``: the loss only.
        task: ``"multiclass"``, ``"binary"`` or ``"regression"``; inferred from the logits and
            targets of the first batch when ``None`` (:func:`~recipe_callbacks.core.task.infer_task`;
            multiclass logits may be ``(N, C, ...)`` or ``(N, ..., C)``).
        loss: the per-sample loss: ``"cross_entropy"``, ``"bce_with_logits"``, ``"mse"``,
            ``"l1"``; the task's default when ``None``.
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

    Logged (at the global step, by every evaluation epoch; ``<name>`` is ``loss`` and each metric):
        - ``recipe.full_eval_set/<name>``: the exact mean over the samples of the (first) val dataloader.
        - ``recipe.full_eval_set/<name>_stderr``: its standard error (for metrics that are
          per-sample means: the loss, accuracy, MAE, MSE).
        - ``recipe.full_eval_set/num_samples``: the number of unique samples it covered.
        - ``recipe.full_eval_set/dataloader_<k>/...``: the same for val dataloader ``k >= 1``.
        - ``recipe.full_eval_set/test/...`` and ``recipe.full_eval_set/test/dataloader_<k>/...``:
          the same for ``trainer.test``.

        One Finding per dataloader and stage (``val`` covers ``fit`` and ``trainer.validate``),
        replaced every epoch, with values ``<name>``, ``<name>_stderr``, ``<name>_halfwidth``,
        ``num_samples``, ``dataset_size``, ``padding_excluded`` and ``cost_steps``.

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
        self._stage = ""  # "val" or "test" while an evaluation epoch runs, "" otherwise
        self._tallies: dict[int, Tally] = {}
        self._handle: RemovableHandle | None = None
        self._expected: torch.Tensor | None = None
        self._target: torch.Tensor | None = None
        self._captured: Any = None
        self._batch: Any = None
        self._resolved: ResolvedBatch | None = None
        self._warned: dict[str, str] = {}
        self._validated_in_fit = False

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads state_key around every hook call: build it once.
        key: str | None = self.__dict__.get("_state_key_cache")
        if key is None:
            names = sorted(self.metric_objects) if self.metric_objects is not None else self.metric_names
            key = self.__dict__["_state_key_cache"] = self._generate_state_key(metrics=names, task=self.task,
                                                                               loss=self.loss)
        return key

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
        self._arm(batch, dataloader_idx)

    @override
    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._arm(batch, dataloader_idx)

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._accumulate(trainer, pl_module, dataloader_idx)

    @override
    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._accumulate(trainer, pl_module, dataloader_idx)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stage == "val":
            self._finish(trainer, pl_module)

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stage == "test":
            self._finish(trainer, pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._validated_in_fit = False

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._validated_in_fit or any(k != "no_validation" for k in self._findings):
            return
        loaders = self._loaders(trainer)
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
    def _begin(self, pl_module: pl.LightningModule, stage: str) -> None:
        self._end()
        self._stage = stage
        self._tallies = {}
        self._handle = pl_module.register_forward_hook(self._capture, with_kwargs=True)

    def _end(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._stage = ""
        self._expected = self._target = self._captured = None
        self._batch = None
        self._resolved = None

    def _capture(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        """Forward hook: keep the output of the first forward call that got this batch's input."""
        if self._expected is None or self._captured is not None:
            return
        seen = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        if tally_core.same_input(seen, self._expected):
            self._captured = output

    def _arm(self, batch: Any, dataloader_idx: int) -> None:
        self._expected = self._target = self._captured = None
        tally = self._tallies.get(dataloader_idx)
        if not self._stage or (tally is not None and tally.skip_reason):
            return
        try:
            resolved = self.resolved(batch)
        except CheckSkipped as err:
            self._mark_skipped(dataloader_idx, err.reason, err.argument)
            return
        if resolved.y is None:
            self._mark_skipped(dataloader_idx, "the batch has no target", "target_key")
            return
        self._expected, self._target = resolved.x, resolved.y
        self._batch, self._resolved = batch, resolved

    def _mark_skipped(self, dataloader_idx: int, reason: str, argument: str) -> None:
        self._tallies.setdefault(dataloader_idx, Tally.empty()).skip(reason, argument)

    def _own_pass(self, pl_module: pl.LightningModule, tally: Tally) -> str:
        """One forward pass of FullEvalSet's own when the hook saw none; an error message or ``""``."""
        self._expected = None  # the own pass below must not be captured as the user's call
        tally.own_pass_batches += 1
        try:
            with observing(pl_module):
                assert self._resolved is not None
                self._captured = self.run_model(pl_module, self._batch, self._resolved)
        except Exception as err:  # e.g. a LightningModule without forward: report it, do not stop training
            return (f"the evaluation step did not call self(x) with the batch input and running the model "
                    f"failed: {err}; set forward_fn")
        return ""

    def _accumulate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dataloader_idx: int) -> None:
        x, y = self._expected, self._target
        if not self._stage or x is None or y is None:
            return
        tally = self._tallies.get(dataloader_idx)
        if tally is None:
            loaders = self._loaders(trainer)
            sampler = getattr(loaders[dataloader_idx], "sampler", None) if dataloader_idx < len(loaders) else None
            tally = Tally.empty(tally_core.shard_real_positions(sampler), pl_module.device)
            self._tallies[dataloader_idx] = tally
        try:
            failure = self._own_pass(pl_module, tally) if self._captured is None else ""
            preds = logits_of(self._captured)
            if failure or preds is None:
                self._mark_skipped(dataloader_idx, failure or "forward returned no tensor to compute a loss from",
                                   "forward_fn")
                return
            inputs = integer_inputs(self._batch, self._resolved) if self._resolved is not None else [x]
            preds, y = aligned(preds.detach(), y.detach(), inputs)
            task = self._task_of(preds, y)
            wanted = tally_core.wanted_names(task, self.metric_names, self.metric_objects)
            tally.add(preds, y, task, self.loss or DEFAULT_LOSS[task], wanted, self.metric_objects, self.num_classes)
        except Exception as err:  # a shape or dtype FullEvalSet cannot read must not stop the user's training
            argument = "task" if self.task is None else "loss"
            self._mark_skipped(dataloader_idx, f"could not compute the per-sample loss: {err}", argument)
        finally:
            self._expected = self._target = self._captured = None

    def _task_of(self, preds: torch.Tensor, target: torch.Tensor) -> Task:
        if self.task is not None:
            return self.task
        if self._inferred_task is None:
            self._inferred_task = require_task(preds, target)
        return self._inferred_task

    # ----------------------------------------------------------------- reducing and reporting
    def _loaders(self, trainer: pl.Trainer) -> list[Any]:
        loaders = trainer.test_dataloaders if self._stage == "test" else trainer.val_dataloaders
        if loaders is None:
            return []
        if isinstance(loaders, Mapping):
            return list(loaders.values())
        if isinstance(loaders, (list, tuple)):
            return list(loaders)
        return [loaders]

    def _key(self, dataloader_idx: int) -> str:
        return f"{self._stage}/{dataloader_idx}"

    def _label(self, idx: int) -> str:
        return f"{self._stage} dataloader {idx}" if idx else self._stage

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stage == "val" and not trainer.sanity_checking:
            self._validated_in_fit = True
            self._findings.pop("no_validation", None)
        for idx, loader in enumerate(self._loaders(trainer)):
            tally = self._tallies.get(idx)
            # Every process adds, in the same order, whatever it saw: sums of sums are exact.
            (total,) = sum_over_ranks(trainer, [tally.parts() if tally is not None else tally_core.no_parts()])
            head, estimates = tally_core.read_parts(total, self.confidence)
            if head[SKIPPED] > 0:
                reason = tally.skip_reason if tally is not None and tally.skip_reason else (
                    "another process could not read its batches")
                argument = tally.skip_argument if tally is not None else ""
                self.skip(trainer, f"{self._label(idx)}: {reason}", argument, key=self._key(idx))
                continue
            computed: dict[str, float] = {}
            if head[READY] == trainer.world_size and tally is not None and tally.metrics is not None:
                computed = {name: float(m.compute()) for name, m in tally.metrics.items()}
            task = self.task or self._inferred_task
            names = tally_core.wanted_names(task, self.metric_names, None) if task is not None else []
            metric_values = tally_core.metric_values(names, self.metric_objects, computed, estimates)
            self._report(trainer, idx, loader, estimates, metric_values, head, tally.notes if tally else [])
        self._end()

    def _figures(
        self, loss: MeanEstimate, samples: int, estimates: dict[str, MeanEstimate], metric_values: dict[str, float]
    ) -> tuple[dict[str, float], list[str]]:
        """The values of a dataloader's Finding and the figures of its summary."""
        values = {"loss": loss.mean, "loss_stderr": loss.stderr, "loss_halfwidth": loss.half_width,
                  "num_samples": float(samples)}
        parts = [f"loss {loss.text()}"]
        if estimates["position_loss"].count > 0:
            values["num_positions"] = float(loss.count)
            parts = [f"loss {loss.text()} scored positions (ignore_index -100 left out) of {samples:,} samples"]
        for name, value in metric_values.items():
            values[name] = value
            est = estimates.get(name)
            if est is not None and est.count > 0:
                values[f"{name}_stderr"], values[f"{name}_halfwidth"] = est.stderr, est.half_width
                parts.append(f"{name} {round_to_interval(value, est.half_width)}")
            else:
                parts.append(f"{name} {value:.4g}")
        return values, parts

    def _report(self, trainer: pl.Trainer, idx: int, loader: Any, estimates: dict[str, MeanEstimate],
                metric_values: dict[str, float], head: list[float], notes: list[str]) -> None:
        key, loss = self._key(idx), estimates["loss"]
        if loss.count == 0:
            self.skip(trainer, f"{self._label(idx)}: no samples were evaluated", key=key)
            return
        samples = loss.count
        if estimates["position_loss"].count > 0:  # tokens or pixels: the mean over scored positions, as the model's
            loss = estimates["position_loss"]
        values, parts = self._figures(loss, samples, estimates, metric_values)
        prefix = ("test/" if self._stage == "test" else "") + (f"dataloader_{idx}/" if idx else "")
        self.log_scalars(trainer, {f"{prefix}{k}": v for k, v in values.items()
                                   if not k.endswith("_halfwidth") and math.isfinite(v)})
        dataset_len = sized_len(getattr(loader, "dataset", None))
        values["dataset_size"] = math.nan if dataset_len is None else float(dataset_len)
        values["padding_excluded"] = head[EXCLUDED]
        own = head[OWN_PASS] / max(trainer.world_size, 1)
        values["cost_steps"] = own * FORWARD_PASS_STEPS
        problems, advice = self._coverage(trainer, idx, loader, samples, int(head[EXCLUDED]))
        summary = f"{self._label(idx)} " + "; ".join(parts) + "."
        smoke = _smoke_mode(trainer)
        if smoke and self._stage == "val":  # a partial run on purpose: a figure, but no verdict on the set
            self.report(
                trainer, "skip", f"{summary} Under {smoke} the Trainer evaluates part of the set on purpose, so this "
                "is the figure of that part; the whole set is judged in an ordinary run", values, key=key,
                log_values=False,
            )
            return
        if own > 0:
            summary += (f" Ran its own forward pass on {own:.0f} batches per process: validation_step did not call"
                        " self(x) with the batch input.")
        if notes:
            summary += " " + "; ".join(sorted(set(notes))) + "."
        if problems:
            summary += " Coverage: " + " ".join(problems)
        if not math.isfinite(loss.mean):
            self.report(trainer, "fail", f"{summary} {_NOT_FINITE[0]}", values, _NOT_FINITE[1], key=key,
                        log_values=False)
            return
        status: Literal["pass", "warn"] = "warn" if problems else "pass"
        self._report_once(trainer, status, summary, values, " ".join(advice), key, "|".join(advice))

    def _report_once(self, trainer: pl.Trainer, status: Literal["pass", "warn"], summary: str, values: dict[str, float],
                     advice: str, key: str, signature: str) -> None:
        """Report every epoch, but warn only when the coverage problems of a dataloader change."""
        quiet = status == "warn" and self._warned.get(key) == signature
        self._warned[key] = signature if status == "warn" else ""
        on_fail = self.on_fail
        if quiet:
            self.on_fail = "ignore"
        try:
            self.report(trainer, status, summary, values, advice, key=key, log_values=False)
        finally:
            self.on_fail = on_fail

    def _coverage(
        self, trainer: pl.Trainer, idx: int, loader: Any, count: int, excluded: int
    ) -> tuple[list[str], list[str]]:
        """What kept this dataloader from covering its set exactly once, naming the settings."""
        test = self._stage == "test"
        gaps = tally_core.coverage_gaps(
            loader, _user_sampler(getattr(loader, "sampler", None)),
            planned=(trainer.num_test_batches if test else trainer.num_val_batches)[idx],
            limit=trainer.limit_test_batches if test else trainer.limit_val_batches,
            world_size=trainer.world_size, count=count, excluded=excluded,
        )
        texts = [_gap_text(gap, "test" if test else "val") for gap in gaps]
        return [problem for problem, _ in texts], [advice for _, advice in texts]
