"""A few training batches read again from the data set, for the checks that judge the model at init.

They come from the training DataLoader's data set through a bounded loader of their own (the
running loader and the global RNG are not touched), moved to the model's device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities.seed import isolate_rng

from recipe_callbacks.core.data_stats import bounded_loader, first_dataloader

if TYPE_CHECKING:
    import lightning.pytorch as pl
    import torch


def sample_batches(trainer: pl.Trainer, device: torch.device, n: int) -> list[Any]:
    """Up to ``n`` training batches read from the data set (not the running loader), on ``device``;
    ``[]`` without a training DataLoader."""
    loader = first_dataloader(trainer.train_dataloader)
    if loader is None:
        return []
    bounded, _ = bounded_loader(loader, n * (loader.batch_size or 1))
    batches: list[Any] = []
    with isolate_rng():
        for batch in bounded:
            batches.append(move_data_to_device(batch, device))
            if len(batches) >= n:
                break
    return batches
