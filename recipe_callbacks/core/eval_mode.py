"""Eval-mode sanity on plain tensors: do two eval passes agree, and how far apart are the
train-mode and eval-mode losses on the same batch?

Nothing here imports Lightning; ``EvalModeCheck`` runs the forward passes and calls these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from recipe_callbacks.core.task import logits_of

GapVerdict = Literal["ok", "eval_worse"]


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |a|`` over the finite entries (0 for identical tensors; NaN in the same
    places counts as equal).

    Example:
        >>> relative_difference(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]))
        0.0
        >>> relative_difference(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0]))
        0.5
    """
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if a64.shape != b64.shape:
        return math.inf
    same_nan = torch.isnan(a64) & torch.isnan(b64)
    diff = torch.where(same_nan, torch.zeros_like(a64), (a64 - b64).abs())
    if bool(torch.isnan(diff).any()):
        return math.inf
    scale = float(a64.nan_to_num(0.0, 0.0, 0.0).abs().max()) if a64.numel() else 0.0
    worst = float(diff.nan_to_num(0.0, math.inf, math.inf).max()) if diff.numel() else 0.0
    if worst == 0.0:
        return 0.0
    return worst / scale if scale > 0 else math.inf


def first_differing(
    first: Sequence[tuple[str, torch.Tensor | None, torch.Tensor]],
    second: Sequence[tuple[str, torch.Tensor | None, torch.Tensor]],
    tolerance: float,
) -> str | None:
    """The module where two passes part: the first (in the order the forward hooks fired, children
    before their parent) whose inputs agree and whose outputs differ, from ``(name,
    input fingerprint, output fingerprint)`` lists; ``None`` when there is none.

    Example:
        >>> same, a, b = torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([2.5])
        >>> one = [("lin", same, same), ("noise", same, a), ("head", a, a)]
        >>> two = [("lin", same, same), ("noise", same, b), ("head", b, b)]
        >>> first_differing(one, two, 1e-6)
        'noise'
    """
    for (name, in_a, out_a), (_, in_b, out_b) in zip(first, second, strict=False):
        inputs_agree = in_a is None or in_b is None or relative_difference(in_a, in_b) <= tolerance
        if inputs_agree and relative_difference(out_a, out_b) > tolerance:
            return name
    return None


@dataclass(frozen=True)
class LossGap:
    """Train-mode and eval-mode loss on the same batch at the same weights."""

    train_loss: float
    eval_loss: float
    verdict: GapVerdict

    @property
    def ratio(self) -> float:
        return self.eval_loss / self.train_loss if self.train_loss > 0 else math.inf


def judge_gap(train_loss: float, eval_loss: float, max_ratio: float, min_gap: float) -> LossGap:
    """``eval_worse`` when the eval-mode loss exceeds ``max_ratio`` times the train-mode loss *and*
    the train-mode loss by more than ``min_gap`` (BatchNorm statistics that do not describe the
    data); a train-mode loss above the eval-mode one is dropout's normal cost.

    Example:
        >>> judge_gap(0.3, 2.1, 2.0, 0.25).verdict, judge_gap(0.5, 0.4, 2.0, 0.25).verdict
        ('eval_worse', 'ok')
    """
    worse = eval_loss > max_ratio * train_loss and eval_loss - train_loss > min_gap
    if not math.isfinite(eval_loss) and math.isfinite(train_loss):
        worse = True
    return LossGap(train_loss, eval_loss, "eval_worse" if worse else "ok")


# ----------------------------------------------------------------------------- BatchNorm statistics
NORMS = nn.modules.batchnorm._BatchNorm
FORGOTTEN = 0.05  # BatchNorm statistics are judged once their init weighs less than this
CUMULATIVE_UPDATES = 30  # updates a cumulative average (momentum=None) is given


def batches_tracked(module: nn.Module) -> int:
    """A BatchNorm layer's update counter (0 when it keeps none).

    Example:
        >>> batches_tracked(nn.BatchNorm1d(2)), batches_tracked(nn.Linear(2, 2))
        (0, 0)
    """
    count = getattr(module, "num_batches_tracked", None)
    return int(count) if isinstance(count, torch.Tensor) else 0


def tracked_counts(model: nn.Module) -> dict[str, int]:
    """The update counter of every BatchNorm layer that keeps one, by name."""
    return {n: batches_tracked(m) for n, m in model.named_modules()
            if isinstance(m, NORMS) and m.num_batches_tracked is not None}


def updates_needed(momentum: float | None) -> int:
    """BatchNorm updates after which the running statistics have forgotten their init (their weight
    below :data:`FORGOTTEN`): 29 at momentum 0.1, :data:`CUMULATIVE_UPDATES` for a cumulative
    average (``None``, or momentum 1 and above); 0 for momentum 0 (they never move).

    Example:
        >>> updates_needed(0.1), updates_needed(None), updates_needed(0.0)
        (29, 30, 0)
    """
    if momentum == 0:
        return 0
    if momentum is None or momentum >= 1:
        return CUMULATIVE_UPDATES
    return math.ceil(math.log(FORGOTTEN) / math.log(1.0 - momentum))


def updates_missing(model: nn.Module, tracked: dict[str, int]) -> int:
    """How many more updates the BatchNorm layer furthest behind needs (see :func:`updates_needed`),
    counting from the counters ``tracked`` at the start."""
    missing = 0
    for name, m in model.named_modules():
        if not isinstance(m, NORMS) or name not in tracked or m.num_batches_tracked is None or m.momentum == 0:
            continue
        missing = max(missing, updates_needed(m.momentum) - (batches_tracked(m) - tracked[name]))
    return missing


@dataclass(frozen=True)
class BatchNormCauses:
    """Why BatchNorm's running statistics may not describe the batches seen in training."""

    layers: list[str]  # every BatchNorm layer
    zero_momentum: list[str]  # momentum=0: the statistics never move from their init
    never_updated: list[str]  # no update while training (the layer was kept in eval mode)


def batchnorm_causes(model: nn.Module, tracked: dict[str, int]) -> BatchNormCauses:
    """The BatchNorm layers of ``model``, those with momentum 0 and those not updated since ``tracked``.

    Example:
        >>> causes = batchnorm_causes(nn.Sequential(nn.BatchNorm1d(2, momentum=0.0)), {"0": 0})
        >>> causes.layers, causes.zero_momentum, causes.never_updated
        (['0'], ['0'], [])
    """
    norms = [(n, m) for n, m in model.named_modules() if isinstance(m, NORMS)]
    zero = [n for n, m in norms if getattr(m, "momentum", None) == 0]
    stale = [n for n, m in norms if n in tracked and batches_tracked(m) == tracked[n]
             and getattr(m, "momentum", None) != 0]
    return BatchNormCauses([n for n, _ in norms], zero, stale)


def fingerprint(output: object) -> torch.Tensor | None:
    """Sum, absolute sum and sum of squares of the logits in ``output`` (``None`` if there are none).

    Example:
        >>> fingerprint(torch.tensor([1.0, -2.0])).tolist()
        [-1.0, 3.0, 5.0]
    """
    t = logits_of(output)
    if t is None:
        return None
    t = t.detach().to(torch.float64)
    return torch.stack([t.sum(), t.abs().sum(), (t * t).sum()])
