"""The one place that finds the input ``x`` and the target ``y`` in a batch.

Understood without configuration: a tensor (input only), a tuple or list ``(x, y, ...)`` (or
``(x, mask, y)`` when the second item is a mask of ``x``: bool, or 0/1 shaped like ``x``), and a
dict with one of the common key names. ``input_key`` / ``target_key`` name the entry (a dict key,
or a position such as ``"0"`` for tuples); ``batch_to_xy`` is a function for anything else.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from recipe_callbacks.core.skip import CheckSkipped

INPUT_KEYS: tuple[str, ...] = (
    "x", "input", "inputs", "image", "images", "input_ids", "pixel_values", "input_values", "features", "data",
)
TARGET_KEYS: tuple[str, ...] = ("y", "label", "labels", "target", "targets")

BatchToXY = Callable[[Any], tuple[torch.Tensor, "torch.Tensor | None"]]


class BatchResolutionError(CheckSkipped, ValueError):
    """The batch did not show where its input or target is; ``argument`` names what to set.

    A :class:`~recipe_callbacks.core.skip.CheckSkipped`: raised inside a hook, it becomes the
    check's ``skip`` Finding.
    """

    def __init__(self, message: str, argument: str, *, key: str = "") -> None:
        super().__init__(message, argument, key=key)


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
        recipe_callbacks.plumbing.batch.BatchResolutionError: the batch dict has no input ... set input_key
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


# ----------------------------------------------------------------------------- calling the model
# Names a forward gives the parameter that takes the target (nanoGPT's ``forward(idx, targets=None)``).
TARGET_PARAMETERS: tuple[str, ...] = ("y", "target", "targets", "label", "labels")

# A user function that runs the model on a batch the way its own step does: ``(pl_module, batch) -> output``.
ForwardFn = Callable[[Any, Any], Any]


def _forward_parameters(module: Any) -> tuple[list[inspect.Parameter], bool]:
    """The positional-or-keyword parameters of ``module.forward`` and whether it takes ``**kwargs``
    (read once per forward function: the checks that run the model every few steps ask each time)."""
    forward = getattr(module, "forward", None)
    key: tuple[Any, bool] | None = (getattr(forward, "__func__", forward), hasattr(forward, "__self__"))
    try:
        found = _FORWARD_PARAMETERS.get(key)  # type: ignore[arg-type]
    except TypeError:  # an unhashable callable: read it every time
        found, key = None, None
    if found is None:
        try:
            params = list(inspect.signature(forward).parameters.values())  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return [], False
        named = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        found = (named, any(p.kind is p.VAR_KEYWORD for p in params))
        if key is not None:
            if len(_FORWARD_PARAMETERS) >= 256:
                _FORWARD_PARAMETERS.clear()
            _FORWARD_PARAMETERS[key] = found
    return list(found[0]), found[1]


#: ``(forward function, bound) -> (its parameters, takes **kwargs)``, for :func:`_forward_parameters`.
_FORWARD_PARAMETERS: dict[tuple[Any, bool], tuple[list[inspect.Parameter], bool]] = {}


def model_inputs(module: Any, batch: Any, resolved: ResolvedBatch) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments to call ``module`` with on ``batch``, read from its ``forward`` signature.

    - a dict batch and a ``forward(**inputs)`` (or parameters named like the batch's keys): every
      entry whose name the forward takes, as keywords, the way Hugging Face steps call
      ``self(**batch)``;
    - a tuple batch and a ``forward`` with several required parameters (``forward(src, target)``):
      the first items of the batch, in order;
    - a ``forward(x, targets=None)`` whose second parameter is named like a target: ``(x, y)``, as
      nanoGPT's step does (without targets it returns the last position only);
    - otherwise ``(x,)``.

    Example:
        >>> class Net(torch.nn.Module):
        ...     def forward(self, idx, targets=None): return idx
        >>> batch = (torch.zeros(2, 3), torch.ones(2, 3))
        >>> args, kwargs = model_inputs(Net(), batch, resolve_batch(batch))
        >>> len(args), kwargs
        (2, {})
    """
    params, var_kw = _forward_parameters(module)
    names = [p.name for p in params]
    if isinstance(batch, Mapping) and resolved.with_input is not None:
        keys = [k for k in batch if isinstance(k, str) and (var_kw or k in names)]
        if keys and (var_kw or len(keys) > 1 or not params or keys[0] == names[0]):
            return (), {k: batch[k] for k in keys}
    if isinstance(batch, (tuple, list)) and resolved.with_input is not None:
        required = [p for p in params if p.default is p.empty and p.kind is not p.KEYWORD_ONLY]
        tensors = [item for item in batch if isinstance(item, torch.Tensor)]
        if len(required) >= 2 and len(tensors) >= len(required) and batch[0] is resolved.x:
            return tuple(batch[: len(required)]), {}
    if len(params) >= 2 and params[1].name in TARGET_PARAMETERS and resolved.y is not None:
        return (resolved.x, resolved.y), {}
    return (resolved.x,), {}


def tensor_inputs(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[tuple[str, torch.Tensor]]:
    """Every tensor argument of a call, named by position (``"0"``) or keyword."""
    named = [(str(i), a) for i, a in enumerate(args)] + list(kwargs.items())
    return [(name, value) for name, value in named if isinstance(value, torch.Tensor)]


def replaced(args: tuple[Any, ...], kwargs: Mapping[str, Any], new: Mapping[str, torch.Tensor]
             ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call arguments with the tensors named in ``new`` (as :func:`tensor_inputs` names them) replaced."""
    out_args = tuple(new.get(str(i), a) for i, a in enumerate(args))
    return out_args, {k: new.get(k, v) for k, v in kwargs.items()}


def call_model(module: Any, batch: Any, resolved: ResolvedBatch, forward_fn: ForwardFn | str | None = None,
               x: torch.Tensor | None = None) -> Any:
    """Run ``module`` on ``batch`` the way the user's step does, with the input replaced by ``x`` if given.

    ``forward_fn`` is the user's own way: a function ``(pl_module, batch) -> output``, or the name of
    a method of the LightningModule that takes the batch. Without it the call is read from the
    ``forward`` signature (:func:`model_inputs`).
    """
    if x is not None and resolved.with_input is not None:
        batch = resolved.with_input(x)
        resolved = ResolvedBatch(x, resolved.y, resolved.with_input)
    if forward_fn is not None:
        fn = getattr(module, forward_fn) if isinstance(forward_fn, str) else None
        return fn(batch) if fn is not None else forward_fn(module, batch)  # type: ignore[operator]
    if resolved.with_input is None:  # a user batch_to_xy: its structure is unknown
        return module(resolved.x if x is None else x)
    args, kwargs = model_inputs(module, batch, resolved)
    return module(*args, **kwargs)


def integer_inputs(batch: Any, resolved: ResolvedBatch) -> list[torch.Tensor]:
    """The integer tensors a model reads from ``batch`` (token ids), for :func:`~recipe_callbacks.core.task.aligned`
    to recognise labels that are the input ids themselves (the shift done inside the model)."""
    found = [resolved.x]
    if isinstance(batch, Mapping):
        found += [v for k, v in batch.items() if isinstance(v, torch.Tensor) and k in INPUT_KEYS]
    return [t for t in found if not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)]
