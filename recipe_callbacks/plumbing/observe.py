"""Looking at a model without changing it: eval mode, no grad, isolated RNG, and detached copies."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn

from recipe_callbacks.core.module_hooks import remove_hooks_owned_by

if TYPE_CHECKING:
    import lightning.pytorch as pl

M = TypeVar("M", bound=nn.Module)


@contextmanager
def preserved_modes(module: nn.Module) -> Iterator[None]:
    """Put back the train/eval flag of every submodule on exit, whatever happened inside."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextmanager
def observing(module: nn.Module, *, eval_mode: bool = True, grad: bool = False) -> Iterator[None]:
    """Run the body with ``module`` in eval mode, under ``torch.no_grad()`` and an isolated RNG.

    The train/eval flags of every submodule and the python, numpy and torch (and CUDA) RNG states
    are put back on exit, so observing leaves a seeded run bit-identical.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
        >>> with observing(net):
        ...     _ = net(torch.ones(1, 2))
        ...     net.training
        False
        >>> net.training
        True
    """
    with preserved_modes(module), isolate_rng(), torch.set_grad_enabled(grad):
        if eval_mode:
            module.eval()
        yield


# The one place that touches a LightningModule's private attachments. Lightning has no public way
# to ask whether a module is attached without raising (``LightningModule.trainer`` raises when it is
# not) nor to detach its Fabric; a copy or a short run on the real module must not reach either.
def _attachments(module: Any) -> tuple[Any, Any]:
    """The Trainer and the Fabric a LightningModule is attached to (``None`` where it is not)."""
    return getattr(module, "_trainer", None), getattr(module, "_fabric", None)


@contextmanager
def detached_from_trainer(module: nn.Module) -> Iterator[None]:
    """Every LightningModule in ``module`` without its Trainer (and Fabric) for the body, so that
    ``self.log`` and ``self.trainer`` inside a short run reach neither; restored afterwards."""
    import lightning.pytorch as pl

    saved = [(m, *_attachments(m)) for m in module.modules() if isinstance(m, pl.LightningModule)]
    try:
        for m, _, _ in saved:
            m._trainer, m._fabric = None, None
        yield
    finally:
        for m, trainer, fabric in saved:
            m._trainer, m._fabric = trainer, fabric


def detached_copy(pl_module: M) -> M:
    """A deep copy of the model that shares nothing with it and is not attached to the Trainer.

    The copy can be trained (its ``training_step`` called, ``self.log`` inside it is a no-op)
    without touching the real model, its optimizer or the Trainer's logged metrics. Hooks that
    callbacks registered on the real model are not carried over, so an observer never mistakes
    the copy's forward passes for the real model's; the model's own hooks are kept.
    """
    memo: dict[int, Any] = {id(owner): None for owner in _attachments(pl_module) if owner is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin = copy.deepcopy(pl_module, memo)
    remove_hooks_owned_by(twin, (Callback,))
    return twin


def loss_from_step_output(output: Any) -> torch.Tensor | None:
    """The loss in what ``training_step`` returned: a tensor, or a dict with key ``"loss"``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        loss = output.get("loss")
        if isinstance(loss, torch.Tensor):
            return loss
    return None


def training_step_loss(model: pl.LightningModule, batch: Any, batch_idx: int = 0) -> torch.Tensor | None:
    """Call the model's own ``training_step`` (its real loss) and return the loss tensor.

    Meant for detached copies: their ``self.log`` calls warn that no Trainer is attached; those
    warnings are silenced here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        warnings.filterwarnings("ignore", message=".*trainer.*reference.*")
        return loss_from_step_output(model.training_step(batch, batch_idx))
