"""GradientFlowCheck (recipe steps 2h/2i): is every layer learning in the first optimizer steps?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from typing_extensions import override

from recipe_callbacks.core import gradient_flow as core
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail, Status
from recipe_callbacks.plumbing.validation import check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl

# Parameters that healthy models leave without gradients: Hugging Face's pooler when a head reads
# the token states instead (BertModel, ViTModel, ... compute it and nothing uses it).
DEFAULT_ALLOW_UNUSED: tuple[str, ...] = ("*pooler.*",)
_SHARDED = ("FSDP", "DeepSpeed", "ModelParallel")
_SEVERITY = {"pass": 0, "warn": 1, "fail": 2}
Problem = tuple[Status, str, str]  # status, what was seen, what to do


class GradientFlowCheck(RecipeCallback):
    """Checks that every trainable parameter gets a finite, non-zero gradient and moves in the first
    ``num_steps`` optimizer steps (recipe steps 2h/2i: "is every layer learning?").

    Just before the first backward (so lazy modules are materialised) it takes the trainable
    parameters and the optimizers' param groups. At each of the first optimizer steps
    (``on_before_optimizer_step``, so the gradients are the
    accumulated, unscaled ones the optimizer will use) it records for every trainable parameter
    whether it has a gradient, whether that is finite and not exactly zero, and, after the step,
    whether the elements with the largest gradient moved. Hooks on the parameters record the order
    in which gradients arrive during backward, so the first non-finite gradient is named where it
    appears first (nearest the loss). Under manual optimization a hook also sees whether each
    gradient was reset (``zero_grad``) between two of its optimizer steps. Then the hooks come off:
    nothing runs after the first steps.

    Verdicts (one Finding):

    - ``fail``: a NaN/Inf gradient (not under AMP's GradScaler, which skips such steps by design:
      those steps are left out and counted); under manual optimization, gradients never reset between
      steps (they grow); or the parameters that never get a non-zero gradient hold at least
      ``fail_fraction`` of the trainable elements (e.g. a ``detach()`` after the backbone).
    - ``warn``: parameters that never get a gradient (an unused branch, a layer computed but not
      connected to the loss) or whose gradient is always exactly zero; trainable parameters with a
      gradient but in no optimizer; parameters that have a gradient and never move (learning rate 0).
    - ``pass``: every trainable parameter is live. Frozen parameters (``requires_grad=False``) are
      named as information, since freezing is often intended.

    Healthy models pass: tied weights are one parameter; embedding rows and position embeddings a
    batch does not use leave the rest of the tensor live; a zero-initialised branch (LoRA's ``B``,
    ``zero_init_residual``) gets its gradient from the second step, hence ``num_steps=3``; gradient
    clipping and weight decay do not change what is judged (gradients before clipping; a zero
    gradient stays zero even when decay moves the weight). Parameters matching ``allow_unused``
    (``fnmatch`` patterns; by default Hugging Face's ``*pooler.*``) may go without gradients.
    Parameters used only in some steps (mixture-of-experts) need a larger ``num_steps`` or
    ``allow_unused``.

    Does not run again on a run resumed from a checkpoint. Skips under sharded strategies (FSDP,
    DeepSpeed, model parallel), where the parameters it sees are shards.

    Args:
        num_steps: optimizer steps to watch (steps AMP's GradScaler skips are not counted).
        allow_unused: ``fnmatch`` patterns of parameter names that may go without gradients;
            ``None`` for the default ``["*pooler.*"]``, ``[]`` to judge every parameter.
        fail_fraction: fail when the parameters without a non-zero gradient hold at least this
            fraction of the trainable elements.
        max_skipped_steps: stop waiting for finite steps after this many skipped ones (AMP).
        on_fail: what a ``fail`` Finding does: ``"warn"``, ``"raise"`` or ``"ignore"``.

    Raises:
        ValueError: an argument out of range.
        TypeError: an argument of the wrong type.

    Logged:
        - ``recipe.gradient_flow_check/observed_steps``, ``trainable_params``, ``frozen_params``,
          ``no_grad_params``, ``zero_grad_params``, ``not_in_optimizer_params``,
          ``unchanged_params``, ``not_reset_params``, ``dead_fraction``, ``skipped_steps``,
          ``nonfinite_step`` (when there is one) and ``cost_steps``, as Finding values and scalars.
        - ``recipe.gradient_flow_check/parameters``: text, every group with its parameter names.

    Cost: during the first ``num_steps`` optimizer steps, a Python hook per parameter in backward,
    three reductions per gradient and a gather of 8 elements per parameter, each step's flags read
    in one host transfer (:class:`~recipe_callbacks.core.gradient_flow.GradientRecorder`);
    ``values["cost_steps"]`` is the measured time in its hooks over the run's median training step
    (a small fraction of one step; 0, no extra pass, until the next steps are timed). Nothing
    after that.

    Example::

        trainer = Trainer(callbacks=[GradientFlowCheck(), RecipeReport()])
    """

    one_off = True

    def __init__(
        self,
        num_steps: int = 3,
        allow_unused: list[str] | None = None,
        fail_fraction: float = 0.5,
        max_skipped_steps: int = 20,
        on_fail: OnFail = "warn",
    ) -> None:
        super().__init__(on_fail=on_fail)
        owner = type(self).__name__
        self.num_steps = check_int(owner, "num_steps", num_steps)
        if allow_unused is None:
            allow_unused = list(DEFAULT_ALLOW_UNUSED)
        if not isinstance(allow_unused, (list, tuple)) or not all(isinstance(p, str) and p for p in allow_unused):
            raise TypeError(
                f"{owner}(allow_unused={allow_unused!r}): allow_unused must be None or a list of non-empty str"
            )
        self.allow_unused = list(allow_unused)
        self.fail_fraction = check_float(owner, "fail_fraction", fail_fraction, maximum=1.0)
        self.max_skipped_steps = check_int(owner, "max_skipped_steps", max_skipped_steps, minimum=0)
        self._reset()

    def _reset(self) -> None:
        self._active = False
        self._waiting = False
        self._recorder: core.GradientRecorder | None = None
        self._frozen: list[str] = []
        self._watch = self.stopwatch()  # the time in this check's hooks, summed
        self._step_index = 0

    # ----------------------------------------------------------------- lifecycle
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._remove_hooks()
        self._reset()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.is_resumed(trainer) or self.early_finished:
            return
        strategy = type(trainer.strategy).__name__
        if any(s in strategy for s in _SHARDED):
            self.finish_early()
            raise CheckSkipped(f"the {strategy} strategy shards the parameters; the check sees only shards")
        self._waiting = True  # the parameters are collected just before the first backward

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self._waiting:
            self._waiting = False
            with self._watch:
                self._start(trainer, pl_module)

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        in_optimizer = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        params = {}
        for name, p in pl_module.named_parameters():
            if p.requires_grad:
                params[name] = p
            else:
                self._frozen.append(name)
        if not params:
            self.finish_early()
            raise CheckSkipped("the model has no trainable parameters")
        scaler = getattr(trainer.precision_plugin, "scaler", None) is not None
        self._recorder = core.GradientRecorder(params, in_optimizer, not pl_module.automatic_optimization, scaler)
        self._recorder.attach()
        self._active = True

    def _remove_hooks(self) -> None:
        if self._recorder is not None:
            self._recorder.detach()

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._active or self._recorder is None:
            return
        with self._watch:
            self._step_index = trainer.global_step
            ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
            self._recorder.record_step(self._recorder.due(ids))

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        rec = self._recorder
        if not self._active or rec is None:
            return
        with self._watch:
            if rec.pending:
                rec.observe(self._step_index)
        if rec.observed >= self.num_steps or rec.skipped + rec.no_backward > self.max_skipped_steps:
            self._conclude(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active or self._waiting:
            self._waiting = False
            self._conclude(trainer)
        super().on_train_end(trainer, pl_module)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()
        self._active = self._waiting = False

    # ----------------------------------------------------------------- judging
    def _conclude(self, trainer: pl.Trainer) -> None:
        self._remove_hooks()
        self._active = False
        self.finish_early()
        rec = self._recorder
        if rec is None or rec.observed == 0:
            self._nothing_observed(trainer, rec)
            return
        s = core.summarize_flow(rec.lives.values(), self.allow_unused)
        values = {
            "observed_steps": float(rec.observed), "trainable_params": float(len(rec.lives)),
            "frozen_params": float(len(self._frozen)), "no_grad_params": float(len(s.no_grad)),
            "zero_grad_params": float(len(s.zero_grad)), "not_in_optimizer_params": float(len(s.not_in_optimizer)),
            "unchanged_params": float(len(s.unchanged)), "not_reset_params": float(len(s.not_reset)),
            "dead_fraction": s.dead_fraction, "skipped_steps": float(rec.skipped), "cost_steps": 0.0,
        }
        if rec.nonfinite_step is not None:
            values["nonfinite_step"] = float(rec.nonfinite_step)
        steps = f"{rec.observed} optimizer step{'s' if rec.observed != 1 else ''}"
        problems = self._problems(trainer, rec, s, steps)
        info = []
        if self._frozen:
            info.append(f"frozen (requires_grad=False, as information): {core.name_layers(self._frozen)}")
        if s.allowed_unused:
            info.append(f"without gradients as allowed by allow_unused: {core.name_layers(s.allowed_unused)}")
        if rec.skipped:
            info.append(f"{rec.skipped} steps skipped by AMP's GradScaler were left out")
        tail = (" " + "; ".join(info) + ".") if info else ""
        self._log_groups(trainer, s)
        if not problems:
            self.report(
                trainer, "pass",
                f"all {len(rec.lives)} trainable parameters got finite, non-zero gradients and moved in "
                f"{steps}.{tail}",
                values,
            )
        else:
            worst = max((p[0] for p in problems), key=_SEVERITY.__getitem__)
            self.report(trainer, worst, " ".join(p[1] for p in problems) + tail, values,
                        " ".join(p[2] for p in problems))
        self.state_cost(self._watch.seconds)

    def _nothing_observed(self, trainer: pl.Trainer, rec: core.GradientRecorder | None) -> None:
        if rec is not None and rec.skipped:
            self.report(
                trainer, "warn",
                f"every one of the {rec.skipped} optimizer steps watched had NaN/Inf gradients and was skipped "
                "by AMP's GradScaler",
                {"skipped_steps": float(rec.skipped)},
                "a few skipped steps at the start are normal while the scale calibrates; this many are not: look "
                "for an overflow in the forward (a loss or activation too large for float16), or use bf16.",
            )
            return
        seen = f" ({rec.no_backward} steps without any gradient)" if rec is not None and rec.no_backward else ""
        self.skip(trainer, f"no optimizer step with gradients was seen{seen}: training_step returned no loss, "
                  "or manual optimization calls the raw optimizer, so the gradients could not be watched", "")

    def _problems(self, trainer: pl.Trainer, rec: core.GradientRecorder, s: core.FlowSummary,
                  steps: str) -> list[Problem]:
        problems: list[Problem] = []
        if rec.nonfinite_step is not None:
            layer = core.owner_of(rec.nonfinite_layer or "")
            problems.append((
                "fail",
                f"a NaN/Inf gradient at optimizer step {rec.nonfinite_step}; in backward order it appears first in "
                f"'{layer}' (parameter '{rec.nonfinite_layer}').",
                f"look at what '{layer}' computes and what follows it in the forward: log or sqrt of 0 or of a "
                "negative, a division by a value near 0, an exp that overflows; lower the learning rate or clip "
                "gradients (gradient_clip_val); check the inputs of that batch for NaN/Inf.",
            ))
        if s.not_reset:
            problems.append((
                "fail",
                f"under manual optimization the gradients of {core.name_layers(s.not_reset)} were never reset between "
                "two optimizer steps: they grow across steps.",
                "call optimizer.zero_grad() in every training_step (before self.manual_backward(loss) or right after "
                "optimizer.step()).",
            ))
        dead = self._dead_problem(s, steps, len(rec.lives))
        problems += [dead] if dead else []
        if s.not_in_optimizer:
            problems.append((
                "warn",
                f"{core.name_layers(s.not_in_optimizer)} get gradients but are in no optimizer, so they never move.",
                "pass self.parameters() (or these parameters) to the optimizer in configure_optimizers, or freeze them "
                "with requires_grad_(False) if they are meant to stay fixed (that also saves their backward).",
            ))
        if s.unchanged:
            lrs = sorted({float(g.get("lr", float("nan"))) for opt in trainer.optimizers for g in opt.param_groups})
            problems.append((
                "warn",
                f"{core.name_layers(s.unchanged)} have non-zero gradients but did not move in any step (learning rates "
                f"{lrs}).",
                "check the learning rate of their param group (0?) and that optimizer.step() runs.",
            ))
        return problems

    def _dead_problem(self, s: core.FlowSummary, steps: str, trainable: int) -> Problem | None:
        dead = s.no_grad + s.zero_grad
        if not dead:
            return None
        parts = []
        if s.no_grad:
            parts.append(f"never got a gradient in {steps}: {core.name_layers(s.no_grad)}")
        if s.zero_grad:
            parts.append(f"had a gradient that was exactly zero at every step: {core.name_layers(s.zero_grad)}")
        status: Status = "fail" if s.dead_fraction >= self.fail_fraction else "warn"
        return (
            status,
            f"{len(dead)} of {trainable} trainable parameters ({s.dead_fraction:.0%} of the elements) "
            f"{'; '.join(parts)}.",
            "these layers do not learn: look for a branch whose output is not used in the loss, a detach() or "
            "torch.no_grad() in the wrong place, a multiplication by zero or a mask that blocks everything. If "
            "they are unused on purpose, freeze them (requires_grad_(False)) or name them in allow_unused.",
        )

    def _log_groups(self, trainer: pl.Trainer, s: core.FlowSummary) -> None:
        groups = [
            ("never got a gradient", s.no_grad), ("gradient always exactly zero", s.zero_grad),
            ("gradient but in no optimizer", s.not_in_optimizer), ("gradient but never moved", s.unchanged),
            ("gradient never reset between steps", s.not_reset), ("allowed unused", s.allowed_unused),
            ("frozen", self._frozen),
        ]
        lines = ["| group | parameters |", "|---|---|"]
        lines += [f"| {title} | {', '.join(names)} |" for title, names in groups if names]
        if len(lines) == 2:
            lines.append("| all live | every trainable parameter |")
        self.log_text(trainer, "parameters", "\n".join(lines))
