"""LossCompatibilityCheck (recipe step 2d, "verify loss"): do the outputs fit the loss they are fed to?"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from recipe_callbacks.core import loss_compat as core
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.core.task import logits_of
from recipe_callbacks.plumbing.batch import BatchToXY
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail
from recipe_callbacks.plumbing.observe import loss_from_step_output
from recipe_callbacks.plumbing.validation import check_float

if TYPE_CHECKING:
    import lightning.pytorch as pl

_FLOAT64_LIMIT = 1_000_000  # outputs up to this many elements are compared in float64, larger ones in float32


class LossCompatibilityCheck(RecipeCallback):
    """Checks that the model's outputs, the targets and the loss fit together, by matching the loss
    ``training_step`` returned on the first batch against the computations it could be (recipe step
    2d, "verify loss").

    A forward hook on the LightningModule, registered for the first training step only, keeps the
    output of ``training_step``'s own ``self(x)`` (when ``training_step`` calls a submodule instead,
    the output of the last top-level submodule that ran); the loss comes from
    ``on_before_backward`` (or the step's output). Candidates (see
    :mod:`recipe_callbacks.core.loss_compat`) are computed from that output and the batch's target,
    and the user's value is matched against them within ``rtol``:

    - ``fail``: the loss matches a mistake and no correct computation: probabilities (rows in [0, 1]
      summing to 1) into ``F.cross_entropy`` (a double softmax), sigmoid outputs into BCE-with-logits,
      a softmax/sigmoid applied in ``training_step`` before such a loss, ``F.nll_loss`` on logits or
      probabilities, a ``(B, 1)`` output against a ``(B,)`` target broadcast to ``(B, B)`` in
      MSE/L1/Huber. The summary says which computation it is; the advice exactly what to change.
    - ``warn``: one-hot targets in a regression loss; integer class ids in a regression loss.
    - ``pass``: the loss matches a correct computation (named), or matches none (a loss with extra
      terms: label smoothing, class weights, a regulariser; nothing is claimed then).

    Class-id candidates use ``ignore_index=-100`` and, for ``(B, T, V)`` outputs, also labels shifted
    by one position, as Hugging Face causal LMs compute their loss inside; flattened ``(B*T, V)``
    outputs against ``(B, T)`` targets are understood. Does not run again on a resumed run.

    Args:
        rtol: relative tolerance of a match between the user's loss and a candidate (the user's float32
            loss and the float64 candidates agree to about 1e-6).
        on_fail: what a ``fail`` Finding does: ``"warn"``, ``"raise"`` or ``"ignore"``.
        input_key: where the input is in a batch (unused: the output comes from the hook); kept for
            the common interface.
        target_key: where the target is in a batch; inferred when ``None``.
        batch_to_xy: a function ``batch -> (x, y)`` for batches of any other shape.

    Raises:
        ValueError: an argument out of range.
        TypeError: an argument of the wrong type.

    Logged:
        - ``recipe.loss_compatibility_check/user_loss``, ``matched_loss`` (the candidate's value, when one
          matched), ``candidates`` (how many were computed), ``cost_steps`` (the check's own time over
          the run's median training step, with ``cost_seconds``; 0, no extra pass, until the next
          steps are timed): Finding values and scalars.
        - ``recipe.loss_compatibility_check/candidates``: text, every candidate with its value.

    Cost: zero extra forward passes (the hook reads the first step's output); the candidates are a few
    loss computations on that one output, measured in ``values["cost_steps"]`` (a small fraction of a
    step). Nothing after the first step.

    Example::

        trainer = Trainer(callbacks=[LossCompatibilityCheck(), RecipeReport()])
    """

    one_off = True

    def __init__(
        self,
        rtol: float = 1e-4,
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy)
        self.rtol = check_float(type(self).__name__, "rtol", rtol, maximum=0.5)
        self._reset()

    def _reset(self) -> None:
        self._state = "idle"  # idle -> capturing (first step) -> done
        self._handles: list[RemovableHandle] = []
        self._output: torch.Tensor | None = None
        self._child_output: tuple[str, torch.Tensor] | None = None
        self._loss: float | None = None
        self._batch: Any = None
        self._watch = self.stopwatch()  # the check's own work, summed

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._remove_hooks()
        self._reset()

    # ----------------------------------------------------------------- capture
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self._state != "idle" or self.early_finished:
            return
        self._state = "done"
        if self.is_resumed(trainer):
            return
        with self._watch:
            self._state = "capturing"
            self._batch = batch
            self._handles.append(pl_module.register_forward_hook(self._on_module))
            for name, child in pl_module.named_children():
                self._handles.append(child.register_forward_hook(self._on_child(name)))

    def _on_module(self, module: nn.Module, args: Any, output: Any) -> None:
        # training_step's own forward only: observers run in eval mode or without gradients
        if self._output is None and module.training and torch.is_grad_enabled():
            out = logits_of(output)
            if out is not None and out.is_floating_point():
                self._output = out.detach()

    def _on_child(self, name: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._output is None and module.training and torch.is_grad_enabled():
                out = logits_of(output)
                if out is not None and out.is_floating_point():
                    self._child_output = (name, out.detach())

        return hook

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self._state == "capturing" and self._loss is None and loss.numel() == 1:
            scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
            self._loss = float(loss.detach()) * scale  # Lightning divides by the accumulation factor
            self._remove_hooks()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._state != "capturing":
            return
        self._state = "done"
        self._remove_hooks()
        if self._loss is None:
            step_loss = loss_from_step_output(outputs)
            if step_loss is not None and step_loss.numel() == 1:
                scale = trainer.accumulate_grad_batches if pl_module.automatic_optimization else 1
                self._loss = float(step_loss.detach()) * scale
        try:
            with self._watch:
                judged = self._judge(trainer)
            if judged:
                self.state_cost(self._watch.seconds)
        finally:
            self._output = self._child_output = self._batch = None
            self.finish_early()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._state == "idle" and not self.is_resumed(trainer) and not self.early_finished:
            self.skip(trainer, "no training batch was seen, so the check did not run")
            self.finish_early()
        super().on_train_end(trainer, pl_module)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    # ----------------------------------------------------------------- judging
    def _judge(self, trainer: pl.Trainer) -> bool:
        """Report the verdict on the first step's loss; ``False`` when the batch had no input to find.

        Raises:
            CheckSkipped: no target, no output or no finite loss to compare.
        """
        resolved = self.resolve(trainer, self._batch)
        if resolved is None:
            return False
        if resolved.y is None:
            raise CheckSkipped("the first batch has no target to compare the outputs with", "target_key")
        source = "the output of forward"
        output = self._output
        if output is None and self._child_output is not None:
            source = f"the output of submodule '{self._child_output[0]}' (training_step does not call self(x))"
            output = self._child_output[1]
        if output is None:
            raise CheckSkipped("training_step did not call the model (self(x) or a submodule) with gradients, so "
                               "there was no output to compare", "batch_to_xy")
        if self._loss is None or not math.isfinite(self._loss):
            raise CheckSkipped(f"no finite loss from the first training step (got {self._loss})")
        dtype = torch.float64 if output.numel() <= _FLOAT64_LIMIT else torch.float32
        target = resolved.y.detach().to(output.device)
        found = core.candidates(output, target, dtype)
        ident = core.identify(self._loss, found, self.rtol)
        self._log_candidates(trainer, ident)
        values = {"user_loss": self._loss, "candidates": float(len(found)), "cost_steps": 0.0}
        shapes = f"output {tuple(output.shape)} ({output.dtype}), target {tuple(target.shape)} ({target.dtype})"
        best = ident.best
        if best is None:
            self.report(
                trainer, "pass",
                f"the first step's loss {self._loss:.5g} matches none of the {len(found)} candidate computations from "
                f"{source} ({shapes}): a loss with extra terms (label smoothing, class weights, a regulariser), so "
                "nothing is claimed about it.",
                values,
            )
            return True
        values["matched_loss"] = best.value
        head = (f"the first step's loss {self._loss:.5g} equals {best.name} = {best.value:.5g} "
                f"({best.meaning}; {shapes})")
        if self._output is None:
            head += f", read from {source}"
        if best.severity == "correct":
            self.report(trainer, "pass", f"{head}: outputs, targets and loss fit together.", values)
            return True
        verdict = ("Training runs, but on the wrong loss." if best.severity == "fail"
                   else "Probably not the loss you mean.")
        self.report(trainer, best.severity, f"{head}. {verdict}", values, best.fix)
        return True

    def _log_candidates(self, trainer: pl.Trainer, ident: core.Identification) -> None:
        matched = {c.name for c in ident.matches}
        lines = [f"user loss: {ident.loss:.6g}", "", "| candidate | value | kind | matches |", "|---|---|---|---|"]
        lines += [f"| {c.name} | {c.value:.6g} | {c.severity} | {'yes' if c.name in matched else ''} |"
                  for c in ident.candidates]
        self.log_text(trainer, "candidates", "\n".join(lines))
