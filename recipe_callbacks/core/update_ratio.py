"""Update-to-weight ratios and activation health, on plain tensors.

The update ratio of a parameter is ``||w_after - w_before|| / ||w_before||``: how far one optimizer
step moved the weights, relative to their size. Karpathy's rule of thumb (makemore lectures) is
about ``1e-3`` on a log scale: much smaller and the layer does not learn, much larger and the
updates overwhelm the weights. A layer's ratio pools all its parameter tensors (weight and bias)
into one vector, so a zero-initialised bias does not make it infinite.

Activation health: a ReLU unit that outputs zero for every sample of a batch gets no gradient
(dead); a tanh or sigmoid output pinned near its bounds passes almost no gradient (saturated).
The smooth ones (GELU, SiLU, Softplus) are judged by their input, since their output near 0 does
not tell a dead unit from one at the origin: a unit is inactive where its input lies so far to the
left that the derivative stays below 0.01 for every input further left (GELU ``x < -3.1``, SiLU
``x < -6.3``, Softplus ``beta * x < -4.6``).

Nothing here imports Lightning; the callback ``UpdateRatioMonitor`` collects tensors and calls it.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from recipe_callbacks.core.pictures import Band

# log10 of a ratio that is exactly 0 (a frozen layer) or infinite (a zero weight that moved) is
# clamped to these, so that charts and scalars stay finite.
LOG10_FLOOR = -12.0
LOG10_CEILING = 12.0

# A tanh output with |y| above this, or a sigmoid output within 1 - this of 0 or 1, is saturated.
SATURATION = 0.99

ActivationKind = Literal[
    "relu", "relu6", "tanh", "sigmoid", "hardtanh", "hardsigmoid", "gelu", "quick_gelu", "silu", "softplus"
]
# Kinds judged by their input rather than their output, and the input below which they pass less
# than 0.01 of the gradient (for Softplus: of beta * input).
# QuickGELU is x * sigmoid(1.702 x): SiLU's cutoff over 1.702.
INPUT_CUTOFFS: dict[str, float] = {"gelu": -3.1, "quick_gelu": -3.7, "silu": -6.3, "softplus": -4.6}
# Kinds whose inactive units are dead (no gradient on one side) rather than saturated.
DEAD_KINDS: tuple[str, ...] = ("relu", "relu6", "gelu", "quick_gelu", "silu", "softplus")
Verdict = Literal["ok", "low", "high"]


def layer_name(param_name: str, root: str = "root") -> str:
    """The module that owns a parameter: its name without the last component.

    Example:
        >>> layer_name("net.0.weight"), layer_name("scale")
        ('net.0', 'root')
    """
    head, _, _ = param_name.rpartition(".")
    return head or root


def _wide(t: torch.Tensor) -> torch.Tensor:
    # Differences of low-precision weights are taken in float32 (float64 stays float64).
    return t.detach().to(torch.promote_types(t.dtype, torch.float32))


def stacked_update_norms(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(2, P)`` float64 on the tensors' device: per tensor ``||after - before||`` (row 0) and
    ``||before||`` (row 1), Frobenius; left on the device so that the caller copies it to the host
    together with anything else it measured (one transfer, one sync).

    Example:
        >>> stacked_update_norms([torch.tensor([3.0, 4.0])], [torch.tensor([3.0, 4.1])]).shape
        torch.Size([2, 1])
    """
    if len(before) != len(after):
        raise ValueError(f"update_norms: {len(before)} tensors before the step but {len(after)} after")
    if not before:
        return torch.zeros(2, 0, dtype=torch.float64)
    device = before[0].device  # norms gathered on one device
    updates = torch.stack(
        [torch.linalg.vector_norm(_wide(a) - _wide(b)).to(device) for b, a in zip(before, after, strict=True)]
    )
    weights = torch.stack([torch.linalg.vector_norm(_wide(b)).to(device) for b in before])
    return torch.stack([updates.to(torch.float64), weights.to(torch.float64)])


def update_norms(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tensor ``||after - before||`` and ``||before||`` (Frobenius), as two float64 ``(P,)`` CPU tensors.

    Example:
        >>> u, w = update_norms([torch.tensor([3.0, 4.0])], [torch.tensor([3.0, 4.1])])
        >>> round(u.item(), 6), w.item()
        (0.1, 5.0)
    """
    both = stacked_update_norms(before, after).cpu()
    return both[0], both[1]


def log10_ratio(update_norm: float, weight_norm: float) -> float:
    """``log10(update_norm / weight_norm)``, clamped to ``[LOG10_FLOOR, LOG10_CEILING]``.

    NaN stays NaN (weights that are no longer finite); ``0 / 0`` is the floor (nothing moved).

    Example:
        >>> log10_ratio(1e-3, 1.0), log10_ratio(0.0, 2.0), log10_ratio(1.0, 0.0)
        (-3.0, -12.0, 12.0)
    """
    if math.isnan(update_norm) or math.isnan(weight_norm):
        return math.nan
    if update_norm == 0.0:
        return LOG10_FLOOR
    if weight_norm == 0.0 or math.isinf(update_norm):
        return LOG10_CEILING
    return min(LOG10_CEILING, max(LOG10_FLOOR, math.log10(update_norm / weight_norm)))


def layer_log10_ratios(
    names: Sequence[str], update: Sequence[float], weight: Sequence[float]
) -> dict[str, float]:
    """Pool per-tensor norms into one ratio per layer: ``sqrt(sum u^2) / sqrt(sum w^2)`` over the
    layer's tensors, as ``log10``. Layers keep the order in which they first appear.

    Example:
        >>> r = layer_log10_ratios(["a.weight", "a.bias", "b.weight"], [3e-3, 4e-3, 0.0], [3.0, 4.0, 1.0])
        >>> {k: round(v, 6) for k, v in r.items()}
        {'a': -3.0, 'b': -12.0}
    """
    sums: dict[str, list[float]] = {}
    for name, u, w in zip(names, update, weight, strict=True):
        acc = sums.setdefault(layer_name(name), [0.0, 0.0])
        acc[0] += float(u) ** 2
        acc[1] += float(w) ** 2
    return {layer: log10_ratio(math.sqrt(u2), math.sqrt(w2)) for layer, (u2, w2) in sums.items()}


# In the order they are tried: ReLU6 is a subclass of Hardtanh, so it comes first.
_ACTIVATION_KINDS: tuple[tuple[type[nn.Module], ActivationKind], ...] = (
    (nn.ReLU6, "relu6"),
    (nn.ReLU, "relu"),
    (nn.Tanh, "tanh"),
    (nn.Sigmoid, "sigmoid"),
    (nn.Hardtanh, "hardtanh"),
    (nn.Hardsigmoid, "hardsigmoid"),
    (nn.GELU, "gelu"),
    (nn.SiLU, "silu"),
    (nn.Softplus, "softplus"),
)


# Activation modules of other libraries, by class name (a subclass is recognised through its bases),
# so that none of them needs importing: Hugging Face's (``transformers.activations``). A clipped
# GELU is left out: its output is also cut off on the right.
ACTIVATIONS_BY_NAME: dict[str, ActivationKind] = {
    "GELUActivation": "gelu",
    "NewGELUActivation": "gelu",
    "FastGELUActivation": "gelu",
    "AccurateGELUActivation": "gelu",
    "PytorchGELUTanh": "gelu",
    "GELUTanh": "gelu",
    "QuickGELUActivation": "quick_gelu",
    "SiLUActivation": "silu",
    "ReLUSquaredActivation": "relu",
}


def activation_kind(module: nn.Module) -> ActivationKind | None:
    """Which activation a module is, for the health statistics; ``None`` for anything else.

    PyTorch's modules by type, other libraries' (Hugging Face's ``NewGELUActivation`` and the like:
    :data:`ACTIVATIONS_BY_NAME`) by class name. LeakyReLU and ELU are not counted: their gradient
    never vanishes on the left, so their units cannot die the way a ReLU's (or a far-left GELU's) do.

    Example:
        >>> activation_kind(nn.ReLU()), activation_kind(nn.Tanh()), activation_kind(nn.GELU())
        ('relu', 'tanh', 'gelu')
        >>> activation_kind(nn.LeakyReLU()) is None
        True
        >>> activation_kind(type("NewGELUActivation", (nn.Module,), {})())
        'gelu'
    """
    for kind, name in _ACTIVATION_KINDS:
        if isinstance(module, kind):
            return name
    for cls in type(module).__mro__:
        found = ACTIVATIONS_BY_NAME.get(cls.__name__)
        if found is not None:
            return found
    return None


def inactive_input_mask(inputs: torch.Tensor, kind: ActivationKind, *, beta: float = 1.0) -> torch.Tensor:
    """Where a smooth activation (GELU, SiLU, Softplus) passes less than 0.01 of the gradient, from
    its input: a bool tensor shaped like ``inputs``.

    Example:
        >>> inactive_input_mask(torch.tensor([-8.0, -1.0, 2.0]), "gelu").tolist()
        [True, False, False]
        >>> inactive_input_mask(torch.tensor([-3.0]), "softplus", beta=2.0).tolist()
        [True]
    """
    x = inputs.detach()
    if kind == "softplus":
        x = x * beta
    return x < INPUT_CUTOFFS[kind]


def sampled_step(step: int, every_n_steps: int) -> bool:
    """Whether an optimizer step is measured: densely at the start, where the recipe's bugs show
    (steps 0, 1, 2, 4, 8, ... below ``every_n_steps``), then every ``every_n_steps`` steps.

    Example:
        >>> [s for s in range(40) if sampled_step(s, 10)]
        [0, 1, 2, 4, 8, 10, 20, 30]
    """
    return step % every_n_steps == 0 or (step < every_n_steps and step & (step - 1) == 0)


def next_sampled_step(step: int, every_n_steps: int) -> int:
    """The first step after ``step`` that :func:`sampled_step` measures.

    Example:
        >>> [next_sampled_step(s, 10) for s in (0, 1, 2, 3, 8, 9, 10, 25)]
        [1, 2, 4, 4, 10, 10, 20, 30]
    """
    after = (step // every_n_steps + 1) * every_n_steps
    power = 1 << max(step, 0).bit_length()  # the next power of two
    return min(after, power) if power < every_n_steps else after


def inactive_mask(
    output: torch.Tensor, kind: ActivationKind, *, low: float = -1.0, high: float = 1.0
) -> torch.Tensor:
    """Where an activation passes (almost) no gradient: a bool tensor shaped like ``output``.

    ReLU: exactly zero. ReLU6: 0 or 6. Tanh: ``|y| > 0.99``. Sigmoid: within 0.01 of 0 or 1.
    Hardtanh: at ``low`` or ``high``. Hardsigmoid: at 0 or 1.

    Example:
        >>> inactive_mask(torch.tensor([-0.995, 0.5, 0.999]), "tanh").tolist()
        [True, False, True]
    """
    y = output.detach()
    if kind == "relu":
        return y <= 0
    if kind == "relu6":
        return (y <= 0) | (y >= 6)
    if kind == "tanh":
        return y.abs() > SATURATION
    if kind == "sigmoid":
        return (y < 1 - SATURATION) | (y > SATURATION)
    if kind == "hardtanh":
        return (y <= low) | (y >= high)
    return (y <= 0) | (y >= 1)


def unit_activity(inactive: torch.Tensor, unit_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit, how many of its values in the batch were active; and how many values were inactive.

    A unit is one index along ``unit_dim`` (features of ``(N, D)``, channels of ``(N, C, H, W)``);
    its values are all entries with that index, over samples and positions. Returns
    ``(active_count (U,), inactive_total ())`` as float64, summable across processes. A
    1-D activation is one unit; a ``unit_dim`` the tensor does not have means its last dim.

    Example:
        >>> mask = torch.tensor([[True, False], [True, True]])  # (N=2, D=2)
        >>> active, inactive = unit_activity(mask)
        >>> active.tolist(), inactive.item()
        ([0.0, 1.0], 3.0)
    """
    if inactive.ndim < 2:
        flat = inactive.reshape(1, -1)
    else:
        dim = unit_dim if -inactive.ndim <= unit_dim < inactive.ndim else inactive.ndim - 1
        flat = inactive.movedim(dim, 0).reshape(inactive.shape[dim], -1)
    active = (~flat).sum(dim=1, dtype=torch.float64)
    return active, inactive.sum(dtype=torch.float64)


def dead_fraction(active_count: torch.Tensor) -> float:
    """Fraction of units that were never active in the batch.

    Example:
        >>> dead_fraction(torch.tensor([0.0, 3.0, 0.0, 1.0]))
        0.5
    """
    if active_count.numel() == 0:
        return math.nan
    return float((active_count == 0).double().mean())


def judge_history(values: Sequence[float], low: float, high: float, patience: int) -> Verdict:
    """``"low"`` when each of the last ``patience`` values is below ``low``, ``"high"`` when each is
    above ``high`` (a NaN counts as high), else ``"ok"``: a layer is flagged only when it *stays*
    out of range.

    Example:
        >>> judge_history([-3.0, -6.0, -7.0], low=-5.0, high=-1.0, patience=2)
        'low'
        >>> judge_history([-6.0, -3.0, -7.0], low=-5.0, high=-1.0, patience=2)
        'ok'
    """
    recent = list(values)[-patience:]
    if len(recent) < patience:
        return "ok"
    if all(v < low for v in recent):
        return "low"
    if all(math.isnan(v) or v > high for v in recent):
        return "high"
    return "ok"


def recent_median(values: Sequence[float], count: int) -> float:
    """Median of the last ``count`` values (NaN when there are none).

    Example:
        >>> recent_median([9.0, 1.0, 3.0, 2.0], 3)
        2.0
    """
    recent = list(values)[-count:]
    return float(statistics.median(recent)) if recent else math.nan


def summarize_layers(layers: Mapping[str, float], limit: int = 5) -> str:
    """``"net.0 (-12.0), net.2 (-6.1)"``, at most ``limit`` layers and ``"and N more"``.

    Example:
        >>> summarize_layers({"a": -12.0, "b": -6.14, "c": 0.5}, limit=2)
        'a (-12.0), b (-6.1) and 1 more'
    """
    items = [f"{name} ({value:.1f})" for name, value in list(layers.items())[:limit]]
    text = ", ".join(items)
    extra = len(layers) - limit
    return f"{text} and {extra} more" if extra > 0 else text


def frozen_layers(named: Sequence[tuple[str, torch.Tensor]]) -> set[str]:
    """The layers (:func:`layer_name`) none of whose parameters requires a gradient.

    Example:
        >>> frozen_layers([("a.weight", torch.zeros(1)), ("b.weight", torch.zeros(1, requires_grad=True))])
        {'a'}
    """
    by_layer: dict[str, bool] = {}
    for n, p in named:
        layer = layer_name(n)
        by_layer[layer] = by_layer.get(layer, False) or p.requires_grad
    return {layer for layer, trains in by_layer.items() if not trains}


def push(history: dict[str, deque[float]], values: Mapping[str, float], length: int, cap: int) -> None:
    """Append one sample to every series (NaN where a series has no value; new series NaN-padded).

    Example:
        >>> h: dict[str, deque[float]] = {}
        >>> push(h, {"a": 1.0}, 1, 4); push(h, {"b": 2.0}, 2, 4)
        >>> {k: list(v) for k, v in h.items()}
        {'a': [1.0, nan], 'b': [nan, 2.0]}
    """
    for name, value in values.items():
        if name not in history:
            history[name] = deque([math.nan] * min(length - 1, cap - 1), maxlen=cap)
        history[name].append(value)
    for name, series in history.items():
        if name not in values:
            series.append(math.nan)


def ratio_chart_arguments(
    ratios: Mapping[str, Sequence[float]], steps: list[int], min_ratio: float, max_ratio: float
) -> dict[str, Any]:
    """The arguments of :func:`~recipe_callbacks.core.pictures.line_chart` for the ratio chart: the
    ratio of every layer (from its log10 history) over the sampled steps, the healthy band around
    1e-3 and the two limits."""
    hlines = {f"min_ratio {min_ratio:g} (warn)": min_ratio, f"max_ratio {max_ratio:g} (fail)": max_ratio}
    return {"series": {layer: [10.0**v for v in values] for layer, values in ratios.items()},
            "x": steps, "title": "UpdateRatioMonitor: ||update|| / ||weight|| per layer; healthy near 1e-3",
            "xlabel": "optimizer step", "ylabel": "update / weight ratio (log scale)", "log_y": True,
            "band": Band(1e-4, 1e-2, "healthy, around 1e-3"), "hlines": hlines}


def history_from_state(
    state: Mapping[str, Any], name: str, cap: int
) -> tuple[deque[int], dict[str, deque[float]]]:
    """The steps and series of one history back from a checkpoint: ``<name>_steps`` and ``ratios``
    (``name="ratio"``) or ``dead`` (``name="activation"``), each capped at ``cap``.

    Example:
        >>> steps, series = history_from_state({"ratio_steps": [0, 1], "ratios": {"fc": [-3.0, -2.5]}}, "ratio", 8)
        >>> list(steps), {k: list(v) for k, v in series.items()}
        ([0, 1], {'fc': [-3.0, -2.5]})
    """
    series = state.get("ratios" if name == "ratio" else "dead", {})
    return (deque((int(s) for s in state.get(f"{name}_steps", [])), maxlen=cap),
            {k: deque(map(float, v), maxlen=cap) for k, v in series.items()})


def changed(signatures: dict[str, tuple[Any, ...]], key: str, signature: tuple[Any, ...], final: bool) -> bool:
    """Whether the Finding ``key`` is to be reported again (its ``signature``, e.g. status and flagged
    layers, kept in ``signatures``): it changed, or it is a pass at the end of training.

    Example:
        >>> seen: dict[str, tuple[Any, ...]] = {}
        >>> changed(seen, "ratio", ("pass",), False), changed(seen, "ratio", ("pass",), False)
        (True, False)
        >>> changed(seen, "ratio", ("pass",), True)
        True
    """
    if signature == signatures.get(key) and not (final and signature[0] == "pass"):
        return False
    signatures[key] = signature
    return True


@dataclass(frozen=True)
class HistoryVerdict:
    """Which series of a history stayed out of range: their recent medians, and the extremes."""

    low: dict[str, float]
    high: dict[str, float]
    series: int
    lowest: float
    highest: float


def judge_histories(histories: Mapping[str, Sequence[float]], low: float, high: float, patience: int) -> HistoryVerdict:
    """:func:`judge_history` of every series, with the recent median of each one flagged.

    Example:
        >>> v = judge_histories({"a": [-3.0] * 3, "b": [-6.0] * 3}, -5.0, -1.0, 3)
        >>> v.low, v.high, v.lowest
        ({'b': -6.0}, {}, -6.0)
    """
    verdicts = {k: judge_history(v, low, high, patience) for k, v in histories.items()}
    medians = {k: recent_median(v, patience) for k, v in histories.items()}
    finite = [m for m in medians.values() if math.isfinite(m)]
    return HistoryVerdict(
        {k: medians[k] for k, verdict in verdicts.items() if verdict == "low"},
        {k: medians[k] for k, verdict in verdicts.items() if verdict == "high"},
        len(verdicts),
        min(finite, default=math.nan),
        max(finite, default=math.nan),
    )


class ActivationWatch:
    """Forward hooks on every activation module of a model for one training forward pass, counting
    per unit how often it was active (see :func:`unit_activity`), all on the device.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
        >>> watch = ActivationWatch(unit_dim=1)
        >>> watch.arm(net)
        1
        >>> _ = net(torch.randn(4, 2)); watch.disarm()
        >>> [(site, kind) for site, kind, *_ in watch.records]
        [('1', 'relu')]
    """

    def __init__(self, unit_dim: int = 1) -> None:
        self.unit_dim = unit_dim
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        self.records: list[tuple[str, str, torch.Tensor, torch.Tensor, int]] = []
        self._calls: dict[str, int] = {}

    def arm(self, model: nn.Module) -> int:
        """Hook every activation module of ``model``; the number of modules hooked."""
        self.disarm()  # a batch that ended without its end hook must not leave hooks behind
        self.records, self._calls = [], {}
        for name, module in model.named_modules():
            kind = activation_kind(module)
            if kind is not None:
                self.handles.append(module.register_forward_hook(self._hook(name or "root", kind, module)))
        return len(self.handles)

    def disarm(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _hook(self, name: str, kind: ActivationKind, module: nn.Module) -> Any:
        low, high = float(getattr(module, "min_val", -1.0)), float(getattr(module, "max_val", 1.0))
        beta = float(getattr(module, "beta", 1.0))
        by_input = kind in INPUT_CUTOFFS

        def hook(_: nn.Module, args: Any, output: Any) -> None:
            seen = args[0] if by_input and args else output
            # only training_step's own forward: other callbacks observe under no_grad (EvalModeCheck)
            if not isinstance(seen, torch.Tensor) or not torch.is_grad_enabled():
                return
            count = self._calls.get(name, 0) + 1
            self._calls[name] = count
            site = name if count == 1 else f"{name}#{count}"
            with torch.no_grad():
                if by_input:
                    mask = inactive_input_mask(seen, kind, beta=beta)
                else:
                    mask = inactive_mask(seen, kind, low=low, high=high)
                active, inactive = unit_activity(mask, self.unit_dim)
            self.records.append((site, kind, active, inactive, seen.numel()))

        return hook

    def take(self) -> list[tuple[str, str, torch.Tensor, torch.Tensor, int]]:
        """The records of the pass, forgotten here."""
        records, self.records = self.records, []
        return records


def flat_counts(records: Sequence[tuple[str, str, torch.Tensor, torch.Tensor, int]]) -> torch.Tensor:
    """One float64 vector on the records' device: the active counts of every site, then the inactive
    totals, then the sizes (what :func:`activation_fractions` reads back)."""
    device = records[0][2].device
    sizes = torch.tensor([float(r[4]) for r in records], dtype=torch.float64, device=device)
    parts = [r[2].to(device, torch.float64) for r in records]
    return torch.cat([*parts, torch.stack([r[3].to(device, torch.float64) for r in records]), sizes])


def activation_fractions(
    records: Sequence[tuple[str, str, torch.Tensor, torch.Tensor, int]], flat: torch.Tensor
) -> tuple[dict[str, float], dict[str, float]]:
    """The dead fraction of every site, and the scalars to log (dead and, for bounded kinds,
    saturated fractions), from :func:`flat_counts` summed over the processes."""
    dead: dict[str, float] = {}
    scalars: dict[str, float] = {}
    offset, n = 0, len(records)
    totals, numels = flat[-2 * n : -n], flat[-n:]
    for i, (site, kind, active, _, _) in enumerate(records):
        dead[site] = dead_fraction(flat[offset : offset + active.numel()])
        offset += active.numel()
        scalars[f"{site}/dead_fraction"] = dead[site]
        if kind not in DEAD_KINDS:
            scalars[f"{site}/saturated_fraction"] = float(totals[i] / numels[i].clamp_min(1.0))
    return dead, scalars


@dataclass
class ParameterSnapshot:
    """Copies of the parameters just before a sampled optimizer step, to measure the step's update.

    Example:
        >>> w = nn.Parameter(torch.tensor([3.0, 4.0]))
        >>> snap = ParameterSnapshot.take([("layer.weight", w)], step=0)
        >>> with torch.no_grad():
        ...     _ = w.add_(torch.tensor([0.0, 0.5]))
        >>> snap.norms().tolist()
        [[0.5], [5.0]]
    """

    names: list[str]
    params: list[torch.Tensor]
    copies: list[torch.Tensor]
    frozen_layers: set[str]
    step: int

    @classmethod
    def take(cls, named: Sequence[tuple[str, torch.Tensor]], step: int) -> ParameterSnapshot:
        with torch.no_grad():
            copies = [p.detach().clone() for _, p in named]
        return cls([n for n, _ in named], [p for _, p in named], copies, frozen_layers(named), step)

    def norms(self) -> torch.Tensor:
        """``(2, P)`` update and weight norms (:func:`stacked_update_norms`), still on the device."""
        with torch.no_grad():
            return stacked_update_norms(self.copies, self.params)
