"""The random number generator states of Python, NumPy and torch (and CUDA) as tensors and primitives.

``capture_rng_states()`` returns a dict that ``torch.save`` writes and
``torch.load(..., weights_only=True)`` reads back (no NumPy arrays, no arbitrary objects);
``restore_rng_states`` puts every generator back where it was.

Nothing here imports Lightning.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng_states(include_cuda: bool = True) -> dict[str, Any]:
    """The current states of the global generators, as tensors and primitives only.

    Keys: ``python`` (version, 625-entry int64 tensor, gauss_next), ``numpy`` (kind, 624-entry
    int64 tensor, pos, has_gauss, cached_gaussian), ``torch`` (a uint8 tensor) and, when CUDA is
    initialised and ``include_cuda``, ``cuda`` (one uint8 tensor per device).

    Example:
        >>> states = capture_rng_states()
        >>> a = torch.rand(2)
        >>> restore_rng_states(states)
        ['python', 'numpy', 'torch']
        >>> torch.equal(a, torch.rand(2))
        True
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    states: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(list(internal), dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next),
        },
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if include_cuda and torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        states["cuda"] = list(torch.cuda.get_rng_state_all())
    return states


def restore_rng_states(states: dict[str, Any]) -> list[str]:
    """Put the generators back to ``states`` (from :func:`capture_rng_states`); returns the
    names of the generators it restored (a missing entry, or CUDA without a GPU, is left alone)."""
    restored: list[str] = []
    py = states.get("python")
    if py is not None:
        internal = tuple(int(v) for v in torch.as_tensor(py["state"]).tolist())
        random.setstate((int(py["version"]), internal, py["gauss_next"]))
        restored.append("python")
    npy = states.get("numpy")
    if npy is not None:
        keys = torch.as_tensor(npy["keys"]).numpy().astype(np.uint32)
        np.random.set_state(
            (str(npy["kind"]), keys, int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"]))
        )
        restored.append("numpy")
    state = states.get("torch")
    if state is not None:
        torch.set_rng_state(torch.as_tensor(state, dtype=torch.uint8).cpu())
        restored.append("torch")
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in cuda])
        restored.append("cuda")
    return restored
