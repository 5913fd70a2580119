"""InitLossCheck: verify the loss at init (recipe step 2d) and init well (step 2e, ``fix_bias``)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from recipe_callbacks.core.cost import FORWARD_PASS_STEPS
from recipe_callbacks.core.data_stats import bounded_loader, first_dataloader
from recipe_callbacks.core.init_loss import (
    ExpectedLoss,
    TargetSummary,
    bias_for_prior,
    expected_classification_loss,
    expected_regression_loss,
    judge_init_loss,
    predicted_distribution,
)
from recipe_callbacks.core.pictures import Band, band_chart, bar_chart
from recipe_callbacks.core.task import TASKS, Task, aligned, class_first, infer_task, logits_of, per_sample_loss
from recipe_callbacks.data_inspector import DataInspector
from recipe_callbacks.plumbing.batch import BatchResolutionError, BatchToXY, ForwardFn, integer_inputs, resolve_batch
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail, Status
from recipe_callbacks.plumbing.observe import observing
from recipe_callbacks.plumbing.validation import check_bool, check_choice, check_float, check_int, check_optional_str

if TYPE_CHECKING:
    import lightning.pytorch as pl

# Layers whose output can be the logits.
FINAL_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)
_MAX_CLASS_SCALARS = 32
_KEY = "init_loss"  # the key of the loss-at-init Finding (fix_bias reports under "fix_bias")
# Largest total variation between the mean predicted distribution and an imbalanced prior that an init
# may show and still pass (a default bias on a 1:9 task shows 0.4).
_MAX_PRIOR_GAP = 0.25


def _fmt_vector(values: torch.Tensor, limit: int = 6) -> str:
    items = [f"{float(v):.3g}" for v in values.flatten()[:limit]]
    more = ", ..." if values.numel() > limit else ""
    return "[" + ", ".join(items) + more + "]"


class _Evaluation:
    """Sums of one or more batches of logits and targets, reducible over processes."""

    def __init__(self, task: Task, num_classes: int | None) -> None:
        self.task: Task = task
        self.num_classes = num_classes
        self.loss_sum = 0.0
        self.n = 0
        self.prob_sum: torch.Tensor | None = None  # (C,) mean predicted probability times n
        self.logit_sq = 0.0
        self.logit_count = 0
        self.targets = TargetSummary(task, num_classes)
        self.targets_ndim = 1

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        n = logits.shape[0]
        self.loss_sum += float(per_sample_loss(logits, target, self.task).sum())
        self.n += n
        probs = predicted_distribution(logits, self.task)
        if probs is not None:  # (C,) kept on the CPU with the counted targets and the prior
            probs = probs.detach().cpu()
            self.prob_sum = probs * n if self.prob_sum is None else self.prob_sum + probs * n
        centred = logits.detach().to(torch.float64)
        self.logit_sq += float(((centred - centred.mean()) ** 2).sum())
        self.logit_count += centred.numel()
        self.targets.update(target)
        self.targets_ndim = target.ndim

    def reduce(self, trainer: pl.Trainer) -> None:
        """Sum everything over the processes, so that every rank reaches the same verdict."""
        if trainer.world_size <= 1:
            return
        parts = [torch.tensor([self.loss_sum, float(self.n), self.logit_sq, float(self.logit_count)])]
        if self.prob_sum is not None:
            parts.append(self.prob_sum)
        if self.task == "regression":
            parts += [self.targets.total, self.targets.total_sq, torch.tensor([float(self.targets.n)])]
        elif self.targets.counts is not None:
            parts.append(self.targets.counts)
        sizes = [p.numel() for p in parts]
        flat = torch.cat([p.to(torch.float64).flatten() for p in parts]).to(trainer.strategy.root_device)
        flat = trainer.strategy.reduce(flat, reduce_op="sum").cpu()
        chunks = list(torch.split(flat, sizes))
        head = chunks.pop(0)
        self.loss_sum, self.n = float(head[0]), int(head[1])
        self.logit_sq, self.logit_count = float(head[2]), int(head[3])
        if self.prob_sum is not None:
            self.prob_sum = chunks.pop(0)
        if self.task == "regression":
            self.targets.total, self.targets.total_sq = chunks[0], chunks[1]
            self.targets.n = int(chunks[2][0])
        elif self.targets.counts is not None:
            self.targets.counts = chunks[0]

    @property
    def loss(self) -> float:
        return self.loss_sum / self.n if self.n else math.nan

    @property
    def logit_std(self) -> float:
        return math.sqrt(self.logit_sq / self.logit_count) if self.logit_count else math.nan


class InitLossCheck(RecipeCallback):
    """Verify the loss at init (recipe step 2d) and, with ``fix_bias=True``, init well (step 2e).

    At the very first training step a forward hook on the LightningModule (registered for that
    step only) sees the logits that ``training_step`` computes with ``self(x)``; they are judged
    against the batch's targets, so the check costs no extra training step. When the hook sees
    nothing usable (``training_step`` does not call ``self(...)``), ``num_batches`` batches are
    run forward under ``torch.no_grad`` in eval mode before the first weight update instead.

    The task is inferred from the logits and targets by :func:`~recipe_callbacks.core.task.infer_task`:
    integer targets and ``(N, C, ...)`` or ``(N, ..., C)`` logits are multiclass cross-entropy; one
    logit per target with 0/1 targets is binary cross-entropy; other float targets of the logits'
    size are MSE. The expected loss is chosen as follows:

    - multiclass / binary: ``log C`` (``log 2``) when the class prior is unknown or balanced (its
      entropy within the tolerance band of ``log C``), the prior's entropy otherwise. The prior
      comes from a :class:`~recipe_callbacks.DataInspector` on the same Trainer, else from the
      ``fix_bias`` counts, else from the first batch's targets.
    - regression: the variance of the targets (a bias at the target mean).

    The observed loss passes inside ``[expected / (1 + tolerance), expected * (1 + tolerance)]``.
    Above it at the level of the *uninformed* loss (``log C`` whatever the prior, ``E[y^2]`` for
    MSE) the model is just not told the prior: a default bias on an imbalanced task (``warn``, use
    ``fix_bias=True``). Above both it is confident and wrong (``fail``), e.g. a final layer
    initialised with large weights. Below the band the model knows the answers before training
    (``warn``): a leak, or a pretrained model.

    ``fix_bias=True`` changes the model on purpose, before the first step: it counts the targets
    over at most ``max_batches`` training batches and sets the final layer's bias to the log class
    frequencies (softmax), the log-odds of the positive rate (BCE) or the target mean (MSE), and
    reports the bias it set and the loss before and after; a bias that makes the loss worse (its
    layer's output is not the logits) is put back with a ``warn``. The final layer is the last
    ``Linear``/``Conv`` layer whose output is the logits (or ``final_layer``).

    Does not run again on a run resumed from a checkpoint.

    Args:
        task: ``"multiclass"``, ``"binary"`` or ``"regression"``; inferred when ``None``.
        num_classes: number of classes; inferred from the logits when ``None``.
        expected: the expected loss at init, overriding the rule above.
        tolerance: relative half-width of the band on a log scale (0.25: within a factor 1.25).
        fix_bias: set the final layer's bias from the counted prior before the first step.
        max_batches: training batches read to count the targets for ``fix_bias``.
        num_batches: batches run forward for the loss before/after ``fix_bias`` and for the
            fallback measurement.
        final_layer: the name of the final layer (as in ``named_modules()``); found when ``None``.
        on_fail: ``"warn"``, ``"raise"`` or ``"ignore"`` (see :class:`~recipe_callbacks.RecipeCallback`).
        input_key: where the input is in a batch; inferred when ``None``.
        target_key: where the target is in a batch; inferred when ``None``.
        batch_to_xy: a function ``batch -> (x, y)`` for batches of any other shape.
        forward_fn: how to run the model the way your step does (a method name or a function
            ``(pl_module, batch) -> output``); see :class:`~recipe_callbacks.RecipeCallback`.

    Raises:
        ValueError: for a tolerance, batch count or task out of range.
        TypeError: for arguments of the wrong type.

    Logged:
        - ``recipe.init_loss_check/finding``: text, the Findings with their values ``observed``,
          ``expected``, ``ratio``, ``band_low``, ``band_high``, ``uninformed``, ``logit_std``,
          ``samples``, ``cost_steps``; for classification also
          ``num_classes`` and ``prob_gap`` (total variation between the mean predicted
          distribution and the prior); ``step_loss`` (the loss ``training_step`` returned).
        - ``recipe.init_loss_check/per_class``: text, the mean predicted probability and the prior
          of each class (up to 32 classes).
        - ``recipe.init_loss_check/loss_at_init``: figure, the loss at init against its expected band.
        - ``recipe.init_loss_check/predicted_vs_prior``: figure, a bar per class of the mean predicted
          probability over the prior (1 everywhere is a calibrated init).
        - with ``fix_bias``, the values ``fix_bias/loss_before``, ``fix_bias/loss_after``,
          ``fix_bias/expected``, ``fix_bias/counted_samples``, ``fix_bias/cost_steps`` in the same text.

    Example::

        trainer = Trainer(callbacks=[InitLossCheck(fix_bias=True), RecipeReport()])
    """

    one_off = True

    def __init__(
        self,
        task: Task | None = None,
        num_classes: int | None = None,
        expected: float | None = None,
        tolerance: float = 0.25,
        fix_bias: bool = False,
        max_batches: int = 20,
        num_batches: int = 2,
        final_layer: str | None = None,
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
        forward_fn: ForwardFn | str | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy, forward_fn)
        owner = type(self).__name__
        self.task: Task | None = None if task is None else check_choice(owner, "task", task, TASKS)
        self.num_classes = None if num_classes is None else check_int(owner, "num_classes", num_classes, minimum=2)
        self.expected = None if expected is None else check_float(owner, "expected", expected)
        self.tolerance = check_float(owner, "tolerance", tolerance)
        self.fix_bias = check_bool(owner, "fix_bias", fix_bias)
        self.max_batches = check_int(owner, "max_batches", max_batches)
        self.num_batches = check_int(owner, "num_batches", num_batches)
        self.final_layer = check_optional_str(owner, "final_layer", final_layer)
        self._reset()

    def _reset(self) -> None:
        self._handles: list[RemovableHandle] = []
        self._calls: list[tuple[str, int, int]] = []  # (layer name, output data_ptr, numel) in call order
        self._captured: torch.Tensor | None = None
        self._captured_ptr = 0
        self._captured_numel = 0  # the logits' size as the model returned them (before aligned() cut them)
        self._final_has_bias = True
        self._pl_module: pl.LightningModule | None = None
        self._batch: Any = None
        self._active = False
        self._fixed_summary: TargetSummary | None = None
        self._fix_cost = 0.0
        self._fix_seconds = 0.0
        self.final_layer_name: str | None = None

    # ----------------------------------------------------------------- hooks
    @override
    def unsupported_when_sharded(self) -> str:
        if self.fix_bias:
            return "fix_bias=True sets the final layer's bias, of which each rank holds a shard (fix_bias=False runs)"
        return ""

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._remove_hooks()
        self._reset()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.is_resumed(trainer):
            return
        self._active = True
        if self.fix_bias:
            with self.stopwatch() as watch:
                self._fix_bias(trainer, pl_module)
            self._fix_seconds = watch.seconds
            self.state_cost(watch.seconds, key="fix_bias", field="fix_bias/cost_steps")

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self._active and not self._handles and self._captured is None and self._batch is None:
            self._batch = batch
            self._register_hooks(pl_module, capture=True)

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self._active:
            with self.stopwatch() as watch:
                self._conclude(trainer, pl_module, float(loss.detach()))
            self.state_cost(watch.seconds + self._fix_seconds, key=_KEY)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._active:
            with self.stopwatch() as watch:
                self._conclude(trainer, pl_module, None)
            self.state_cost(watch.seconds + self._fix_seconds, key=_KEY)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    # ----------------------------------------------------------------- capture
    def _candidate_layers(self, pl_module: nn.Module) -> list[tuple[str, nn.Module]]:
        if self.final_layer is not None:
            named = dict(pl_module.named_modules())
            return [(self.final_layer, named[self.final_layer])] if self.final_layer in named else []
        return [(name, m) for name, m in pl_module.named_modules() if isinstance(m, FINAL_LAYER_TYPES)]

    def _register_hooks(self, pl_module: nn.Module, *, capture: bool) -> None:
        def on_layer(name: str) -> Any:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                if isinstance(output, torch.Tensor):
                    self._calls.append((name, output.data_ptr(), output.numel()))

            return hook

        def on_module(module: nn.Module, args: Any, output: Any) -> None:
            # only training_step's own forward: other callbacks observe in eval mode without grad
            if self._captured is not None or not (module.training and torch.is_grad_enabled()):
                return
            logits = logits_of(output)
            if logits is not None and logits.is_floating_point():
                self._captured_ptr = logits.data_ptr()
                self._captured_numel = logits.numel()
                self._captured = logits.detach().clone()

        if capture:
            self._handles.append(pl_module.register_forward_hook(on_module))
        for name, layer in self._candidate_layers(pl_module):
            self._handles.append(layer.register_forward_hook(on_layer(name)))

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _final_layer_of(self, logits_ptr: int, numel: int) -> str | None:
        """The last recorded layer whose output is the logits (same storage), else of the same size."""
        for name, ptr, n in reversed(self._calls):
            if ptr == logits_ptr and n == numel:
                return name
        for name, _, n in reversed(self._calls):
            if n == numel:
                return name
        return None

    # ----------------------------------------------------------------- measuring
    def _forward(self, pl_module: pl.LightningModule, batch: Any, trainer: pl.Trainer | None, key: str) -> Any:
        """``(logits, target)`` of one batch, run forward under ``observing``; ``None`` after a skip."""
        resolved = self.resolve(trainer, batch, key=key)
        if resolved is None:
            return None
        if resolved.y is None:
            self.skip(trainer, "the batch has no target to judge the loss against", "target_key", key=key)
            return None
        self._calls = []
        self._register_hooks(pl_module, capture=False)
        try:
            with observing(pl_module):
                output = self.run_model(pl_module, batch, resolved)
        except Exception as err:  # a forward that wants more than x: say so, do not break training
            self.skip(trainer, f"running the model on the batch failed: {type(err).__name__}: {err}; give the way "
                      "your step runs it", "forward_fn", key=key)
            return None
        finally:
            self._remove_hooks()
        logits = logits_of(output)
        if logits is None:
            self.skip(trainer, f"the model returned a {type(output).__name__}, not logits", "forward_fn", key=key)
            return None
        self._captured_ptr = logits.data_ptr()
        self._captured_numel = logits.numel()
        return aligned(logits, resolved.y, integer_inputs(batch, resolved))

    def _sample_batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule, n: int) -> list[Any]:
        """Up to ``n`` training batches read from the data set (not the running loader), on device."""
        loader = first_dataloader(trainer.train_dataloader)
        if loader is None:
            return []
        bounded, _ = bounded_loader(loader, n * (loader.batch_size or 1))
        batches: list[Any] = []
        with isolate_rng():
            for batch in bounded:
                batches.append(move_data_to_device(batch, pl_module.device))
                if len(batches) >= n:
                    break
        return batches

    def _task_of(self, logits: torch.Tensor, target: torch.Tensor) -> Task | None:
        return self.task or infer_task(logits, target)

    def _conclude(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step_loss: float | None) -> None:
        """Judge what the first step showed, or run the fallback (the weights are still at init)."""
        self._remove_hooks()
        self._active = False
        captured, batch = self._captured, self._batch
        self._captured, self._batch = None, None
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        cost = self._fix_cost
        source = "the logits of the first training step"
        if captured is not None:
            resolved = self.resolve(trainer, batch, key=_KEY)
            if resolved is None:
                self.finish_early()
                return
            if resolved.y is None:
                self.skip(trainer, "the first batch has no target to judge the loss against", "target_key", key=_KEY)
                self.finish_early()
                return
            pairs.append(aligned(captured, resolved.y, integer_inputs(batch, resolved)))
        else:
            source = "no-grad forward passes (training_step does not call self(x))"
            batches = ([batch] if batch is not None else []) + self._sample_batches(
                trainer, pl_module, self.num_batches - 1
            )
            for b in batches:
                out = self._forward(pl_module, b, trainer, _KEY)
                if out is None:
                    self.finish_early()
                    return
                pairs.append(out)
            cost += len(pairs) * FORWARD_PASS_STEPS
        if not pairs:
            self.skip(trainer, "saw no batch to judge", "forward_fn", key=_KEY)
            self.finish_early()
            return
        self.final_layer_name = self._final_layer_of(self._captured_ptr, self._captured_numel or pairs[-1][0].numel())
        final = dict(pl_module.named_modules()).get(self.final_layer_name) if self.final_layer_name else None
        self._final_has_bias = isinstance(getattr(final, "bias", None), torch.Tensor)
        self._pl_module = pl_module
        try:
            self._judge(trainer, pairs, step_loss, cost, source)
        finally:
            self._pl_module = None
        self.finish_early()

    # ----------------------------------------------------------------- judging
    def _prior_from_inspector(self, trainer: pl.Trainer, size: int) -> torch.Tensor | None:
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, DataInspector):
                prior = cb.class_prior(trainer)
                if isinstance(prior, torch.Tensor) and prior.numel() == size:
                    return prior.detach().cpu().to(torch.float64)
        return None

    def _counted_summary(self, trainer: pl.Trainer, task: Task, num_classes: int | None) -> TargetSummary | None:
        """The targets of up to ``max_batches`` training batches, read from the data set (no forward
        pass): a prior from enough data, never from one batch. ``None`` without a training loader."""
        if self._pl_module is None:
            return None
        try:
            batches = self._sample_batches(trainer, self._pl_module, self.max_batches)
        except Exception:  # reading the data again must not stop training
            return None
        summary = TargetSummary(task, num_classes)
        for batch in batches:
            try:
                resolved = resolve_batch(batch, self.input_key, self.target_key, self.batch_to_xy)
            except BatchResolutionError:
                return None
            if resolved.y is None:
                return None
            summary.update(resolved.y)
        return self._reduce_summary(trainer, summary) if summary.n else None

    def _expected(
        self, trainer: pl.Trainer, task: Task, num_classes: int | None, counted: TargetSummary
    ) -> tuple[ExpectedLoss | None, torch.Tensor | None]:
        if task == "regression":
            summary = self._fixed_summary or self._counted_summary(trainer, task, None)
            if summary is not None:
                exp = expected_regression_loss(summary, counted)
            else:
                exp = expected_regression_loss(counted)
            if exp is not None and self.expected is not None:
                exp = ExpectedLoss(self.expected, exp.uninformed, "the expected= argument")
            return exp, None
        size = num_classes if task == "multiclass" else 2
        assert size is not None
        prior = self._prior_from_inspector(trainer, size)
        where = "DataInspector's"
        if prior is None and self._fixed_summary is not None:
            prior, where = self._fixed_summary.prior(), "fix_bias's counted"
        if prior is None or prior.numel() != size:
            summary = self._counted_summary(trainer, task, size)
            if summary is not None and summary.prior() is not None:
                prior, where = summary.prior(), f"counted over {summary.n} training targets"
        if prior is not None and prior.numel() < size:  # classes beyond the largest label seen: frequency 0
            prior = torch.nn.functional.pad(prior, (0, size - prior.numel()))
        if prior is None or prior.numel() != size:
            prior, where = counted.prior(), "first batch's"
        if prior is not None and prior.numel() != size:
            prior = None
        observed = counted.counts if where != "first batch's" else None
        exp = expected_classification_loss(size, prior, self.tolerance, observed)
        if prior is not None and not exp.source.startswith("log C"):
            exp = ExpectedLoss(exp.value, exp.uninformed, f"{exp.source}; {where} prior")
        if self.expected is not None:
            exp = ExpectedLoss(self.expected, exp.uninformed, "the expected= argument")
        return exp, prior

    def _judge(
        self,
        trainer: pl.Trainer,
        pairs: list[tuple[torch.Tensor, torch.Tensor]],
        step_loss: float | None,
        cost: float,
        source: str,
    ) -> None:
        logits, target = pairs[0]
        task = self._task_of(logits, target)
        if task is None:
            self.skip(
                trainer,
                f"could not tell the task from logits {tuple(logits.shape)} ({logits.dtype}) and targets "
                f"{tuple(target.shape)} ({target.dtype})",
                "task",
                key=_KEY,
            )
            return
        num_classes = None
        if task == "multiclass":
            pairs = [(class_first(lg, tg), tg) for lg, tg in pairs]
            logits = pairs[0][0]
            num_classes = self.num_classes or int(logits.shape[1])
            if logits.ndim < 2 or logits.shape[1] != num_classes:
                self.skip(
                    trainer, f"logits {tuple(logits.shape)} do not have {num_classes} classes", "num_classes", key=_KEY
                )
                return
            if any(int(t.max()) >= num_classes for _, t in pairs if t.numel()):
                self.report(
                    trainer, "fail", f"a target class index is >= the {num_classes} logits of the model",
                    {}, "Check the labels and the size of the final layer.", key=_KEY,
                )
                return
        evaluation = _Evaluation(task, num_classes)
        try:
            for lg, tg in pairs:
                evaluation.add(lg, tg)
        except (RuntimeError, ValueError) as err:
            self.skip(trainer, f"could not compute the {task} loss: {err}", "task", key=_KEY)
            return
        has_step = torch.tensor([step_loss if step_loss is not None else 0.0, float(step_loss is not None)])
        if trainer.world_size > 1:
            has_step = trainer.strategy.reduce(has_step.to(trainer.strategy.root_device), reduce_op="mean").cpu()
        evaluation.reduce(trainer)
        exp, prior = self._expected(trainer, task, num_classes, evaluation.targets)
        if exp is None:
            self.skip(trainer, "no targets were counted", "expected", key=_KEY)
            return
        self._report_judgement(trainer, evaluation, exp, prior, float(has_step[0]) if has_step[1] > 0 else None,
                               cost, source)

    def _report_judgement(
        self,
        trainer: pl.Trainer,
        ev: _Evaluation,
        exp: ExpectedLoss,
        prior: torch.Tensor | None,
        step_loss: float | None,
        cost: float,
        source: str,
    ) -> None:
        j = judge_init_loss(ev.loss, exp, self.tolerance)
        layer = f"final layer '{self.final_layer_name}'" if self.final_layer_name else "final layer not identified"
        cannot_act = ""
        per_position = ev.task == "multiclass" and ev.targets_ndim >= 2
        if j.verdict == "uninformed" and self.expected is None and (not self._final_has_bias or per_position):
            # Never advise what cannot be done: without a bias fix_bias cannot act, and for per-position
            # labels (tokens, pixels) the recipe's expectation is log C (log V for a language model).
            why = (f"the {layer} has no bias, so the prior cannot be set at init" if not self._final_has_bias
                   else "per-position labels (tokens, pixels) are judged against log C, as the recipe does")
            cannot_act = (
                f" {why[0].upper()}{why[1:]}: judged against the uninformed loss {exp.uninformed:.4g} (log C); "
                f"a bias at the prior would start at {exp.value:.4g}."
            )
            exp = ExpectedLoss(exp.uninformed, exp.uninformed, "log C: the prior cannot be acted on")
            j = judge_init_loss(ev.loss, exp, self.tolerance)
        values: dict[str, float] = {
            "observed": j.observed, "expected": j.expected, "ratio": j.ratio, "band_low": j.low,
            "band_high": j.high, "uninformed": exp.uninformed, "logit_std": ev.logit_std,
            "samples": float(ev.n), "cost_steps": cost,
        }
        if step_loss is not None:
            values["step_loss"] = step_loss
        gap_text = ""
        if ev.prob_sum is not None:
            mean_prob = ev.prob_sum / max(ev.n, 1)
            values["num_classes"] = float(mean_prob.numel())
            if prior is not None:
                values["prob_gap"] = float(0.5 * (mean_prob - prior).abs().sum())
                gap_text = (
                    f" Mean predicted probability {_fmt_vector(mean_prob)} vs prior {_fmt_vector(prior)}"
                    f" (total variation {values['prob_gap']:.3g})."
                )
            self._log_per_class(trainer, mean_prob, prior)
        head = (
            f"{ev.task} loss at init {j.observed:.4g} over {ev.n} samples ({source}), expected {j.expected:.4g} "
            f"({exp.source}); ratio {j.ratio:.3g}, band [{j.low:.4g}, {j.high:.4g}]; {layer}."
        )
        verdict = j.verdict
        gap = values.get("prob_gap", 0.0)
        if (verdict in ("pass", "too_low") and not cannot_act and self.expected is None and self._final_has_bias
                and not per_position and not exp.source.startswith("log C") and gap > _MAX_PRIOR_GAP):
            # the judged batch's label mix can hide a default bias (a batch rich in the rare class makes the
            # uninformed loss look right): the mean prediction against the counted prior does not lie
            verdict = "uninformed"
        status: Status
        if verdict == "pass":
            status, summary, advice = "pass", head + cannot_act + gap_text, ""
        elif verdict == "uninformed":
            status = "warn"
            summary = (
                f"{head} The model predicts as if it did not know the prior (uninformed loss "
                f"{exp.uninformed:.4g}): a default bias on an imbalanced task.{gap_text}"
            )
            advice = (
                "Init well: use InitLossCheck(fix_bias=True), or set the final layer's bias to the log class "
                "frequencies (softmax), the log-odds of the positive rate (BCE) or the target mean (MSE)."
            )
        elif verdict == "too_high":
            status = "fail"
            summary = (
                f"{head} The model is confident and wrong at init (logit std {ev.logit_std:.3g}).{gap_text}"
            )
            advice = (
                f"Check the initialisation of the {layer}: large weights make large logits; use a small or zero "
                "init for the last layer (e.g. scale its weights down) and check the loss and the labels."
            )
        else:
            status = "warn"
            summary = f"{head} The loss is far below chance before any training.{gap_text}"
            advice = (
                "The model already knows the answers: look for the label leaking into the input or targets the "
                "model can read. A pretrained model does this by design: then pass expected= or drop this check."
            )
        self._log_loss_band(trainer, values, status, exp.source)
        self.report(trainer, status, summary, values, advice, key=_KEY)

    def _log_loss_band(self, trainer: pl.Trainer, values: dict[str, float], status: str, source: str) -> None:
        points = {"loss at init": values["observed"]}
        if "step_loss" in values:
            points["training_step loss"] = values["step_loss"]
        if math.isfinite(values["uninformed"]) and abs(values["uninformed"] - values["expected"]) > 1e-9:
            points["uninformed init"] = values["uninformed"]
        chart = band_chart(
            points, Band(values["band_low"], values["band_high"], f"expected band (tolerance {self.tolerance:g})"),
            title=f"InitLossCheck {status.upper()}: the loss at init must fall in the green band ({source})",
            xlabel="loss at init", reference=(values["expected"], f"expected {values['expected']:.4g}"),
        )
        self.log_figure(trainer, "loss_at_init", chart)

    def _log_per_class(self, trainer: pl.Trainer, mean_prob: torch.Tensor, prior: torch.Tensor | None) -> None:
        if prior is not None:
            # one bar per class: 1 is a prediction that matches the prior; a zoomed line chart of
            # two near-equal curves would exaggerate noise
            ratio = (mean_prob / prior.clamp_min(1e-12)).tolist()
            off = [c for c, r in enumerate(ratio) if not 0.5 <= r <= 2.0]
            chart = bar_chart(
                [str(c) for c in range(len(ratio))], ratio,
                title="InitLossCheck: mean predicted probability / prior per class at init; every bar near 1",
                xlabel="class", ylabel="predicted / prior", reference=(1.0, "1 = matches the prior"),
                band=Band(0.5, 2.0, "within 2x of the prior"), flagged=off, flagged_label="more than 2x off",
            )
            self.log_figure(trainer, "predicted_vs_prior", chart)
        if mean_prob.numel() > _MAX_CLASS_SCALARS:
            return
        # one-time numbers: a table, not single-point scalar charts
        rows = ["| class | mean predicted probability | prior |", "|---|---|---|"]
        for c, p in enumerate(mean_prob.tolist()):
            rows.append(f"| {c} | {p:.4g} | {'' if prior is None else f'{float(prior[c]):.4g}'} |")
        self.log_text(trainer, "per_class", "\n".join(rows))

    # ----------------------------------------------------------------- init well
    def _fix_bias(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        key = "fix_bias"
        batches = self._sample_batches(trainer, pl_module, self.max_batches)
        if not batches:
            self.skip(trainer, "fix_bias found no training DataLoader to count the targets from", "", key=key)
            return
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        for batch in batches[: self.num_batches]:
            out = self._forward(pl_module, batch, trainer, key)
            if out is None:
                return
            pairs.append(out)
        logits, target = pairs[0]
        layer_name = self._final_layer_of(self._captured_ptr, self._captured_numel or logits.numel())
        task = self._task_of(logits, target)
        if task is None:
            self.skip(trainer, "fix_bias could not tell the task from the logits and targets", "task", key=key)
            return
        num_classes = self.num_classes or (int(class_first(logits, target).shape[1]) if task == "multiclass" else None)
        summary = TargetSummary(task, num_classes)
        for batch in batches:
            resolved = self.resolve(trainer, batch, key=key)
            if resolved is None or resolved.y is None:
                self.skip(trainer, "fix_bias found a batch without targets", "target_key", key=key)
                return
            summary.update(resolved.y)
        summary = self._reduce_summary(trainer, summary)
        inspector: torch.Tensor | None = None
        if task != "regression":
            size = num_classes if task == "multiclass" else 2
            inspector = self._prior_from_inspector(trainer, int(size or 0))
            if inspector is not None:
                summary.counts = inspector  # a prior over more samples; only its proportions are used
        bias = bias_for_prior(task, summary)
        layer = dict(pl_module.named_modules()).get(layer_name) if layer_name else None
        layer_bias = getattr(layer, "bias", None)
        if bias is None or not isinstance(layer_bias, torch.Tensor):
            self.skip(trainer, f"fix_bias found no final layer with a bias (found {layer_name!r})", "final_layer",
                      key=key)
            return
        if bias.numel() == 1 and layer_bias.numel() > 1 and task == "binary":
            bias = bias.expand(layer_bias.numel())
        if bias.numel() != layer_bias.numel():
            self.skip(trainer, f"fix_bias: the bias of '{layer_name}' has {layer_bias.numel()} entries, the prior "
                      f"{bias.numel()}", "final_layer", key=key)
            return
        try:
            before = self._mean_loss(pairs, task)
        except (RuntimeError, ValueError) as err:
            self.skip(trainer, f"fix_bias could not compute the {task} loss: {err}", "task", key=key)
            return
        old_bias = layer_bias.detach().clone()
        with torch.no_grad():
            layer_bias.copy_(bias.reshape(layer_bias.shape).to(layer_bias))
        after_pairs = [p for p in (self._forward(pl_module, b, trainer, key) for b in batches[: self.num_batches]) if p]
        after = self._mean_loss(after_pairs, task)
        self._fix_cost = 2 * len(pairs) * FORWARD_PASS_STEPS
        if not after <= before * 1.01:  # worse (or NaN): this layer's bias does not shift the logits as assumed
            with torch.no_grad():
                layer_bias.copy_(old_bias)
            self.report(
                trainer, "warn",
                f"fix_bias: setting the bias of '{layer_name}' raised the loss {before:.4g} -> {after:.4g}; the bias "
                "was put back. Its output is probably not the logits (an activation or a scale follows it).",
                {"fix_bias/loss_before": before, "fix_bias/loss_after": after, "fix_bias/cost_steps": self._fix_cost},
                "Name the layer whose output is the logits with final_layer=, or init its bias by hand.", key=key,
            )
            return
        self._fixed_summary = summary
        self._report_fix(trainer, task, num_classes, summary, pairs, (before, after), layer_name or "", inspector)

    def _report_fix(
        self,
        trainer: pl.Trainer,
        task: Task,
        num_classes: int | None,
        summary: TargetSummary,
        pairs: list[tuple[torch.Tensor, torch.Tensor]],
        losses: tuple[float, float],
        layer_name: str,
        inspector: torch.Tensor | None,
    ) -> None:
        before, after = losses
        judged = TargetSummary(task, num_classes)
        for _, tg in pairs:
            judged.update(tg)
        if task == "regression":
            exp = expected_regression_loss(summary, judged)
        else:
            size = (num_classes or 2) if task == "multiclass" else 2
            exp = expected_classification_loss(size, summary.prior(), self.tolerance, judged.counts)
        expected = exp.value if exp else math.nan
        kind = {"multiclass": "log class frequencies", "binary": "log-odds of the positive rate",
                "regression": "target mean"}[task]
        counted = "the prior of DataInspector" if inspector is not None else (
            f"counted over {summary.n} targets")
        bias = bias_for_prior(task, summary)
        self.report(
            trainer,
            "pass",
            f"fix_bias set the bias of '{layer_name}' to {_fmt_vector(bias if bias is not None else torch.zeros(0))} "
            f"({kind}, {counted}): loss {before:.4g} -> {after:.4g} on {len(pairs)} batches, expected "
            f"{expected:.4g}. This changed the model on purpose (fix_bias=True).",
            {
                "fix_bias/loss_before": before, "fix_bias/loss_after": after, "fix_bias/expected": expected,
                "fix_bias/counted_samples": float(summary.n), "fix_bias/cost_steps": self._fix_cost,
            },
            key="fix_bias",
        )

    @staticmethod
    def _mean_loss(pairs: list[tuple[torch.Tensor, torch.Tensor]], task: Task) -> float:
        losses = [per_sample_loss(lg, tg, task) for lg, tg in pairs]
        return float(torch.cat(losses).mean()) if losses else math.nan

    @staticmethod
    def _reduce_summary(trainer: pl.Trainer, summary: TargetSummary) -> TargetSummary:
        """Sum the counts over processes, so every rank sets the same bias."""
        if trainer.world_size <= 1:
            return summary
        if summary.task == "regression":
            flat = torch.cat([summary.total, summary.total_sq, torch.tensor([float(summary.n)], dtype=torch.float64)])
            flat = trainer.strategy.reduce(flat.to(trainer.strategy.root_device), reduce_op="sum").cpu()
            d = summary.total.numel()
            summary.total, summary.total_sq, summary.n = flat[:d], flat[d : 2 * d], int(flat[-1])
        elif summary.counts is not None:
            summary.counts = trainer.strategy.reduce(
                summary.counts.to(trainer.strategy.root_device), reduce_op="sum"
            ).cpu()
            summary.n = int(summary.counts.sum())
        return summary
