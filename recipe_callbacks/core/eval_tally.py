"""What FullEvalSet keeps per dataloader during one evaluation epoch, and what kept it from covering the set.

A :class:`Tally` holds float64 sums (count, sum, sum of squares) of the per-sample loss and of the
metrics that are per-sample means, the torchmetrics metrics of the others, and a few counters; its
:meth:`Tally.parts` add up over processes. :func:`coverage_gaps` names each setting (a batch limit,
``drop_last``, a sampler that does not visit every index once, DDP padding) that kept an evaluation
from seeing its set exactly once, as a kind and its numbers. Nothing here imports Lightning.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sized
from dataclasses import dataclass, field
from typing import Any

import torch
import torchmetrics
from torch.utils.data import DistributedSampler, IterableDataset, RandomSampler, SequentialSampler

from recipe_callbacks.core.eval_stats import (
    DEFAULT_LOSS,
    PER_SAMPLE_METRICS,
    LossName,
    MeanEstimate,
    estimate,
    per_sample_loss,
    per_sample_metric,
    real_rows,
    sample_sums,
    unpadded_positions,
)
from recipe_callbacks.core.task import Task, aligned, class_first, class_indices, per_position_losses

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
READY, SKIPPED, OWN_PASS, EXCLUDED, HEAD = 0, 1, 2, 3, 4


def sized_len(obj: Any) -> int | None:
    """``len(obj)``, or ``None`` when it has none.

    Example:
        >>> sized_len([1, 2]), sized_len(iter([1]))
        (2, None)
    """
    if not isinstance(obj, Sized):
        return None
    try:
        return len(obj)
    except TypeError:
        return None


def same_input(seen: Any, expected: torch.Tensor) -> bool:
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


class OutputCapture:
    """The output of the user's own forward call on one evaluation batch: :meth:`expect` the batch's
    input and target, and :meth:`hook` (a forward hook with kwargs on the module) keeps the output
    of the first call that got that input."""

    def __init__(self) -> None:
        self.expected: torch.Tensor | None = None
        self.target: torch.Tensor | None = None
        self.output: Any = None

    def expect(self, x: torch.Tensor | None, y: torch.Tensor | None) -> None:
        """Wait for a call on ``x`` (``None``: for none), forgetting any output seen."""
        self.expected, self.target, self.output = x, y, None

    def hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if self.expected is None or self.output is not None:
            return
        seen = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        if same_input(seen, self.expected):
            self.output = output


class EvalEpoch:
    """One evaluation epoch of FullEvalSet (``stage``: ``"val"`` or ``"test"``): a :class:`Tally`
    per dataloader, and the batch being evaluated, whose output :attr:`capture` waits for through a
    forward hook on the module (from the start of the epoch until :meth:`close`)."""

    def __init__(self, stage: str, module: torch.nn.Module) -> None:
        self.stage = stage
        self.tallies: dict[int, Tally] = {}
        self.capture = OutputCapture()
        self.batch: Any = None  # the batch being evaluated, and its input and target as resolved
        self.resolved: Any = None
        self._handle = module.register_forward_hook(self.capture.hook, with_kwargs=True)

    def close(self) -> None:
        self._handle.remove()
        self.capture.expect(None, None)

    def skip(self, idx: int, reason: str, argument: str) -> None:
        """Stop adding to dataloader ``idx`` (the first reason is kept)."""
        self.tallies.setdefault(idx, Tally.empty()).skip(reason, argument)

    def skipping(self, idx: int) -> bool:
        tally = self.tallies.get(idx)
        return tally is not None and bool(tally.skip_reason)

    def arm(self, batch: Any, resolved: Any, x: torch.Tensor, y: torch.Tensor) -> None:
        """Wait for the output of the forward call on ``x``, the input of ``batch``."""
        self.batch, self.resolved = batch, resolved
        self.capture.expect(x, y)

    def tally(self, idx: int, loaders: Callable[[], list[Any]], device: torch.device) -> Tally:
        """The tally of dataloader ``idx`` of ``loaders()``, made at its first batch for its sampler."""
        if idx not in self.tallies:
            found = loaders()
            self.tallies[idx] = Tally.of_sampler(getattr(found[idx], "sampler", None) if idx < len(found) else None,
                                                 device)
        return self.tallies[idx]

    def add(
        self, tally: Tally, output: torch.Tensor, inputs: list[torch.Tensor],
        task_of: Callable[[torch.Tensor, torch.Tensor], Task], loss: LossName | None, names: list[str] | None,
        objects: Mapping[str, torchmetrics.Metric] | None, num_classes: int | None,
    ) -> None:
        """Add the batch's ``output`` to ``tally``, paired with the target as the model's loss pairs
        them (with the batch's integer ``inputs``), for the task ``task_of`` tells."""
        assert self.capture.target is not None
        preds, y = aligned(output.detach(), self.capture.target.detach(), inputs)
        task = task_of(preds, y)
        tally.add(preds, y, task, loss or DEFAULT_LOSS[task], wanted_names(task, names, objects), objects, num_classes)


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


def metric_inputs(task: str, preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and targets as the torchmetrics metrics built here expect them (one-hot or
    probability rows of a multiclass task as their argmax class)."""
    if task == "multiclass":
        return preds.float().softmax(dim=1), class_indices(target).long()
    p = preds.reshape(target.shape) if preds.shape != target.shape else preds
    if task == "binary":
        return p.float().sigmoid(), target.long()
    return p.float(), target.float()


def check_metrics(
    owner: str, metrics: list[str] | dict[str, torchmetrics.Metric] | None
) -> tuple[list[str] | None, dict[str, torchmetrics.Metric] | None]:
    """FullEvalSet's ``metrics=`` as ``(names, None)`` or ``(None, metric objects)``.

    Raises:
        ValueError: an unknown or repeated name, or a dict key that is empty, ``"loss"`` or ``"num_samples"``.
        TypeError: neither a list of names nor a dict of torchmetrics metrics.
    """
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
        if name not in METRIC_NAMES:
            raise ValueError(f"{owner}(metrics={name!r}): metrics must be one of {METRIC_NAMES}")
    if len(set(metrics)) != len(metrics):
        raise ValueError(f"{owner}(metrics={metrics!r}): metrics must not repeat a name")
    return list(metrics), None


def wanted_names(task: str, names: list[str] | None, objects: Mapping[str, Any] | None) -> list[str]:
    """The metric names to compute for a task: ``names``, else accuracy (classification) or MAE."""
    if objects is not None:
        return []
    if names is None:
        return ["mae"] if task == "regression" else ["accuracy"]
    return names


@dataclass
class Tally:
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

    @classmethod
    def empty(cls, real_positions: int | None = None, device: torch.device | None = None) -> Tally:
        return cls(torch.zeros(len(SLOTS), 3, dtype=torch.float64, device=device), real_positions)

    @classmethod
    def of_sampler(cls, sampler: Any, device: torch.device | None = None) -> Tally:
        """An empty tally for a dataloader with ``sampler``, which leaves out its DDP padding."""
        return cls.empty(shard_real_positions(sampler), device)

    def skip(self, reason: str, argument: str) -> None:
        """Stop adding: the first reason is kept."""
        if not self.skip_reason:
            self.skip_reason, self.skip_argument = reason, argument

    def build_metrics(
        self, task: str, preds: torch.Tensor, names: list[str], objects: Mapping[str, torchmetrics.Metric] | None,
        num_classes: int | None,
    ) -> None:
        """The torchmetrics metrics: copies of ``objects``, or those of ``names`` that are no per-sample means."""
        if objects is not None:
            self.metrics = {k: copy.deepcopy(m).to(preds.device) for k, m in objects.items()}
            return
        self.metrics = {}
        allowed = REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS
        num_classes = num_classes or (int(preds.shape[1]) if preds.ndim >= 2 else None)
        for name in names:
            if name not in allowed:
                self.notes.append(f"metric {name!r} does not apply to a {task} task")
            elif task not in PER_SAMPLE_METRICS.get(name, ()):
                # Means of per-sample values (accuracy, MAE, MSE) come exactly from the float64 sums.
                self.metrics[name] = build_metric(name, task, num_classes).to(preds.device)

    def add(
        self,
        output: torch.Tensor,
        target: torch.Tensor,
        task: Task,
        loss: LossName,
        wanted: list[str],
        objects: Mapping[str, torchmetrics.Metric] | None = None,
        num_classes: int | None = None,
    ) -> None:
        """Add one batch (the real rows of it: DDP padding comes last in a shard and is left out),
        building the metrics at the first (:meth:`build_metrics`). The user's metric ``objects`` are
        updated with the raw output and target."""
        preds = class_first(output, target) if task == "multiclass" else output  # (N, C, ...) logits
        if self.metrics is None:
            self.build_metrics(task, preds, wanted, objects, num_classes)
        batch_size = int(preds.shape[0])
        rows = real_rows(self.position, batch_size, self.real_positions)
        self.position += batch_size
        self.excluded += batch_size - rows
        if rows < batch_size:
            output, preds, target = output[:rows], preds[:rows], target[:rows]
        if rows == 0:
            return
        self.sums[0] += sample_sums(per_sample_loss(preds, target, loss))
        if task == "multiclass" and target.ndim >= 2 and not target.is_floating_point():
            self.sums[-1] += sample_sums(per_position_losses(preds, target))
        for i, name in enumerate(SLOTS[1:-1], start=1):
            values = per_sample_metric(name, task, preds, target) if name in wanted else None
            if values is not None:
                self.sums[i] += sample_sums(values)
        for metric in (self.metrics or {}).values():
            if objects is not None:
                metric.update(output, target)
            else:
                metric.update(*metric_inputs(task, preds, target))

    def parts(self) -> torch.Tensor:
        """The counters and sums as one float64 vector to add over processes (see :func:`read_parts`)."""
        head = torch.tensor([float(self.metrics is not None), float(bool(self.skip_reason)),
                             float(self.own_pass_batches), float(self.excluded)], dtype=torch.float64)
        return torch.cat([head, self.sums.detach().cpu().reshape(-1)])


def no_parts() -> torch.Tensor:
    """:meth:`Tally.parts` of a process that saw no batch of a dataloader."""
    return torch.zeros(HEAD + len(SLOTS) * 3, dtype=torch.float64)


def read_parts(total: torch.Tensor, confidence: float) -> tuple[list[float], dict[str, MeanEstimate]]:
    """The summed counters and the estimate of every slot from :meth:`Tally.parts` added over processes."""
    values = [float(v) for v in total.tolist()]
    head, sums = values[:HEAD], values[HEAD:]
    estimates = {
        name: estimate(sums[3 * i], sums[3 * i + 1], sums[3 * i + 2], confidence) for i, name in enumerate(SLOTS)
    }
    return head, estimates


@dataclass(frozen=True)
class Reading:
    """One dataloader's evaluation, added over the processes: the counters (:data:`READY`,
    :data:`SKIPPED`, :data:`OWN_PASS`, :data:`EXCLUDED`), the estimate of every slot and the
    metric values (none when a process skipped)."""

    head: list[float]
    estimates: dict[str, MeanEstimate]
    metrics: dict[str, float]

    @property
    def skipped(self) -> bool:
        return self.head[SKIPPED] > 0

    @property
    def samples(self) -> int:
        """The samples evaluated (padding left out)."""
        return self.estimates["loss"].count

    @property
    def per_position(self) -> bool:
        """Labels per token or pixel: the loss is the mean over scored positions, as the model's own."""
        return self.estimates["position_loss"].count > 0

    @property
    def loss(self) -> MeanEstimate:
        return self.estimates["position_loss"] if self.per_position else self.estimates["loss"]

    def interval(self, name: str) -> MeanEstimate | None:
        """The estimate of a metric that is a per-sample mean (``None`` for the others)."""
        est = self.estimates.get(name)
        return est if est is not None and est.count > 0 else None

    def values(self) -> dict[str, float]:
        """The figures of the Finding: the loss, every metric and the standard errors and
        half-widths of those that are per-sample means, the number of samples (and positions)."""
        loss = self.loss
        values = {"loss": loss.mean, "loss_stderr": loss.stderr, "loss_halfwidth": loss.half_width,
                  "num_samples": float(self.samples)}
        if self.per_position:
            values["num_positions"] = float(loss.count)
        for name, value in self.metrics.items():
            values[name] = value
            est = self.interval(name)
            if est is not None:
                values[f"{name}_stderr"], values[f"{name}_halfwidth"] = est.stderr, est.half_width
        return values


def read_evaluation(
    total: torch.Tensor, tally: Tally | None, confidence: float, world_size: int, task: str | None,
    names: list[str] | None, objects: Mapping[str, Any] | None,
) -> Reading:
    """The :class:`Reading` of :meth:`Tally.parts` added over the processes (``tally``: this process's
    own, whose torchmetrics metrics are computed, a collective under DDP, when every process built
    them and none skipped)."""
    head, estimates = read_parts(total, confidence)
    if head[SKIPPED] > 0:
        return Reading(head, estimates, {})
    computed: dict[str, float] = {}
    if head[READY] == world_size and tally is not None and tally.metrics is not None:
        computed = {name: float(m.compute()) for name, m in tally.metrics.items()}
    wanted = wanted_names(task, names, None) if task is not None else []
    return Reading(head, estimates, metric_values(wanted, objects, computed, estimates))


@dataclass(frozen=True)
class Gap:
    """One reason an evaluation did not see its set exactly once: a kind and its numbers."""

    kind: str
    numbers: dict[str, Any]


def distributed_gaps(sampler: DistributedSampler[Any], count: int, excluded: int) -> list[Gap]:
    """What a ``DistributedSampler`` leaves out (``drop_last``) or evaluates twice (padding)."""
    n = sized_len(sampler.dataset)
    if n is None:
        return []
    replicas = sampler.num_replicas
    if sampler.drop_last and sampler.total_size < n:
        return [Gap("ddp_drop_last", {"left_out": n - sampler.total_size})]
    if not sampler.drop_last and sampler.total_size > n:
        return [Gap("ddp_padding", {"n": n, "total": sampler.total_size, "replicas": replicas,
                                    "pad": sampler.total_size - n, "excluded": excluded, "count": count})]
    return []


def sampler_gaps(sampler: Any, dataset_len: int) -> list[Gap]:
    """A sampler that does not visit each of ``dataset_len`` indices exactly once."""
    if isinstance(sampler, SequentialSampler):
        return []
    if isinstance(sampler, RandomSampler):
        if sampler.replacement or sampler.num_samples != dataset_len:
            return [Gap("random_sampler", {"replacement": sampler.replacement, "num_samples": sampler.num_samples,
                                           "dataset_len": dataset_len})]
        return []
    length = sized_len(sampler)
    replacement = bool(getattr(sampler, "replacement", False))
    if replacement or (length is not None and length != dataset_len):
        return [Gap("custom_sampler", {"name": type(sampler).__name__, "length": length, "replacement": replacement,
                                       "dataset_len": dataset_len})]
    return []


def coverage_gaps(
    loader: Any, inner_sampler: Any, *, planned: float, limit: float, world_size: int, count: int, excluded: int
) -> list[Gap]:
    """Every setting that kept one evaluation dataloader from covering its set exactly once, in order:
    a batch limit, ``drop_last``, the DistributedSampler, several processes without one, the sampler
    (``inner_sampler``: the user's, inside a DDP wrapper), an IterableDataset of unknown length, and
    a count that differs from the set's length for another reason."""
    gaps: list[Gap] = []
    dataset_len = sized_len(getattr(loader, "dataset", None))
    batches = sized_len(loader)
    if batches is not None and planned < batches:
        gaps.append(Gap("limit", {"limit": limit, "planned": planned, "batches": batches}))
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    batch_size = getattr(batch_sampler, "batch_size", None)
    shard_len = sized_len(sampler)
    if getattr(batch_sampler, "drop_last", False) and batch_size and shard_len and shard_len % batch_size:
        gaps.append(Gap("drop_last", {"dropped": shard_len % batch_size}))
    if isinstance(sampler, DistributedSampler):
        gaps += distributed_gaps(sampler, count, excluded)
    elif world_size > 1 and dataset_len is not None and count > dataset_len:
        gaps.append(Gap("no_distributed_sampler", {"world_size": world_size}))
    if inner_sampler is not None and dataset_len is not None:
        gaps += sampler_gaps(inner_sampler, dataset_len)
    if isinstance(getattr(loader, "dataset", None), IterableDataset) and dataset_len is None:
        gaps.append(Gap("iterable", {"count": count}))
    if not gaps and dataset_len is not None and count != dataset_len:
        gaps.append(Gap("count", {"count": count, "dataset_len": dataset_len}))
    return gaps


def shard_real_positions(sampler: Any) -> int | None:
    """How many leading positions of this process's shard of a padding ``DistributedSampler`` are
    real (``None``: every position, for any other sampler)."""
    if isinstance(sampler, DistributedSampler) and not sampler.drop_last:
        n = sized_len(sampler.dataset)
        if n is not None:
            return unpadded_positions(n, sampler.num_replicas, sampler.rank, sampler.num_samples)
    return None


def metric_values(
    names: list[str], objects: Mapping[str, Any] | None, computed: dict[str, float],
    estimates: dict[str, MeanEstimate],
) -> dict[str, float]:
    """Every metric's value in the order given: torchmetrics' (``computed``) or, for per-sample
    means, the sums' (``estimates``); the user's metric ``objects`` as they computed."""
    if objects is not None:
        return {name: computed[name] for name in objects if name in computed}
    out: dict[str, float] = {}
    for name in names:
        if name in computed:
            out[name] = computed[name]
        elif name in estimates and estimates[name].count > 0:
            out[name] = estimates[name].mean
    return out
