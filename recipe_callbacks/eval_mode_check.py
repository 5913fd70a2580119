"""EvalModeCheck (recipe steps 2c/2k): an evaluation you can trust runs the model in a sane eval mode."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from recipe_callbacks.core import eval_mode as core
from recipe_callbacks.core.dependencies import restored_buffers
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.core.task import TASKS, Task, aligned, class_first, infer_task, logits_of, per_sample_loss
from recipe_callbacks.plumbing.batch import BatchToXY, ForwardFn, ResolvedBatch, integer_inputs, resolve_batch
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail
from recipe_callbacks.plumbing.observe import observing
from recipe_callbacks.plumbing.validation import check_choice, check_float

if TYPE_CHECKING:
    import lightning.pytorch as pl

_DETERMINISM = "determinism"
_GAP = "train_eval_gap"
_COUNTED_COST = 5 / 3  # 5 forward passes of one batch, before the cost is measured


class EvalModeCheck(RecipeCallback):
    """Checks that eval mode is deterministic and reports the train-mode vs eval-mode loss gap
    (recipe steps 2c and 2k: an evaluation, and a fixed batch of predictions, you can trust).

    On the first training batch, before the first weight update, it runs the model twice in eval
    mode on that batch (``torch.no_grad``, isolated RNG) and compares the outputs: they must be
    identical. When they are not, a dropout or noise layer is active in eval mode
    (``F.dropout(x, p)`` with its default ``training=True``, a custom layer that ignores
    ``self.training``, a ``train()`` override): ``fail``, naming the first module whose output differs
    (children before parents, so the innermost one) and any module still in training mode after
    ``.eval()``.

    The model runs the way the user's step runs it (``forward_fn``, or read from ``forward``'s
    signature: dict batches of Hugging Face models, ``forward(idx, targets)``). On the same batch it
    computes the loss (the task's loss, from :mod:`recipe_callbacks.core.task`, paired the way the
    model's own loss pairs outputs and targets: the causal-LM shift, ``-100`` ignored)
    in train mode and in eval mode, at init and again at the end of the first training epoch after
    which every BatchNorm layer's running statistics have forgotten their init (29 updates at the
    default momentum 0.1; at once for momentum 0), or at the end of training if that comes first
    (a run too short for the statistics to settle is reported, not judged). At init the gap is
    information (BatchNorm's running statistics are still their defaults). Then an eval-mode loss above
    ``max_ratio`` times the train-mode loss (and above it by more than ``min_gap``) is a ``warn``
    pointing at BatchNorm statistics: it names BatchNorm layers with ``momentum=0``, layers whose
    statistics were never updated (kept in eval mode during training), and a batch size of 1 in
    train mode. A train-mode loss above the eval-mode one is dropout's normal cost and passes.

    No observer effect: no gradients, the RNG isolated, every train/eval flag and every buffer
    (BatchNorm running statistics and counters included) put back exactly.

    Does not run again on a run resumed from a checkpoint.

    Args:
        max_ratio: warn when the eval-mode loss exceeds this multiple of the train-mode loss ...
        min_gap: ... and exceeds it by more than this.
        tolerance: largest relative difference of two eval-mode outputs counted as equal (kernels
            that are not bit-deterministic on GPUs differ by about 1e-7).
        task: ``"multiclass"``, ``"binary"`` or ``"regression"`` for the loss; inferred when ``None``.
        on_fail: what a ``fail`` Finding does: ``"warn"``, ``"raise"`` or ``"ignore"``.
        input_key: where the input is in a batch; inferred when ``None``.
        target_key: where the target is in a batch; inferred when ``None``.
        batch_to_xy: a function ``batch -> (x, y)`` for batches of any other shape.
        forward_fn: how to run the model on a batch the way your step does (a method name or a
            function ``(pl_module, batch) -> output``); ``None`` reads it from ``forward``'s signature
            (``self(**batch)`` for Hugging Face models); see :class:`~recipe_callbacks.RecipeCallback`.

    Raises:
        ValueError: an argument out of range.
        TypeError: an argument of the wrong type.

    Logged (Finding values and scalars):
        - ``recipe.eval_mode_check/eval_difference`` (relative max difference of the two eval
          passes), ``modules_in_train_mode``: key ``determinism``.
        - ``recipe.eval_mode_check/init_train_loss``, ``init_eval_loss``, ``train_loss``,
          ``eval_loss``, ``ratio`` (eval over train, after the first epoch), ``batchnorm_layers``,
          ``cost_steps`` (measured, for the whole check): key ``train_eval_gap``.

    Cost: 2 eval-mode forward passes and 1 train-mode forward pass of one batch at init, 2 forward
    passes after the first epoch, all without gradients (about 5/3 of a training step; the
    measured figure is ``values["cost_steps"]``). Two more forward passes with a hook on every module
    only when eval mode is not deterministic.

    Example::

        trainer = Trainer(callbacks=[EvalModeCheck(), RecipeReport()])
    """

    one_off = True

    def __init__(
        self,
        max_ratio: float = 2.0,
        min_gap: float = 0.25,
        tolerance: float = 1e-5,
        task: Task | None = None,
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
        forward_fn: ForwardFn | str | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy, forward_fn)
        owner = type(self).__name__
        self.max_ratio = check_float(owner, "max_ratio", max_ratio, minimum=1.0, inclusive_minimum=True)
        self.min_gap = check_float(owner, "min_gap", min_gap, inclusive_minimum=True)
        self.tolerance = check_float(owner, "tolerance", tolerance)
        self.task: Task | None = None if task is None else check_choice(owner, "task", task, TASKS)
        self._reset()

    def _reset(self) -> None:
        self._state = "idle"  # idle -> waiting (init measured, the epoch end to come) -> done
        self._batch: Any = None  # a copy of the first batch, and where its input and target are
        self._resolved: ResolvedBatch | None = None
        self._init: tuple[float, float] | None = None
        self._tracked: dict[str, int] = {}
        self._batch_size = 0
        self._seconds = 0.0

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._reset()

    # ----------------------------------------------------------------- hooks
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
        try:
            with self.stopwatch() as watch:
                self._at_init(trainer, pl_module, batch)
        except CheckSkipped as err:
            self.skip(trainer, err.reason, err.argument, key=err.key)
        self._seconds += watch.seconds
        self.finish_early()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._state == "waiting" and core.updates_missing(pl_module, self._tracked) == 0:
            when = f"the end of epoch {trainer.current_epoch} (step {trainer.global_step})"
            self._after_epoch(trainer, pl_module, when)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._state == "waiting":
            self._after_epoch(trainer, pl_module, f"the end of training (step {trainer.global_step})")
        elif self._state == "idle" and not self.is_resumed(trainer) and not self.early_finished:
            self.skip(trainer, "no training batch was seen, so the check did not run")
            self.finish_early()
        super().on_train_end(trainer, pl_module)

    # ----------------------------------------------------------------- running the model
    def _forward(self, pl_module: pl.LightningModule) -> Any:
        """The model's output on the kept batch, run the way the user's step does."""
        assert self._resolved is not None
        return self.run_model(pl_module, self._batch, self._resolved)

    # ----------------------------------------------------------------- at init
    def _at_init(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        if self.resolve(trainer, batch, key=_DETERMINISM) is None:
            return
        self._batch = apply_to_collection(batch, torch.Tensor, lambda t: t.detach().clone())
        self._resolved = resolve_batch(self._batch, self.input_key, self.target_key, self.batch_to_xy)
        x = self._resolved.x
        self._batch_size = int(x.shape[0]) if x.ndim else 0
        try:
            with restored_buffers(pl_module), observing(pl_module):
                first, second = self._forward(pl_module), self._forward(pl_module)
                in_train = [n or type(pl_module).__name__ for n, m in pl_module.named_modules() if m.training]
        except Exception as err:  # a forward that wants more than the batch: say so, never break training
            raise CheckSkipped(f"running the model on the first batch failed: {type(err).__name__}: {err}",
                               "forward_fn", key=_DETERMINISM) from err
        a, b = logits_of(first), logits_of(second)
        if a is None or b is None or not a.is_floating_point():
            raise CheckSkipped(f"the model returned a {type(first).__name__}, not a float tensor", "forward_fn",
                               key=_DETERMINISM)
        self._report_determinism(trainer, pl_module, core.relative_difference(a, b), in_train)
        self._tracked = core.tracked_counts(pl_module)
        self._init = self._losses(pl_module, eval_output=a)
        self._state = "waiting"
        train_loss, eval_loss = self._init
        self.report(
            trainer, "pass",
            f"at init, on the first batch: train-mode loss {train_loss:.4g}, eval-mode loss {eval_loss:.4g} (judged "
            "after the first epoch, when BatchNorm statistics have been collected).",
            {"init_train_loss": train_loss, "init_eval_loss": eval_loss}, key=_GAP, log_values=False,
        )

    def _report_determinism(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, difference: float, in_train: list[str]
    ) -> None:
        values = {"eval_difference": difference, "modules_in_train_mode": float(len(in_train))}
        if difference <= self.tolerance:
            self.report(trainer, "pass",
                        "two eval-mode forward passes of the first batch give identical outputs (dropout and noise "
                        "are off in eval mode).", values, key=_DETERMINISM)
            return
        culprit = self._culprit(pl_module)
        root = type(pl_module).__name__
        where = ""
        if culprit:
            own = " (the LightningModule's own forward)" if culprit == root else ""
            where = f"; the randomness enters in '{culprit}'{own}: its inputs agree in both passes, its outputs do not"
        still = f"; still in training mode after .eval(): {in_train[:6]}" if in_train else ""
        self.report(
            trainer, "fail",
            f"two eval-mode forward passes of the same batch differ (relative max difference {difference:.3g}): "
            f"something random is active in eval mode{where}{still}. Validation figures and predictions are noisy.",
            values,
            "use nn.Dropout modules (they follow model.eval()), or pass training=self.training to F.dropout (its "
            "default is training=True); make custom noise layers return their input when not self.training; do not "
            "override train()/eval() without calling super().",
            key=_DETERMINISM,
        )

    def _culprit(self, pl_module: pl.LightningModule) -> str | None:
        passes: list[list[tuple[str, torch.Tensor | None, torch.Tensor]]] = [[], []]
        current: list[list[tuple[str, torch.Tensor | None, torch.Tensor]]] = [passes[0]]

        def hook(name: str) -> Any:
            def record(_: nn.Module, args: Any, output: Any) -> None:
                fp = core.fingerprint(output)
                if fp is not None:
                    current[0].append((name, core.fingerprint(args) if args else torch.zeros(3), fp))

            return record

        handles: list[RemovableHandle] = [
            m.register_forward_hook(hook(n or type(pl_module).__name__)) for n, m in pl_module.named_modules()
        ]
        try:
            with restored_buffers(pl_module), observing(pl_module):
                self._forward(pl_module)
                current[0] = passes[1]
                self._forward(pl_module)
        except Exception:
            return None
        finally:
            for h in handles:
                h.remove()
        return core.first_differing(passes[0], passes[1], self.tolerance)

    # ----------------------------------------------------------------- the gap
    def _losses(self, pl_module: pl.LightningModule, eval_output: torch.Tensor | None = None) -> tuple[float, float]:
        """(train-mode loss, eval-mode loss) on the kept batch.

        Raises:
            CheckSkipped: no target, a forward that fails, or no task loss for these outputs.
        """
        resolved = self._resolved
        assert resolved is not None
        if resolved.y is None:
            raise CheckSkipped("the batch has no target, so the train/eval loss gap is not measured", "target_key",
                               key=_GAP)
        try:
            with restored_buffers(pl_module):
                if eval_output is None:
                    with observing(pl_module):
                        eval_output = logits_of(self._forward(pl_module))
                with observing(pl_module, eval_mode=False):  # the modes training_step sees
                    train_output = logits_of(self._forward(pl_module))
        except Exception as err:
            raise CheckSkipped(f"the train-mode forward failed: {type(err).__name__}: {err}", "forward_fn",
                               key=_GAP) from err
        if eval_output is None or train_output is None:
            raise CheckSkipped("the model returned no logits in train mode", "forward_fn", key=_GAP)
        inputs = integer_inputs(self._batch, resolved)
        (train_output, y), (eval_output, _) = (aligned(o, resolved.y, inputs) for o in (train_output, eval_output))
        task = self.task or infer_task(train_output, y)
        if task is None:
            raise CheckSkipped(f"could not tell the task from outputs {tuple(train_output.shape)} and targets "
                               f"{tuple(y.shape)}", "task", key=_GAP)
        try:
            if task == "multiclass":
                train_output, eval_output = class_first(train_output, y), class_first(eval_output, y)
            return (float(per_sample_loss(train_output, y, task).mean()),
                    float(per_sample_loss(eval_output, y, task).mean()))
        except (RuntimeError, ValueError) as err:
            raise CheckSkipped(f"could not compute the {task} loss: {err}", "task", key=_GAP) from err

    def _after_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, when: str) -> None:
        self._state = "done"
        missing = core.updates_missing(pl_module, self._tracked)
        try:
            with self.stopwatch() as watch:
                losses = self._losses(pl_module)
        finally:
            self._batch = self._resolved = None
        assert self._init is not None
        self._seconds += watch.seconds
        train_loss, eval_loss = losses
        gap = core.judge_gap(train_loss, eval_loss, self.max_ratio, self.min_gap)
        causes = core.batchnorm_causes(pl_module, self._tracked)
        values = {
            "init_train_loss": self._init[0], "init_eval_loss": self._init[1], "train_loss": train_loss,
            "eval_loss": eval_loss, "ratio": gap.ratio, "batchnorm_layers": float(len(causes.layers)),
            "cost_steps": _COUNTED_COST,
        }
        head = (
            f"on the first batch, train-mode vs eval-mode loss {self._init[0]:.4g} vs {self._init[1]:.4g} at init and "
            f"{train_loss:.4g} vs {eval_loss:.4g} at {when} (eval/train {gap.ratio:.3g})"
        )
        if gap.verdict == "ok":
            self.report(trainer, "pass", head + ".", values, key=_GAP)
        elif missing > 0:
            values["updates_missing"] = float(missing)
            self.report(
                trainer, "pass",
                f"{head}: not judged, since the BatchNorm running statistics had {missing} updates too few to forget "
                "their init (a run this short cannot tell a bug from their normal lag).", values, key=_GAP,
            )
        else:
            self.report(
                trainer, "warn",
                f"{head}: the model does much worse in eval mode than in train mode on the same batch, at the same "
                f"weights. {self._batchnorm_text(causes)}",
                values,
                "Eval mode differs from train mode mostly through BatchNorm's running statistics: give BatchNorm a "
                "momentum in (0, 1) (default 0.1) or None, keep it in train mode while training (no .eval() or "
                "requires_grad-style freezing of BatchNorm in training_step), and train with batches larger than 1 "
                "(or use GroupNorm/LayerNorm for tiny batches).",
                key=_GAP,
            )
        self.state_cost(self._seconds, key=_GAP)

    def _batchnorm_text(self, found: core.BatchNormCauses) -> str:
        if not found.layers:
            return "The model has no BatchNorm layer: look at other layers that behave differently in eval mode."
        causes = []
        if found.zero_momentum:
            causes.append(f"momentum=0 (running statistics never move from their init) in {found.zero_momentum[:6]}")
        if found.never_updated:
            causes.append(f"running statistics never updated during the epoch (the layer was in eval mode) in "
                          f"{found.never_updated[:6]}")
        if self._batch_size == 1:
            causes.append("a batch size of 1 in train mode (each sample normalised by its own statistics)")
        if not causes:
            return (f"The model has {len(found.layers)} BatchNorm layers whose running statistics do not describe the "
                    "batch statistics seen in training.")
        return "BatchNorm: " + "; ".join(causes) + "."
