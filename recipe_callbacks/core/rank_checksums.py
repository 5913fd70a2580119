"""Cheap, exact checksums of tensors that processes can compare: are the ranks of a DDP run in step?

A checksum is the sum of a tensor's bit patterns read as integers (int64 arithmetic, which is
associative, so the order of the reduction does not matter and the result is bit-exact on any
device). Two ranks with bit-identical parameters give identical checksums; a drift of one bit in
one element changes it. It runs on the tensor's own device: one reduction kernel per tensor, no
copy to the host until the few numbers are gathered.

Nothing here imports Lightning.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
# A checksum no tensor gives: what a rank contributes when it could not compute its own.
MISSING = -(2**62)


def tensor_checksum(tensor: torch.Tensor) -> torch.Tensor:
    """A 0-d int64 tensor on ``tensor``'s device: the sum of its elements' bit patterns.

    Example:
        >>> a = torch.tensor([1.0, 2.0])
        >>> bool(tensor_checksum(a) == tensor_checksum(a.clone()))
        True
        >>> bool(tensor_checksum(a) == tensor_checksum(torch.nextafter(a, torch.tensor(3.0))))
        False
    """
    flat = tensor.detach().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    if flat.is_floating_point():
        flat = flat.contiguous().view(_INT_OF_SIZE[flat.element_size()])
    return flat.to(torch.int64).sum()


def checksums(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """``(P,)`` int64 checksums of the tensors, in the order given, on the first tensor's device."""
    values = [tensor_checksum(t) for t in tensors]
    return torch.stack(values) if values else torch.zeros(0, dtype=torch.int64)


def differing_columns(gathered: torch.Tensor) -> list[int]:
    """Columns of a ``(world_size, P)`` gathered table where the ranks do not all agree.

    Example:
        >>> differing_columns(torch.tensor([[1, 2, 3], [1, 5, 3]]))
        [1]
    """
    if gathered.ndim != 2 or gathered.shape[0] < 2:
        return []
    return (gathered != gathered[:1]).any(dim=0).nonzero().flatten().tolist()


def ranks_unlike_first(gathered: torch.Tensor, column: int) -> list[int]:
    """The ranks whose value in ``column`` differs from rank 0's.

    Example:
        >>> ranks_unlike_first(torch.tensor([[1, 2], [1, 5], [1, 2]]), 1)
        [1]
    """
    return (gathered[:, column] != gathered[0, column]).nonzero().flatten().tolist()


def equal_groups(values: list[int]) -> list[list[int]]:
    """Groups of ranks (two or more) that hold the same value.

    Example:
        >>> equal_groups([7, 3, 7, 9])
        [[0, 2]]
    """
    groups: dict[int, list[int]] = {}
    for rank, value in enumerate(values):
        groups.setdefault(value, []).append(rank)
    return [ranks for ranks in groups.values() if len(ranks) > 1]
