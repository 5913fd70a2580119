"""Training a detached copy of the user's model: what ``InputIndependentBaseline`` and
``OverfitOneBatch`` share.

The copy is the model at the start of fit, not attached to the Trainer, trained with the user's own
optimizer settings and ``training_step``. Anything that keeps it from training is a
:class:`CopyTrainingSkip` carrying the reason and the argument that would fix it, so the calling
check reports a ``skip`` instead of crashing the user's run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from recipe_callbacks.core.short_training import (
    ShortRun,
    ShortTrainingError,
    make_batchnorm_local,
    train_for,
    user_optimizer,
)
from recipe_callbacks.observe import detached_copy, training_step_loss

if TYPE_CHECKING:
    import lightning.pytorch as pl


class CopyTrainingSkip(Exception):
    """A copy of the model could not be built or trained; ``argument`` names what to set."""

    def __init__(self, reason: str, argument: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.argument = argument


def trainable_copy(
    trainer: pl.Trainer, pl_module: pl.LightningModule, lr: float | None
) -> tuple[pl.LightningModule, torch.optim.Optimizer]:
    """A detached copy of the model and a fresh optimizer for it with the user's settings.

    Raises:
        CopyTrainingSkip: when the user's optimizer cannot be rebuilt for the copy (set ``lr``).
    """
    copy = detached_copy(pl_module)  # keeps the train/eval mode of every submodule
    make_batchnorm_local(copy)  # a copy trains alone: no all_reduce with other ranks
    try:
        optimizer = user_optimizer(copy, pl_module, trainer.optimizers, lr)
    except ShortTrainingError as err:
        raise CopyTrainingSkip(f"cannot build the optimizer for a copy of the model: {err}", "lr") from err
    return copy, optimizer


def _loss(model: torch.nn.Module, batch: Any) -> torch.Tensor | None:
    return training_step_loss(model, batch)  # type: ignore[arg-type]


def train_copy(
    copy: pl.LightningModule,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Any],
    steps: int,
    *,
    seed: int,
    stop_below: float | None = None,
) -> ShortRun:
    """Train the copy with its own ``training_step`` for up to ``steps`` steps (see ``train_for``).

    Raises:
        CopyTrainingSkip: when there is no loss to train on, or the user's ``training_step`` raised
            on a copy that has no Trainer.
    """
    try:
        return train_for(copy, _loss, optimizer, batches, steps, stop_below=stop_below, seed=seed)
    except ShortTrainingError as err:
        raise CopyTrainingSkip(f"cannot train a copy of the model: {err}") from err
    except Exception as err:  # the user's training_step on a copy without a Trainer
        raise CopyTrainingSkip(f"the training_step of a copy raised {type(err).__name__}: {err}") from err
