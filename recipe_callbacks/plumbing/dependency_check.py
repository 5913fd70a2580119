"""What ``BatchIndependenceCheck`` and ``CausalityCheck`` share: run the model once on the first
training batch with every tensor input differentiable, choose gradients or perturbation, and turn
the measurement into a Finding on every rank together.

The math (dependency matrices, hooks, verdicts) is in :mod:`recipe_callbacks.core.dependencies`;
each check's prose is in its own module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from typing_extensions import override

from recipe_callbacks.core.dependencies import (
    EmbeddingCapture,
    OutputRecorder,
    batchnorm_in_eval,
    carries,
    differentiable_batch,
    first_tensor,
    floating_tensors,
    restored_buffers,
)
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.core.snapshot import has_lazy_tensors
from recipe_callbacks.plumbing.batch import ResolvedBatch, resolve_batch
from recipe_callbacks.plumbing.callback_base import FirstBatchCheck
from recipe_callbacks.plumbing.observe import detached_copy, observing

if TYPE_CHECKING:
    import lightning.pytorch as pl

Method = Literal["auto", "gradient", "perturbation"]
METHODS: tuple[str, ...] = ("auto", "gradient", "perturbation")


@dataclass
class GradientInputs:
    """One forward pass with every tensor input differentiable, and the method it allows.

    ``method`` is ``"gradient"`` when ``out`` has a graph to ``inputs`` (float inputs; embedding
    outputs of integer inputs), else ``"perturbation"`` (``out`` is then ``None`` when no
    forward pass was made, under ``method="perturbation"``).
    """

    method: str
    out: torch.Tensor | None
    inputs: list[torch.Tensor]
    names: list[str]
    target_like: list[bool]
    recorder: OutputRecorder
    forwards: int

    @property
    def where(self) -> str:
        """What the gradient is taken at, for the summary."""
        return ", ".join(self.names) if self.out is not None else "the input"


class OneOffDependencyCheck(FirstBatchCheck):
    """Base of the two dependency checks: run once on the first training batch.

    Subclasses set ``method``, ``train_mode`` and ``max_dependency``, measure (``_measure``,
    raising :class:`~recipe_callbacks.core.skip.CheckSkipped` to skip), say whether the measurement
    fails (``_failed``) and report it (``_report``).
    """

    method: Method
    train_mode: bool
    max_dependency: float

    def _measure(self, pl_module: pl.LightningModule, batch: Any, resolved: ResolvedBatch) -> Any:
        raise NotImplementedError

    def _failed(self, measured: Any) -> bool:
        raise NotImplementedError

    def _report(self, trainer: pl.Trainer, measured: Any) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- running the model
    def _model_output(self, pl_module: pl.LightningModule, batch: Any, resolved: ResolvedBatch | None = None,
                      x: torch.Tensor | None = None) -> torch.Tensor:
        """The model's floating-point output on ``batch`` (or on ``batch`` with input ``x``), run the
        way the user's step does; the same dropout masks on every call (the RNG is isolated)."""
        torch.manual_seed(0)
        if resolved is None:
            resolved = resolve_batch(batch, self.input_key, self.target_key, self.batch_to_xy)
        out = first_tensor(self.run_model(pl_module, batch, resolved, x))
        if out is None or not out.is_floating_point():
            raise CheckSkipped("the model returned no floating-point tensor to differentiate", "forward_fn")
        return out

    def _gradient_inputs(
        self, pl_module: pl.LightningModule, batch: Any, resolved: ResolvedBatch, batch_size: int
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[str], list[bool], OutputRecorder]:
        """One forward pass with every tensor input differentiable: the output, the tensors the
        gradient is taken at (float inputs; embedding outputs of integer inputs), their names, whether
        each carries the target (a decoder input fed the answer), and the recorded module outputs."""
        new_batch, leaves, ids = differentiable_batch(batch, batch_size)
        new_resolved = resolve_batch(new_batch, self.input_key, self.target_key, self.batch_to_xy)
        captures = [EmbeddingCapture(pl_module, t) for t in ids]
        recorder = OutputRecorder(pl_module)
        with ExitStack() as stack:
            for capture in captures:
                stack.enter_context(capture)
            stack.enter_context(recorder)
            out = self._model_output(pl_module, new_batch, new_resolved)
        inputs: list[torch.Tensor] = []
        names: list[str] = []
        target_like: list[bool] = []
        x = resolved.x
        for leaf, original in zip(leaves, floating_tensors(batch, batch_size), strict=True):
            inputs.append(leaf)
            names.append("the input" if original is x else f"a {tuple(leaf.shape)} input")
            target_like.append(original is not x and carries(original, resolved.y))
        for capture, token_ids in zip(captures, ids, strict=True):
            if capture.output is not None and all(capture.output is not t for t in inputs):
                inputs.append(capture.output)
                names.append(f"the output of embedding `{capture.name}`")
                target_like.append(token_ids is not x and carries(token_ids, resolved.y))
        return out, inputs, names, target_like, recorder

    def _choose_method(
        self,
        pl_module: pl.LightningModule,
        batch: Any,
        resolved: ResolvedBatch,
        batch_size: int,
        shape: Callable[[torch.Tensor], torch.Tensor],
        keep: Callable[[torch.Tensor], bool] = lambda t: True,
    ) -> GradientInputs:
        """Gradients where the inputs (those ``keep`` accepts) have them, perturbation otherwise, as
        ``method`` allows; ``shape`` puts the model output in the layout the check reads.

        Raises:
            CheckSkipped: ``method="gradient"`` on a model whose input has no gradient.
        """
        if self.method == "perturbation":
            return GradientInputs("perturbation", None, [], [], [], OutputRecorder(pl_module), 0)
        raw_out, found, names, carrying, recorder = self._gradient_inputs(pl_module, batch, resolved, batch_size)
        out = shape(raw_out)
        chosen = [k for k, t in enumerate(found) if keep(t)]
        inputs = [found[k] for k in chosen]
        if inputs and out.requires_grad:
            method = "gradient"
        elif self.method == "gradient":
            raise CheckSkipped("the input has no gradient (integer ids that reach no nn.Embedding)", "method")
        else:
            method = "perturbation"
        return GradientInputs(method, out, inputs, [names[k] for k in chosen], [carrying[k] for k in chosen],
                              recorder, 1)

    @staticmethod
    @contextmanager
    def _probing(pl_module: pl.LightningModule, train_mode: bool) -> Iterator[int]:
        """The model as in training (or in eval), BatchNorm in eval, grad on, RNG isolated, modes and
        buffers restored on exit; yields how many BatchNorm layers were put in eval mode."""
        with observing(pl_module, eval_mode=not train_mode, grad=True), restored_buffers(pl_module):
            yield batchnorm_in_eval(pl_module)

    def _setup(self, method: str, where: str, batchnorms: int) -> str:
        """How the dependency was measured, for the summary."""
        return (
            f"{self.max_dependency:g} relative tolerance, "
            + (f"gradients at {where}, " if method == "gradient" else "perturbing the input, ")
            + ("training mode" if self.train_mode else "eval mode")
            + (f" with {batchnorms} BatchNorm layer(s) in eval mode" if batchnorms and self.train_mode else "")
        )

    # ----------------------------------------------------------------- the hook
    @override
    def check_first_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        measured: Any = None
        resolved = self.resolve(trainer, batch)
        if resolved is not None:
            try:
                with self.stopwatch() as watch:
                    # Lazy parameters not materialised yet would draw their initial weights here,
                    # from the isolated RNG, not where the user's first step draws them: a copy
                    # (whose lazy parameters hold no memory yet) is measured instead.
                    model = detached_copy(pl_module) if has_lazy_tensors(pl_module) else pl_module
                    measured = self._measure(model, batch, resolved)
            except CheckSkipped as err:
                self.skip(trainer, err.reason, err.argument)
            except Exception as err:  # a diagnostic must never crash the user's training
                self.skip(trainer, f"running the model on the batch failed: {type(err).__name__}: {err}; give the "
                          "way your step runs it", "forward_fn")
        local_fail = measured is not None and self._failed(measured)
        # Every rank takes part, so that a failure under on_fail="raise" stops all of them together.
        any_fail = trainer.strategy.reduce_boolean_decision(local_fail, all=False)
        if measured is not None and (local_fail or not any_fail):
            with watch:  # the matrix picture is part of the check's cost (the stopwatch adds up)
                self._report(trainer, measured)
            self.state_cost(watch.seconds)
        elif any_fail:
            self.report(trainer, "fail", "the check failed on another rank (see that rank's Finding)")
