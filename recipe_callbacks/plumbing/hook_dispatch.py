"""Hooks Lightning does not call at all: the price of a registered callback at a hook it has nothing to do in.

Lightning calls a hook of every registered callback at every step, whether the callback does
anything there or not: for each one ``_call_callback_hooks`` reads the attribute, opens the
profiler's context with the callback's ``state_key`` in its name and calls the (often empty)
method, about 1.7 µs on this project's 2-core machine. A preset of ten callbacks pays 99 µs per
step for its six step hooks before any of its own code runs: 2% of a 5 ms step, twice the whole
``monitor`` budget.

Lightning 2 skips a hook attribute that is not callable (``if callable(fn)`` in
``_call_callback_hooks``, the same in ``pytorch_lightning``): it then costs one ``getattr``, about
0.05 µs. So a recipe callback sets to ``None``, on the instance, every hook it does not override
(:func:`unused_hooks`) and, while it is idle, its step hooks (:func:`switch_off`); what was on the
instance before (e.g. a benchmark's timing wrapper) comes back with :func:`switch_on`. The class's
methods are untouched: ``super()`` calls and subclasses see them as before. Lightning calls
``on_save_checkpoint`` and ``on_load_checkpoint`` directly, so they are never switched off. On a
Lightning other than 2 (:data:`SKIPS_NON_CALLABLE` false) nothing is set to ``None``: every hook
is then dispatched as usual, and only a callback that must stay silent for a whole fit (a sharded
strategy) gets hooks that return at once (``off`` given).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata
from typing import Any

from lightning.pytorch.callbacks import Callback


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else -1


#: Whether the installed Lightning skips a callback hook that is not callable (Lightning 2).
SKIPS_NON_CALLABLE: bool = _major(metadata.version("lightning")) == 2

#: Every hook Lightning calls through ``_call_callback_hooks`` (all of ``Callback``'s ``on_*`` hooks,
#: ``setup`` and ``teardown``) except the two it calls directly.
DISPATCHED: frozenset[str] = frozenset(
    name
    for name in dir(Callback)
    if (name.startswith("on_") or name in ("setup", "teardown"))
    and callable(getattr(Callback, name))
    and name not in ("on_save_checkpoint", "on_load_checkpoint")
)

_SAVED = "_recipe_switched_off"  # the instance's attributes that were there before, by hook name


_UNUSED: dict[type, frozenset[str]] = {}


def unused_hooks(cls: type) -> frozenset[str]:
    """The dispatched hooks that ``cls`` does not override (still ``Callback``'s empty ones).

    Example:
        >>> class Watch(Callback):
        ...     def on_train_batch_end(self, *args): ...
        >>> "on_train_batch_end" in unused_hooks(Watch), "on_before_backward" in unused_hooks(Watch)
        (False, True)
    """
    unused = _UNUSED.get(cls)
    if unused is None:
        unused = _UNUSED[cls] = frozenset(name for name in DISPATCHED if getattr(cls, name) is getattr(Callback, name))
    return unused


def switch_off(callback: Callback, names: Iterable[str], off: Any = None) -> None:
    """From now on Lightning does not call these hooks of ``callback`` (each attribute set to ``None``
    on the instance, what was there kept for :func:`switch_on`); with ``off`` given, the attributes
    are set to it instead (a function that does nothing), where Lightning would call ``None``.

    Without ``off`` nothing happens on a Lightning that does not skip non-callable hooks.
    """
    if off is None and not SKIPS_NON_CALLABLE:
        return
    state = callback.__dict__
    saved: dict[str, tuple[bool, Any]] = state.setdefault(_SAVED, {})
    for name in names:
        if name not in DISPATCHED:
            continue
        if name not in saved:
            saved[name] = (name in state, state.get(name))
        state[name] = off


def switch_on(callback: Callback, names: Iterable[str]) -> None:
    """Lightning calls these hooks of ``callback`` again (what was on the instance comes back)."""
    saved: dict[str, tuple[bool, Any]] = callback.__dict__.get(_SAVED, {})
    for name in names:
        if name not in saved:
            continue
        present, value = saved.pop(name)
        if present:
            callback.__dict__[name] = value
        else:
            callback.__dict__.pop(name, None)


def switched_off(callback: Callback) -> frozenset[str]:
    """The hooks of ``callback`` now switched off."""
    return frozenset(callback.__dict__.get(_SAVED, {}))


def dispatched_step_hooks(callbacks: Iterable[Callback], hooks: Iterable[str]) -> int:
    """How many of ``hooks`` Lightning would call on ``callbacks`` now (the callable ones)."""
    names = tuple(hooks)
    return sum(callable(getattr(cb, name, None)) for cb in callbacks for name in names)


def step_counter(trainer: Any) -> Any:
    """Lightning's own counter behind ``trainer.global_step``: an object whose ``completed`` is the
    global step for the whole fit (the loops update it in place, also when they restore a checkpoint),
    or ``None`` when it is not where Lightning 2 keeps it (read ``trainer.global_step`` then).

    Between training steps ``trainer.global_step`` walks the fit loop, the strategy and the module to
    the counter, about 1.8 µs; ``completed`` of the counter is about 0.4 µs. The hooks called on every
    step read it there; take it at ``on_fit_start`` (the module's ``automatic_optimization`` picks it).
    """
    try:
        loop = trainer.fit_loop.epoch_loop
        module = trainer.lightning_module
        if module is None or module.automatic_optimization:
            counter = loop.automatic_optimization.optim_progress.optimizer.step.total
        else:
            counter = loop.manual_optimization.optim_step_progress.total
        if isinstance(counter.completed, int) and counter.completed == trainer.global_step:
            return counter
    except (AttributeError, RuntimeError):
        pass
    return None
