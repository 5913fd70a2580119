"""Short trainings of the user's model: what ``InputIndependentBaseline`` and ``OverfitOneBatch`` share.

Each run starts from the model at the start of fit and trains with the user's own optimizer
settings and ``training_step``, under an isolated RNG. It trains the user's module itself, in
place, and puts it back bit for bit afterwards (:class:`~recipe_callbacks.core.snapshot.ModuleSnapshot`:
parameters, buffers, gradients and attributes saved to host memory or a temporary file), so no
second model sits in device memory, and a ``torch.compile``-d model (compiled by the Trainer or
in a submodule) trains the very parameters its compiled code reads. While a run lasts, the module
is detached from the Trainer (``self.log`` is a no-op), hooks that other callbacks registered on it
are taken away, and ``SyncBatchNorm`` layers compute locally.

A run can be kept to be continued (``run(..., keep=True)``, then ``run(..., resume=state)``): what
it trained (the module's state, saved as the start is, and its optimizer's state) is held off the
device until then, and the continued run's curve equals one uninterrupted run's bit for bit.

A model with lazy parameters not yet materialised (``nn.LazyLinear`` before its first forward) is
the exception: training it in place would draw its initial weights now, from the isolated RNG, not
where the user's own first step draws them. It trains a detached copy instead, whose lazy
parameters hold no memory yet (its runs cannot be kept: a continued run starts afresh, which
gives the same curve).

Anything that keeps a run from training raises :class:`~recipe_callbacks.core.skip.CheckSkipped`
carrying the reason and the argument that would fix it, so the calling check reports a ``skip``
instead of crashing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn

from recipe_callbacks.core.cost import FORWARD_PASS_STEPS
from recipe_callbacks.core.module_hooks import suspended_hooks
from recipe_callbacks.core.short_training import (
    LocalBatchNorm,
    ModelNotes,
    ShortRun,
    ShortTrainingError,
    StopRule,
    current_random_state,
    evaluate_losses,
    learning_rates,
    model_notes,
    train_for,
    user_optimizer,
)
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.core.snapshot import ModuleSnapshot, SavedTensors, has_lazy_tensors
from recipe_callbacks.plumbing.observe import detached_copy, detached_from_trainer, training_step_loss

if TYPE_CHECKING:
    import lightning.pytorch as pl


class RunState:
    """What a kept run trained, to continue it: the module's state after its last step (saved as
    :class:`ModuleSnapshot` saves, off the device), its optimizer's state (the same way) and the
    run itself (its losses and random state); :meth:`close` frees them."""

    def __init__(self, run: ShortRun, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.run = run
        optimizer.zero_grad(set_to_none=True)  # a continued run starts each step from no gradient
        self._module: ModuleSnapshot | None = ModuleSnapshot(module)
        self._optimizer: SavedTensors | None = SavedTensors(optimizer.state_dict())

    def put_back(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Write the saved state into the module it was taken from and into ``optimizer`` (a new
        optimizer of the same parameters; ``None`` for the module alone)."""
        assert self._module is not None and self._optimizer is not None, "the run state was closed"
        self._module.restore()
        if optimizer is not None:
            optimizer.load_state_dict(self._optimizer.load())

    def close(self) -> None:
        """Free what it holds (can be called more than once)."""
        if self._module is not None:
            self._module.close()
        if self._optimizer is not None:
            self._optimizer.close()
        self._module = self._optimizer = None


@dataclass
class RunResult:
    """One short run: its curve, what the model and optimizer showed before it, and (when kept) the
    state to continue it from."""

    run: ShortRun
    notes: ModelNotes
    lrs: list[float]
    state: RunState | None = None


def run_cost(run: ShortRun) -> float:
    """The passes of the run's last call in training-step equivalents (a continued run's earlier
    passes were counted with the call that made them): each optimizer step one, each forward-only
    pass (the loss after the last step, or where a stop rule ended the run) a third."""
    return run.fresh_steps + run.fresh_evals * FORWARD_PASS_STEPS


def require_automatic_optimization(pl_module: pl.LightningModule) -> None:
    """Raise :class:`CheckSkipped` for a model that steps its own optimizer (manual optimization)."""
    if not pl_module.automatic_optimization:
        raise CheckSkipped(
            "the model uses manual optimization: its training_step steps its own optimizer, "
            "so a short run cannot be trained with its loss"
        )


@contextmanager
def _local_batchnorm(module: nn.Module) -> Iterator[int]:
    """``SyncBatchNorm`` layers compute locally for the body (a short run trains on one process
    alone: ``all_reduce`` would wait for ranks that do not run the same steps)."""
    swapped = [m for m in module.modules() if isinstance(m, nn.SyncBatchNorm)]
    try:
        for m in swapped:
            m.__class__ = LocalBatchNorm  # type: ignore[assignment]
        yield len(swapped)
    finally:
        for m in swapped:
            m.__class__ = nn.SyncBatchNorm


class ShortTrainings:
    """Short runs of the user's model from its state at the start of fit; a context manager.

    On enter the state of the module is saved (see the module docstring); every :meth:`run` starts
    from it and it is restored after each run and on exit, also when a run raised. The RNG is
    isolated for the whole block.

    Args:
        trainer: the running Trainer (its first optimizer gives class and settings).
        pl_module: the user's LightningModule.
        lr: learning rate for the runs; ``None`` keeps the user's base rate.
    """

    def __init__(self, trainer: pl.Trainer, pl_module: pl.LightningModule, lr: float | None) -> None:
        self.trainer = trainer
        self.pl_module = pl_module
        self.lr = lr
        self.in_place = not has_lazy_tensors(pl_module)
        self._stack = ExitStack()
        self._snapshot: ModuleSnapshot | None = None
        self._kept: list[RunState] = []

    def __enter__(self) -> ShortTrainings:
        self._stack.enter_context(isolate_rng())
        if self.in_place:
            try:
                self._stack.enter_context(suspended_hooks(self.pl_module, (Callback,)))
                self._stack.enter_context(detached_from_trainer(self.pl_module))
                self._stack.enter_context(_local_batchnorm(self.pl_module))
                # Saved last, restored first: the module goes back to this state after every run,
                # then the Trainer, the hooks and the batch norm classes come back.
                self._snapshot = ModuleSnapshot(self.pl_module)
                self._stack.callback(self._close)
            except BaseException:
                self._stack.close()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _close(self) -> None:
        for state in self._kept:
            state.close()
        self._kept.clear()
        if self._snapshot is not None:
            self._snapshot.restore()
            self._snapshot.close()
            self._snapshot = None

    def _model(self) -> pl.LightningModule:
        if self.in_place:
            return self.pl_module
        copy = detached_copy(self.pl_module)  # keeps the train/eval mode of every submodule
        for m in copy.modules():
            if isinstance(m, nn.SyncBatchNorm):
                m.__class__ = LocalBatchNorm  # type: ignore[assignment]
        return copy

    def _optimizer(self, model: pl.LightningModule) -> torch.optim.Optimizer:
        try:
            return user_optimizer(model, self.pl_module, self.trainer.optimizers, self.lr)
        except ShortTrainingError as err:
            raise CheckSkipped(f"cannot build the optimizer for a short run of the model: {err}", "lr") from err

    def run(
        self,
        batches: Sequence[Any],
        steps: int,
        *,
        seed: int,
        stop: StopRule | None = None,
        keep: bool = False,
        resume: RunState | None = None,
    ) -> RunResult:
        """Train on ``batches`` (cycled) for up to ``steps`` steps with the model's own
        ``training_step`` (see ``train_for``), then put the model back.

        With ``keep``, the result carries the state to continue the run from (``None`` for a model
        that trains as a copy, or after a non-finite loss); ``resume`` continues such a run (its
        state is freed then, or carried on when kept again) instead of starting from the start of
        fit. Every kept state is freed at the end of the block.

        Raises:
            CheckSkipped: no loss to train on, no optimizer, or the user's ``training_step``
                raised on a model without its Trainer.
        """
        model = self._model()
        try:
            optimizer = self._optimizer(model)
            notes, lrs = model_notes(model, optimizer), learning_rates(optimizer)
            if resume is not None:
                resume.put_back(optimizer)
            run = self._train(model, optimizer, batches, steps, seed, stop, resume, keep and self.in_place)
            state = resume if resume is not None and run.fresh_steps + run.fresh_evals == 0 else None
            if resume is not None and state is None:
                resume.close()
            if state is None and keep and self.in_place and run.rng is not None:
                state = RunState(run, model, optimizer)
                self._kept.append(state)
            del optimizer
            return RunResult(run, notes, lrs, state if keep else None)
        finally:
            if self._snapshot is not None:
                self._snapshot.restore()

    def evaluate(self, batches: Sequence[Any], *, seed: int, at: RunState | None = None) -> list[float]:
        """The loss of each batch with the model's own ``training_step``, forward only (no gradient,
        no step; train mode, as the points of a run's curve), every batch under the same random
        state: the model as at the start of fit under ``seed`` (as a run's first point), or, with
        ``at``, as a kept run left it, under that run's random state at its last point (the state
        is not used up). Then the model is put back.

        Raises:
            CheckSkipped: the user's ``training_step`` raised on a model without its Trainer.
        """
        model = self._model()
        try:
            if at is not None:
                at.put_back(None)
                assert at.run.rng is not None, "a kept run has its random state"
                rng = at.run.rng
            else:
                torch.manual_seed(seed)
                rng = current_random_state()
            return evaluate_losses(model, _loss, batches, rng)
        except ShortTrainingError as err:
            raise CheckSkipped(f"cannot evaluate the model: {err}") from err
        except Exception as err:  # the user's training_step without a Trainer
            raise CheckSkipped(f"the training_step of a short run raised {type(err).__name__}: {err}") from err
        finally:
            if self._snapshot is not None:
                self._snapshot.restore()

    @staticmethod
    def _train(
        model: pl.LightningModule,
        optimizer: torch.optim.Optimizer,
        batches: Sequence[Any],
        steps: int,
        seed: int,
        stop: StopRule | None,
        resume: RunState | None,
        resumable: bool,
    ) -> ShortRun:
        try:
            return train_for(
                model, _loss, optimizer, batches, steps, seed=seed, stop=stop,
                resume=None if resume is None else resume.run, resumable=resumable,
            )
        except ShortTrainingError as err:
            raise CheckSkipped(f"cannot train the model: {err}") from err
        except Exception as err:  # the user's training_step without a Trainer
            raise CheckSkipped(f"the training_step of a short run raised {type(err).__name__}: {err}") from err


def _loss(model: nn.Module, batch: Any) -> torch.Tensor | None:
    return training_step_loss(model, batch)  # type: ignore[arg-type]
