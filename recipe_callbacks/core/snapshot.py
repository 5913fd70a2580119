"""Train a module in place and put it back bit for bit: what a short training changes, held off the device.

The one-off checks that train (``InputIndependentBaseline``, ``OverfitOneBatch``) train the user's
own module, not a second copy of it: a copy doubles the weights in device memory, and a copy of a
``torch.compile``-d module still runs the original's compiled code. :class:`ModuleSnapshot` saves
what training can change (every parameter and buffer, the gradients, tensors and containers kept
as plain attributes, the module tree itself) and :meth:`ModuleSnapshot.restore` writes it back into
the same tensor objects, so optimizers, compiled graphs and hooks that hold them stay valid.

Where the bytes go: tensors on an accelerator are copied to host memory (device memory does not
grow); CPU tensors are written to an unnamed temporary file (host memory is then the device
memory, and the page cache, not the process, holds the copy), read straight back into the
tensors' own storage on restore. A tensor that cannot be viewed as bytes (not contiguous) is
cloned in memory instead. :class:`SavedTensors` holds other tensors the same way (an optimizer's
state while a short run waits to be continued).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch
from torch import nn
from torch.nn.parameter import is_lazy

_MODULE_DICTS = ("_parameters", "_buffers", "_modules")


def has_lazy_tensors(module: nn.Module) -> bool:
    """True when a parameter or buffer of ``module`` is not materialised yet (``nn.LazyLinear`` before
    its first forward): training it would draw its initial weights from the RNG now.

    Example:
        >>> has_lazy_tensors(nn.LazyLinear(2)), has_lazy_tensors(nn.Linear(2, 2))
        (True, False)
    """
    return any(is_lazy(t) for t in (*module.parameters(), *module.buffers()))


def _byte_view(t: torch.Tensor) -> Any | None:
    """A writable numpy byte view of a contiguous CPU tensor's storage, or ``None``."""
    if t.device.type != "cpu" or not t.is_contiguous() or t.numel() == 0 or t.is_quantized or t.is_sparse:
        return None
    try:
        return t.detach().reshape(-1).view(torch.uint8).numpy()
    except (RuntimeError, TypeError):
        return None


class ModuleSnapshot:
    """Everything a short training of ``module`` can change, saved so that :meth:`restore` puts the
    module back bit for bit.

    Saved: the data of every parameter and buffer (tied weights once), each parameter's ``.grad``
    (the tensor object itself, not a copy), tensor attributes kept outside ``_parameters`` and
    ``_buffers`` (e.g. a metric's state), the contents of list, dict and set attributes, every
    submodule's attribute dict and its ``_parameters``/``_buffers``/``_modules`` entries (a
    ``training_step`` that rebinds ``self.x`` or replaces a buffer object).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
        >>> before = [t.clone() for t in net.state_dict().values()]
        >>> snap = ModuleSnapshot(net)
        >>> opt = torch.optim.SGD(net.parameters(), lr=0.5)
        >>> net(torch.randn(4, 2)).sum().backward(); opt.step()
        >>> snap.restore(); snap.close()
        >>> all(torch.equal(a, b) for a, b in zip(before, net.state_dict().values()))
        True
        >>> net[0].weight.grad is None
        True
    """

    def __init__(self, module: nn.Module) -> None:
        self._file: BinaryIO | None = None
        self._tensors: list[tuple[torch.Tensor, torch.Tensor | None, int]] = []  # (tensor, copy, bytes)
        self._grads: list[tuple[nn.Parameter, torch.Tensor | None]] = []
        self._dicts: list[tuple[nn.Module, dict[str, Any], list[dict[str, Any]]]] = []
        self._containers: list[tuple[Any, Any]] = []
        seen: set[int] = set()
        modules = list(module.modules())
        for m in modules:
            self._dicts.append((m, dict(m.__dict__), [dict(getattr(m, d, {})) for d in _MODULE_DICTS]))
            for key, value in m.__dict__.items():
                if key.startswith("_") and key in _MODULE_DICTS:
                    continue
                if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
                    self._save_tensor(value, seen)
                elif isinstance(value, list | dict | set | bytearray) and id(value) not in seen:
                    seen.add(id(value))
                    self._containers.append((value, value.copy()))
        for p in module.parameters():
            self._grads.append((p, p.grad))
            self._save_tensor(p, seen)
        for b in module.buffers():
            self._save_tensor(b, seen)
        if self._file is not None:
            self._file.flush()

    def _save_tensor(self, t: torch.Tensor, seen: set[int]) -> None:
        if id(t) in seen or is_lazy(t):
            return
        seen.add(id(t))
        view = _byte_view(t)
        if view is None:
            self._tensors.append((t, t.detach().to("cpu", copy=True), 0))
            return
        self._file = _spill(self._file, view)
        self._tensors.append((t, None, view.nbytes))

    @property
    def tensors(self) -> int:
        """How many tensors were saved."""
        return len(self._tensors)

    def restore(self) -> None:
        """Write everything back into the same objects; can be called more than once."""
        for m, saved, entries in self._dicts:
            for key in [k for k in m.__dict__ if k not in saved]:
                del m.__dict__[key]
            m.__dict__.update(saved)
            for name, content in zip(_MODULE_DICTS, entries, strict=True):
                target = getattr(m, name, None)
                if isinstance(target, dict):
                    target.clear()
                    target.update(content)
        for container, content in self._containers:
            container.clear()
            if isinstance(container, list | bytearray):
                container.extend(content)
            else:
                container.update(content)
        if self._file is not None:
            self._file.seek(0)
        with torch.no_grad():
            for t, copy, nbytes in self._tensors:
                if copy is not None:
                    t.copy_(copy)
                    continue
                assert self._file is not None
                raw = _byte_view(t)
                if raw is None:  # the tensor changed layout during training: cannot happen in place
                    raise RuntimeError("a saved tensor can no longer be viewed as bytes")
                _read_into(self._file, memoryview(raw), nbytes, "the snapshot file")
        for p, grad in self._grads:
            p.grad = grad

    def close(self) -> None:
        """Free the saved copies (the temporary file is deleted)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tensors.clear()


class SavedTensors:
    """A nested structure (dicts, lists, tuples) whose tensors are held off the device, as
    :class:`ModuleSnapshot` holds a module's (an optimizer's ``state_dict()`` while its run waits to
    be continued); :meth:`load` rebuilds it with fresh tensors on their devices.

    Example:
        >>> saved = SavedTensors({"state": {0: {"step": torch.tensor(3.0), "m": torch.ones(2)}}, "lr": 0.1})
        >>> tree = saved.load(); saved.close()
        >>> tree["state"][0]["m"].tolist(), float(tree["state"][0]["step"]), tree["lr"]
        ([1.0, 1.0], 3.0, 0.1)
    """

    def __init__(self, tree: Any) -> None:
        self._file: BinaryIO | None = None
        self._tree = self._save(tree)

    def _save(self, obj: Any) -> Any:
        return _map_leaves(obj, torch.Tensor, self._save_tensor)

    def _save_tensor(self, obj: torch.Tensor) -> _Held:
        view = _byte_view(obj)
        if view is None:
            return _Held(obj.device, obj.detach().to("cpu", copy=True), None)
        offset = self._file.tell() if self._file is not None else 0
        self._file = _spill(self._file, view)
        return _Held(obj.device, torch.empty_like(obj, device="meta"), offset)

    def load(self) -> Any:
        """The structure with every tensor read back (new tensors, on their devices)."""
        return self._load(self._tree)

    def _load(self, obj: Any) -> Any:
        return _map_leaves(obj, _Held, self._load_tensor)

    def _load_tensor(self, obj: _Held) -> torch.Tensor:
        if obj.offset is None:
            return obj.data.to(obj.device, copy=True)
        assert self._file is not None
        t = torch.empty(obj.data.shape, dtype=obj.data.dtype)
        view = _byte_view(t)
        assert view is not None  # a fresh contiguous CPU tensor, as the saved one was
        self._file.seek(obj.offset)
        _read_into(self._file, memoryview(view), view.nbytes, "the saved tensors' file")
        return t.to(obj.device)

    def close(self) -> None:
        """Free the saved copies (the temporary file is deleted)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._tree = None


def _spill(file: BinaryIO | None, view: Any) -> BinaryIO:
    """Append the bytes of ``view`` to ``file``, an unnamed temporary file made on first use."""
    if file is None:
        file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the owner's close()
    file.write(memoryview(view))
    return file


def _read_into(file: BinaryIO, view: memoryview, nbytes: int, what: str) -> None:
    """Read ``nbytes`` bytes from ``file`` at its position into ``view``."""
    done = 0
    while done < nbytes:
        got = file.readinto(view[done:])  # type: ignore[attr-defined]
        if not got:
            raise RuntimeError(f"{what} ended early")
        done += got


def _map_leaves(obj: Any, leaf: type, fn: Callable[[Any], Any]) -> Any:
    """``obj`` with every ``leaf`` inside its dicts, lists and tuples replaced by ``fn(leaf)``."""
    if isinstance(obj, leaf):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_leaves(v, leaf, fn) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_map_leaves(v, leaf, fn) for v in obj)
    return obj


@dataclass(frozen=True)
class _Held:
    """A tensor of :class:`SavedTensors`: a host copy (``offset`` ``None``), or a meta tensor giving
    shape and dtype of the bytes at ``offset`` in the file."""

    device: torch.device
    data: torch.Tensor
    offset: int | None


@contextmanager
def trained_in_place(module: nn.Module) -> Iterator[ModuleSnapshot]:
    """Run the body, then put ``module`` back exactly as it was (see :class:`ModuleSnapshot`).

    Example:
        >>> net = nn.Linear(3, 1)
        >>> w = net.weight.clone()
        >>> with trained_in_place(net):
        ...     with torch.no_grad():
        ...         _ = net.weight.mul_(0.0)
        >>> torch.equal(net.weight, w)
        True
    """
    snapshot = ModuleSnapshot(module)
    try:
        yield snapshot
    finally:
        snapshot.restore()
        snapshot.close()
