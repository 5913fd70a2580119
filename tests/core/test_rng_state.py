"""RNG states: captured, saved with torch.save, loaded with weights_only=True, and restored exactly."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from recipe_callbacks.core.rng_state import capture_rng_states, restore_rng_states


def draws() -> tuple[float, float, float, list[float]]:
    return random.random(), random.gauss(0, 1), float(np.random.randn()), torch.rand(3).tolist()


def test_round_trip_through_weights_only_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.randn()  # and one in numpy's
    torch.save({"rng": capture_rng_states()}, tmp_path / "s.pt")
    expected = draws()

    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    assert draws() != expected
    loaded = torch.load(tmp_path / "s.pt", weights_only=True)["rng"]
    assert restore_rng_states(loaded) == ["python", "numpy", "torch"]
    assert draws() == expected


def test_states_are_tensors_and_primitives_only() -> None:
    def plain(v: object) -> bool:
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        return v is None or isinstance(v, (torch.Tensor, int, float, str, bool))

    assert plain(capture_rng_states())


def test_missing_entries_are_left_alone() -> None:
    torch.manual_seed(4)
    expected = torch.rand(2)
    torch.manual_seed(4)
    assert restore_rng_states({"python": None}) == []
    assert torch.equal(torch.rand(2), expected)
