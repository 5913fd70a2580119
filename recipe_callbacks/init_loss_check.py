"""InitLossCheck: verify the loss at init (recipe step 2d) and init well (step 2e, ``fix_bias``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from typing_extensions import override

from recipe_callbacks.core import init_loss as core
from recipe_callbacks.core.cost import FORWARD_PASS_STEPS
from recipe_callbacks.core.init_loss import ExpectedLoss, InitLossSums, LossAtInit, PriorChoice, TargetSummary
from recipe_callbacks.core.init_well import LogitsCapture, expected_after_fix, fix_values, init_well
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.core.task import TASKS, Task, aligned, class_first, infer_task, logits_of
from recipe_callbacks.data_inspector import DataInspector
from recipe_callbacks.plumbing.batch import BatchToXY, ForwardFn, integer_inputs
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail, Status
from recipe_callbacks.plumbing.loaders import sample_batches
from recipe_callbacks.plumbing.observe import observing
from recipe_callbacks.plumbing.ranks import sum_over_ranks
from recipe_callbacks.plumbing.validation import check_bool, check_choice, check_float, check_int, check_optional_str

if TYPE_CHECKING:
    import lightning.pytorch as pl

_MAX_CLASS_SCALARS = 32
_KEY, _FIX = "init_loss", "fix_bias"  # the keys of the loss-at-init Finding and of fix_bias's

# ----------------------------------------------------------------- the prose of this check, in one place
_BASIS = {
    "prior_unknown": "log C (prior unknown)", "prior_balanced": "log C (prior balanced, entropy {entropy:.4g})",
    "prior_entropy": "entropy of the class prior", "target_variance": "variance of the targets",
    "judged_labels": "cross-entropy of the judged labels against the prior", "argument": "the expected= argument",
    "judged_targets": "MSE of the counted target mean on the judged targets",
    "log_c": "log C: the prior cannot be acted on", "": "",
}
_ORIGIN = {"inspector": "DataInspector's", "fix_bias": "fix_bias's counted", "first_batch": "first batch's",
           "counted": "counted over {counted} training targets"}
_OBSTACLE = {"no_bias": "The {layer} has no bias, so the prior cannot be set at init",
             "per_position": "Per-position labels (tokens, pixels) are judged against log C, as the recipe does"}
_VERDICT = {  # status, what the summary adds after the figures, advice
    "uninformed": ("warn", " The model predicts as if it did not know the prior (uninformed loss {uninformed:.4g}): a "
                   "default bias on an imbalanced task.", "Init well: use InitLossCheck(fix_bias=True), or set the "
                   "final layer's bias to the log class frequencies (softmax), the log-odds of the positive rate (BCE) "
                   "or the target mean (MSE)."),
    "too_high": ("fail", " The model is confident and wrong at init (logit std {logit_std:.3g}).", "Check the "
                 "initialisation of the {layer}: large weights make large logits; use a small or zero init for the "
                 "last layer (e.g. scale its weights down) and check the loss and the labels."),
    "too_low": ("warn", " The loss is far below chance before any training.", "The model already knows the answers: "
                "look for the label leaking into the input or targets the model can read. A pretrained model does "
                "this by design: then pass expected= or drop this check."),
}
_NOT_FIXED = {  # why fix_bias set no bias, and the argument that would let it
    "no_batches": ("fix_bias found no training DataLoader to count the targets from", ""),
    "no_task": ("fix_bias could not tell the task from the logits and targets", "task"),
    "no_targets": ("fix_bias found a batch without targets", "target_key"),
    "loss": ("fix_bias could not compute the {task} loss: {error}", "task"),
    "no_bias": ("fix_bias found no final layer with a bias (found {layer!r})", "final_layer"),
    "size_mismatch": ("fix_bias: the bias of '{layer}' has {entries} entries, the prior {size}", "final_layer"),
}
_FIXED = ("fix_bias set the bias of '{layer}' to {bias} ({kind}, {counted}): loss {before:.4g} -> {after:.4g} on "
          "{batches} batches, expected {expected:.4g}. This changed the model on purpose (fix_bias=True).")
_REVERTED = ("fix_bias: setting the bias of '{layer}' raised the loss {before:.4g} -> {after:.4g}; the bias was put "
             "back. Its output is probably not the logits (an activation or a scale follows it).",
             "Name the layer whose output is the logits with final_layer=, or init its bias by hand.")
_BIAS_KIND = {"multiclass": "log class frequencies", "binary": "log-odds of the positive rate",
              "regression": "target mean"}


def _source(exp: ExpectedLoss, choice: PriorChoice | None) -> str:
    """Where the expected loss came from, in words."""
    text = _BASIS[exp.basis].format(entropy=exp.entropy)
    if exp.basis in ("prior_entropy", "judged_labels") and choice is not None and choice.prior is not None:
        text += f"; {_ORIGIN[choice.origin].format(counted=choice.counted)} prior"
    return text


def _prose(sums: InitLossSums, exp: ExpectedLoss, judged: LossAtInit, choice: PriorChoice | None, source: str,
           final_layer: str | None) -> tuple[Status, str, str]:
    """The status, summary and advice of the loss-at-init Finding."""
    at, j, mean_prob, prior = judged.at, judged.at.judgement, sums.mean_prob(), judged.prior
    layer = f"final layer '{final_layer}'" if final_layer else "final layer not identified"
    gap_text = "" if mean_prob is None or prior is None else (
        f" Mean predicted probability {core.short_vector(mean_prob)} vs prior {core.short_vector(prior)}"
        f" (total variation {judged.gap:.3g}).")
    head = (f"{sums.task} loss at init {j.observed:.4g} over {sums.n} samples ({source}), expected {j.expected:.4g} "
            f"({_source(at.expected, choice)}); ratio {j.ratio:.3g}, band [{j.low:.4g}, {j.high:.4g}]; {layer}.")
    if j.verdict == "pass":
        cannot_act = "" if not at.obstacle else (
            f" {_OBSTACLE[at.obstacle].format(layer=layer)}: judged against the uninformed loss {exp.uninformed:.4g} "
            f"(log C); a bias at the prior would start at {exp.value:.4g}.")
        return "pass", head + cannot_act + gap_text, ""
    status, says, advice = _VERDICT[j.verdict]
    words = {"uninformed": at.expected.uninformed, "logit_std": sums.logit_std, "layer": layer}
    return status, head + says.format(**words) + gap_text, advice.format(**words)  # type: ignore[return-value]


class InitLossCheck(RecipeCallback):
    """Verify the loss at init (recipe step 2d) and, with ``fix_bias=True``, init well (step 2e).

    Judges the logits of the first training step, read by a forward hook when ``training_step``
    calls ``self(x)`` (else of ``num_batches`` no-grad forward passes), against ``log C`` for an
    unknown or balanced class prior, the prior's entropy otherwise (a
    :class:`~recipe_callbacks.DataInspector`'s, else counted), the target variance for regression:
    ``warn`` near the uninformed loss (a default bias on an imbalanced task), ``fail`` far above the
    band (confident and wrong), ``warn`` below it (a leak, or a pretrained model). The training
    batches it reads from the data set are read once per fit. Not run again on a resumed run.

    Args:
        task: ``"multiclass"``, ``"binary"`` or ``"regression"``; inferred when ``None`` (``infer_task``).
        num_classes: number of classes; inferred from the logits when ``None``.
        expected: the expected loss at init, overriding the rule above.
        tolerance: the band ``[expected / (1 + tolerance), expected * (1 + tolerance)]``.
        fix_bias: before the first step, set the final layer's bias to the log class frequencies (softmax), the
            log-odds of the positive rate (BCE) or the target mean (MSE) on purpose; put back if the loss rises.
        max_batches: training batches read to count the targets (the prior, ``fix_bias``).
        num_batches: batches run forward for the loss before/after ``fix_bias`` and the fallback.
        final_layer: the name of the layer whose output is the logits (as in ``named_modules()``);
            the last ``Linear``/``Conv`` that makes them when ``None``.
        on_fail: ``"warn"``, ``"raise"`` or ``"ignore"`` (see :class:`~recipe_callbacks.RecipeCallback`).
        input_key: where the input is in a batch; inferred when ``None``.
        target_key: where the target is in a batch; inferred when ``None``.
        batch_to_xy: a function ``batch -> (x, y)`` for batches of any other shape.
        forward_fn: how to run the model the way your step does (see :class:`~recipe_callbacks.RecipeCallback`).

    Raises:
        ValueError: for a tolerance, batch count or task out of range.
        TypeError: for arguments of the wrong type.

    Logged:
        - ``recipe.init_loss_check/finding``: text, the Findings with values ``observed``, ``expected``,
          ``ratio``, ``band_low``, ``band_high``, ``uninformed``, ``logit_std``, ``samples``, ``cost_steps``,
          ``step_loss`` (the loss ``training_step`` returned), for classification ``num_classes`` and
          ``prob_gap`` (total variation between the mean prediction and the prior); with ``fix_bias``,
          ``fix_bias/`` ``loss_before``, ``loss_after``, ``expected``, ``counted_samples``, ``cost_steps``.
        - ``recipe.init_loss_check/per_class``: text, the mean predicted probability and the prior of
          each class (up to 32); ``loss_at_init``, ``predicted_vs_prior``: figures, the loss at init
          against its band, a bar per class of the mean prediction over the prior (1: calibrated).

    Example::

        trainer = Trainer(callbacks=[InitLossCheck(fix_bias=True), RecipeReport()])
    """

    one_off = True

    def __init__(
        self, task: Task | None = None, num_classes: int | None = None, expected: float | None = None,
        tolerance: float = 0.25, fix_bias: bool = False, max_batches: int = 20, num_batches: int = 2,
        final_layer: str | None = None, on_fail: OnFail = "warn", input_key: str | None = None,
        target_key: str | None = None, batch_to_xy: BatchToXY | None = None, forward_fn: ForwardFn | str | None = None,
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
        self._capture = LogitsCapture(self.final_layer)
        self._final_has_bias = True
        self._active = False
        self._fixed_summary: TargetSummary | None = None
        self._fix_cost = 0.0
        self._fix_seconds = 0.0
        self._read: list[Any] | None = None  # the training batches read from the data set, once per fit
        self.final_layer_name: str | None = None

    # ----------------------------------------------------------------- hooks
    @override
    def unsupported_when_sharded(self) -> str:
        sets = "fix_bias=True sets the final layer's bias, of which each rank holds a shard (fix_bias=False runs)"
        return sets if self.fix_bias else ""

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._capture.detach()
        self._reset()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active = not self.is_resumed(trainer)
        if self._active and self.fix_bias:
            with self.stopwatch() as watch, self.skipping(trainer):
                self._fix_bias(trainer, pl_module)
            self._fix_seconds = watch.seconds
            self.state_cost(watch.seconds, key=_FIX, field="fix_bias/cost_steps")

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self._active:
            self._capture.arm(pl_module, batch, owner=self)

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self._active:  # only then read the loss (a device-to-host copy)
            self._conclude(trainer, pl_module, float(loss.detach()))

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._conclude(trainer, pl_module, None)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._capture.detach()

    # ----------------------------------------------------------------- measuring
    def _training_batches(self, trainer: pl.Trainer) -> list[Any]:
        """The training batches read from the data set for the counts, fix_bias and the fallback: once, on the host."""
        if self._read is None:
            self._read = sample_batches(trainer, torch.device("cpu"), max(self.max_batches, self.num_batches - 1))
        return self._read

    def _forward(self, pl_module: pl.LightningModule, batch: Any, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, target)`` of one batch (moved to the model's device), run forward under ``observing``."""
        batch = move_data_to_device(batch, pl_module.device)
        resolved = self.resolved(batch, key=key)
        if resolved.y is None:
            raise CheckSkipped("the batch has no target to judge the loss against", "target_key", key=key)
        try:
            with observing(pl_module):
                output = self._capture.run(pl_module, lambda: self.run_model(pl_module, batch, resolved), self)
        except Exception as err:  # a forward that wants more than x: say so, do not break training
            raise CheckSkipped(f"running the model on the batch failed: {type(err).__name__}: {err}; give the way "
                               "your step runs it", "forward_fn", key=key) from err
        logits = logits_of(output)
        if logits is None:
            raise CheckSkipped(f"the model returned a {type(output).__name__}, not logits", "forward_fn", key=key)
        self._capture.seen(logits)
        return aligned(logits, resolved.y, integer_inputs(batch, resolved))

    def _conclude(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step_loss: float | None) -> None:
        """Judge the logits of the first step, or of forward passes of our own (the weights are still at init)."""
        if not self._active:
            return
        with self.stopwatch() as watch, self.skipping(trainer):
            self._active = False
            captured, batch = self._capture.take()
            if captured is not None:
                resolved = self.resolved(batch, key=_KEY)
                if resolved.y is None:
                    raise CheckSkipped("the first batch has no target to judge the loss against", "target_key",
                                       key=_KEY)
                pairs = [aligned(captured, resolved.y, integer_inputs(batch, resolved))]
                cost, source = self._fix_cost, "the logits of the first training step"
            else:
                extra = self._training_batches(trainer)[: self.num_batches - 1]
                pairs = [self._forward(pl_module, b, _KEY) for b in ([batch] if batch is not None else []) + extra]
                if not pairs:
                    raise CheckSkipped("saw no batch to judge", "forward_fn", key=_KEY)
                cost = self._fix_cost + len(pairs) * FORWARD_PASS_STEPS
                source = "no-grad forward passes (training_step does not call self(x))"
            self.final_layer_name, self._final_has_bias = self._capture.final_bias(pl_module, pairs[-1][0].numel())
            self._judge(trainer, pl_module, pairs, step_loss, cost, source)
        self._read = None
        self.finish_early()
        self.state_cost(watch.seconds + self._fix_seconds, key=_KEY)

    # ----------------------------------------------------------------- judging
    def _prior_from_inspector(self, trainer: pl.Trainer, size: int) -> torch.Tensor | None:
        """The class prior of a DataInspector on the same Trainer, of ``size`` classes."""
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        priors = (cb.class_prior(trainer) for cb in callbacks if isinstance(cb, DataInspector))
        found = next((p for p in priors if isinstance(p, torch.Tensor) and p.numel() == size), None)
        return None if found is None else found.detach().cpu().to(torch.float64)

    def _counted(self, trainer: pl.Trainer, task: Task, num_classes: int | None) -> TargetSummary | None:
        """The targets of up to ``max_batches`` training batches (no forward pass) summed over the processes (every
        rank judges and sets the same prior). ``None`` without a training loader or when a batch has no target."""
        try:
            targets = [self.resolved(b).y for b in self._training_batches(trainer)[: self.max_batches]]
        except Exception:  # reading the data again must not stop training; nor a batch it cannot resolve
            return None
        if any(y is None for y in targets):
            return None
        summary = TargetSummary.of(task, num_classes, [y for y in targets if y is not None])
        summary.load(sum_over_ranks(trainer, summary.parts()))
        return summary

    def _judge(self, trainer: pl.Trainer, pl_module: pl.LightningModule, pairs: list[tuple[torch.Tensor, torch.Tensor]],
               step_loss: float | None, cost: float, source: str) -> None:
        logits, target = pairs[0]
        task = self.task or infer_task(logits, target)
        if task is None:
            raise CheckSkipped(f"could not tell the task from logits {tuple(logits.shape)} ({logits.dtype}) and "
                               f"targets {tuple(target.shape)} ({target.dtype})", "task", key=_KEY)
        try:
            sums, num_classes, problem = core.init_sums(pairs, task, self.num_classes)
        except (RuntimeError, ValueError) as err:
            raise CheckSkipped(f"could not compute the {task} loss: {err}", "task", key=_KEY) from err
        if problem == "classes":
            shape = tuple(class_first(logits, target).shape)
            raise CheckSkipped(f"logits {shape} do not have {num_classes} classes", "num_classes", key=_KEY)
        if sums is None:  # a target class index beyond the logits
            self.report(trainer, "fail", f"a target class index is >= the {num_classes} logits of the model", {},
                        "Check the labels and the size of the final layer.", key=_KEY)
            return
        # the sums, and the step loss (a process without one adds 0), over the processes in one all-reduce
        step_part = torch.tensor([step_loss or 0.0, float(step_loss is not None)])
        (step, has_step), *parts = sum_over_ranks(trainer, [step_part, *sums.parts()])
        sums.load(parts)
        exp, choice = core.expected_at_init(
            task, num_classes, sums.targets, self.tolerance, fixed=self._fixed_summary, given=self.expected,
            inspector=lambda size: self._prior_from_inspector(trainer, size),
            count=lambda size: self._counted(trainer, task, size),
        )
        if exp is None:
            raise CheckSkipped("no targets were counted", "expected", key=_KEY)
        mean_step = float(step) / trainer.world_size if has_step > 0 else None
        judged = core.loss_at_init(sums, exp, choice, self.tolerance, has_bias=self._final_has_bias,
                                   given=self.expected is not None, step_loss=mean_step, cost=cost)
        mean_prob, prior = sums.mean_prob(), judged.prior
        if mean_prob is not None:
            if prior is not None:
                self.log_figure(trainer, "predicted_vs_prior", core.prior_ratio_chart, mean_prob, prior)
            if mean_prob.numel() <= _MAX_CLASS_SCALARS:  # one-time numbers: a table, not single-point charts
                self.log_text(trainer, "per_class", core.per_class_table(mean_prob, prior))
        status, summary, advice = _prose(sums, exp, judged, choice, source, self.final_layer_name)
        self.log_figure(trainer, "loss_at_init", core.loss_band_chart, judged.values, self.tolerance, status,
                        _source(judged.at.expected, choice))
        self.report(trainer, status, summary, judged.values, advice, key=_KEY)

    # ----------------------------------------------------------------- init well
    def _fix_bias(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        well = init_well(
            pl_module, self._capture, self._training_batches(trainer)[: self.max_batches], self.num_batches,
            self.task, self.num_classes, forward=lambda batch: self._forward(pl_module, batch, _FIX),
            count=lambda task, size: self._counted(trainer, task, size),
            prior=lambda size: self._prior_from_inspector(trainer, size),
        )
        if well.problem:
            reason, argument = _NOT_FIXED[well.problem]
            raise CheckSkipped(reason.format(**well.numbers()), argument, key=_FIX)
        fix, summary, task = well.fix, well.summary, well.task
        assert fix is not None and summary is not None and task is not None
        self._fix_cost = 2 * len(well.pairs) * FORWARD_PASS_STEPS
        if fix.status == "reverted":
            self.report(trainer, "warn", _REVERTED[0].format(**well.numbers()), fix_values(fix, self._fix_cost),
                        _REVERTED[1], key=_FIX)
            return
        self._fixed_summary = summary
        expected = expected_after_fix(task, well.num_classes, summary, [y for _, y in well.pairs], self.tolerance)
        counted = "the prior of DataInspector" if well.prior is not None else f"counted over {summary.n} targets"
        text = _FIXED.format(**well.numbers(), kind=_BIAS_KIND[task], counted=counted, expected=expected)
        self.report(trainer, "pass", text, fix_values(fix, self._fix_cost, expected, summary.n), key=_FIX)
