"""The one place that finds the input ``x`` and the target ``y`` in a batch.

Understood without configuration: a tensor (input only), a tuple or list ``(x, y, ...)`` (or
``(x, mask, y)`` when the second item is a mask of ``x``: bool, or 0/1 shaped like ``x``), and a
dict with one of the common key names. ``input_key`` / ``target_key`` name the entry (a dict key,
or a position such as ``"0"`` for tuples); ``batch_to_xy`` is a function for anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

INPUT_KEYS: tuple[str, ...] = ("x", "input", "inputs", "image", "images", "input_ids", "features", "data")
TARGET_KEYS: tuple[str, ...] = ("y", "label", "labels", "target", "targets")

BatchToXY = Callable[[Any], tuple[torch.Tensor, "torch.Tensor | None"]]


class BatchResolutionError(ValueError):
    """The batch did not show where its input or target is; ``argument`` names what to set."""

    def __init__(self, message: str, argument: str) -> None:
        super().__init__(message)
        self.argument = argument


@dataclass
class ResolvedBatch:
    """``x`` and ``y`` of a batch, and a way to rebuild the batch with another input.

    ``y`` is ``None`` when the batch has no target. ``with_input`` is ``None`` when the batch came
    through a user ``batch_to_xy`` function (its structure is unknown).
    """

    x: torch.Tensor
    y: torch.Tensor | None
    with_input: Callable[[torch.Tensor], Any] | None


def _key_index(key: str, size: int, argument: str) -> int:
    try:
        index = int(key)
    except ValueError:
        raise BatchResolutionError(
            f"{argument}={key!r} names a dict key, but the batch is a sequence of {size} items; "
            f"give a position such as {argument}='0'",
            argument,
        ) from None
    if not -size <= index < size:
        raise BatchResolutionError(f"{argument}={key!r} is out of range for a batch of {size} items", argument)
    return index


def _is_mask(candidate: Any, x: Any) -> bool:
    """Whether ``candidate`` is a padding/attention mask of ``x``: bool, or 0/1 values shaped like
    ``x`` (token ids ``(B, T)``) or like ``x`` without its feature dim (``(B, T)`` for ``(B, T, F)``)."""
    if not isinstance(candidate, torch.Tensor) or not isinstance(x, torch.Tensor) or x.ndim < 2:
        return False
    if tuple(candidate.shape) not in (tuple(x.shape), tuple(x.shape[:-1])):
        return False
    if candidate.dtype == torch.bool:
        return True
    return candidate.numel() > 0 and bool(((candidate == 0) | (candidate == 1)).all())


def _from_sequence(
    batch: tuple[Any, ...] | list[Any], input_key: str | None, target_key: str | None
) -> ResolvedBatch:
    n = len(batch)
    xi = _key_index(input_key, n, "input_key") if input_key is not None else 0
    yi: int | None = _key_index(target_key, n, "target_key") if target_key is not None else None
    if yi is None and n >= 2:
        yi = 1 if xi != 1 else 0
        if xi == 0 and n >= 3 and _is_mask(batch[1], batch[0]) and isinstance(batch[2], torch.Tensor):
            yi = 2  # (x, mask, y): the mask is not the target
    x = batch[xi]
    y = batch[yi] if yi is not None else None
    if not isinstance(x, torch.Tensor):
        raise BatchResolutionError(
            f"batch[{xi}] is a {type(x).__name__}, not a tensor; set input_key to the input's position "
            "or give batch_to_xy",
            "input_key",
        )

    def with_input(new_x: torch.Tensor) -> Any:
        items = list(batch)
        items[xi] = new_x
        return type(batch)(items) if isinstance(batch, list) else tuple(items)

    return ResolvedBatch(x, y if isinstance(y, torch.Tensor) else None, with_input)


def _from_mapping(batch: Mapping[str, Any], input_key: str | None, target_key: str | None) -> ResolvedBatch:
    def find(explicit: str | None, names: tuple[str, ...], argument: str) -> str | None:
        if explicit is not None:
            if explicit not in batch:
                raise BatchResolutionError(
                    f"{argument}={explicit!r} is not a key of the batch (keys: {sorted(map(str, batch))})",
                    argument,
                )
            return explicit
        return next((k for k in names if k in batch and isinstance(batch[k], torch.Tensor)), None)

    xk = find(input_key, INPUT_KEYS, "input_key")
    if xk is None:
        raise BatchResolutionError(
            f"the batch dict has no input under a known key (looked for {INPUT_KEYS}, found "
            f"{sorted(map(str, batch))}); set input_key",
            "input_key",
        )
    yk = find(target_key, TARGET_KEYS, "target_key")
    x = batch[xk]
    if not isinstance(x, torch.Tensor):
        raise BatchResolutionError(f"batch[{xk!r}] is not a tensor; set input_key", "input_key")
    y = batch[yk] if yk is not None else None

    def with_input(new_x: torch.Tensor) -> Any:
        out = dict(batch)
        out[xk] = new_x
        return out

    return ResolvedBatch(x, y if isinstance(y, torch.Tensor) else None, with_input)


def resolve_batch(
    batch: Any,
    input_key: str | None = None,
    target_key: str | None = None,
    batch_to_xy: BatchToXY | None = None,
) -> ResolvedBatch:
    """Find ``x`` and ``y`` in ``batch``.

    Raises:
        BatchResolutionError: when the input cannot be found; its ``argument`` names the
            constructor argument to set.

    Example:
        >>> r = resolve_batch((torch.zeros(2, 3), torch.tensor([0, 1])))
        >>> tuple(r.x.shape), r.y.tolist()
        ((2, 3), [0, 1])
        >>> resolve_batch({"image": torch.ones(1), "label": torch.zeros(1)}).y.tolist()
        [0.0]
        >>> resolve_batch({"pixels": torch.ones(1)})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        recipe_callbacks.batch.BatchResolutionError: the batch dict has no input under a known key ... set input_key
    """
    if batch_to_xy is not None:
        x, y = batch_to_xy(batch)
        if not isinstance(x, torch.Tensor):
            raise BatchResolutionError("batch_to_xy did not return a tensor as its first item", "batch_to_xy")
        return ResolvedBatch(x, y, None)
    if isinstance(batch, torch.Tensor):
        return ResolvedBatch(batch, None, lambda new_x: new_x)
    if isinstance(batch, (tuple, list)) and batch:
        return _from_sequence(batch, input_key, target_key)
    if isinstance(batch, Mapping):
        return _from_mapping(batch, input_key, target_key)
    raise BatchResolutionError(
        f"cannot find the input in a batch of type {type(batch).__name__}; give batch_to_xy", "batch_to_xy"
    )
