"""Init well (recipe step 2e): the final-layer bias that makes a freshly initialised model predict
the prior, the layer whose output is the logits, and ``fix_bias`` end to end.

:func:`bias_for_prior` is the bias (log class frequencies, log-odds of the positive rate, target
mean); :func:`fix_bias` sets it on a layer and keeps it only when the loss does not get worse;
:class:`LogitsCapture` finds the layer that makes the logits; :func:`init_well` runs the whole
step on a model from a few batches and returns status and numbers (the words are the callback's).
Nothing here imports Lightning.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import nn

from recipe_callbacks.core.init_loss import (
    TargetSummary,
    expected_classification_loss,
    expected_regression_loss,
    short_vector,
)
from recipe_callbacks.core.task import Task, class_first, infer_task, logits_of, per_sample_loss


def bias_for_prior(task: Task, summary: TargetSummary, eps: float = 1e-4) -> torch.Tensor | None:
    """The final-layer bias that makes a zero-weight model predict the prior.

    Softmax: ``log p_c`` (classes never seen get probability ``eps``); BCE: the log-odds
    ``log(p / (1 - p))`` of the positive rate (clamped to ``[eps, 1 - eps]``), a 1-element
    tensor; regression: the target mean per output column. ``None`` when nothing was counted.

    Example:
        >>> s = TargetSummary("binary")
        >>> s.update(torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
        >>> round(float(bias_for_prior("binary", s)[0]), 4) == round(math.log(0.1 / 0.9), 4)
        True
    """
    if task == "regression":
        return summary.mean()
    prior = summary.prior()
    if prior is None:
        return None
    if task == "binary":
        rate = float(prior[1].clamp(eps, 1 - eps))
        return torch.tensor([math.log(rate / (1 - rate))], dtype=torch.float64)
    freq = prior.clamp_min(eps)
    return (freq / freq.sum()).log()


# What fix_bias did: set the bias, put it back (the loss got worse), or could not (no bias on the
# layer, or a bias of another size than the prior).
FixStatus = Literal["set", "reverted", "no_bias", "size_mismatch"]


@dataclass(frozen=True)
class BiasFix:
    """What :func:`fix_bias` did, with the prior's bias, the layer's bias size and the losses."""

    status: FixStatus
    bias: torch.Tensor | None = None
    entries: int = 0
    before: float = math.nan
    after: float = math.nan


def fix_bias(
    layer: nn.Module | None,
    task: Task,
    summary: TargetSummary,
    loss_before: Callable[[], float],
    loss_after: Callable[[], float],
) -> BiasFix:
    """Set ``layer.bias`` to the prior's bias (:func:`bias_for_prior`; a binary log-odds fills every
    entry), keeping it only when the loss does not get worse (``loss_after() <= 1.01 *
    loss_before()``; else, or when ``loss_after`` raises, the old bias is put back).

    Example:
        >>> s = TargetSummary("binary")
        >>> s.update(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        >>> layer = nn.Linear(3, 1)
        >>> fix_bias(layer, "binary", s, lambda: 0.7, lambda: 0.6).status
        'set'
        >>> round(float(layer.bias.detach().sigmoid()), 4)
        0.25
    """
    bias = bias_for_prior(task, summary)
    layer_bias = getattr(layer, "bias", None)
    if bias is None or not isinstance(layer_bias, torch.Tensor):
        return BiasFix("no_bias")
    entries = layer_bias.numel()
    target = bias.expand(entries) if bias.numel() == 1 and entries > 1 and task == "binary" else bias
    if target.numel() != entries:
        return BiasFix("size_mismatch", bias, entries)
    before = loss_before()
    old = layer_bias.detach().clone()
    with torch.no_grad():
        layer_bias.copy_(target.reshape(layer_bias.shape).to(layer_bias))
    try:
        after = loss_after()
    except BaseException:
        with torch.no_grad():
            layer_bias.copy_(old)
        raise
    if not after <= before * 1.01:  # worse (or NaN): this layer's bias does not shift the logits as assumed
        with torch.no_grad():
            layer_bias.copy_(old)
        return BiasFix("reverted", bias, entries, before, after)
    return BiasFix("set", bias, entries, before, after)


# Why fix_bias set no bias: no training batch to count from, a task it cannot tell, a batch
# without targets, a loss it cannot compute, no bias on the final layer, a bias of another size.
NotFixed = Literal["", "no_batches", "no_task", "no_targets", "loss", "no_bias", "size_mismatch"]


@dataclass(frozen=True)
class InitWell:
    """What :func:`init_well` did (``problem``: why it set no bias, ``""`` when ``fix`` says what it
    did) and what from: the task, the classes, the counted targets, the judged ``(logits, target)``
    pairs, the final layer, the prior used instead of the counts, a loss's error."""

    problem: NotFixed
    fix: BiasFix | None = None
    task: Task | None = None
    num_classes: int | None = None
    summary: TargetSummary | None = None
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    layer_name: str | None = None
    prior: torch.Tensor | None = None
    error: str = ""

    def numbers(self) -> dict[str, Any]:
        """What a text about it names: the final layer, the task, a loss's error, the entries of the
        layer's bias and of the prior's bias, that bias (:func:`short_vector`), the losses before and
        after and over how many batches."""
        fix = self.fix or BiasFix("no_bias")
        bias = fix.bias if fix.bias is not None else torch.zeros(0)
        return {"layer": self.layer_name, "task": self.task, "error": self.error, "entries": fix.entries,
                "size": bias.numel(), "bias": short_vector(bias), "before": fix.before, "after": fix.after,
                "batches": len(self.pairs)}


def init_well(
    model: nn.Module, capture: LogitsCapture, batches: list[Any], num_batches: int, task: Task | None,
    num_classes: int | None, *, forward: Callable[[Any], tuple[torch.Tensor, torch.Tensor]],
    count: Callable[[Task, int | None], TargetSummary | None], prior: Callable[[int], torch.Tensor | None],
) -> InitWell:
    """fix_bias (recipe step 2e) on ``model``: the first ``num_batches`` of ``batches`` run
    ``forward`` (hooked by ``capture``, which names the final layer), the task and classes told by
    them unless given, the targets ``count``-ed (a ``prior(size)`` over more samples replaces their
    class counts: only its proportions are used), and :func:`fix_bias` on the final layer, the loss
    before on those pairs and after on a second forward pass of the same batches."""
    if not batches:
        return InitWell("no_batches")
    judged = batches[:num_batches]
    pairs = [forward(batch) for batch in judged]
    logits, target = pairs[0]
    layer_name = capture.final_layer(logits.numel())
    task = task or infer_task(logits, target)
    if task is None:
        return InitWell("no_task", layer_name=layer_name)
    num_classes = num_classes or (int(class_first(logits, target).shape[1]) if task == "multiclass" else None)
    summary = count(task, num_classes)
    if summary is None:
        return InitWell("no_targets", task=task, layer_name=layer_name)
    counted = None if task == "regression" else prior(int((num_classes if task == "multiclass" else 2) or 0))
    if counted is not None:
        summary.counts = counted
    found = InitWell("", None, task, num_classes, summary, pairs, layer_name, counted)
    try:
        fix = fix_bias(named_layer(model, layer_name), task, summary, lambda: mean_loss(pairs, task),
                       lambda: mean_loss([forward(batch) for batch in judged], task))
    except (RuntimeError, ValueError) as err:
        return replace(found, problem="loss", error=str(err))
    return replace(found, problem=fix.status if fix.status in ("no_bias", "size_mismatch") else "", fix=fix)


def fix_values(fix: BiasFix, cost: float, expected: float | None = None, counted: int = 0) -> dict[str, float]:
    """The values of the fix_bias Finding: the losses before and after, for a bias that was kept the
    loss ``expected`` with it and the targets ``counted``, and the cost."""
    values = {"fix_bias/loss_before": fix.before, "fix_bias/loss_after": fix.after}
    if expected is not None:
        values.update({"fix_bias/expected": expected, "fix_bias/counted_samples": float(counted)})
    return {**values, "fix_bias/cost_steps": cost}


# Layers whose output can be the logits.
FINAL_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)


def named_layer(model: nn.Module, name: str | None) -> nn.Module | None:
    """The submodule of ``model`` named ``name`` (as in ``named_modules()``), ``None`` when there is none."""
    return dict(model.named_modules()).get(name) if name else None


def candidate_layers(model: nn.Module, name: str | None = None) -> list[tuple[str, nn.Module]]:
    """The layers whose output can be the logits (the one named ``name`` when given and present).

    Example:
        >>> [n for n, _ in candidate_layers(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)))]
        ['0', '2']
    """
    if name is not None:
        named = dict(model.named_modules())
        return [(name, named[name])] if name in named else []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, FINAL_LAYER_TYPES)]


def final_layer_of(calls: list[tuple[str, int, int]], logits_ptr: int, numel: int) -> str | None:
    """The last layer in ``calls`` (name, output data_ptr, numel; in call order) whose output is the
    logits (the same storage), else the last of the same size; ``None`` when none is.

    Example:
        >>> final_layer_of([("a", 1, 6), ("b", 2, 6), ("c", 3, 4)], 9, 6)
        'b'
    """
    for name, ptr, n in reversed(calls):
        if ptr == logits_ptr and n == numel:
            return name
    for name, _, n in reversed(calls):
        if n == numel:
            return name
    return None


class LogitsCapture:
    """Forward hooks that see a model's logits and which candidate layer made them.

    :meth:`attach` hooks every candidate layer (:func:`candidate_layers`, or the one named
    ``final_layer``) to record its calls, and with ``capture=True`` the model itself to keep the
    logits of its first forward in training mode with gradients (the user's own step; other
    callbacks observe in eval mode without grad). :meth:`final_layer` names the layer whose output
    the logits are.
    """

    def __init__(self, final_layer: str | None = None) -> None:
        self.final_layer_name = final_layer
        self.handles: list[Any] = []
        self.calls: list[tuple[str, int, int]] = []  # (layer name, output data_ptr, numel) in call order
        self.captured: torch.Tensor | None = None
        self.ptr = 0
        self.numel = 0  # the logits' size as the model returned them (before aligned() cut them)
        self.batch: Any = None  # the training batch whose logits the model's hook waits for

    def arm(self, model: nn.Module, batch: Any, owner: object = None) -> None:
        """Wait for the logits of the user's step on ``batch``; once (until :meth:`take`)."""
        if not self.handles and self.captured is None and self.batch is None:
            self.batch = batch
            self.attach(model, capture=True, owner=owner)

    def take(self) -> tuple[torch.Tensor | None, Any]:
        """Unhook, and hand over the logits captured (``None``: none) and the batch they are of."""
        self.detach()
        taken = self.captured, self.batch
        self.captured, self.batch = None, None
        return taken

    def seen(self, logits: torch.Tensor) -> None:
        """Remember the storage and size of the logits the model returned."""
        self.ptr, self.numel = logits.data_ptr(), logits.numel()

    def attach(self, model: nn.Module, *, capture: bool, owner: object = None) -> None:
        """Hook the candidate layers (and with ``capture`` the model). The hooks carry ``owner`` (the
        callback) as their first argument, so that whoever takes away a callback's hooks for a while
        (copy training in place) finds them."""
        if capture:
            self.handles.append(model.register_forward_hook(functools.partial(self._on_model, owner)))
        for name, layer in candidate_layers(model, self.final_layer_name):
            self.handles.append(layer.register_forward_hook(functools.partial(self._on_layer, owner, name)))

    def run(self, model: nn.Module, forward: Callable[[], Any], owner: object = None) -> Any:
        """``forward()`` with the candidate layers hooked, their calls recorded afresh (a pass of the
        check's own: the model itself is not hooked), so that :meth:`final_layer` names its layer."""
        self.calls = []
        self.attach(model, capture=False, owner=owner)
        try:
            return forward()
        finally:
            self.detach()

    def _on_layer(self, owner: object, name: str, module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            self.calls.append((name, output.data_ptr(), output.numel()))

    def _on_model(self, owner: object, module: nn.Module, args: Any, output: Any) -> None:
        # only the user's own training step: other callbacks observe in eval mode without grad
        if self.captured is not None or not (module.training and torch.is_grad_enabled()):
            return
        logits = logits_of(output)
        if logits is not None and logits.is_floating_point():
            self.seen(logits)
            self.captured = logits.detach().clone()

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def final_layer(self, numel: int) -> str | None:
        """The layer whose output the last logits seen are (``numel``: their size when none was seen)."""
        return final_layer_of(self.calls, self.ptr, self.numel or numel)

    def final_bias(self, model: nn.Module, numel: int) -> tuple[str | None, bool]:
        """:meth:`final_layer` of ``model`` and whether that layer has a bias (``False``: none found)."""
        name = self.final_layer(numel)
        return name, isinstance(getattr(named_layer(model, name), "bias", None), torch.Tensor)


def expected_after_fix(
    task: Task, num_classes: int | None, summary: TargetSummary, targets: list[torch.Tensor], tolerance: float
) -> float:
    """The loss expected on the judged ``targets`` once the bias is at ``summary``'s prior (NaN when
    nothing was counted)."""
    judged = TargetSummary.of(task, num_classes, targets)
    if task == "regression":
        exp = expected_regression_loss(summary, judged)
    else:
        size = (num_classes or 2) if task == "multiclass" else 2
        exp = expected_classification_loss(size, summary.prior(), tolerance, judged.counts)
    return exp.value if exp else math.nan


def mean_loss(pairs: list[tuple[torch.Tensor, torch.Tensor]], task: Task) -> float:
    """The mean per-sample loss over ``(logits, target)`` pairs (NaN for none)."""
    losses = [per_sample_loss(lg, tg, task) for lg, tg in pairs]
    return float(torch.cat(losses).mean()) if losses else math.nan
