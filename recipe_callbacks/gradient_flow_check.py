"""GradientFlowCheck (recipe steps 2h/2i): is every layer learning in the first optimizer steps?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from recipe_callbacks.core import gradient_flow as core
from recipe_callbacks.core.cost_clock import CostClock
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail, Status
from recipe_callbacks.plumbing.validation import check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl

# Parameters that healthy models leave without gradients: Hugging Face's pooler when a head reads
# the token states instead (BertModel, ViTModel, ... compute it and nothing uses it).
DEFAULT_ALLOW_UNUSED: tuple[str, ...] = ("*pooler.*",)
_SHARDED = ("FSDP", "DeepSpeed", "ModelParallel")
_PROBES = 8  # elements per parameter (those with the largest |gradient|) watched for a change
_SEVERITY = {"pass": 0, "warn": 1, "fail": 2}


def _grad_values(grad: torch.Tensor) -> torch.Tensor:
    """The stored values of a gradient: the dense tensor, or the values of a sparse one."""
    return grad.coalesce().values() if grad.is_sparse else grad


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
    in one host transfer; ``values["cost_steps"]`` is the measured time in its hooks over the mean
    step time (a small fraction of one step). Nothing after that.

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
        self._handles: list[RemovableHandle] = []
        self._params: dict[str, nn.Parameter] = {}
        self._lives: dict[str, core.ParameterLife] = {}
        self._frozen: list[str] = []
        self._order: list[str] = []  # parameter names in the order their gradients arrived this step
        self._seen_in_order: set[str] = set()
        self._pending: dict[str, dict[str, Any]] = {}  # name -> what this batch's step showed
        self._reset_seen: dict[str, bool] = {}  # manual optimization: gradient reset since its last step
        self._leftovers: dict[str, list[torch.Tensor]] = {}
        self._stepped: set[str] = set()
        self._observed = 0
        self._skipped = 0
        self._no_backward = 0
        self._nonfinite_step: int | None = None
        self._nonfinite_layer: str | None = None
        self._manual = False
        self._scaler = False
        self._clock = CostClock()
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
            self.skip(trainer, f"the {strategy} strategy shards the parameters; the check sees only shards", "")
            self.finish_early()
            return
        self._waiting = True  # the parameters are collected just before the first backward

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self._waiting:
            self._waiting = False
            with self._clock.own():
                self._start(trainer, pl_module)

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        in_optimizer = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        for name, p in pl_module.named_parameters():
            if not p.requires_grad:
                self._frozen.append(name)
                continue
            self._params[name] = p
            self._lives[name] = core.ParameterLife(name, p.numel(), in_optimizer=id(p) in in_optimizer)
        if not self._params:
            self.skip(trainer, "the model has no trainable parameters", "")
            self.finish_early()
            return
        self._manual = not pl_module.automatic_optimization
        self._scaler = getattr(trainer.precision_plugin, "scaler", None) is not None
        for name, p in self._params.items():
            self._handles.append(p.register_post_accumulate_grad_hook(self._arrival_hook(name)))  # type: ignore[no-untyped-call]
            if self._manual:
                self._handles.append(p.register_hook(self._leftover_hook(name, p)))  # type: ignore[no-untyped-call]
        self._active = True

    def _arrival_hook(self, name: str) -> Any:
        def hook(_: torch.Tensor) -> None:
            if name not in self._seen_in_order:
                self._seen_in_order.add(name)
                self._order.append(name)

        return hook

    def _leftover_hook(self, name: str, p: nn.Parameter) -> Any:
        def hook(_: torch.Tensor) -> None:
            # runs before this gradient is added to p.grad: p.grad is what the last steps left
            if p.grad is None:
                self._reset_seen[name] = True
            else:
                self._leftovers.setdefault(name, []).append(_grad_values(p.grad.detach()).abs().sum())

        return hook

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._active or self._waiting:
            self._clock.step_started()

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._active:
            return
        with self._clock.own():
            self._step_index = trainer.global_step
            ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
            names = [n for n, p in self._params.items()
                     if n not in self._pending and (id(p) in ids or not self._lives[n].in_optimizer)]
            self._record_step(names)

    def _record_step(self, names: list[str]) -> None:
        """Flags of every gradient of this step, read back in one transfer; probes for the change."""
        flags: list[torch.Tensor] = []
        with_grad: list[str] = []
        for name in names:
            p = self._params[name]
            grad = p.grad
            entry: dict[str, Any] = {"has_grad": grad is not None, "reset": None, "probe": None}
            if self._manual and name in self._stepped and self._lives[name].in_optimizer:
                left = self._leftovers.pop(name, [])
                entry["reset_tensor"] = torch.stack(left).min() if left else None
                entry["reset"] = self._reset_seen.get(name, False) or grad is None
            self._reset_seen[name] = False
            self._leftovers.pop(name, None)
            if grad is not None:
                values = _grad_values(grad.detach())
                flags.append(torch.stack([values.isfinite().all(), (values != 0).any()]))
                with_grad.append(name)
                if not grad.is_sparse and grad.numel() > 0:
                    k = min(_PROBES, grad.numel())
                    index = grad.detach().abs().flatten().nan_to_num(0.0).topk(k).indices
                    entry["probe"] = (index, p.detach().flatten()[index].clone())
            self._pending[name] = entry
        if flags:
            table = torch.stack([f.to(flags[0].device) for f in flags]).cpu()  # (P, 2) bool: finite, nonzero
            for name, (finite, nonzero) in zip(with_grad, table.tolist(), strict=True):
                self._pending[name]["finite"] = bool(finite)
                self._pending[name]["nonzero"] = bool(nonzero)
        resets = [(n, e.pop("reset_tensor")) for n, e in self._pending.items() if e.get("reset_tensor") is not None]
        if resets:
            left = torch.stack([t.to(torch.float64).to(resets[0][1].device) for _, t in resets]).cpu().tolist()
            for (name, _), value in zip(resets, left, strict=True):
                self._pending[name]["reset"] = bool(self._pending[name]["reset"]) or value == 0.0
        for entry in self._pending.values():
            entry.pop("reset_tensor", None)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._active:
            return
        with self._clock.own():
            if self._pending:
                self._observe(trainer)
        self._clock.step_ended()
        if self._observed >= self.num_steps or self._skipped + self._no_backward > self.max_skipped_steps:
            self._conclude(trainer)

    def _observe(self, trainer: pl.Trainer) -> None:
        pending, self._pending = self._pending, {}
        if not any(e["has_grad"] for e in pending.values()):
            self._no_backward += 1  # training_step returned None: Lightning skips the backward and the step
            return
        nonfinite = [n for n, e in pending.items() if e["has_grad"] and not e.get("finite", True)]
        skipped = bool(nonfinite) and self._scaler  # GradScaler skips a step with Inf/NaN gradients
        probes = [(n, e["probe"]) for n, e in pending.items() if e["probe"] is not None and not skipped]
        moved: dict[str, bool] = {}
        if probes:
            diffs = [(self._params[n].detach().flatten()[idx] != before).any() for n, (idx, before) in probes]
            moved = dict(zip([n for n, _ in probes], torch.stack(diffs).cpu().tolist(), strict=True))
        if skipped:
            self._skipped += 1
        else:
            self._observed += 1
            if nonfinite and self._nonfinite_step is None:
                self._nonfinite_step = self._step_index
                self._nonfinite_layer = core.first_non_finite(self._order, nonfinite)
            for name, e in pending.items():
                self._lives[name].observe(
                    has_grad=e["has_grad"], finite=e.get("finite", True), nonzero=e.get("nonzero", False),
                    changed=moved.get(name), reset=e["reset"],
                )
        self._stepped.update(n for n, e in pending.items() if e["has_grad"])
        self._order, self._seen_in_order = [], set()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active or self._waiting:
            self._waiting = False
            self._conclude(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()
        self._active = self._waiting = False

    # ----------------------------------------------------------------- judging
    def _conclude(self, trainer: pl.Trainer) -> None:
        self._remove_hooks()
        self._active = False
        self.finish_early()
        if self._observed == 0:
            if self._skipped:
                self.report(
                    trainer, "warn",
                    f"every one of the {self._skipped} optimizer steps watched had NaN/Inf gradients and was skipped "
                    "by AMP's GradScaler",
                    {"skipped_steps": float(self._skipped)},
                    "a few skipped steps at the start are normal while the scale calibrates; this many are not: look "
                    "for an overflow in the forward (a loss or activation too large for float16), or use bf16.",
                )
            else:
                seen = f" ({self._no_backward} steps without any gradient)" if self._no_backward else ""
                self.skip(trainer, f"no optimizer step with gradients was seen{seen}: training_step returned no loss, "
                          "or manual optimization calls the raw optimizer, so the gradients could not be watched", "")
            return
        s = core.summarize_flow(self._lives.values(), self.allow_unused)
        cost = self._clock.cost_steps
        values = {
            "observed_steps": float(self._observed), "trainable_params": float(len(self._lives)),
            "frozen_params": float(len(self._frozen)), "no_grad_params": float(len(s.no_grad)),
            "zero_grad_params": float(len(s.zero_grad)), "not_in_optimizer_params": float(len(s.not_in_optimizer)),
            "unchanged_params": float(len(s.unchanged)), "not_reset_params": float(len(s.not_reset)),
            "dead_fraction": s.dead_fraction, "skipped_steps": float(self._skipped), "cost_steps": cost,
        }
        problems: list[tuple[Status, str, str]] = []
        steps = f"{self._observed} optimizer step{'s' if self._observed != 1 else ''}"
        if self._nonfinite_step is not None:
            values["nonfinite_step"] = float(self._nonfinite_step)
            layer = core.owner_of(self._nonfinite_layer or "")
            problems.append((
                "fail",
                f"a NaN/Inf gradient at optimizer step {self._nonfinite_step}; in backward order it appears first in "
                f"'{layer}' (parameter '{self._nonfinite_layer}').",
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
        dead = s.no_grad + s.zero_grad
        if dead:
            parts = []
            if s.no_grad:
                parts.append(f"never got a gradient in {steps}: {core.name_layers(s.no_grad)}")
            if s.zero_grad:
                parts.append(f"had a gradient that was exactly zero at every step: {core.name_layers(s.zero_grad)}")
            status: Status = "fail" if s.dead_fraction >= self.fail_fraction else "warn"
            problems.append((
                status,
                f"{len(dead)} of {len(self._lives)} trainable parameters ({s.dead_fraction:.0%} of the elements) "
                f"{'; '.join(parts)}.",
                "these layers do not learn: look for a branch whose output is not used in the loss, a detach() or "
                "torch.no_grad() in the wrong place, a multiplication by zero or a mask that blocks everything. If "
                "they are unused on purpose, freeze them (requires_grad_(False)) or name them in allow_unused.",
            ))
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
        info = []
        if self._frozen:
            info.append(f"frozen (requires_grad=False, as information): {core.name_layers(self._frozen)}")
        if s.allowed_unused:
            info.append(f"without gradients as allowed by allow_unused: {core.name_layers(s.allowed_unused)}")
        if self._skipped:
            info.append(f"{self._skipped} steps skipped by AMP's GradScaler were left out")
        tail = (" " + "; ".join(info) + ".") if info else ""
        self._log_groups(trainer, s)
        if not problems:
            self.report(
                trainer, "pass",
                f"all {len(self._lives)} trainable parameters got finite, non-zero gradients and moved in "
                f"{steps}.{tail}",
                values,
            )
            return
        worst = max((p[0] for p in problems), key=_SEVERITY.__getitem__)
        self.report(trainer, worst, " ".join(p[1] for p in problems) + tail, values, " ".join(p[2] for p in problems))

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
