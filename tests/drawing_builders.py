"""Chart functions for the drawing tests, importable by the drawing process (only the core and numpy)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def after_file(path: str, colour: int) -> np.ndarray:
    """A 4x4 picture of one grey level, drawn only once ``path`` exists (at most 60 s)."""
    deadline = time.monotonic() + 60
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return np.full((4, 4, 3), colour, dtype=np.uint8)


def broken(message: str) -> np.ndarray:
    raise RuntimeError(message)


def flat(shape: tuple[int, ...], fill: Callable[[], int] | None = None) -> np.ndarray:
    """A picture of one grey level: 0, or what ``fill()`` says."""
    return np.full(shape, 0 if fill is None else fill(), dtype=np.uint8)
