"""What every recipe callback shares: ``on_fail``, Findings, tags, logging and resume awareness.

A callback subclasses :class:`RecipeCallback`, calls :meth:`RecipeCallback.report` with its
Findings and the ``log_*`` helpers with its measurements; nothing here needs writing again.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from recipe_callbacks.core.cost import StepClock, Stopwatch
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.plumbing import log_writer
from recipe_callbacks.plumbing.batch import (
    BatchResolutionError,
    BatchToXY,
    ForwardFn,
    ResolvedBatch,
    call_model,
    resolve_batch,
)
from recipe_callbacks.plumbing.finding import ON_FAIL_CHOICES, Finding, OnFail, Status, apply_on_fail, details_markdown
from recipe_callbacks.plumbing.hook_dispatch import (
    DISPATCHED,
    SKIPS_NON_CALLABLE,
    step_counter,
    switch_off,
    switch_on,
    switched_off,
    unused_hooks,
)
from recipe_callbacks.plumbing.validation import check_choice, check_optional_str

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from matplotlib.figure import Figure

    from recipe_callbacks.core.drawing import Build


@functools.lru_cache(maxsize=256)
def snake_case(name: str) -> str:
    """``"InitLossCheck"`` -> ``"init_loss_check"`` (cached: every logged tag asks for it).

    Example:
        >>> snake_case("NoLRDecayWarning")
        'no_lr_decay_warning'
    """
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


# Strategies that shard the model's parameters over the processes, by class name (a subclass, e.g.
# from another package, is recognised through its bases).
SHARDED_STRATEGIES = ("FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy", "XLAFSDPStrategy")


def sharded_strategy(trainer: Any) -> str | None:
    """The class name of the Trainer's strategy when it shards the model (FSDP, DeepSpeed,
    ModelParallel), else ``None``.

    Example:
        >>> from types import SimpleNamespace
        >>> from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
        >>> sharded_strategy(SimpleNamespace(strategy=FSDPStrategy()))
        'FSDPStrategy'
        >>> sharded_strategy(SimpleNamespace(strategy=DDPStrategy())) is None
        True
    """
    strategy = getattr(trainer, "strategy", None)
    if strategy is None:
        return None
    if any(cls.__name__ in SHARDED_STRATEGIES for cls in type(strategy).__mro__):
        return type(strategy).__name__
    return None


#: The Lightning hooks whose ``CheckSkipped`` becomes a ``skip`` Finding (every hook that gets the
#: Trainer first; ``state_dict``/``load_state_dict`` do not).
HOOKS: frozenset[str] = frozenset(
    name
    for name in dir(Callback)
    if (name.startswith("on_") or name in ("setup", "teardown")) and callable(getattr(Callback, name))
)


#: The hooks Lightning calls at every training step: a callback whose work is done (:attr:`RecipeCallback.idle`)
#: costs one attribute check in each.
STEP_HOOKS: frozenset[str] = frozenset({
    "on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "on_before_zero_grad", "on_train_batch_end",
})


def _skipping(hook: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``hook`` with a :class:`CheckSkipped` it raises turned into the callback's ``skip`` Finding.

    A plain ``try``/``except`` (free in Python 3.11 while nothing is raised). Only the outermost
    hook catches: when a subclass's hook calls its parent's through ``super()``, the parent's
    wrapper passes the skip on, so that the subclass does not go on as if nothing happened. A
    per-step hook of an :attr:`~RecipeCallback.idle` callback returns at once (where Lightning
    still calls it: see :mod:`recipe_callbacks.plumbing.hook_dispatch`).
    """
    if getattr(hook, "_recipe_skipping", False):
        return hook

    per_step = name in STEP_HOOKS
    waits = name in _FIT_ENDS

    @functools.wraps(hook)
    def wrapper(self: RecipeCallback, trainer: Any, *args: Any, **kwargs: Any) -> Any:
        if per_step and self._idle:
            return None
        try:
            return hook(self, trainer, *args, **kwargs)
        except CheckSkipped as err:
            if getattr(type(self), name) is not wrapper:  # called through super(): the outermost catches
                raise
            self.skip(trainer, err.reason, err.argument, key=err.key)
            return None
        finally:
            # pictures drawn meanwhile and held scalars that are due are written between hooks (two
            # flags read inline: this runs after every hook of every recipe callback)
            if waits or _PICTURES_READY[0] or (_HELD_DUE[0] and time.monotonic() >= _HELD_DUE[0]):
                log_writer.settle(wait=waits)

    wrapper._recipe_skipping = True  # type: ignore[attr-defined]
    return wrapper


_PICTURES_READY, _HELD_DUE = log_writer.PICTURES_READY, log_writer.HELD_DUE

#: The hooks after which the pictures still being drawn are waited for.
_FIT_ENDS = frozenset({"on_fit_end", "teardown", "on_exception"})


def _no_op(*args: Any, **kwargs: Any) -> None:
    return None


class RecipeCallback(Callback):
    """Base of every recipe check.

    Args:
        on_fail: what a ``fail`` Finding does: ``"warn"`` emits a ``RecipeWarning``, ``"raise"``
            raises ``RecipeCheckError``, ``"ignore"`` only records it. ``warn`` Findings emit a
            ``RecipeWarning`` unless ``on_fail="ignore"``.
        input_key: where the input is in a batch (a dict key, or a position such as ``"0"``);
            inferred when ``None``.
        target_key: where the target is in a batch; inferred when ``None``.
        batch_to_xy: a function ``batch -> (x, y)`` for batches of any other shape.
        forward_fn: how to run the model on a batch the way your own step does, for the checks
            that run it: the name of a method of your LightningModule that takes the batch and
            returns the output (logits, or a ``ModelOutput``/dict with ``logits``), or a function
            ``(pl_module, batch) -> output``. ``None``: read from ``forward``'s signature
            (``self(**batch)`` for ``forward(**inputs)``, ``self(src, target)`` for two required
            inputs, ``self(x, y)`` for ``forward(x, targets=None)``, else ``self(x)``).

    Logged by every check: ``recipe.<check>/finding``, text with the check's current Findings
    (status, summary, advice and a table of the values), rewritten at each report. The values are
    one-time numbers (costs, counts, flags, fingerprints) and so never single-point scalar charts;
    what changes during training is logged with :meth:`log_scalars`.

    Subclasses set ``one_off = True`` when they judge the model at init: they do not run again on
    a resumed run and their Findings come back from the checkpoint.
    """

    one_off: ClassVar[bool] = False
    _idle: bool = False
    _gated: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # One skip mechanism: any hook may raise CheckSkipped(reason, argument); it is caught here,
        # where Lightning calls the hook, and reported as the skip Finding naming the argument.
        super().__init_subclass__(**kwargs)
        for name in HOOKS & cls.__dict__.keys():
            setattr(cls, name, _skipping(cls.__dict__[name], name))
    #: Why the callback cannot run when the strategy shards the model ("" when it can): it then
    #: reports a ``skip`` naming the strategy and this reason, and its hooks do nothing for that fit.
    sharded_reason: ClassVar[str] = ""

    def __init__(
        self,
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
        forward_fn: ForwardFn | str | None = None,
    ) -> None:
        owner = type(self).__name__
        if forward_fn is not None and not (callable(forward_fn) or isinstance(forward_fn, str)):
            raise TypeError(f"{owner}(forward_fn={forward_fn!r}): forward_fn must be a method name, a callable or None")
        self.forward_fn = forward_fn
        self.on_fail: OnFail = check_choice(owner, "on_fail", on_fail, ON_FAIL_CHOICES)
        self.input_key = check_optional_str(owner, "input_key", input_key)
        self.target_key = check_optional_str(owner, "target_key", target_key)
        if batch_to_xy is not None and not callable(batch_to_xy):
            raise TypeError(f"{owner}(batch_to_xy={batch_to_xy!r}): batch_to_xy must be callable or None")
        self.batch_to_xy = batch_to_xy
        self._findings: dict[str, Finding] = {}
        self._restored = False
        self._resumed_run: bool | None = None
        self.early_finished = not self.one_off
        self._pending_costs: list[tuple[str, str, float]] = []
        self._step_clock = StepClock()
        self._counter: Any = None  # the global step's own counter (hook_dispatch.step_counter), set at fit start
        self._clock_done = False
        self._refresh_hooks()

    # ----------------------------------------------------------------- which hooks Lightning calls
    @property
    def idle(self) -> bool:
        """True once the callback's per-step work is done for this fit (a one-off check after its
        verdict, the step clock read and its costs settled; or set by the callback itself): Lightning
        then does not call its step hooks at all (see :mod:`~recipe_callbacks.plumbing.hook_dispatch`)."""
        return self._idle

    @idle.setter
    def idle(self, value: bool) -> None:
        if value != self._idle:
            self._idle = value
            self._refresh_hooks()

    def _hooks_off(self) -> set[str]:
        """The hooks Lightning need not call now: those the class does not override, the step hooks
        while idle, and the base's step clock once it has its median and no cost waits to be
        settled. A subclass adds the hooks its own state leaves with nothing to do."""
        off = set(unused_hooks(type(self)))
        if self._idle:
            off |= STEP_HOOKS
        elif self._clock_done and not self._pending_costs and _base_clock_only(type(self)):
            off.add("on_train_batch_start")
        return off

    def _refresh_hooks(self) -> None:
        """Switch off, on this instance, the hooks of :meth:`_hooks_off`, and on again the others."""
        if self._gated:
            return  # off for the whole fit (gate_sharded)
        off = self._hooks_off()
        now = switched_off(self)
        switch_on(self, now - off)
        switch_off(self, off - now)

    # ----------------------------------------------------------------- names and tags
    @property
    def check_name(self) -> str:
        """The ``check`` of this callback's Findings: its class name."""
        return type(self).__name__

    @property
    def tag_prefix(self) -> str:
        """``recipe.<snake_case_check_name>``: one TensorBoard group per check, one common leading word."""
        return f"recipe.{snake_case(self.check_name)}"

    def tag(self, quantity: str) -> str:
        """The full tag of one quantity, e.g. ``recipe.init_loss_check/observed``."""
        return f"{self.tag_prefix}/{quantity}"

    # ----------------------------------------------------------------- findings
    @property
    def findings(self) -> list[Finding]:
        """The current Findings, oldest first (a keyed Finding replaces its earlier version)."""
        return list(self._findings.values())

    def report(
        self,
        trainer: pl.Trainer | None,
        status: Status,
        summary: str,
        values: Mapping[str, float] | None = None,
        advice: str = "",
        *,
        key: str = "",
        log_values: bool = True,
    ) -> Finding:
        """Make a Finding, keep it (replacing an earlier one with the same ``key``), write this
        check's Findings as text and act on it as ``on_fail`` says.

        The values are one-time numbers of a verdict (costs, counts, flags, fingerprints): they go
        to the text ``<tag prefix>/finding`` (a table per Finding, with its summary and advice) and
        to the report, never to single-point scalar charts. Quantities that change over training
        are logged with :meth:`log_scalars`. ``log_values=False`` leaves the values out of the text.

        Raises:
            RecipeCheckError: for a ``fail`` under ``on_fail="raise"``, on every rank.
        """
        finding = Finding(self.check_name, status, summary, dict(values or {}), advice)
        self._findings.pop(key, None)
        self._findings[key] = finding
        if trainer is not None:
            shown = self.findings if log_values else [replace(f, values={}) for f in self.findings]
            self.log_text(trainer, "finding", details_markdown(shown))
        apply_on_fail(finding, self.on_fail, warn=trainer is None or trainer.is_global_zero)
        return finding

    def skip(self, trainer: pl.Trainer | None, reason: str, argument: str = "", *, key: str = "") -> Finding:
        """Report that the check could not run, naming the argument that would let it."""
        advice = f"set {self.check_name}({argument}=...)" if argument else ""
        return self.report(trainer, "skip", reason, {}, advice, key=key)

    def resolve(self, trainer: pl.Trainer | None, batch: Any, *, key: str = "") -> ResolvedBatch | None:
        """``x``/``y`` of a batch, or ``None`` after a ``skip`` Finding naming the argument to set."""
        with self.skipping(trainer):
            return self.resolved(batch, key=key)
        return None

    def resolved(self, batch: Any, *, key: str = "") -> ResolvedBatch:
        """``x``/``y`` of a batch; raises :class:`CheckSkipped` (for the Finding under ``key``)
        naming the argument to set when the batch cannot be read."""
        try:
            return resolve_batch(batch, self.input_key, self.target_key, self.batch_to_xy)
        except BatchResolutionError as err:
            raise CheckSkipped(f"could not find the input in the batch: {err}", err.argument, key=key) from err

    @contextmanager
    def skipping(self, trainer: pl.Trainer | None) -> Iterator[None]:
        """Turn a :class:`CheckSkipped` raised in the block into the ``skip`` Finding and go on
        after the block (where a hook has more to do than the check that skipped)."""
        try:
            yield
        except CheckSkipped as err:
            self.skip(trainer, err.reason, err.argument, key=err.key)

    def run_model(self, pl_module: Any, batch: Any, resolved: ResolvedBatch, x: torch.Tensor | None = None) -> Any:
        """Run the model on ``batch`` the way the user's step does (``forward_fn``), with the input
        replaced by ``x`` if given; see :func:`recipe_callbacks.plumbing.batch.call_model`."""
        if isinstance(self.forward_fn, str) and not callable(getattr(pl_module, self.forward_fn, None)):
            raise TypeError(
                f"{self.check_name}(forward_fn={self.forward_fn!r}): the LightningModule has no such method"
            )
        return call_model(pl_module, batch, resolved, self.forward_fn, x)

    # ----------------------------------------------------------------- logging
    def log_scalars(self, trainer: pl.Trainer, values: Mapping[str, float], step: int | None = None) -> None:
        """Log ``{quantity: value}`` under this callback's tag prefix."""
        log_writer.log_scalars(trainer, {self.tag(k): v for k, v in values.items()}, step)

    def log_image(self, trainer: pl.Trainer, quantity: str, image: np.ndarray, step: int | None = None) -> None:
        log_writer.log_image(trainer, self.tag(quantity), image, step)

    def log_figure(
        self, trainer: pl.Trainer, quantity: str, build: Build | Figure, *args: Any, step: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Draw the chart ``build(*args, **kwargs)`` (a function of the core returning a figure or
        a picture array) in the drawing process and log it under this callback's tag prefix: the
        training loop does not wait for it (see :mod:`recipe_callbacks.core.drawing`)."""
        log_writer.log_chart(trainer, self.tag(quantity), build, *args, step=step, **kwargs)

    def log_text(self, trainer: pl.Trainer, quantity: str, text: str, step: int | None = None) -> None:
        log_writer.log_text(trainer, self.tag(quantity), text, step)

    def log_histogram(
        self, trainer: pl.Trainer, quantity: str, values: torch.Tensor, step: int | None = None
    ) -> None:
        log_writer.log_histogram(trainer, self.tag(quantity), values, step)

    # ----------------------------------------------------------------- measured cost
    @staticmethod
    def stopwatch() -> Stopwatch:
        """Time a block of one-off work (``with self.stopwatch() as watch: ...``); see :meth:`state_cost`."""
        return Stopwatch()

    def state_cost(self, seconds: float, *, key: str = "", field: str = "cost_steps") -> None:
        """State the cost of the Finding under ``key`` as measured: ``values[field]`` becomes
        ``seconds`` over the median training step of this run (its first training steps are timed,
        the first interval left out), once those steps are timed (at the latest at the end of
        training; a cost stated later is settled at the next step), and ``seconds`` itself goes in beside it
        (``field`` with ``cost_steps`` replaced by ``cost_seconds``). Until then, and when the run
        has too few steps to time, ``values[field]`` keeps the count the check reported.
        """
        self._pending_costs.append((key, field, seconds))
        self._idle = False  # settled at the next step
        self._refresh_hooks()

    def _settle_costs(self) -> None:
        step = self._step_clock.median()
        pending, self._pending_costs = self._pending_costs, []
        for key, field, seconds in pending:
            finding = self._findings.get(key)
            if finding is None:
                continue
            values = {**finding.values, field.replace("cost_steps", "cost_seconds"): seconds}
            if step is not None and step > 0:
                values[field] = seconds / step
            self._findings[key] = dataclasses.replace(finding, values=values)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # timed from the run's first batch, so that a cost stated late (at the end of an epoch, of
        # training) is settled against this run's steps too; once it has its median it is not ticked
        if self._clock_done and not self._pending_costs:
            return  # the usual step: two attribute checks
        if not self._clock_done:
            self._step_clock.tick()
            self._clock_done = self._step_clock.done
        if self._clock_done:
            if self._pending_costs:
                self._settle_costs()
            self._update_idle()
            self._refresh_hooks()

    def _update_idle(self) -> None:
        """A one-off check is idle once its work is done, the step clock read and its costs settled
        (any callback may also set :attr:`idle` itself when its step hooks have nothing left to do)."""
        if self.one_off and self.early_finished and self._clock_done and not self._pending_costs:
            self.idle = True

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending_costs:
            self._settle_costs()

    # Defined so that the hook wrapper runs after them for every check: it waits for the pictures
    # still being drawn and writes the held scalars (all of the fit's are written when it ends, or
    # fails: Lightning closes the loggers right after on_exception).
    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        return None

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        return None

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        return None

    # ----------------------------------------------------------------- progress of one-off work
    @contextmanager
    def running(self, trainer: pl.Trainer, pl_module: pl.LightningModule, what: str = "") -> Iterator[None]:
        """Say on rank 0 that this check starts, show a progress bar of the model's forward passes
        (the model's and its copies') when it runs longer than :attr:`progress_delay` seconds,
        and say what it cost when it ends.

        Lines go through Lightning's rank-zero logger and the bar shows only while that logger
        prints info messages: ``logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)``
        silences both.
        """
        if not trainer.is_global_zero:
            yield
            return
        name = self.check_name
        rank_zero_info(f"recipe_callbacks: {name} {what or 'running'}...")
        before = {id(f) for f in self.findings}
        counter = _ForwardCounter(name, type(pl_module), self.progress_delay)
        start = time.perf_counter()
        try:
            with counter:
                yield
        finally:
            seconds = time.perf_counter() - start
            new = [f for f in self.findings if id(f) not in before]
            cost = [f.values["cost_steps"] for f in new if "cost_steps" in f.values]
            parts = [f"{seconds:.1f} s", f"{counter.count} forward pass{'es' if counter.count != 1 else ''}"]
            if cost:
                parts.append(f"≈ {sum(cost):.3g} training steps")
            verdict = ", ".join(f.status.upper() for f in new) or "no verdict"
            rank_zero_info(f"recipe_callbacks: {name} done in {'; '.join(parts)}: {verdict}")

    progress_delay: ClassVar[float] = 3.0

    # ----------------------------------------------------------------- sharded strategies
    def unsupported_when_sharded(self) -> str:
        """The reason this instance cannot run under a sharded strategy ("" when it can)."""
        return self.sharded_reason

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.gate_sharded(trainer)
        if trainer.is_global_zero:  # the drawing process starts up while the fit does
            log_writer.drawer().start()

    def gate_sharded(self, trainer: pl.Trainer) -> None:
        """Under FSDP/DeepSpeed/ModelParallel a callback that would copy the model, run passes of its
        own or read whole parameters reports a ``skip`` and switches its hooks off for this fit (a
        later fit with another strategy switches them on again). Subclasses that override ``setup``
        call this first."""
        if self._gated:  # a former fit's: every hook comes back first
            self._gated = False
            switch_on(self, switched_off(self))
        strategy = sharded_strategy(trainer)
        reason = self.unsupported_when_sharded() if strategy is not None else ""
        if not reason:
            self._refresh_hooks()
            return
        advice = f"run {self.check_name} in a short fit with strategy='ddp' (or one device) before the sharded run"
        self.report(trainer, "skip", f"not run under {strategy}: {reason}", {}, advice, key="sharded")
        self._gated = True
        self.finish_early()
        # None where Lightning skips it, else a hook that does nothing
        switch_off(self, [n for n in DISPATCHED if n.startswith("on_")], None if SKIPS_NON_CALLABLE else _no_op)

    # ----------------------------------------------------------------- resume
    def is_resumed(self, trainer: pl.Trainer) -> bool:
        """True on a run restored from a checkpoint, or a second ``fit`` of an already trained model:
        the one-off checks must not judge trained weights as if they were at init.

        Decided once at the start of fit (after Lightning restored the callbacks' state) and kept
        for the rest of the run.
        """
        if self._resumed_run is None:
            self._resumed_run = self._restored or trainer.ckpt_path is not None or trainer.global_step > 0
        return self._resumed_run

    def finish_early(self) -> None:
        """Mark the one-off work as done, so that ``RecipeReport`` can print the early checklist."""
        self.early_finished = True
        self._update_idle()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._counter = step_counter(trainer)
        self._resumed_run = None
        self._pending_costs = []
        self._step_clock.reset()
        self._clock_done = False
        self.idle = False
        if self.is_resumed(trainer) and self.one_off:
            self.early_finished = True
        self._refresh_hooks()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "findings": {key: f.to_dict() for key, f in self._findings.items()},
            "early_finished": self.early_finished,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._findings = {key: Finding.from_dict(d) for key, d in state_dict.get("findings", {}).items()}
        self.early_finished = bool(state_dict.get("early_finished", self.early_finished))
        self._restored = True


# the base's own hooks go through the same wrapper (a subclass that does not override one calls it directly)
for _name in HOOKS & RecipeCallback.__dict__.keys():
    setattr(RecipeCallback, _name, _skipping(RecipeCallback.__dict__[_name], _name))


def _base_clock_only(cls: type[RecipeCallback]) -> bool:
    """The class's ``on_train_batch_start`` is the base's step clock (nothing of its own)."""
    return cls.on_train_batch_start is RecipeCallback.__dict__["on_train_batch_start"]


class FirstBatchCheck(RecipeCallback):
    """A one-off check that judges the model at init on the first training batch of a fresh run.

    Subclasses implement :meth:`check_first_batch`. It runs once per fit, on the batch exactly as
    ``training_step`` receives it, and not at all on a resumed run (the earlier Findings come back
    from the checkpoint). A fit that ends before any training batch gets a ``skip``.
    """

    one_off = True

    def __init__(
        self,
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
        forward_fn: ForwardFn | str | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy, forward_fn)
        self._ran = False

    def check_first_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        """Judge the model on ``batch`` and report; called once, on a fresh run only."""
        raise NotImplementedError

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._ran = False

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self._ran:
            return
        self._ran = True
        if not self.is_resumed(trainer):
            # the skip is recorded inside ``running``, so its closing line names the verdict
            with self.running(trainer, pl_module, "running on the first training batch"), self.skipping(trainer):
                self.check_first_batch(trainer, pl_module, batch)
        self.finish_early()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not self._ran and not self.is_resumed(trainer):
            self._ran = True
            self.skip(trainer, "no training batch was seen, so the check did not run")
            self.finish_early()


def _info_enabled() -> bool:
    """Whether Lightning's rank-zero logger prints info messages now (it is where ``rank_zero_info`` goes)."""
    from lightning_utilities.core import rank_zero

    logger: logging.Logger = rank_zero.log
    return logger.isEnabledFor(logging.INFO)


class _ForwardCounter:
    """Counts forward passes of modules of the model's class (the model and its detached copies)
    while active, and shows them as a tqdm bar once ``delay`` seconds have passed."""

    def __init__(self, name: str, model_type: type, delay: float) -> None:
        self.name = name
        self.model_type = model_type
        self.delay = delay
        self.count = 0
        self._bar: Any = None
        self._handle: Any = None

    def _hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if type(module) is not self.model_type:
            return
        self.count += 1
        if self._bar is not None:
            self._bar.update(1)

    def __enter__(self) -> _ForwardCounter:
        if _info_enabled():
            from tqdm.auto import tqdm

            # delay: the bar appears only for a check that runs longer than that
            self._bar = tqdm(desc=f"recipe_callbacks: {self.name}", unit=" forward", delay=self.delay, leave=False,
                             dynamic_ncols=True)
        self._handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
        if self._bar is not None:
            self._bar.close()
