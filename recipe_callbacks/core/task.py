"""The kind of task a model solves, read from its outputs and targets, and the loss of each sample.

Every check that needs to know whether a model is a multiclass classifier, a binary (or
multi-label) classifier or a regressor asks here, so two checks never disagree about the same
model. The rules, from the output of ``forward`` (logits, or predictions for regression) and the
target of one batch, both with a batch dimension ``N`` first:

1. **multiclass**: integer targets ``(N, ...)`` (not bool) and floating-point logits with a class
   axis of ``C >= 2`` entries: ``(N, C, ...)`` as ``F.cross_entropy`` expects, or ``(N, ..., C)``
   as sequence models return (``(B, T, V)`` logits for ``(B, T)`` tokens). ``(N, C, ...)`` wins
   when both fit. The target values are not checked: out-of-range labels are the loss's business.
2. **binary**: one output per target element (``(N,)``, ``(N, 1)`` or the target's shape; also
   multi-label ``(N, K)``) and targets that are all 0 or 1 (float, integer or bool).
3. **regression**: one output per target element and floating-point targets with other values.
4. nothing (``None``): different batch sizes, no batch dimension, non-float outputs, integer
   targets that are neither class indices for the logits nor 0/1, or a different number of
   outputs and targets per sample. The caller then asks for ``task=``.

Float targets shaped like ``(N, C, ...)`` logits (``C >= 2``) whose values along dim 1 are a
distribution (non-negative, summing to 1: one-hot rows or class probabilities, as
``F.cross_entropy`` takes them) are *multiclass* over the C classes, not C binary labels; the
class index of such a target, where one is counted, is its argmax (:func:`class_indices`). A
regressor whose targets are rows of a distribution must say ``task="regression"``, a multi-label
model whose samples all carry exactly one label ``task="binary"``.

Other float targets that are all 0 or 1 are *binary*, whatever else they could be: BCE with logits
needs float targets, and a batch of an imbalanced binary task may hold zeros only. A regressor
whose targets happen to be 0/1 must say ``task="regression"``.

The per-sample loss is the one the task implies, computed in float64 and averaged over
everything but the batch dimension, so that its mean over samples is the usual batch loss:
cross-entropy (multiclass), BCE with logits (binary), squared error (regression).

Targets equal to :data:`IGNORE_INDEX` (``-100``, PyTorch's and Hugging Face's padding label)
are left out of every loss and count. :func:`aligned` pairs outputs and targets the way the
model's own loss does before any of this: flattened ``(B*T, V)`` logits are put back as
``(B, T, V)``; a model that returns only the last position is scored on the last target; and
causal-LM labels equal to the input ids (Hugging Face's convention, the shift done inside the
model) are shifted by one position, so that position ``t`` is scored on token ``t + 1``.

Nothing here imports Lightning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import torch
from torch.nn import functional as F

Task = Literal["multiclass", "binary", "regression"]
TASKS: tuple[str, ...] = get_args(Task)
# The target of a position that no loss scores (padding): PyTorch's and Hugging Face's ignore_index.
IGNORE_INDEX = -100


def _shapes(output: torch.Tensor, target: torch.Tensor) -> str:
    return f"outputs {tuple(output.shape)} ({output.dtype}) and targets {tuple(target.shape)} ({target.dtype})"


def is_binary_valued(target: torch.Tensor) -> bool:
    """Whether every target is 0 or 1 (``False`` for an empty tensor).

    Example:
        >>> is_binary_valued(torch.tensor([0.0, 1.0, 1.0])), is_binary_valued(torch.tensor([0, 2]))
        (True, False)
    """
    if target.numel() == 0:
        return False
    if target.dtype == torch.bool:
        return True
    return bool(((target == 0) | (target == 1)).all())


def is_distribution(target: torch.Tensor) -> bool:
    """Whether float targets ``(N, C, ...)`` with ``C >= 2`` hold a distribution over dim 1 at every
    position: non-negative values summing to 1 (one-hot rows, or class probabilities).

    Example:
        >>> is_distribution(torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]]))
        True
        >>> is_distribution(torch.tensor([[1.0, 1.0], [0.0, 1.0]])), is_distribution(torch.tensor([0.0, 1.0]))
        (False, False)
    """
    if not target.is_floating_point() or target.ndim < 2 or target.shape[1] < 2 or target.numel() == 0:
        return False
    t = target.detach()
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        return False
    return bool(((t.to(torch.float64).sum(dim=1) - 1.0).abs() <= 1e-3).all())


def class_indices(target: torch.Tensor) -> torch.Tensor:
    """The class index of every position: the argmax over dim 1 of one-hot or probability targets
    (:func:`is_distribution`), the targets themselves otherwise.

    Example:
        >>> class_indices(torch.tensor([[0.0, 1.0, 0.0], [0.7, 0.2, 0.1]])).tolist()
        [1, 0]
        >>> class_indices(torch.tensor([2, 0])).tolist()
        [2, 0]
    """
    return target.argmax(dim=1) if is_distribution(target) else target


def class_axis(output: torch.Tensor, target: torch.Tensor) -> int | None:
    """Where the classes are in multiclass logits for these targets: ``1`` for ``(N, C, ...)``
    (PyTorch's layout), ``-1`` for ``(N, ..., C)`` (sequence models: ``(B, T, V)`` logits for
    ``(B, T)`` targets), ``None`` when neither fits with ``C >= 2``. ``1`` wins when both do.

    Only shapes are compared; the target's dtype is :func:`infer_task`'s business.

    Example:
        >>> class_axis(torch.zeros(2, 5, 3), torch.zeros(2, 3, dtype=torch.long))
        1
        >>> class_axis(torch.zeros(2, 3, 65), torch.zeros(2, 3, dtype=torch.long))
        -1
        >>> class_axis(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)) is None
        True
    """
    if output.ndim != target.ndim + 1 or output.ndim < 2 or output.shape[0] != target.shape[0]:
        return None
    if output.shape[1] >= 2 and output.shape[2:] == target.shape[1:]:
        return 1
    if output.shape[-1] >= 2 and output.shape[:-1] == target.shape:
        return -1
    return None


def class_first(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multiclass logits in PyTorch's ``(N, C, ...)`` layout: a last class axis moves to dim 1;
    anything else is returned as it is (so calling it twice is harmless).

    Example:
        >>> class_first(torch.zeros(2, 3, 65), torch.zeros(2, 3, dtype=torch.long)).shape
        torch.Size([2, 65, 3])
    """
    return output.movedim(-1, 1) if class_axis(output, target) == -1 else output


def _misfit(output: torch.Tensor, target: torch.Tensor) -> str | None:
    """Why no task fits (``None`` when one does); the reason is part of every error message."""
    if output.ndim == 0 or target.ndim == 0:
        return "one of them has no batch dimension"
    if output.shape[0] != target.shape[0]:
        return "their batch sizes differ"
    if not output.is_floating_point():
        return "the outputs are not floating point (logits or predictions expected)"
    integral = not target.is_floating_point() and target.dtype != torch.bool
    if integral and class_axis(output, target) is not None:
        return None
    per_output, per_target = output[0].numel(), target[0].numel()
    if per_output != per_target:
        sizes = f"they differ in size per sample ({per_output} outputs, {per_target} targets)"
        return f"{sizes}, and the outputs are no (N, C, ...) or (N, ..., C) class logits" if integral else sizes
    if integral and not is_binary_valued(target[target != IGNORE_INDEX]):
        return "integer targets with one output each must be 0 or 1 (binary)"
    return None


def infer_task(output: torch.Tensor, target: torch.Tensor) -> Task | None:
    """Which task fits ``output`` (logits, or predictions) and ``target``, from shapes, dtypes and
    whether the targets are 0/1 (the rules are in the module docstring); ``None`` when none does.

    Example:
        >>> infer_task(torch.zeros(4, 10), torch.tensor([1, 2, 3, 0]))
        'multiclass'
        >>> infer_task(torch.zeros(2, 7, 65), torch.zeros(2, 7, dtype=torch.long))  # (B, T, V) logits
        'multiclass'
        >>> infer_task(torch.zeros(4, 1), torch.tensor([0.0, 1.0, 0.0, 0.0]))
        'binary'
        >>> infer_task(torch.zeros(4, 1), torch.tensor([0.5, 1.7, 0.2, 3.0]))
        'regression'
        >>> infer_task(torch.zeros(2, 3), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))  # one-hot
        'multiclass'
        >>> infer_task(torch.zeros(4, 3), torch.zeros(5)) is None
        True
    """
    if _misfit(output, target) is not None:
        return None
    integral = not target.is_floating_point() and target.dtype != torch.bool
    if integral and class_axis(output, target) is not None:
        return "multiclass"
    if output.shape == target.shape and is_distribution(target):  # one-hot rows or class probabilities
        return "multiclass"
    if is_binary_valued(target):
        return "binary"
    return "regression"


def require_task(output: torch.Tensor, target: torch.Tensor) -> Task:
    """:func:`infer_task` for callers that cannot go on without a task.

    Raises:
        ValueError: naming both shapes and dtypes and why no task fits.

    Example:
        >>> require_task(torch.zeros(4, 3), torch.tensor([0, 2, 1, 1]))
        'multiclass'
        >>> require_task(torch.zeros(4, 3), torch.zeros(5))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: cannot tell the task: ... do not fit any task: their batch sizes differ; give task= explicitly
    """
    task = infer_task(output, target)
    if task is None:
        raise ValueError(
            f"cannot tell the task: {_shapes(output, target)} do not fit any task: {_misfit(output, target)}; "
            "give task= explicitly"
        )
    return task


def paired_rows(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and targets with one output per target element as float64 rows ``(N, D)`` each,
    detached (``(N, 1)`` outputs for ``(N,)`` targets and the like are fine; nothing broadcasts).

    Raises:
        ValueError: when the batch sizes or the sizes per sample differ.

    Example:
        >>> out, t = paired_rows(torch.zeros(3, 1), torch.tensor([1, 0, 1]))
        >>> out.shape, t.dtype
        (torch.Size([3, 1]), torch.float64)
    """
    if output.ndim == 0 or target.ndim == 0 or output.shape[0] != target.shape[0] or output.numel() != target.numel():
        raise ValueError(
            f"outputs {tuple(output.shape)} do not pair with targets {tuple(target.shape)}: one output per target "
            "element is needed (an output shaped like the target)"
        )
    n = output.shape[0]
    out = output.detach().to(torch.float64).reshape(n, -1)
    return out, target.detach().to(torch.float64).reshape(n, -1)


def per_sample_loss(output: torch.Tensor, target: torch.Tensor, task: Task) -> torch.Tensor:
    """The loss of each sample, ``(N,)`` float64, averaged over everything but the batch dimension
    (so that the mean over samples is the usual batch loss), without gradients:

    - ``multiclass``: cross-entropy of logits ``(N, C, ...)`` or ``(N, ..., C)`` and class indices
      ``(N, ...)``, or of logits ``(N, C, ...)`` and class probabilities of the same shape;
    - ``binary``: BCE with logits, one logit per target element;
    - ``regression``: squared error, one prediction per target element.

    Raises:
        ValueError: when the shapes do not fit the task (nothing is broadcast).

    Example:
        >>> per_sample_loss(torch.zeros(2, 4), torch.tensor([0, 3]), "multiclass").tolist()  # log 4
        [1.3862943611198906, 1.3862943611198906]
        >>> per_sample_loss(torch.zeros(2, 1), torch.tensor([1.0, 0.0]), "binary").tolist()  # log 2
        [0.6931471805599453, 0.6931471805599453]
        >>> per_sample_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]), "regression").tolist()
        [2.5]
    """
    n = output.shape[0] if output.ndim else 0
    if task == "multiclass":
        logits = output.detach().to(torch.float64)
        if target.is_floating_point() and target.shape == output.shape:  # class probabilities
            losses = F.cross_entropy(logits, target.detach().to(torch.float64), reduction="none")
        elif class_axis(output, target) is None:
            raise ValueError(
                f"the multiclass loss needs logits (N, C, ...) or (N, ..., C) with C >= 2 for class indices "
                f"(N, ...): got {_shapes(output, target)}"
            )
        else:
            t = target.detach().long()
            losses = F.cross_entropy(class_first(logits, target), t, reduction="none", ignore_index=IGNORE_INDEX)
            scored = (t != IGNORE_INDEX).reshape(n, -1).sum(dim=1)
            # the mean over the scored positions of each sample; a sample with none scores 0
            return losses.reshape(n, -1).sum(dim=1) / scored.clamp_min(1)
        return losses.reshape(n, -1).mean(dim=1)
    out, t = paired_rows(output, target)
    if task == "binary":
        return F.binary_cross_entropy_with_logits(out, t, reduction="none").mean(dim=1)
    if task == "regression":
        return ((out - t) ** 2).mean(dim=1)
    raise ValueError(f"per_sample_loss(task={task!r}): task must be one of {TASKS}")


# Dict keys under which a ``forward`` that returns a dict is understood to put its logits.
OUTPUT_KEYS: tuple[str, ...] = (
    "logits", "logit", "preds", "pred", "prediction", "predictions", "output", "out", "y_hat",
)


def logits_of(output: object) -> torch.Tensor | None:
    """The logits (or predictions) in what a ``forward`` returned: a tensor, the first item of a
    tuple/list, or the first of :data:`OUTPUT_KEYS` in a dict; ``None`` for anything else.

    Example:
        >>> logits_of((torch.zeros(2, 3), "aux")).shape
        torch.Size([2, 3])
        >>> logits_of({"preds": torch.zeros(1), "hidden": torch.ones(1)}).tolist()
        [0.0]
        >>> logits_of({"features": torch.zeros(1)}) is None
        True
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, Mapping):  # also Hugging Face's ModelOutput (an OrderedDict): its .logits
        for key in OUTPUT_KEYS:
            value = output.get(key)
            if isinstance(value, torch.Tensor):
                return value
        return None
    value = getattr(output, "logits", None)
    return value if isinstance(value, torch.Tensor) else None


def per_position_losses(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of every scored position (target not :data:`IGNORE_INDEX`), flattened, float64:
    their mean is a per-position model's own loss (a mean over tokens or pixels).

    Example:
        >>> per_position_losses(torch.zeros(1, 3, 2), torch.tensor([[1, 0, -100]])).tolist()  # log 2, twice
        [0.6931471805599453, 0.6931471805599453]
    """
    logits = class_first(output.detach().to(torch.float64), target)
    t = target.detach().long()
    losses = F.cross_entropy(logits, t, reduction="none", ignore_index=IGNORE_INDEX)
    return losses[t != IGNORE_INDEX]


def scored_positions(target: torch.Tensor) -> torch.Tensor:
    """How many positions of each sample a loss scores (targets not :data:`IGNORE_INDEX`), ``(N,)`` float64.

    Example:
        >>> scored_positions(torch.tensor([[3, 1, -100], [2, -100, -100]])).tolist()
        [2.0, 1.0]
    """
    n = target.shape[0] if target.ndim else 1
    if target.is_floating_point() or target.dtype == torch.bool:
        return torch.full((n,), float(target[0].numel() if target.ndim else 1), dtype=torch.float64,
                          device=target.device)
    return (target != IGNORE_INDEX).reshape(n, -1).sum(dim=1).to(torch.float64)


def _carries(inp: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether the integer input equals the target wherever the target is scored (labels == input_ids)."""
    if inp.shape != target.shape or inp.is_floating_point() or target.is_floating_point():
        return False
    keep = target != IGNORE_INDEX
    return bool(keep.any()) and torch.equal(inp[keep], target[keep])


def aligned(
    output: torch.Tensor, target: torch.Tensor, inputs: Sequence[torch.Tensor] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and integer targets paired the way the model's own loss pairs them (anything else unchanged):

    - flattened ``(B*T, V)`` logits for ``(B, T)`` targets become ``(B, T, V)``;
    - last-position logits ``(B, 1, V)`` or ``(B, V)`` for ``(B, T)`` targets are paired with ``target[:, -1]``
      (a forward that returns only the last position, as nanoGPT's does without targets);
    - ``(B, T, V)`` logits for targets equal to one of the integer ``inputs`` (causal-LM labels, the
      shift done inside the model): ``output[:, :-1]`` against ``target[:, 1:]``.

    Example:
        >>> ids = torch.tensor([[1, 2, 3], [4, 5, -100]])
        >>> out, t = aligned(torch.zeros(2, 3, 7), ids, [ids.clamp_min(0)])
        >>> tuple(out.shape), t.tolist()
        ((2, 2, 7), [[2, 3], [5, -100]])
        >>> tuple(aligned(torch.zeros(6, 7), ids.clamp_min(0))[0].shape)
        (2, 3, 7)
        >>> aligned(torch.zeros(2, 1, 7), ids)[1].tolist()
        [3, -100]
    """
    integral = not target.is_floating_point() and target.dtype != torch.bool
    if not integral or not output.is_floating_point() or target.ndim < 2 or output.ndim < 2:
        return output, target
    b = target.shape[0]
    if output.ndim == 2 and output.shape[0] == target.numel() and output.shape[0] != b:
        output = output.reshape(*target.shape, output.shape[-1])
    if target.ndim == 2 and target.shape[1] > 1 and output.shape[0] == b:
        if output.ndim == 3 and output.shape[1] == 1:
            return output[:, 0], target[:, -1]
        if output.ndim == 2 and output.shape[1] >= 2 and class_axis(output, target) is None:
            return output, target[:, -1]
    if class_axis(output, target) == -1 and target.shape[1] > 1 and any(_carries(i, target) for i in inputs):
        return output[:, :-1], target[:, 1:]
    return output, target
