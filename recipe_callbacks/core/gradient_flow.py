"""Is every layer learning? The life of each parameter over the first optimizer steps.

A callback records, at each observed optimizer step and for each trainable parameter, whether it
had a gradient, whether that gradient was finite and not exactly zero, whether the parameter's
value moved in the step, and (under manual optimization) whether its gradient was reset since its
previous step. :class:`ParameterLife` sums these up; :func:`summarize_flow` sorts the parameters
into the groups a user acts on:

- ``no_grad``: never received a gradient (an unused branch, a layer computed but not connected to
  the loss, a ``detach()`` in the wrong place);
- ``zero_grad``: a gradient, but exactly zero at every observed step (a multiplication by zero, a
  mask that blocks everything, a ReLU dead for every input);
- ``not_in_optimizer``: a gradient, but in no optimizer's param groups;
- ``unchanged``: a non-zero gradient and in an optimizer, yet its value never moved (learning rate
  0, a step that never runs);
- ``not_reset``: under manual optimization, a gradient never reset between two of its optimizer
  steps (``zero_grad`` missing), so gradients grow across steps;
- ``non_finite``: the first step with a NaN/Inf gradient, and the first such parameter in backward
  order (where the non-finite value appears first, nearest the loss).

Names are grouped by the module that owns them (``encoder.layer.0.weight`` and ``.bias`` read as
``encoder.layer.0``) so that a report names layers, not tensors.

Nothing here imports Lightning.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


@dataclass
class ParameterLife:
    """What the observed optimizer steps showed about one trainable parameter.

    Example:
        >>> life = ParameterLife("head.weight", numel=40)
        >>> life.observe(has_grad=True, finite=True, nonzero=True, changed=True)
        >>> life.live
        True
    """

    name: str
    numel: int = 0
    in_optimizer: bool = True
    steps: int = 0
    with_grad: int = 0
    nonzero: int = 0
    nonfinite: int = 0
    changed: int = 0
    judged_change: int = 0  # steps in which a change could be judged (the step ran, the gradient was non-zero)
    not_reset: int = 0  # steps after the first whose gradient still held the previous step's

    def observe(
        self,
        *,
        has_grad: bool,
        finite: bool = True,
        nonzero: bool = False,
        changed: bool | None = None,
        reset: bool | None = None,
    ) -> None:
        """Record one optimizer step. ``changed`` is ``None`` when the step could not be judged
        (it was skipped, e.g. by AMP's GradScaler); ``reset`` is ``None`` when not watched."""
        self.steps += 1
        self.with_grad += has_grad
        self.nonfinite += has_grad and not finite
        self.nonzero += has_grad and finite and nonzero
        if changed is not None and has_grad and finite and nonzero:
            self.judged_change += 1
            self.changed += changed
        if reset is False:
            self.not_reset += 1

    @property
    def live(self) -> bool:
        """A finite non-zero gradient at least once, and the value moved whenever that could be judged."""
        return self.nonzero > 0 and (self.judged_change == 0 or self.changed > 0) and self.in_optimizer


@dataclass
class FlowSummary:
    """The parameters sorted into the groups of the module docstring (names of parameters)."""

    observed_steps: int
    no_grad: list[str] = field(default_factory=list)
    zero_grad: list[str] = field(default_factory=list)
    not_in_optimizer: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    not_reset: list[str] = field(default_factory=list)
    allowed_unused: list[str] = field(default_factory=list)
    dead_elements: int = 0  # elements of no_grad + zero_grad parameters
    trainable_elements: int = 0

    @property
    def dead_fraction(self) -> float:
        return self.dead_elements / self.trainable_elements if self.trainable_elements else 0.0


def matches_any(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``name`` matches one of the ``fnmatch`` patterns.

    Example:
        >>> matches_any("bert.pooler.dense.weight", ["*pooler.*"]), matches_any("head.weight", ["*pooler.*"])
        (True, False)
    """
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def summarize_flow(lives: Iterable[ParameterLife], allow_unused: Sequence[str] = ()) -> FlowSummary:
    """Sort the parameters into the groups a user acts on. Parameters that match ``allow_unused``
    and never get a (non-zero) gradient go to ``allowed_unused`` instead (information only).

    Example:
        >>> a, b = ParameterLife("used.weight", 4), ParameterLife("branch.weight", 4)
        >>> a.observe(has_grad=True, nonzero=True, changed=True)
        >>> b.observe(has_grad=False)
        >>> s = summarize_flow([a, b])
        >>> s.no_grad, s.dead_fraction
        (['branch.weight'], 0.5)
    """
    lives = list(lives)
    summary = FlowSummary(max((p.steps for p in lives), default=0))
    for p in lives:
        summary.trainable_elements += p.numel
        if p.not_reset:
            summary.not_reset.append(p.name)
        if p.nonzero == 0 and p.nonfinite == 0:
            if matches_any(p.name, allow_unused):
                summary.allowed_unused.append(p.name)
                continue
            (summary.no_grad if p.with_grad == 0 else summary.zero_grad).append(p.name)
            summary.dead_elements += p.numel
        elif p.nonzero > 0 and not p.in_optimizer:
            summary.not_in_optimizer.append(p.name)
        elif p.judged_change > 0 and p.changed == 0:
            summary.unchanged.append(p.name)
    return summary


def first_non_finite(backward_order: Sequence[str], non_finite: Iterable[str]) -> str | None:
    """The first parameter in backward order whose gradient is not finite (``None`` if none);
    parameters that the order does not list come after it, in the order given.

    Example:
        >>> first_non_finite(["head.weight", "body.weight", "stem.weight"], {"stem.weight", "body.weight"})
        'body.weight'
    """
    bad = list(dict.fromkeys(non_finite))
    if not bad:
        return None
    rank = {name: i for i, name in enumerate(backward_order)}
    return min(bad, key=lambda n: (rank.get(n, len(rank)), bad.index(n)))


def owner_of(name: str) -> str:
    """The module that owns a parameter: everything before the last dot (the name itself at top level).

    Example:
        >>> owner_of("encoder.layers.0.linear1.weight"), owner_of("scale")
        ('encoder.layers.0.linear1', 'scale')
    """
    return name.rsplit(".", 1)[0] if "." in name else name


def name_layers(names: Sequence[str], limit: int = 6) -> str:
    """Parameter names as a short list of their modules: ``'a', 'b' (+3 more)``.

    Example:
        >>> name_layers(["a.weight", "a.bias", "b.weight"])
        "'a', 'b'"
        >>> name_layers([f"l{i}.weight" for i in range(8)], limit=2)
        "'l0', 'l1' (+6 more)"
    """
    layers = list(dict.fromkeys(owner_of(n) for n in names))
    shown = ", ".join(f"'{layer}'" for layer in layers[:limit])
    return shown + (f" (+{len(layers) - limit} more)" if len(layers) > limit else "")


# ----------------------------------------------------------------------------- recording the steps
PROBES = 8  # elements per parameter (those with the largest |gradient|) watched for a change


def grad_values(grad: torch.Tensor) -> torch.Tensor:
    """The stored values of a gradient: the dense tensor, or the values of a sparse one.

    Example:
        >>> grad_values(torch.tensor([[0.0, 2.0]]).to_sparse()).tolist()
        [2.0]
    """
    return grad.coalesce().values() if grad.is_sparse else grad


class GradientRecorder:
    """The gradients of the trainable parameters over the first optimizer steps, fed to their
    :class:`ParameterLife`.

    Hooks on the parameters record the order in which gradients arrive in backward (the first
    non-finite one is named where it appears first, nearest the loss) and, under ``manual``
    optimization, whether each gradient was reset between two of its optimizer steps. At each
    optimizer step :meth:`record_step` reads every gradient's flags (finite, non-zero) in one host
    transfer and keeps the elements with the largest gradient; after the step :meth:`observe`
    sees whether they moved. ``scaler``: AMP's GradScaler skips steps with NaN/Inf gradients, so
    those are counted as skipped, not judged.

    Example:
        >>> p = nn.Parameter(torch.ones(2))
        >>> rec = GradientRecorder({"w": p}, in_optimizer={id(p)})
        >>> rec.attach()
        >>> (p * 2).sum().backward()
        >>> rec.record_step(["w"])
        >>> with torch.no_grad():
        ...     p -= 0.1
        >>> rec.observe(step=0)
        >>> rec.detach()
        >>> rec.observed, rec.lives["w"].live
        (1, True)
    """

    def __init__(self, params: dict[str, nn.Parameter], in_optimizer: set[int], manual: bool = False,
                 scaler: bool = False) -> None:
        self.params = params
        self.lives = {n: ParameterLife(n, p.numel(), in_optimizer=id(p) in in_optimizer) for n, p in params.items()}
        self.manual, self.scaler = manual, scaler
        self.observed = self.skipped = self.no_backward = 0
        self.nonfinite_step: int | None = None
        self.nonfinite_layer: str | None = None
        self.pending: dict[str, dict[str, Any]] = {}  # name -> what this batch's step showed
        self._order: list[str] = []  # parameter names in the order their gradients arrived this step
        self._seen_in_order: set[str] = set()
        self._reset_seen: dict[str, bool] = {}  # manual optimization: gradient reset since its last step
        self._leftovers: dict[str, list[torch.Tensor]] = {}
        self._stepped: set[str] = set()
        self._handles: list[RemovableHandle] = []

    # ----------------------------------------------------------------- hooks
    def attach(self) -> None:
        for name, p in self.params.items():
            self._handles.append(p.register_post_accumulate_grad_hook(self._arrival_hook(name)))  # type: ignore[no-untyped-call]
            if self.manual:
                self._handles.append(p.register_hook(self._leftover_hook(name, p)))  # type: ignore[no-untyped-call]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _arrival_hook(self, name: str) -> Callable[[torch.Tensor], None]:
        def hook(_: torch.Tensor) -> None:
            if name not in self._seen_in_order:
                self._seen_in_order.add(name)
                self._order.append(name)

        return hook

    def _leftover_hook(self, name: str, p: nn.Parameter) -> Callable[[torch.Tensor], None]:
        def hook(_: torch.Tensor) -> None:
            # runs before this gradient is added to p.grad: p.grad is what the last steps left
            if p.grad is None:
                self._reset_seen[name] = True
            else:
                self._leftovers.setdefault(name, []).append(grad_values(p.grad.detach()).abs().sum())

        return hook

    # ----------------------------------------------------------------- one optimizer step
    def due(self, optimizer_params: set[int]) -> list[str]:
        """The parameters an optimizer over ``optimizer_params`` steps now (and those in no optimizer)."""
        return [n for n, p in self.params.items()
                if n not in self.pending and (id(p) in optimizer_params or not self.lives[n].in_optimizer)]

    def record_step(self, names: list[str]) -> None:
        """Flags of every gradient of this step, read back in one transfer; probes for the change."""
        flags: list[torch.Tensor] = []
        with_grad: list[str] = []
        for name in names:
            p, entry = self.params[name], self._entry(name)
            if p.grad is not None:
                values = grad_values(p.grad.detach())
                flags.append(torch.stack([values.isfinite().all(), (values != 0).any()]))
                with_grad.append(name)
                if not p.grad.is_sparse and p.grad.numel() > 0:
                    k = min(PROBES, p.grad.numel())
                    index = p.grad.detach().abs().flatten().nan_to_num(0.0).topk(k).indices
                    entry["probe"] = (index, p.detach().flatten()[index].clone())
            self.pending[name] = entry
        if flags:
            table = torch.stack([f.to(flags[0].device) for f in flags]).cpu()  # (P, 2) bool: finite, nonzero
            for name, (finite, nonzero) in zip(with_grad, table.tolist(), strict=True):
                self.pending[name]["finite"] = bool(finite)
                self.pending[name]["nonzero"] = bool(nonzero)
        resets = [(n, e.pop("reset_tensor")) for n, e in self.pending.items() if e.get("reset_tensor") is not None]
        if resets:
            left = torch.stack([t.to(torch.float64).to(resets[0][1].device) for _, t in resets]).cpu().tolist()
            for (name, _), value in zip(resets, left, strict=True):
                self.pending[name]["reset"] = bool(self.pending[name]["reset"]) or value == 0.0
        for entry in self.pending.values():
            entry.pop("reset_tensor", None)

    def _entry(self, name: str) -> dict[str, Any]:
        """What is known of a parameter's gradient before its flags are read (has one; reset)."""
        grad = self.params[name].grad
        entry: dict[str, Any] = {"has_grad": grad is not None, "reset": None, "probe": None}
        if self.manual and name in self._stepped and self.lives[name].in_optimizer:
            left = self._leftovers.pop(name, [])
            entry["reset_tensor"] = torch.stack(left).min() if left else None
            entry["reset"] = self._reset_seen.get(name, False) or grad is None
        self._reset_seen[name] = False
        self._leftovers.pop(name, None)
        return entry

    def observe(self, step: int) -> None:
        """After the optimizer step ``step``: whether the probed elements moved, into every life."""
        pending, self.pending = self.pending, {}
        if not any(e["has_grad"] for e in pending.values()):
            self.no_backward += 1  # training_step returned None: Lightning skips the backward and the step
            return
        nonfinite = [n for n, e in pending.items() if e["has_grad"] and not e.get("finite", True)]
        skipped = bool(nonfinite) and self.scaler  # GradScaler skips a step with Inf/NaN gradients
        probes = [(n, e["probe"]) for n, e in pending.items() if e["probe"] is not None and not skipped]
        moved: dict[str, bool] = {}
        if probes:
            diffs = [(self.params[n].detach().flatten()[idx] != before).any() for n, (idx, before) in probes]
            moved = dict(zip([n for n, _ in probes], torch.stack(diffs).cpu().tolist(), strict=True))
        if skipped:
            self.skipped += 1
        else:
            self.observed += 1
            if nonfinite and self.nonfinite_step is None:
                self.nonfinite_step = step
                self.nonfinite_layer = first_non_finite(self._order, nonfinite)
            for name, e in pending.items():
                self.lives[name].observe(
                    has_grad=e["has_grad"], finite=e.get("finite", True), nonzero=e.get("nonzero", False),
                    changed=moved.get(name), reset=e["reset"],
                )
        self._stepped.update(n for n, e in pending.items() if e["has_grad"])
        self._order, self._seen_in_order = [], set()
