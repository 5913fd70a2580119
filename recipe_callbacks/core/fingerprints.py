"""Short, stable fingerprints of tensors and batches, and a 24-bit number that TensorBoard can plot.

A fingerprint is the first 16 hex digits of a SHA-256 over the raw bytes of every tensor, in a
fixed order, together with each tensor's name, dtype and shape. Two runs that show the same
fingerprint saw bit-identical tensors; one changed bit anywhere changes it. The bytes are read on
the CPU, so a fingerprint does not depend on the device the tensors live on.

Nothing here imports Lightning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch

FINGERPRINT_DIGITS = 16
# 24 bits: every integer below 2**24 is exact in a float32, the precision of a TensorBoard scalar.
SCALAR_BITS = 24


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of ``tensor`` in row-major order, read on the CPU (any dtype, any layout).

    Example:
        >>> tensor_bytes(torch.tensor([1, 2], dtype=torch.uint8))
        b'\\x01\\x02'
    """
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    # A uint8 view works for every real dtype, including bfloat16 that numpy cannot hold.
    return bytes(flat.view(torch.uint8).numpy().tobytes())


def _update(digest: Any, name: str, tensor: torch.Tensor) -> None:
    header = f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{tuple(tensor.shape)}|"
    digest.update(header.encode("utf-8"))
    digest.update(tensor_bytes(tensor))


def fingerprint_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """Fingerprint of named tensors, taken in the order given (e.g. ``module.state_dict().items()``).

    Example:
        >>> a = fingerprint_tensors([("w", torch.zeros(2))])
        >>> len(a), a == fingerprint_tensors([("w", torch.zeros(2))])
        (16, True)
        >>> a == fingerprint_tensors([("w", torch.zeros(2, dtype=torch.float64))])
        False
    """
    digest = hashlib.sha256()
    for name, tensor in named:
        _update(digest, str(name), tensor)
    return digest.hexdigest()[:FINGERPRINT_DIGITS]


def batch_leaves(batch: Any, prefix: str = "batch") -> list[tuple[str, Any]]:
    """The tensors and plain values of a nested batch, each with its path, in a fixed order.

    Tuples and lists are walked in order, mappings in their own key order (a dict's insertion
    order, which a collate function makes the same in every run). Objects other than tensors,
    strings, numbers, booleans and ``None`` are left out: their ``repr`` may hold a memory address.

    Example:
        >>> [p for p, _ in batch_leaves({"x": torch.ones(1), "meta": ["a.png", 3]})]
        ['batch.x', 'batch.meta.0', 'batch.meta.1']
    """
    if isinstance(batch, torch.Tensor):
        return [(prefix, batch)]
    if isinstance(batch, (str, int, float, bool)) or batch is None:
        return [(prefix, batch)]
    if isinstance(batch, Mapping):
        return [leaf for k, v in batch.items() for leaf in batch_leaves(v, f"{prefix}.{k}")]
    if isinstance(batch, (tuple, list)):
        return [leaf for i, v in enumerate(batch) for leaf in batch_leaves(v, f"{prefix}.{i}")]
    return []


def fingerprint_batch(batch: Any) -> str:
    """Fingerprint of every tensor and plain value in a batch (tuple, list, dict, nested).

    Example:
        >>> x, y = torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 0])
        >>> fingerprint_batch((x, y)) == fingerprint_batch([x.clone(), y.clone()])
        True
        >>> fingerprint_batch((x, y)) == fingerprint_batch((x, torch.tensor([0, 1, 1])))
        False
    """
    digest = hashlib.sha256()
    for path, leaf in batch_leaves(batch):
        if isinstance(leaf, torch.Tensor):
            _update(digest, path, leaf)
        else:
            digest.update(f"{path}|{type(leaf).__name__}|{leaf!r}|".encode())
    return digest.hexdigest()[:FINGERPRINT_DIGITS]


def fingerprint_scalar(fingerprint: str) -> float:
    """The first 24 bits of a fingerprint as a float, exact in float32, for a TensorBoard scalar.

    Two runs with equal fingerprints plot the same number; different fingerprints almost surely
    (all but 1 in 16.7 million) plot different numbers.

    Example:
        >>> fingerprint_scalar("000aff1234567890")
        2815.0
    """
    return float(int(fingerprint[: SCALAR_BITS // 4], 16))
