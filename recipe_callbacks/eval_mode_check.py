"""EvalModeCheck (recipe steps 2c/2k): an evaluation you can trust runs the model in a sane eval mode."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from recipe_callbacks.core import eval_mode as core
from recipe_callbacks.core.cost_clock import CostClock
from recipe_callbacks.core.task import TASKS, Task, class_first, infer_task, logits_of, per_sample_loss
from recipe_callbacks.plumbing.batch import BatchToXY
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail, Status
from recipe_callbacks.plumbing.observe import observing
from recipe_callbacks.plumbing.validation import check_choice, check_float

if TYPE_CHECKING:
    import lightning.pytorch as pl

_NORMS = nn.modules.batchnorm._BatchNorm
_FORGOTTEN = 0.05  # BatchNorm statistics are judged once their init weighs less than this
_CUMULATIVE_UPDATES = 30  # updates a cumulative average (momentum=None) is given
_DETERMINISM = "determinism"
_GAP = "train_eval_gap"


@contextmanager
def _buffers_kept(module: nn.Module) -> Iterator[None]:
    """Put every buffer back as it was (BatchNorm running statistics and their counters, the power
    iteration vectors of spectral norm, ...), whatever a train-mode forward did to them."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def _batches_tracked(module: nn.Module) -> int:
    """A BatchNorm layer's update counter (0 when it keeps none)."""
    count = getattr(module, "num_batches_tracked", None)
    return int(count) if isinstance(count, torch.Tensor) else 0


def _fingerprint(output: Any) -> torch.Tensor | None:
    """Sum, absolute sum and sum of squares of the first tensor of ``output`` (``None`` if there is none)."""
    t = logits_of(output)
    if t is None:
        return None
    t = t.detach().to(torch.float64)
    return torch.stack([t.sum(), t.abs().sum(), (t * t).sum()])


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

    On the same batch it computes the loss (the task's loss, from :mod:`recipe_callbacks.core.task`)
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
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy)
        owner = type(self).__name__
        self.max_ratio = check_float(owner, "max_ratio", max_ratio, minimum=1.0, inclusive_minimum=True)
        self.min_gap = check_float(owner, "min_gap", min_gap, inclusive_minimum=True)
        self.tolerance = check_float(owner, "tolerance", tolerance)
        self.task: Task | None = None if task is None else check_choice(owner, "task", task, TASKS)
        self._reset()

    def _reset(self) -> None:
        self._state = "idle"  # idle -> waiting (init measured, the epoch end to come) -> done
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._init: tuple[float, float] | None = None
        self._tracked: dict[str, int] = {}
        self._batch_size = 0
        self._clock = CostClock()

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._reset()

    # ----------------------------------------------------------------- hooks
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._clock.step_started()
        if self._state != "idle" or self.early_finished:
            return
        self._state = "done"
        if self.is_resumed(trainer):
            return
        with self._clock.own():
            self._at_init(trainer, pl_module, batch)
        self.finish_early()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._clock.step_ended()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._state == "waiting" and self._updates_missing(pl_module) == 0:
            when = f"the end of epoch {trainer.current_epoch} (step {trainer.global_step})"
            self._after_epoch(trainer, pl_module, when)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._state == "waiting":
            self._after_epoch(trainer, pl_module, f"the end of training (step {trainer.global_step})")
        elif self._state == "idle" and not self.is_resumed(trainer) and not self.early_finished:
            self.skip(trainer, "no training batch was seen, so the check did not run")
            self.finish_early()

    # ----------------------------------------------------------------- at init
    def _at_init(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        resolved = self.resolve(trainer, batch, key=_DETERMINISM)
        if resolved is None:
            return
        x = resolved.x.detach().clone()
        self._batch_size = int(x.shape[0]) if x.ndim else 0
        try:
            with _buffers_kept(pl_module), observing(pl_module):
                first, second = pl_module(x), pl_module(x)
                in_train = [n or type(pl_module).__name__ for n, m in pl_module.named_modules() if m.training]
        except Exception as err:  # a forward that wants more than x: say so, never break training
            self.skip(trainer, f"forward(x) failed on the resolved input: {type(err).__name__}: {err}",
                      "batch_to_xy", key=_DETERMINISM)
            return
        a, b = logits_of(first), logits_of(second)
        if a is None or b is None or not a.is_floating_point():
            self.skip(trainer, f"forward(x) returned a {type(first).__name__}, not a float tensor", "batch_to_xy",
                      key=_DETERMINISM)
            return
        self._report_determinism(trainer, pl_module, x, core.relative_difference(a, b), in_train)
        self._x = x
        self._y = resolved.y.detach().clone() if resolved.y is not None else None
        self._tracked = {n: _batches_tracked(m) for n, m in pl_module.named_modules()
                         if isinstance(m, _NORMS) and m.num_batches_tracked is not None}
        losses = self._losses(trainer, pl_module, eval_output=a)
        if losses is None:
            return
        self._init = losses
        self._state = "waiting"
        train_loss, eval_loss = losses
        self.report(
            trainer, "pass",
            f"at init, on the first batch: train-mode loss {train_loss:.4g}, eval-mode loss {eval_loss:.4g} (judged "
            "after the first epoch, when BatchNorm statistics have been collected).",
            {"init_train_loss": train_loss, "init_eval_loss": eval_loss}, key=_GAP, log_values=False,
        )

    def _report_determinism(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, x: torch.Tensor, difference: float,
        in_train: list[str],
    ) -> None:
        values = {"eval_difference": difference, "modules_in_train_mode": float(len(in_train))}
        if difference <= self.tolerance:
            self.report(trainer, "pass",
                        "two eval-mode forward passes of the first batch give identical outputs (dropout and noise "
                        "are off in eval mode).", values, key=_DETERMINISM)
            return
        culprit = self._culprit(pl_module, x)
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

    def _culprit(self, pl_module: pl.LightningModule, x: torch.Tensor) -> str | None:
        passes: list[list[tuple[str, torch.Tensor | None, torch.Tensor]]] = [[], []]
        current: list[list[tuple[str, torch.Tensor | None, torch.Tensor]]] = [passes[0]]

        def hook(name: str) -> Any:
            def record(_: nn.Module, args: Any, output: Any) -> None:
                fp = _fingerprint(output)
                if fp is not None:
                    current[0].append((name, _fingerprint(args) if args else torch.zeros(3), fp))

            return record

        handles: list[RemovableHandle] = [
            m.register_forward_hook(hook(n or type(pl_module).__name__)) for n, m in pl_module.named_modules()
        ]
        try:
            with _buffers_kept(pl_module), observing(pl_module):
                pl_module(x)
                current[0] = passes[1]
                pl_module(x)
        except Exception:
            return None
        finally:
            for h in handles:
                h.remove()
        return core.first_differing(passes[0], passes[1], self.tolerance)

    # ----------------------------------------------------------------- the gap
    def _losses(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, eval_output: torch.Tensor | None = None
    ) -> tuple[float, float] | None:
        """(train-mode loss, eval-mode loss) on the fixed batch; ``None`` after a skip."""
        x, y = self._x, self._y
        if x is None:
            return None
        if y is None:
            self.skip(trainer, "the batch has no target, so the train/eval loss gap is not measured", "target_key",
                      key=_GAP)
            return None
        try:
            with _buffers_kept(pl_module):
                if eval_output is None:
                    with observing(pl_module):
                        eval_output = logits_of(pl_module(x))
                with observing(pl_module, eval_mode=False):  # the modes training_step sees
                    train_output = logits_of(pl_module(x))
        except Exception as err:
            self.skip(trainer, f"the train-mode forward failed: {type(err).__name__}: {err}", "batch_to_xy", key=_GAP)
            return None
        if eval_output is None or train_output is None:
            return None
        if train_output.ndim == 2 and y.ndim >= 2 and train_output.shape[0] == y.numel():
            y = y.reshape(-1)  # flattened (B*T, V) logits for (B, T) targets
        task = self.task or infer_task(train_output, y)
        if task is None:
            self.skip(trainer, f"could not tell the task from outputs {tuple(train_output.shape)} and targets "
                      f"{tuple(y.shape)}", "task", key=_GAP)
            return None
        try:
            if task == "multiclass":
                train_output, eval_output = class_first(train_output, y), class_first(eval_output, y)
            return (float(per_sample_loss(train_output, y, task).mean()),
                    float(per_sample_loss(eval_output, y, task).mean()))
        except (RuntimeError, ValueError) as err:
            self.skip(trainer, f"could not compute the {task} loss: {err}", "task", key=_GAP)
            return None

    def _updates_missing(self, pl_module: pl.LightningModule) -> int:
        """How many more BatchNorm updates the layer furthest behind needs before its running statistics
        have forgotten their init (below 5% weight left: 29 updates at momentum 0.1); momentum 0 needs none
        (they never move: that is what to report)."""
        missing = 0
        for name, m in pl_module.named_modules():
            if not isinstance(m, _NORMS) or name not in self._tracked or m.num_batches_tracked is None:
                continue
            momentum = m.momentum
            if momentum == 0:
                continue
            needed = _CUMULATIVE_UPDATES if momentum is None or momentum >= 1 else math.ceil(
                math.log(_FORGOTTEN) / math.log(1.0 - momentum))
            missing = max(missing, needed - (_batches_tracked(m) - self._tracked[name]))
        return missing

    def _after_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, when: str) -> None:
        self._state = "done"
        missing = self._updates_missing(pl_module)
        with self._clock.own():
            losses = self._losses(trainer, pl_module)
        self._x = self._y = None
        if losses is None or self._init is None:
            return
        train_loss, eval_loss = losses
        gap = core.judge_gap(train_loss, eval_loss, self.max_ratio, self.min_gap)
        norms: list[tuple[str, nn.Module]] = [(n, m) for n, m in pl_module.named_modules() if isinstance(m, _NORMS)]
        cost = self._clock.cost_steps
        values = {
            "init_train_loss": self._init[0], "init_eval_loss": self._init[1], "train_loss": train_loss,
            "eval_loss": eval_loss, "ratio": gap.ratio, "batchnorm_layers": float(len(norms)),
            "cost_steps": cost if math.isfinite(cost) else 5 / 3,
        }
        head = (
            f"on the first batch, train-mode vs eval-mode loss {self._init[0]:.4g} vs {self._init[1]:.4g} at init and "
            f"{train_loss:.4g} vs {eval_loss:.4g} at {when} (eval/train {gap.ratio:.3g})"
        )
        if gap.verdict == "ok":
            self.report(trainer, "pass", head + ".", values, key=_GAP)
            return
        if missing > 0:
            values["updates_missing"] = float(missing)
            self.report(
                trainer, "pass",
                f"{head}: not judged, since the BatchNorm running statistics had {missing} updates too few to forget "
                "their init (a run this short cannot tell a bug from their normal lag).", values, key=_GAP,
            )
            return
        causes = self._batchnorm_causes(pl_module, norms)
        status: Status = "warn"
        self.report(
            trainer, status,
            f"{head}: the model does much worse in eval mode than in train mode on the same batch, at the same "
            f"weights. {causes}",
            values,
            "Eval mode differs from train mode mostly through BatchNorm's running statistics: give BatchNorm a "
            "momentum in (0, 1) (default 0.1) or None, keep it in train mode while training (no .eval() or "
            "requires_grad-style freezing of BatchNorm in training_step), and train with batches larger than 1 (or use "
            "GroupNorm/LayerNorm for tiny batches).",
            key=_GAP,
        )

    def _batchnorm_causes(self, pl_module: pl.LightningModule, norms: list[tuple[str, nn.Module]]) -> str:
        if not norms:
            return "The model has no BatchNorm layer: look at other layers that behave differently in eval mode."
        causes = []
        zero = [n for n, m in norms if getattr(m, "momentum", None) == 0]
        if zero:
            causes.append(f"momentum=0 (running statistics never move from their init) in {zero[:6]}")
        stale = [n for n, m in norms if n in self._tracked
                 and _batches_tracked(m) == self._tracked[n] and getattr(m, "momentum", None) != 0]
        if stale:
            causes.append(f"running statistics never updated during the epoch (the layer was in eval mode) in "
                          f"{stale[:6]}")
        if self._batch_size == 1:
            causes.append("a batch size of 1 in train mode (each sample normalised by its own statistics)")
        if not causes:
            return (f"The model has {len(norms)} BatchNorm layers whose running statistics do not describe the batch "
                    "statistics seen in training.")
        return "BatchNorm: " + "; ".join(causes) + "."
