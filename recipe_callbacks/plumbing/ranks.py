"""Sums over the processes of a distributed run, in one all-reduce.

Checks that count or sum something per process (losses, class counts, norms) reduce it here so
that every rank reaches the same verdict; on one process nothing is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import lightning.pytorch as pl


def sum_over_ranks(trainer: pl.Trainer, parts: Sequence[torch.Tensor | float]) -> list[torch.Tensor]:
    """Every part summed over the processes, as float64 tensors on the CPU in the parts' shapes.

    All parts travel in one float64 vector on the strategy's device (one collective call and one
    copy back, whatever their number); every rank must call this with parts of the same shapes in
    the same order. On one process the parts come back as they are, as float64 on the CPU.

    Example:
        >>> class OneProcess:
        ...     world_size = 1
        >>> [t.tolist() for t in sum_over_ranks(OneProcess(), [torch.tensor([1, 2]), 3.0])]
        [[1.0, 2.0], 3.0]
    """
    tensors = [torch.as_tensor(p).detach().to("cpu", torch.float64) for p in parts]
    if trainer.world_size <= 1 or not tensors:
        return tensors
    shapes = [t.shape for t in tensors]
    flat = torch.cat([t.reshape(-1) for t in tensors]).to(trainer.strategy.root_device)
    flat = trainer.strategy.reduce(flat, reduce_op="sum").cpu()
    chunks = torch.split(flat, [t.numel() for t in tensors])
    return [chunk.reshape(shape) for chunk, shape in zip(chunks, shapes, strict=True)]
