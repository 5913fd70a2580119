"""Hooks on a module that belong to someone else: found by what the hook function is bound to or
closes over, and removed from a copy of the module.

A deep copy of a module keeps the forward/backward hooks of the original. A hook registered by an
observer (a callback watching the real model's forward) closes over that observer, so on a copy it
would see the copy's forward passes as if they were the real model's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_HOOK_FLAGS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def _owners(hook: Any) -> list[Any]:
    """The objects a hook function is bound to or closes over (through ``functools.partial`` too)."""
    out: list[Any] = []
    func = hook
    while isinstance(func, functools.partial):
        out.extend(func.args)
        out.extend(func.keywords.values())
        func = func.func
    bound = getattr(func, "__self__", None)
    if bound is not None:
        out.append(bound)
        func = getattr(func, "__func__", func)
    for cell in getattr(func, "__closure__", None) or ():
        try:
            out.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    return out


def remove_hooks_owned_by(model: nn.Module, owner_types: tuple[type, ...]) -> int:
    """Remove from ``model`` (a copy) every forward/backward hook bound to, or closing over, an
    instance of ``owner_types``; returns how many were removed.

    A deep copy keeps the hooks of the original, and a hook that closes over an observer (a
    callback that watches the real model's forward) would see the copy's forward passes as if
    they were the real model's. The model's own hooks (weight norm, user hooks) are kept.

    Example:
        >>> import torch
        >>> class Watcher:
        ...     def __init__(self):
        ...         self.calls = 0
        >>> def watch(watcher):
        ...     def hook(module, args, output):
        ...         watcher.calls += 1
        ...     return hook
        >>> w, net = Watcher(), nn.Linear(1, 1)
        >>> _ = net.register_forward_hook(watch(w))
        >>> _ = net.register_forward_pre_hook(lambda module, args: None)  # the model's own
        >>> remove_hooks_owned_by(net, (Watcher,)), len(net._forward_pre_hooks)
        (1, 1)
        >>> _ = net(torch.ones(1, 1)); w.calls
        0
    """
    removed = 0
    for module in model.modules():
        for attr in _HOOK_DICTS:
            hooks = getattr(module, attr, None)
            if not hooks:
                continue
            for key, hook in list(hooks.items()):
                if any(isinstance(owner, owner_types) for owner in _owners(hook)):
                    del hooks[key]
                    removed += 1
                    for flags in _HOOK_FLAGS:
                        getattr(module, flags, {}).pop(key, None)
    return removed


@contextmanager
def suspended_hooks(model: nn.Module, owner_types: tuple[type, ...]) -> Iterator[int]:
    """Take away, for the body, every forward/backward hook of ``model`` bound to or closing over an
    instance of ``owner_types`` (see :func:`remove_hooks_owned_by`); put them back on exit, in their
    order. Yields how many were taken away.

    Example:
        >>> import torch
        >>> calls = []
        >>> class Watcher:
        ...     def hook(self, module, args, output):
        ...         calls.append(1)
        >>> net = nn.Linear(1, 1)
        >>> _ = net.register_forward_hook(Watcher().hook)
        >>> with suspended_hooks(net, (Watcher,)) as n:
        ...     _ = net(torch.ones(1, 1))
        >>> _ = net(torch.ones(1, 1))
        >>> n, len(calls)
        (1, 1)
    """
    saved: list[tuple[Any, dict[Any, Any]]] = []
    for module in model.modules():
        for attr in (*_HOOK_DICTS, *_HOOK_FLAGS):
            hooks = getattr(module, attr, None)
            if hooks:
                saved.append((hooks, dict(hooks)))
    removed = remove_hooks_owned_by(model, owner_types)
    try:
        yield removed
    finally:
        for hooks, content in saved:
            hooks.clear()
            hooks.update(content)


class _Entered(Exception):
    """Stops a forward pass as soon as the first watched module is entered (control flow, not an error)."""


def first_entered(model: nn.Module, kinds: tuple[type[nn.Module], ...], run: Callable[[], object]) -> str | None:
    """The name of the first submodule of one of ``kinds`` that ``run`` (a forward pass of ``model``)
    enters, or ``None`` when none is entered; the pass is stopped right there (pre-forward hooks,
    removed on return). An error of ``run`` before any such module is entered is raised.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.ReLU(), nn.Linear(2, 2), nn.Linear(2, 1))
        >>> first_entered(net, (nn.Linear,), lambda: net(torch.zeros(1, 2)))
        '1'
    """
    entered: list[str] = []

    def make_hook(name: str) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, args: Any) -> None:
            entered.append(name)
            raise _Entered

        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in model.named_modules() if isinstance(m, kinds)]
    try:
        run()
    except _Entered:
        pass
    except Exception:
        if not entered:
            raise
    finally:
        for handle in handles:
            handle.remove()
    return entered[0] if entered else None
