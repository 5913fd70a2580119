"""FullEvalSet: the exact mean over the whole validation set, with its significant digits (recipe 2c)."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torchmetrics
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DistributedSampler, IterableDataset, RandomSampler, SequentialSampler
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from recipe_callbacks.core.cost import FORWARD_PASS_STEPS
from recipe_callbacks.core.eval_stats import (
    DEFAULT_LOSS,
    LOSSES,
    PER_SAMPLE_METRICS,
    LossName,
    MeanEstimate,
    estimate,
    per_sample_loss,
    per_sample_metric,
    real_rows,
    round_to_interval,
    sample_sums,
    unpadded_positions,
)
from recipe_callbacks.core.task import (
    TASKS,
    Task,
    aligned,
    class_first,
    class_indices,
    logits_of,
    per_position_losses,
    require_task,
)
from recipe_callbacks.plumbing.batch import (
    BatchResolutionError,
    BatchToXY,
    ForwardFn,
    ResolvedBatch,
    integer_inputs,
    resolve_batch,
)
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail
from recipe_callbacks.plumbing.observe import observing
from recipe_callbacks.plumbing.validation import check_choice, check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl

# Names FullEvalSet builds as torchmetrics metrics for the task it infers.
CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "f1", "auroc")
REGRESSION_METRICS: tuple[str, ...] = ("mae", "mse", "r2")
METRIC_NAMES: tuple[str, ...] = CLASSIFICATION_METRICS + REGRESSION_METRICS
# Float64 sums kept per dataloader: the loss, then every per-sample metric (fixed layout, so that
# every process reduces a vector of the same length whatever it saw).
# The last slot sums the loss over scored positions (tokens, pixels; ignore_index left out): the mean
# of a per-position task is the model's own loss (a mean over positions), not a mean of sample means.
SLOTS: tuple[str, ...] = ("loss", *PER_SAMPLE_METRICS, "position_loss")
# Counters in front of the sums: processes with metrics built, processes that had to skip,
# batches evaluated by FullEvalSet's own forward pass, padded positions left out.
_READY, _SKIPPED, _OWN_PASS, _EXCLUDED, _HEAD = 0, 1, 2, 3, 4


@dataclass
class _Tally:
    """What one process accumulates for one dataloader during one evaluation epoch."""

    sums: torch.Tensor  # (len(SLOTS), 3) float64: count, sum, sum of squares
    real_positions: int | None  # leading positions of this shard that are not DDP padding
    metrics: dict[str, torchmetrics.Metric] | None = None
    position: int = 0
    own_pass_batches: int = 0
    excluded: int = 0
    skip_reason: str = ""
    skip_argument: str = ""
    notes: list[str] = field(default_factory=list)


def _same_input(seen: Any, expected: torch.Tensor) -> bool:
    """Whether a forward call got the batch input (the same tensor, or a view/copy of its values)."""
    if seen is expected:
        return True
    if not isinstance(seen, torch.Tensor) or seen.dtype != expected.dtype or seen.device != expected.device:
        return False
    if seen.numel() != expected.numel() or seen.ndim == 0 or seen.shape[0] != expected.shape[0]:
        return False
    if seen.data_ptr() == expected.data_ptr() and seen.stride() == expected.stride():
        return True  # a view of the same memory: no need to compare values (which waits for the device)
    return bool(torch.equal(seen.reshape(-1), expected.reshape(-1)))


def _smoke_mode(trainer: pl.Trainer) -> str:
    """``"fast_dev_run=..."`` or ``"overfit_batches=..."`` when the run is partial on purpose, else ``""``."""
    fast_dev_run = getattr(trainer, "fast_dev_run", False)  # set by the Trainer at runtime, not typed
    if fast_dev_run:
        return f"fast_dev_run={fast_dev_run}"
    overfit = getattr(trainer, "overfit_batches", 0)
    return f"overfit_batches={overfit}" if overfit else ""


def _sized_len(obj: Any) -> int | None:
    if not isinstance(obj, Sized):
        return None
    try:
        return len(obj)
    except TypeError:
        return None


def build_metric(name: str, task: str, num_classes: int | None) -> torchmetrics.Metric:
    """A torchmetrics metric for a name and a task (accuracy is micro-averaged, F1 macro-averaged)."""
    if name == "mae":
        return torchmetrics.MeanAbsoluteError()
    if name == "mse":
        return torchmetrics.MeanSquaredError()
    if name == "r2":
        return torchmetrics.R2Score()
    kw: dict[str, Any] = {"task": task}
    if task == "multiclass":
        kw["num_classes"] = num_classes
    if name == "accuracy":
        return torchmetrics.Accuracy(**kw, average="micro") if task == "multiclass" else torchmetrics.Accuracy(**kw)
    if name == "f1":
        return torchmetrics.F1Score(**kw, average="macro") if task == "multiclass" else torchmetrics.F1Score(**kw)
    return torchmetrics.AUROC(**kw)


def _metric_inputs(task: str, preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and targets as the torchmetrics metrics built here expect them."""
    if task == "multiclass":
        return preds.float().softmax(dim=1), class_indices(target).long()
    p = preds.reshape(target.shape) if preds.shape != target.shape else preds
    if task == "binary":
        return p.float().sigmoid(), target.long()
    return p.float(), target.float()


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
        self,
        metrics: list[str] | dict[str, torchmetrics.Metric] | None = None,
        task: Task | None = None,
        loss: LossName | None = None,
        num_classes: int | None = None,
        confidence: float = 0.95,
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
        forward_fn: ForwardFn | str | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy, forward_fn)
        owner = type(self).__name__
        self.metric_names, self.metric_objects = self._check_metrics(owner, metrics)
        self.task: Task | None = None if task is None else check_choice(owner, "task", task, TASKS)
        self.loss: LossName | None = None if loss is None else check_choice(owner, "loss", loss, LOSSES)
        self.num_classes = None if num_classes is None else check_int(owner, "num_classes", num_classes, minimum=2)
        self.confidence = check_float(owner, "confidence", confidence, maximum=1.0)
        if self.confidence == 1.0:
            raise ValueError(f"{owner}(confidence={confidence!r}): confidence must be a float in (0.0, 1.0)")
        self._inferred_task: Task | None = None
        self._stage = ""  # "val" or "test" while an evaluation epoch runs, "" otherwise
        self._tallies: dict[int, _Tally] = {}
        self._handle: RemovableHandle | None = None
        self._expected: torch.Tensor | None = None
        self._target: torch.Tensor | None = None
        self._captured: Any = None
        self._batch: Any = None
        self._resolved: ResolvedBatch | None = None
        self._warned: dict[str, str] = {}
        self._validated_in_fit = False

    @staticmethod
    def _check_metrics(
        owner: str, metrics: list[str] | dict[str, torchmetrics.Metric] | None
    ) -> tuple[list[str] | None, dict[str, torchmetrics.Metric] | None]:
        if metrics is None:
            return None, None
        if isinstance(metrics, Mapping):
            for name, metric in metrics.items():
                if not isinstance(name, str) or not name or name in ("loss", "num_samples"):
                    raise ValueError(f"{owner}(metrics={metrics!r}): metric names must be non-empty str, not 'loss'")
                if not isinstance(metric, torchmetrics.Metric):
                    raise TypeError(f"{owner}(metrics={metrics!r}): metrics[{name!r}] must be a torchmetrics.Metric")
            return None, dict(metrics)
        if not isinstance(metrics, (list, tuple)) or not all(isinstance(m, str) for m in metrics):
            raise TypeError(
                f"{owner}(metrics={metrics!r}): metrics must be a list of names, a dict of torchmetrics metrics or None"
            )
        for name in metrics:
            check_choice(owner, "metrics", name, METRIC_NAMES)
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"{owner}(metrics={metrics!r}): metrics must not repeat a name")
        return list(metrics), None

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads state_key around every hook call: build it once.
        key: str | None = self.__dict__.get("_state_key_cache")
        if key is None:
            names = sorted(self.metric_objects) if self.metric_objects is not None else self.metric_names
            key = self.__dict__["_state_key_cache"] = self._generate_state_key(
                metrics=names, task=self.task, loss=self.loss
            )
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
    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._arm(trainer, batch, dataloader_idx)

    @override
    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._arm(trainer, batch, dataloader_idx)

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._accumulate(trainer, pl_module, dataloader_idx)

    @override
    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
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
        if not loaders or not is_overridden("validation_step", pl_module):
            reason = "this fit had no validation: no val dataloader or no validation_step"
            advice = "pass val_dataloaders to fit() (and define validation_step), or run trainer.validate()"
        elif not batches:
            reason = "the val dataloader of this fit has no batches (an empty set, or limit_val_batches=0)"
            advice = "give the val dataloader samples"
        else:
            reason = (
                f"training ended at global step {trainer.global_step}, before the first validation "
                f"(val_check_interval={trainer.val_check_interval}, "
                f"check_val_every_n_epoch={trainer.check_val_every_n_epoch})"
            )
            advice = "train until a validation runs, or run trainer.validate() after fit"
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
        if _same_input(seen, self._expected):
            self._captured = output

    def _arm(self, trainer: pl.Trainer, batch: Any, dataloader_idx: int) -> None:
        self._expected = self._target = self._captured = None
        if not self._stage or self._tally_skipped(dataloader_idx):
            return
        try:
            resolved = resolve_batch(batch, self.input_key, self.target_key, self.batch_to_xy)
        except BatchResolutionError as err:
            self._mark_skipped(dataloader_idx, f"could not find the input in the batch: {err}", err.argument)
            return
        if resolved.y is None:
            self._mark_skipped(dataloader_idx, "the batch has no target", "target_key")
            return
        self._expected, self._target = resolved.x, resolved.y
        self._batch, self._resolved = batch, resolved

    def _tally_skipped(self, dataloader_idx: int) -> bool:
        tally = self._tallies.get(dataloader_idx)
        return tally is not None and bool(tally.skip_reason)

    def _mark_skipped(self, dataloader_idx: int, reason: str, argument: str) -> None:
        tally = self._tallies.get(dataloader_idx)
        if tally is not None and not tally.skip_reason:
            tally.skip_reason, tally.skip_argument = reason, argument
        elif tally is None:
            self._tallies[dataloader_idx] = _Tally(
                torch.zeros(len(SLOTS), 3, dtype=torch.float64), None, skip_reason=reason, skip_argument=argument
            )

    def _own_pass(self, pl_module: pl.LightningModule, tally: _Tally, x: torch.Tensor) -> str:
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
            tally = self._new_tally(trainer, pl_module, dataloader_idx)
        try:
            failure = self._own_pass(pl_module, tally, x) if self._captured is None else ""
            preds = logits_of(self._captured)
            if failure or preds is None:
                self._mark_skipped(dataloader_idx, failure or "forward returned no tensor to compute a loss from",
                                   "forward_fn")
                return
            inputs = integer_inputs(self._batch, self._resolved) if self._resolved is not None else [x]
            preds, y = aligned(preds.detach(), y.detach(), inputs)
            self._add_batch(tally, preds, y)
        except Exception as err:  # a shape or dtype FullEvalSet cannot read must not stop the user's training
            argument = "task" if self.task is None else "loss"
            self._mark_skipped(dataloader_idx, f"could not compute the per-sample loss: {err}", argument)
        finally:
            self._expected = self._target = self._captured = None

    def _new_tally(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dataloader_idx: int) -> _Tally:
        loaders = self._loaders(trainer)
        sampler = getattr(loaders[dataloader_idx], "sampler", None) if dataloader_idx < len(loaders) else None
        real: int | None = None
        if isinstance(sampler, DistributedSampler) and not sampler.drop_last:
            n = _sized_len(sampler.dataset)
            if n is not None:
                real = unpadded_positions(n, sampler.num_replicas, sampler.rank, sampler.num_samples)
        tally = _Tally(torch.zeros(len(SLOTS), 3, dtype=torch.float64, device=pl_module.device), real)
        self._tallies[dataloader_idx] = tally
        return tally

    def _task_of(self, preds: torch.Tensor, target: torch.Tensor) -> Task:
        if self.task is not None:
            return self.task
        if self._inferred_task is None:
            self._inferred_task = require_task(preds, target)
        return self._inferred_task

    def _wanted_names(self, task: str) -> list[str]:
        if self.metric_objects is not None:
            return []
        if self.metric_names is None:
            return ["mae"] if task == "regression" else ["accuracy"]
        return self.metric_names

    def _build_metrics(self, tally: _Tally, task: str, preds: torch.Tensor) -> None:
        if self.metric_objects is not None:
            tally.metrics = {k: copy.deepcopy(m).to(preds.device) for k, m in self.metric_objects.items()}
            return
        tally.metrics = {}
        allowed = REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS
        num_classes = self.num_classes or (int(preds.shape[1]) if preds.ndim >= 2 else None)
        for name in self._wanted_names(task):
            if name not in allowed:
                tally.notes.append(f"metric {name!r} does not apply to a {task} task")
            elif task not in PER_SAMPLE_METRICS.get(name, ()):
                # Means of per-sample values (accuracy, MAE, MSE) come exactly from the float64 sums.
                tally.metrics[name] = build_metric(name, task, num_classes).to(preds.device)

    def _add_batch(self, tally: _Tally, output: torch.Tensor, target: torch.Tensor) -> None:
        task = self._task_of(output, target)
        preds = class_first(output, target) if task == "multiclass" else output  # (N, C, ...) logits
        if tally.metrics is None:
            self._build_metrics(tally, task, preds)
        batch_size = int(preds.shape[0])
        rows = real_rows(tally.position, batch_size, tally.real_positions)
        tally.position += batch_size
        tally.excluded += batch_size - rows
        if rows < batch_size:  # DDP padding comes last in a shard: keep the real prefix
            output, preds, target = output[:rows], preds[:rows], target[:rows]
        if rows == 0:
            return
        losses = per_sample_loss(preds, target, self.loss or DEFAULT_LOSS[task])
        tally.sums[0] += sample_sums(losses)
        wanted = self._wanted_names(task)
        if task == "multiclass" and target.ndim >= 2 and not target.is_floating_point():
            tally.sums[-1] += sample_sums(per_position_losses(preds, target))
        for i, name in enumerate(SLOTS[1:-1], start=1):
            values = per_sample_metric(name, task, preds, target) if name in wanted else None
            if values is not None:
                tally.sums[i] += sample_sums(values)
        for metric in (tally.metrics or {}).values():
            if self.metric_objects is not None:
                metric.update(output, target)
            else:
                metric.update(*_metric_inputs(task, preds, target))

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

    def _quantity_prefix(self, dataloader_idx: int) -> str:
        stage = "test/" if self._stage == "test" else ""
        return stage + (f"dataloader_{dataloader_idx}/" if dataloader_idx else "")

    def _vector(self, tally: _Tally | None, device: torch.device) -> torch.Tensor:
        """This process's counters and sums for one dataloader as one float64 vector to reduce."""
        head = torch.zeros(_HEAD, dtype=torch.float64, device=device)
        if tally is None:
            return torch.cat([head, torch.zeros(len(SLOTS) * 3, dtype=torch.float64, device=device)])
        head[_READY] = float(tally.metrics is not None)
        head[_SKIPPED] = float(bool(tally.skip_reason))
        head[_OWN_PASS] = float(tally.own_pass_batches)
        head[_EXCLUDED] = float(tally.excluded)
        return torch.cat([head, tally.sums.to(device).reshape(-1)])

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stage == "val" and not trainer.sanity_checking:
            self._validated_in_fit = True
            self._findings.pop("no_validation", None)
        for idx, loader in enumerate(self._loaders(trainer)):
            tally = self._tallies.get(idx)
            # Every process reduces, in the same order, whatever it saw: sums of sums are exact.
            total = trainer.strategy.reduce(self._vector(tally, pl_module.device), reduce_op="sum")
            values = [float(v) for v in total.tolist()]
            head, sums = values[:_HEAD], values[_HEAD:]
            if head[_SKIPPED] > 0:
                reason = "another process could not read its batches"
                if tally is not None and tally.skip_reason:
                    reason = tally.skip_reason
                argument = tally.skip_argument if tally is not None else ""
                self.skip(trainer, f"{self._label(idx)}: {reason}", argument, key=self._key(idx))
                continue
            computed: dict[str, float] = {}
            if head[_READY] == trainer.world_size and tally is not None and tally.metrics is not None:
                computed = {name: float(m.compute()) for name, m in tally.metrics.items()}
            estimates = {
                name: estimate(sums[3 * i], sums[3 * i + 1], sums[3 * i + 2], self.confidence)
                for i, name in enumerate(SLOTS)
            }
            metric_values = self._metric_values(computed, estimates)
            notes = tally.notes if tally is not None else []
            self._report(trainer, idx, loader, estimates, metric_values, head, notes)
        self._end()

    def _metric_values(self, computed: dict[str, float], estimates: dict[str, MeanEstimate]) -> dict[str, float]:
        """Every metric's value in the order given: torchmetrics' or, for per-sample means, the sums'."""
        if self.metric_objects is not None:
            return {name: computed[name] for name in self.metric_objects if name in computed}
        task = self.task or self._inferred_task
        out: dict[str, float] = {}
        for name in self._wanted_names(task) if task is not None else []:
            if name in computed:
                out[name] = computed[name]
            elif name in estimates and estimates[name].count > 0:
                out[name] = estimates[name].mean
        return out

    def _label(self, idx: int) -> str:
        return f"{self._stage} dataloader {idx}" if idx else self._stage

    def _report(
        self,
        trainer: pl.Trainer,
        idx: int,
        loader: Any,
        estimates: dict[str, MeanEstimate],
        metric_values: dict[str, float],
        head: list[float],
        notes: list[str],
    ) -> None:
        key, loss = self._key(idx), estimates["loss"]
        if loss.count == 0:
            self.skip(trainer, f"{self._label(idx)}: no samples were evaluated", key=key)
            return
        samples = loss.count
        positions = estimates["position_loss"]
        if positions.count > 0:  # tokens or pixels: the mean over scored positions, as the model's own loss
            loss = positions
        values: dict[str, float] = {
            "loss": loss.mean,
            "loss_stderr": loss.stderr,
            "loss_halfwidth": loss.half_width,
            "num_samples": float(samples),
        }
        parts = [f"loss {loss.text()}"]
        if positions.count > 0:
            values["num_positions"] = float(positions.count)
            parts = [f"loss {loss.text()} scored positions (ignore_index -100 left out) of {samples:,} samples"]
        for name, value in metric_values.items():
            values[name] = value
            est = estimates.get(name)
            if est is not None and est.count > 0:
                values[f"{name}_stderr"], values[f"{name}_halfwidth"] = est.stderr, est.half_width
                parts.append(f"{name} {round_to_interval(value, est.half_width)}")
            else:
                parts.append(f"{name} {value:.4g}")
        self._log(trainer, idx, values)
        dataset_len = _sized_len(getattr(loader, "dataset", None))
        values["dataset_size"] = math.nan if dataset_len is None else float(dataset_len)
        values["padding_excluded"] = head[_EXCLUDED]
        own = head[_OWN_PASS] / max(trainer.world_size, 1)
        values["cost_steps"] = own * FORWARD_PASS_STEPS
        problems, advice = self._coverage(trainer, idx, loader, samples, dataset_len, int(head[_EXCLUDED]))
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
            summary += (
                f" Ran its own forward pass on {own:.0f} batches per process: validation_step did not call"
                " self(x) with the batch input."
            )
        if notes:
            summary += " " + "; ".join(sorted(set(notes))) + "."
        if problems:
            summary += " Coverage: " + " ".join(problems)
        if not math.isfinite(loss.mean):
            self.report(
                trainer, "fail", f"{summary} The loss is not finite: a NaN or infinite output or target in the set "
                "makes the figure meaningless", values,
                "look for NaN/Inf targets (missing values) and outputs in the validation set; drop, impute or mask "
                "them", key=key, log_values=False,
            )
            return
        status: Literal["pass", "warn"] = "warn" if problems else "pass"
        self._report_once(trainer, status, summary, values, " ".join(advice), key, "|".join(advice))

    def _log(self, trainer: pl.Trainer, idx: int, values: dict[str, float]) -> None:
        prefix = self._quantity_prefix(idx)
        logged = {f"{prefix}{k}": v for k, v in values.items() if not k.endswith("_halfwidth") and math.isfinite(v)}
        self.log_scalars(trainer, logged)

    def _report_once(
        self,
        trainer: pl.Trainer,
        status: Literal["pass", "warn"],
        summary: str,
        values: dict[str, float],
        advice: str,
        key: str,
        signature: str,
    ) -> None:
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

    # ----------------------------------------------------------------- coverage
    def _coverage(
        self, trainer: pl.Trainer, idx: int, loader: Any, count: int, dataset_len: int | None, excluded: int
    ) -> tuple[list[str], list[str]]:
        """What kept this dataloader from covering its set exactly once, naming the settings."""
        problems: list[str] = []
        advice: list[str] = []
        stage_name = "test" if self._stage == "test" else "val"
        limit_name = f"limit_{stage_name}_batches"
        limit = trainer.limit_test_batches if self._stage == "test" else trainer.limit_val_batches
        planned = (trainer.num_test_batches if self._stage == "test" else trainer.num_val_batches)[idx]
        batches = _sized_len(loader)
        if batches is not None and planned < batches:
            problems.append(f"{limit_name}={limit} evaluated {planned:.0f} of the {batches} batches per process.")
            advice.append(f"Set Trainer({limit_name}=1.0) to evaluate the whole set.")
        sampler = getattr(loader, "sampler", None)
        batch_sampler = getattr(loader, "batch_sampler", None)
        batch_size = getattr(batch_sampler, "batch_size", None)
        shard_len = _sized_len(sampler)
        if getattr(batch_sampler, "drop_last", False) and batch_size and shard_len and shard_len % batch_size:
            problems.append(
                f"drop_last=True on the {stage_name} DataLoader drops the last {shard_len % batch_size} samples "
                "(per process) of every evaluation."
            )
            advice.append(f"Set drop_last=False on the {stage_name} DataLoader.")
        inner = sampler
        if isinstance(sampler, DistributedSampler):
            self._distributed_coverage(sampler, count, excluded, problems, advice)
            # Lightning wraps a custom sampler: the wrapper's dataset holds it.
            wrapped = isinstance(sampler, DistributedSamplerWrapper)
            inner = getattr(sampler.dataset, "_sampler", None) if wrapped else None
        elif trainer.world_size > 1 and dataset_len is not None and count > dataset_len:
            problems.append(
                f"every one of the {trainer.world_size} processes evaluated the set without a DistributedSampler."
            )
            advice.append("Keep Trainer(use_distributed_sampler=True) or give the loader a DistributedSampler.")
        if inner is not None and dataset_len is not None:
            self._sampler_coverage(inner, dataset_len, problems, advice)
        dataset = getattr(loader, "dataset", None)
        if isinstance(dataset, IterableDataset) and dataset_len is None:
            problems.append(
                f"the {stage_name} set is an IterableDataset of unknown length: FullEvalSet saw {count:,} samples "
                "and cannot tell whether that is all of it."
            )
            advice.append("Give the IterableDataset a __len__ so that coverage can be checked.")
        if not problems and dataset_len is not None and count != dataset_len:
            problems.append(f"evaluated {count:,} samples, but the dataset has {dataset_len:,}.")
            advice.append("Check the sampler and the limits of the evaluation loop.")
        return problems, advice

    @staticmethod
    def _distributed_coverage(
        sampler: DistributedSampler[Any], count: int, excluded: int, problems: list[str], advice: list[str]
    ) -> None:
        n = _sized_len(sampler.dataset)
        if n is None:
            return
        replicas = sampler.num_replicas
        if sampler.drop_last and sampler.total_size < n:
            problems.append(f"DistributedSampler(drop_last=True) leaves out {n - sampler.total_size} samples.")
            advice.append("Use DistributedSampler(drop_last=False) for evaluation.")
        elif not sampler.drop_last and sampler.total_size > n:
            pad = sampler.total_size - n
            problems.append(
                f"the DistributedSampler padded {n:,} samples to {sampler.total_size:,} over {replicas} processes, so "
                f"{pad} sample(s) are evaluated twice and Lightning's own epoch averages count them twice; "
                f"FullEvalSet left the {excluded} padded evaluation(s) out (n = {count:,})."
            )
            advice.append(
                f"Read FullEvalSet's figure, or make the set size a multiple of {replicas} (or evaluate on one device)."
            )

    @staticmethod
    def _sampler_coverage(sampler: Any, dataset_len: int, problems: list[str], advice: list[str]) -> None:
        name = type(sampler).__name__
        if isinstance(sampler, SequentialSampler):
            return
        if isinstance(sampler, RandomSampler):
            if sampler.replacement or sampler.num_samples != dataset_len:
                problems.append(
                    f"the sampler RandomSampler(replacement={sampler.replacement}, num_samples={sampler.num_samples}) "
                    f"does not visit each of the {dataset_len:,} samples exactly once."
                )
                advice.append("Evaluate with shuffle=False (a SequentialSampler).")
            return
        length = _sized_len(sampler)
        replacement = bool(getattr(sampler, "replacement", False))
        if replacement or (length is not None and length != dataset_len):
            drawn = f"draws {length:,} indices" if length is not None else "draws indices"
            how = " with replacement" if replacement else ""
            problems.append(
                f"the custom sampler {name} {drawn}{how} for a dataset of {dataset_len:,}, so it does not visit "
                "every sample exactly once."
            )
            advice.append("Evaluate with a sampler that visits every index once (shuffle=False, no sampler).")
