"""Fingerprints against hashlib on the raw bytes (the oracle), and what must and must not change them."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from recipe_callbacks.core.fingerprints import (
    batch_leaves,
    fingerprint_batch,
    fingerprint_scalar,
    fingerprint_tensors,
    tensor_bytes,
)


def test_fingerprint_equals_sha256_of_header_and_bytes() -> None:
    w = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    b = torch.tensor([7], dtype=torch.int64)
    oracle = hashlib.sha256()
    oracle.update(b"w|float32|(2, 2)|" + np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32).tobytes())
    oracle.update(b"b|int64|(1,)|" + np.array([7], dtype=np.int64).tobytes())
    assert fingerprint_tensors([("w", w), ("b", b)]) == oracle.hexdigest()[:16]


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int32, torch.bool]


@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_bytes_match_numpy_for_every_dtype(dtype: torch.dtype) -> None:
    t = (torch.arange(12).reshape(3, 4) % 3).to(dtype)
    if dtype == torch.bool:
        expected = t.to(torch.uint8).numpy().tobytes()
    elif dtype == torch.bfloat16:
        # bfloat16 is the upper half of a float32 (exact for these small integers).
        expected = (t.float().numpy().view(np.uint32) >> 16).astype(np.uint16).tobytes()
    else:
        expected = t.numpy().tobytes()
    assert tensor_bytes(t) == expected


def test_layout_does_not_change_fingerprint_but_values_do() -> None:
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    transposed_back = x.t().contiguous().t()  # same values, non-contiguous strides
    assert not transposed_back.is_contiguous()
    assert fingerprint_tensors([("x", x)]) == fingerprint_tensors([("x", transposed_back)])
    y = x.clone()
    y[2, 3] = torch.nextafter(y[2, 3], torch.tensor(1e9))  # one ulp
    assert fingerprint_tensors([("x", x)]) != fingerprint_tensors([("x", y)])
    assert fingerprint_tensors([("x", x)]) != fingerprint_tensors([("x", x.reshape(5, 4))])
    assert fingerprint_tensors([("x", x)]) != fingerprint_tensors([("z", x)])


def test_batch_fingerprint_covers_nested_values() -> None:
    batch = {"image": torch.ones(2, 3), "label": torch.tensor([0, 1]), "meta": {"path": ["a", "b"], "idx": 3}}
    leaves = [p for p, _ in batch_leaves(batch)]
    assert leaves == ["batch.image", "batch.label", "batch.meta.path.0", "batch.meta.path.1", "batch.meta.idx"]
    other = {**batch, "meta": {"path": ["a", "c"], "idx": 3}}
    assert fingerprint_batch(batch) != fingerprint_batch(other)
    assert fingerprint_batch(batch) == fingerprint_batch({k: v for k, v in batch.items()})
    assert batch_leaves(object()) == []


def test_scalar_is_the_first_24_bits_exact_in_float32() -> None:
    fp = fingerprint_tensors([("x", torch.zeros(1))])
    value = fingerprint_scalar(fp)
    assert value == int(fp[:6], 16) and 0 <= value < 2**24
    assert float(np.float32(value)) == value
    assert fingerprint_scalar("ffffff0000000000") == 2**24 - 1
