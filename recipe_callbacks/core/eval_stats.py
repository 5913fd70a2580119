"""Exact means over a whole evaluation set, their standard errors, and how many digits are real.

Everything here is plain PyTorch: per-sample losses (by name; the task's losses are
:mod:`recipe_callbacks.core.task`'s) and metrics, float64 sums that can be added
across batches and processes (count, sum, sum of squares per quantity), the mean with its standard
error and confidence interval, the figure rounded to the digits its interval supports, and which
positions of a ``DistributedSampler`` shard are padding.

Why sums: the mean over samples is ``sum / count`` only if the sums run over samples, not over
batch means (a short last batch weighs as much as a full one in a mean of batch means), and sums
of different processes can be added exactly, while means of different processes cannot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal, get_args

import torch

from recipe_callbacks.core.task import IGNORE_INDEX, Task, class_first, class_indices, paired_rows
from recipe_callbacks.core.task import per_sample_loss as task_loss

LossName = Literal["cross_entropy", "bce_with_logits", "mse", "l1"]
LOSSES: tuple[str, ...] = get_args(LossName)
DEFAULT_LOSS: dict[str, LossName] = {"multiclass": "cross_entropy", "binary": "bce_with_logits", "regression": "mse"}
# The task whose loss each loss name is (l1 is no task's default).
LOSS_TASK: dict[str, Task] = {"cross_entropy": "multiclass", "bce_with_logits": "binary", "mse": "regression"}
# Metrics that are means of a per-sample quantity: their standard error is known from the sums.
PER_SAMPLE_METRICS: dict[str, tuple[str, ...]] = {
    "accuracy": ("multiclass", "binary"),
    "mae": ("regression",),
    "mse": ("regression",),
}


# ----------------------------------------------------------------------------- losses and metrics
def per_sample_loss(preds: torch.Tensor, target: torch.Tensor, loss: LossName) -> torch.Tensor:
    """The loss of every sample by its name, ``(N,)`` float64, averaged over any non-batch dimensions.

    ``cross_entropy``, ``bce_with_logits`` and ``mse`` are the losses of the ``multiclass``,
    ``binary`` and ``regression`` tasks, computed by :func:`recipe_callbacks.core.task.per_sample_loss`
    (class indices or class probabilities for cross-entropy; one output per target element for the
    others, nothing broadcast); ``l1`` is the absolute error, one output per target element.

    Raises:
        ValueError: for shapes that do not fit the loss, or an unknown loss name.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
        >>> per_sample_loss(logits, torch.tensor([0, 0, 1]), "cross_entropy").round(decimals=4).tolist()
        [0.1269, 2.1269, 0.6931]
    """
    if loss == "l1":
        out, t = paired_rows(preds, target)
        return (out - t).abs().mean(dim=1)
    if loss not in LOSS_TASK:
        raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
    return task_loss(preds, target, LOSS_TASK[loss])


def per_sample_metric(name: str, task: str, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """The per-sample value, ``(N,)`` float64, of a metric that is a mean over samples, or ``None``.

    ``accuracy`` (top-1 for multiclass, logits ``(N, C, ...)`` or ``(N, ..., C)``; logit > 0 for
    binary), ``mae`` and ``mse`` (regression), each averaged over any non-batch dimensions.
    Metrics such as F1 or AUROC are not means of per-sample values: ``None``.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
        >>> per_sample_metric("accuracy", "multiclass", logits, torch.tensor([0, 0, 0])).tolist()
        [1.0, 0.0, 1.0]
        >>> per_sample_metric("f1", "multiclass", logits, torch.tensor([0, 0, 0])) is None
        True
    """
    if task not in PER_SAMPLE_METRICS.get(name, ()):
        return None
    if name == "accuracy" and task == "multiclass":
        target = class_indices(target)  # one-hot / probability targets: their argmax class
        hits = (class_first(preds, target).argmax(dim=1) == target).reshape(target.shape[0], -1)  # (N, P)
        scored = (target != IGNORE_INDEX).reshape(target.shape[0], -1)  # padding (-100) is no position
        return (hits & scored).sum(dim=1).to(torch.float64) / scored.sum(dim=1).clamp_min(1)
    out, t = paired_rows(preds, target)  # (N, D) each
    if name == "accuracy":
        return ((out > 0) == (t > 0.5)).to(torch.float64).mean(dim=1)
    error = out - t
    return (error.abs() if name == "mae" else error**2).mean(dim=1)


# ----------------------------------------------------------------------------- sums
def sample_sums(values: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """``[count, sum, sum of squares]`` (float64) of the per-sample ``values`` where ``keep`` is true.

    Example:
        >>> sample_sums(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, True, False])).tolist()
        [2.0, 3.0, 5.0]
    """
    # Everything stays on the values' device with shapes known in advance: no boolean indexing
    # and no host scalar copied in, so that the validation loop never waits for the device.
    v = values.detach().to(torch.float64).reshape(-1)
    if keep is None:
        count = torch.full((), float(v.numel()), dtype=torch.float64, device=v.device)
    else:
        mask = keep.reshape(-1).to(v.device, non_blocking=True)
        count = mask.sum(dtype=torch.float64)
        v = torch.where(mask, v, 0.0)
    return torch.stack([count, v.sum(), (v * v).sum()])


@dataclass(frozen=True)
class MeanEstimate:
    """A mean over samples with its standard error and a symmetric confidence interval.

    ``stderr`` and ``half_width`` are NaN with fewer than two samples.
    """

    mean: float
    stderr: float
    half_width: float
    count: int
    confidence: float = 0.95

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def text(self) -> str:
        """The mean rounded to the digits its interval supports, e.g. ``0.412 ± 0.006, n = 1,797``."""
        return format_estimate(self.mean, self.half_width, self.count)


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of a confidence level: 1.96 for 0.95.

    Example:
        >>> round(z_value(0.95), 3)
        1.96
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def estimate(count: float, total: float, total_sq: float, confidence: float = 0.95) -> MeanEstimate:
    """Mean, standard error and confidence half-width from ``[count, sum, sum of squares]``.

    The standard error is ``s / sqrt(n)`` with the sample standard deviation ``s`` (``n - 1`` in
    the denominator); the interval is ``mean ± z * stderr`` (normal approximation).

    Example:
        >>> e = estimate(4, 10.0, 30.0)  # the values 1, 2, 3, 4
        >>> e.mean, round(e.stderr, 6)
        (2.5, 0.645497)
    """
    n = round(count)
    if n <= 0:
        return MeanEstimate(math.nan, math.nan, math.nan, 0, confidence)
    mean = total / n
    if n < 2 or not math.isfinite(mean):
        return MeanEstimate(mean, math.nan, math.nan, n, confidence)
    variance = max(total_sq - total * total / n, 0.0) / (n - 1)
    stderr = math.sqrt(variance / n)
    return MeanEstimate(mean, stderr, z_value(confidence) * stderr, n, confidence)


# ----------------------------------------------------------------------------- significant digits
def interval_decimals(half_width: float) -> int:
    """Decimals to show for an interval of this half-width: one significant digit of it, two when
    that digit would be a 1 (0.014, not 0.01). Negative for half-widths of 10 and more.

    Example:
        >>> interval_decimals(0.0063), interval_decimals(0.014), interval_decimals(37.0)
        (3, 3, -1)
    """
    if not (math.isfinite(half_width) and half_width > 0):
        raise ValueError(f"half_width must be a positive finite number, got {half_width!r}")
    exponent = math.floor(math.log10(half_width))
    leading = half_width / 10.0**exponent  # in [1, 10)
    return -exponent + (1 if leading < 2.0 else 0)


def _fixed(value: float, decimals: int) -> str:
    if decimals > 0:
        return f"{value:.{decimals}f}"
    return f"{round(value, decimals):.0f}"


def round_to_interval(value: float, half_width: float) -> str:
    """``value ± half_width`` with the digits the interval supports.

    Example:
        >>> round_to_interval(0.41237, 0.0063)
        '0.412 ± 0.006'
        >>> round_to_interval(1234.5, 37.0)
        '1230 ± 40'
        >>> round_to_interval(0.5, 0.0)
        '0.5 ± 0'
    """
    if not math.isfinite(value):
        return f"{value}"
    if half_width == 0.0:
        return f"{value:.6g} ± 0"
    if not math.isfinite(half_width):
        return f"{value:.4g}"
    decimals = interval_decimals(half_width)
    return f"{_fixed(value, decimals)} ± {_fixed(half_width, decimals)}"


def format_estimate(value: float, half_width: float, count: int) -> str:
    """The figure a report shows: ``0.412 ± 0.006, n = 1,797``.

    Example:
        >>> format_estimate(0.41237, 0.0063, 1797)
        '0.412 ± 0.006, n = 1,797'
        >>> format_estimate(0.41237, math.nan, 1)
        '0.4124 (no interval), n = 1'
    """
    if math.isfinite(value) and not math.isfinite(half_width):
        return f"{value:.4g} (no interval), n = {count:,}"
    return f"{round_to_interval(value, half_width)}, n = {count:,}"


# ----------------------------------------------------------------------------- DDP padding
def unpadded_positions(dataset_len: int, num_replicas: int, rank: int, num_samples: int) -> int:
    """How many leading positions of one rank's shard of a padding ``DistributedSampler`` are real.

    ``DistributedSampler(drop_last=False)`` pads its index list (of length ``dataset_len``) to a
    multiple of ``num_replicas`` by repeating indices at the end, then gives rank ``r`` the
    positions ``r, r + R, r + 2R, ...``. Position ``j`` of rank ``r`` is global position
    ``r + j * R``: real when it is below ``dataset_len``, so the real positions of a shard are a
    prefix and the padded ones follow.

    Example:
        >>> [unpadded_positions(5, 2, r, 3) for r in range(2)]  # 5 samples over 2 ranks: 3 + 3 positions
        [3, 2]
        >>> [unpadded_positions(2, 4, r, 1) for r in range(4)]
        [1, 1, 0, 0]
    """
    if dataset_len <= rank:
        return 0
    return min(num_samples, math.ceil((dataset_len - rank) / num_replicas))


def real_rows(start: int, batch_size: int, real_positions: int | None) -> int:
    """How many leading rows of a batch starting at shard position ``start`` are real (not padding).

    Padding positions of a shard come last, so the real rows of a batch are a prefix: slicing
    ``[:rows]`` leaves the padding out without a mask (and without a device sync).

    Example:
        >>> real_rows(16, 4, 18), real_rows(20, 2, 18), real_rows(0, 4, None)
        (2, 0, 4)
    """
    if real_positions is None:
        return batch_size
    return max(0, min(batch_size, real_positions - start))
