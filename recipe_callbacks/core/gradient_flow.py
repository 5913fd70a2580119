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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


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
