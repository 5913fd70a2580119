"""Train a copy of a model for a few steps, and judge the loss curves it leaves.

The math behind ``InputIndependentBaseline`` (recipe step 2g) and ``OverfitOneBatch`` (2h),
free of Lightning: a module, a loss closure ``(module, batch) -> loss`` and an optimizer go in, a
:class:`ShortRun` (the loss curve and what the first backward pass showed) comes out. The verdict
functions turn curves into numbers and a status; the helpers read an optimizer and a model for the
usual reasons a model cannot fit (learning rate zero, frozen parameters, dropout still on).

The caller owns the RNG: :func:`train_for` seeds torch when given ``seed``, so run it inside
``torch.random.fork_rng`` (or Lightning's ``isolate_rng``) to leave the real run untouched.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.parameter import is_lazy

LossFn = Callable[[nn.Module, Any], "torch.Tensor | None"]
Verdict = Literal["pass", "warn", "fail"]


class ShortTrainingError(RuntimeError):
    """The short training could not run (no loss, no optimizer); the message says why."""


# ----------------------------------------------------------------------------- the training loop
@dataclass
class ShortRun:
    """What a short training left.

    Attributes:
        losses: the loss before each optimizer step; when the run was not stopped early, one more
            entry: the loss after the last step (so ``len(losses) == steps + 1``).
        steps: optimizer steps taken.
        reached_target: the run stopped because the loss fell to ``stop_below``.
        no_grad_params: names of trainable parameters that got no (or an all-zero) gradient from the
            first backward pass.
        stop_reason: what ``stop`` returned when it ended the run (empty otherwise).
    """

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    reached_target: bool = False
    no_grad_params: list[str] = field(default_factory=list)
    stop_reason: str = ""


StopRule = Callable[[Sequence[float]], str]


def train_for(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[Any],
    steps: int,
    *,
    stop_below: float | None = None,
    seed: int | None = None,
    stop: StopRule | None = None,
) -> ShortRun:
    """Take up to ``steps`` optimizer steps on ``batches`` (cycled), recording the loss.

    The loss is recorded before each step; when it is already ``<= stop_below``, or ``stop`` (called
    with the losses so far) returns a non-empty reason, the run stops there (no step taken).
    Otherwise, after the last step the loss is evaluated once more without gradients. A non-finite
    loss ends the run too.

    Raises:
        ShortTrainingError: ``loss_fn`` returned no tensor, or ``batches`` is empty.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Linear(1, 1)
        >>> data = [(torch.tensor([[1.0], [2.0]]), torch.tensor([[2.0], [4.0]]))]
        >>> mse = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])
        >>> run = train_for(net, mse, torch.optim.SGD(net.parameters(), lr=0.1), data, 200, stop_below=0.01)
        >>> run.reached_target, run.steps, len(run.losses), run.losses[-1] <= 0.01 < run.losses[0]
        (True, 96, 97, True)
    """
    if not batches:
        raise ShortTrainingError("no batch to train on")
    if seed is not None:
        torch.manual_seed(seed)
    run = ShortRun()
    for step in range(steps):
        batch = batches[step % len(batches)]
        optimizer.zero_grad(set_to_none=True)
        loss = _scalar_loss(loss_fn(model, batch))
        value = float(loss.detach())
        run.losses.append(value)
        if not math.isfinite(value):
            return run
        if stop_below is not None and value <= stop_below:
            run.reached_target = True
            return run
        reason = stop(run.losses) if stop is not None else ""
        if reason:
            run.stop_reason = reason
            return run
        loss.backward()  # type: ignore[no-untyped-call]
        if step == 0:
            run.no_grad_params = params_without_grad(model)
        optimizer.step()
        run.steps += 1
    with torch.no_grad():
        run.losses.append(float(_scalar_loss(loss_fn(model, batches[steps % len(batches)]))))
    if stop_below is not None and run.losses[-1] <= stop_below:
        run.reached_target = True
    return run


def _scalar_loss(loss: torch.Tensor | None) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise ShortTrainingError("the training step returned no loss tensor (manual optimization, or it returned None)")
    return loss if loss.ndim == 0 else loss.mean()


def params_without_grad(model: nn.Module) -> list[str]:
    """Names of parameters that require grad but have no gradient, or an all-zero one.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 1), nn.Linear(2, 1))
        >>> net[0](torch.ones(1, 2)).sum().backward()
        >>> params_without_grad(net)
        ['1.weight', '1.bias']
    """
    return [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or not bool(torch.any(p.grad != 0)))
    ]


class LocalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A ``SyncBatchNorm`` made local: the same parameters and statistics, no collective calls."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")


def make_batchnorm_local(model: nn.Module) -> int:
    """Turn every ``SyncBatchNorm`` of ``model`` (a copy) into a local batch norm; returns how many.

    A copy trains on one process alone: a ``SyncBatchNorm`` would wait in ``all_reduce`` for the
    other processes, which do not run the same steps (a short run may stop early on one rank).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.SyncBatchNorm(3))
        >>> make_batchnorm_local(net), type(net[1]).__name__
        (1, 'LocalBatchNorm')
        >>> net(torch.ones(4, 2)).shape
        torch.Size([4, 3])
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.SyncBatchNorm):
            module.__class__ = LocalBatchNorm  # type: ignore[assignment]
            count += 1
    return count


# ----------------------------------------------------------------------------- optimizers
def first_optimizer(conf: Any) -> torch.optim.Optimizer | None:
    """The first optimizer in what ``configure_optimizers`` returned, in any of its documented forms.

    A single optimizer, a list or tuple of them, ``([optimizers], [schedulers])``, a dict with an
    ``"optimizer"`` key, or a list of such dicts. ``None`` when there is none.

    Example:
        >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> first_optimizer({"optimizer": opt, "lr_scheduler": None}) is opt
        True
        >>> first_optimizer(([opt], [])) is opt, first_optimizer(None)
        (True, None)
    """
    if isinstance(conf, torch.optim.Optimizer):
        return conf
    if isinstance(conf, Mapping):
        return first_optimizer(conf.get("optimizer"))
    if isinstance(conf, (list, tuple)):
        for item in conf:
            found = first_optimizer(item)
            if found is not None:
                return found
    return None


def optimizer_owns(optimizer: torch.optim.Optimizer, model: nn.Module) -> bool:
    """True when every parameter the optimizer updates belongs to ``model``."""
    own = {id(p) for p in model.parameters()}
    return all(id(p) in own for group in optimizer.param_groups for p in group["params"])


def use_initial_lr(optimizer: torch.optim.Optimizer) -> None:
    """Undo what a scheduler did at construction: set each group's ``lr`` back to its ``initial_lr``.

    A warm-up schedule starts at a learning rate near zero; the short runs use the base rate the
    user chose.
    """
    for group in optimizer.param_groups:
        if "initial_lr" in group:
            group["lr"] = group["initial_lr"]


def rebuild_optimizer(template: torch.optim.Optimizer, source: nn.Module, target: nn.Module) -> torch.optim.Optimizer:
    """An optimizer of ``template``'s class and settings over ``target``'s parameters.

    Parameters are matched by name between ``source`` (the model ``template`` optimizes) and
    ``target`` (a copy of it); the state (e.g. Adam's moments) is not copied.

    Raises:
        ShortTrainingError: a parameter of ``template`` is not in ``source``, or the class cannot be
            built from its settings.

    Example:
        >>> import copy
        >>> net = nn.Linear(2, 1)
        >>> opt = torch.optim.SGD([{"params": [net.weight], "lr": 0.5}, {"params": [net.bias]}], lr=0.1)
        >>> twin = copy.deepcopy(net)
        >>> new = rebuild_optimizer(opt, net, twin)
        >>> [g["lr"] for g in new.param_groups], new.param_groups[0]["params"][0] is twin.weight
        ([0.5, 0.1], True)
    """
    names = {id(p): name for name, p in source.named_parameters()}
    params = dict(target.named_parameters())
    groups = []
    for group in template.param_groups:
        try:
            copied = [params[names[id(p)]] for p in group["params"]]
        except KeyError:
            raise ShortTrainingError("the optimizer updates parameters that are not the model's") from None
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": copied})
    # Every group already holds every setting; the defaults are passed for constructors that
    # require some (e.g. ``lr``), limited to the arguments the constructor takes.
    try:
        accepted = inspect.signature(type(template)).parameters
        kwargs = {k: v for k, v in template.defaults.items() if k in accepted}
        return type(template)(groups, **kwargs)
    except Exception as err:  # an optimizer class with a constructor of its own
        raise ShortTrainingError(f"cannot rebuild {type(template).__name__}: {err}") from err


def user_optimizer(
    model: nn.Module,
    source: nn.Module,
    fallbacks: Sequence[torch.optim.Optimizer] = (),
    lr: float | None = None,
) -> torch.optim.Optimizer:
    """The user's optimizer, built afresh for ``model`` (a copy of ``source``).

    Tried in order: the first optimizer of ``model.configure_optimizers()`` (when it updates
    ``model``'s own parameters); a rebuild of ``fallbacks[0]`` (the optimizer that trains
    ``source``) over ``model``'s parameters; Adam at ``lr`` when ``lr`` is given. Each group's
    learning rate is set back to the base rate a scheduler started from (``initial_lr``), and to
    ``lr`` when given.

    Raises:
        ShortTrainingError: no optimizer could be built and ``lr`` is ``None``.

    Example:
        >>> class Net(nn.Linear):
        ...     def configure_optimizers(self):
        ...         return {"optimizer": torch.optim.SGD(self.parameters(), lr=0.3)}
        >>> opt = user_optimizer(Net(2, 1), Net(2, 1))
        >>> type(opt).__name__, opt.param_groups[0]["lr"]
        ('SGD', 0.3)
    """
    optimizer: torch.optim.Optimizer | None = None
    problems: list[str] = []
    configure = getattr(model, "configure_optimizers", None)
    if callable(configure):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                candidate = first_optimizer(configure())
        except Exception as err:  # e.g. a scheduler that asks the (absent) Trainer for its length
            candidate = None
            problems.append(f"configure_optimizers() of a copy raised {type(err).__name__}: {err}")
        if candidate is not None and optimizer_owns(candidate, model):
            optimizer = candidate
        elif candidate is not None:
            problems.append("configure_optimizers() of a copy returns an optimizer of other parameters")
    if optimizer is None and fallbacks:
        try:
            optimizer = rebuild_optimizer(fallbacks[0], source, model)
        except ShortTrainingError as err:
            problems.append(str(err))
    if optimizer is None:
        if lr is None:
            raise ShortTrainingError("; ".join(problems) or "the model has no optimizer")
        return torch.optim.Adam(model.parameters(), lr=lr)
    use_initial_lr(optimizer)
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    return optimizer


def learning_rates(optimizer: torch.optim.Optimizer) -> list[float]:
    """The ``lr`` of each parameter group that has one (``nan`` when it is not a number)."""
    out = []
    for group in optimizer.param_groups:
        lr = group.get("lr")
        out.append(float(lr) if isinstance(lr, (int, float, torch.Tensor)) else math.nan)
    return out


# ----------------------------------------------------------------------------- what a model shows
@dataclass
class ModelNotes:
    """Counts that explain a failure to fit."""

    frozen_tensors: int
    total_tensors: int
    frozen_elements: int
    total_elements: int
    not_in_optimizer: list[str]
    dropout_in_train_mode: list[str]
    weight_decay: float


def model_notes(model: nn.Module, optimizer: torch.optim.Optimizer) -> ModelNotes:
    """Frozen parameters, parameters the optimizer does not update, dropout in train mode, and the
    largest weight decay of the optimizer.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.Linear(2, 1)).train()
        >>> net[0].weight.requires_grad_(False)  # doctest: +ELLIPSIS
        Parameter containing:...
        >>> notes = model_notes(net, torch.optim.SGD(net[2].parameters(), lr=0.1))
        >>> notes.frozen_tensors, notes.total_tensors, notes.not_in_optimizer, notes.dropout_in_train_mode
        (1, 4, ['0.bias'], ['1'])
    """
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = list(model.named_parameters())
    frozen = [(n, p) for n, p in named if not p.requires_grad]
    dropouts = [
        name
        for name, m in model.named_modules()
        if m.training and isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
    ]
    decays = [float(g.get("weight_decay", 0.0) or 0.0) for g in optimizer.param_groups]
    return ModelNotes(
        frozen_tensors=len(frozen),
        total_tensors=len(named),
        frozen_elements=sum(_numel(p) for _, p in frozen),
        total_elements=sum(_numel(p) for _, p in named),
        not_in_optimizer=[n for n, p in named if p.requires_grad and id(p) not in optimized],
        dropout_in_train_mode=dropouts,
        weight_decay=max(decays, default=0.0),
    )


def _numel(p: torch.Tensor) -> int:
    """Elements of a tensor; 0 for a lazy parameter that is not materialised yet."""
    return 0 if is_lazy(p) else p.numel()


# ----------------------------------------------------------------------------- batches
def batch_size_of(batch: Any) -> int | None:
    """The first dimension of the first tensor found in a (nested) batch, or ``None``."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim > 0 else None
    items = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        size = batch_size_of(item)
        if size is not None:
            return size
    return None


def take_samples(batch: Any, n: int, batch_size: int) -> Any:
    """The first ``n`` samples of a batch: every tensor whose first dimension is ``batch_size`` is
    cut to ``n``; everything else is kept as it is (tuples, lists and dicts are rebuilt).

    Example:
        >>> x, y = take_samples((torch.zeros(8, 3), torch.arange(8)), 2, 8)
        >>> tuple(x.shape), y.tolist()
        ((2, 3), [0, 1])
        >>> take_samples({"x": torch.zeros(8, 3), "scale": torch.ones(3)}, 2, 8)["scale"].shape
        torch.Size([3])
    """
    if isinstance(batch, torch.Tensor):
        return batch[:n] if batch.ndim > 0 and batch.shape[0] == batch_size else batch
    if isinstance(batch, Mapping):
        return type(batch)({k: take_samples(v, n, batch_size) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(take_samples(v, n, batch_size) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(take_samples(v, n, batch_size) for v in batch)
    return batch


# ----------------------------------------------------------------------------- curve evidence
def plateau_window(points: int, minimum: int = 8) -> int:
    """How many recent points a plateau must last: a quarter of the curve, at least ``minimum``."""
    return max(minimum, points // 4)


def levelled_off(losses: Sequence[float], window: int | None = None, *, min_progress: float = 0.01) -> bool:
    """True when the last ``window`` points improved on the best loss before them by at most
    ``min_progress`` of the decrease made so far: the curve has levelled off (a flat curve counts).

    Needs at least ``2 * window`` points (default window: :func:`plateau_window`); a non-finite
    curve never counts as levelled off.

    Example:
        >>> levelled_off([2.0] * 16), levelled_off([2.0 - 0.1 * t for t in range(16)])
        (True, False)
        >>> levelled_off([2.0, 1.0] + [0.7] * 14)  # fell, then stopped
        True
    """
    w = plateau_window(len(losses)) if window is None else window
    if len(losses) < 2 * w or not all(math.isfinite(v) for v in losses):
        return False
    before, recent = min(losses[:-w]), min(losses[-w:])
    total = max(0.0, float(losses[0]) - min(before, recent))
    return before - recent <= min_progress * total + 1e-7 * max(1.0, abs(before))


def step_noise(losses: Sequence[float]) -> float:
    """The step-to-step noise of a loss curve (a standard deviation), from the second differences of
    its second half (a smooth trend has none); 0 for a deterministic smooth curve.

    Example:
        >>> step_noise([1.0 - 0.01 * t for t in range(20)]) < 1e-12
        True
        >>> 0.1 < step_noise([1.0 + (0.1 if t % 2 else -0.1) for t in range(40)]) < 0.3
        True
    """
    tail = [float(v) for v in losses[len(losses) // 2 :] if math.isfinite(v)]
    second = [abs(tail[i + 1] - 2 * tail[i] + tail[i - 1]) for i in range(1, len(tail) - 1)]
    if not second:
        return 0.0
    second.sort()
    return 1.4826 * second[len(second) // 2] / math.sqrt(6.0)


def identical_curves(a: Sequence[float], b: Sequence[float], rtol: float = 1e-6) -> bool:
    """True when ``a`` and ``b`` agree (to ``rtol``) at every point they share (at least one)."""
    n = min(len(a), len(b))
    return n > 0 and all(abs(a[i] - b[i]) <= rtol * max(1.0, abs(a[i])) for i in range(n))


# ----------------------------------------------------------------------------- verdicts
@dataclass
class Separation:
    """Where the real-input curve stands against the zero-input curve at its last point.

    ``reference`` is the zero-input loss it is compared with: the zero curve at the same step, or
    its lowest value once the zero run has levelled off (an input-free model gets no better).
    ``margin`` is the gap that counts: ``min_gap`` of the reference, or three times the noise of
    the zero curve when larger.
    """

    reference: float
    gap: float
    margin: float
    noise: float
    separated: bool


def separation(
    real: Sequence[float],
    zero: Sequence[float],
    zero_levelled: bool,
    min_gap: float,
    confirm: int = 3,
) -> Separation:
    """How far the real-input curve is below the zero-input one; ``separated`` when the last
    ``confirm`` points of ``real`` all sit below their reference by the margin.

    Example:
        >>> separation([2.3, 1.5, 1.0, 0.8], [2.3, 2.1, 2.0, 1.9], False, 0.05).separated
        True
        >>> separation([2.3, 2.2, 2.1, 2.0], [2.3, 2.2, 2.1, 2.0], False, 0.05).separated
        False
    """
    noise = step_noise(zero)
    best = min((v for v in zero if math.isfinite(v)), default=math.nan)

    def reference(t: int) -> float:
        if t < len(zero):
            return float(zero[t])
        return best if zero_levelled else math.nan

    def margin(ref: float) -> float:
        return max(min_gap * abs(ref), 3.0 * noise, 1e-6 * max(1.0, abs(ref)))

    t = len(real) - 1
    ref = reference(t)
    gap = ref - float(real[t]) if real else math.nan
    ok = len(real) >= confirm and all(
        math.isfinite(reference(i)) and math.isfinite(real[i]) and reference(i) - real[i] >= margin(reference(i))
        for i in range(len(real) - confirm, len(real))
    )
    return Separation(ref, gap, margin(ref) if math.isfinite(ref) else math.nan, noise, ok)


def baseline_stop(zero: Sequence[float], zero_levelled: bool, min_gap: float, confirm: int = 3) -> StopRule:
    """When to stop the real-input run: the curves separated, they are identical over the first
    points, the zero curve has no more points to compare with, or the real run levelled off."""

    def rule(real: Sequence[float]) -> str:
        if len(real) >= 4 and identical_curves(real, zero):
            return "identical"
        if separation(real, zero, zero_levelled, min_gap, confirm).separated:
            return "separated"
        if len(real) >= len(zero) and not zero_levelled:
            return "zero run ended"
        if levelled_off(real):
            return "levelled off"
        return ""

    return rule


def horizons(max_steps: int, first: int = 8, factor: int = 3) -> list[int]:
    """The step horizons of the baseline's rounds: ``first``, times ``factor`` each round, the last
    one ``max_steps``.

    Example:
        >>> horizons(60), horizons(5)
        ([8, 24, 60], [5])
    """
    out: list[int] = []
    h = first
    while h < max_steps:
        out.append(h)
        h *= factor
    return [*out, max_steps]


def plateau_stop(losses: Sequence[float]) -> str:
    """Stop a run whose loss levelled off (see :func:`levelled_off`)."""
    return "levelled off" if levelled_off(losses) else ""


@dataclass
class BaselineVerdict:
    """The input-independent baseline judged: the real-input curve against the zero-input curve."""

    status: Verdict
    real_initial: float
    real_final: float
    zero_initial: float
    zero_final: float
    zero_best: float
    gap: float
    margin: float
    noise: float
    real_learned: bool
    identical: bool
    separated: bool


def baseline_verdict(
    real: Sequence[float],
    zero: Sequence[float],
    min_gap: float,
    *,
    zero_levelled: bool = False,
    confirm: int = 3,
    min_decrease: float = 0.001,
) -> BaselineVerdict:
    """Judge the curves of one model trained from the same weights on real and on zeroed inputs.

    ``fail`` when the curves are the same at every point (the loss does not depend on the input),
    or when the real run ended without its loss separating from the zero run's (see
    :func:`separation`); ``pass`` when it separated; ``warn`` when a loss is not finite or the real
    run's loss did not decrease by ``min_decrease`` of its initial value (then the comparison says
    nothing about the input).

    Example:
        >>> baseline_verdict([2.3, 1.0, 0.5, 0.3], [2.3, 2.1, 2.0, 2.0], 0.05).status
        'pass'
        >>> baseline_verdict([2.3, 2.0, 1.9, 1.8], [2.3, 2.0, 1.9, 1.8], 0.05).status  # identical
        'fail'
        >>> baseline_verdict([2.5, 2.2, 2.1, 2.0], [2.3, 2.1, 2.05, 2.0], 0.05).status  # no better than zeros
        'fail'
        >>> baseline_verdict([2.3, 2.3, 2.3], [2.1, 2.1, 2.0], 0.05).status  # learned nothing: says nothing
        'warn'
    """
    if not real or not zero:
        raise ValueError("baseline_verdict needs two non-empty loss curves")
    r0, r1, z0, z1 = float(real[0]), float(real[-1]), float(zero[0]), float(zero[-1])
    finite = all(math.isfinite(v) for v in (*real, *zero))
    learned = finite and r0 - min(real) > min_decrease * max(abs(r0), 1e-12)
    identical = identical_curves(real, zero) and len(real) <= len(zero)
    sep = separation(real, zero, zero_levelled, min_gap, confirm)
    status: Verdict
    if identical:
        status = "fail"
    elif not finite or not learned:
        status = "warn"
    else:
        status = "pass" if sep.separated else "fail"
    best = min((v for v in zero if math.isfinite(v)), default=math.nan)
    return BaselineVerdict(
        status, r0, r1, z0, z1, best, sep.gap, sep.margin, sep.noise, learned, identical, sep.separated
    )


def overfit_stop(target: float, allow_negative: bool) -> StopRule:
    """When to stop a run that tries to memorise: the loss reached ``target``, went negative
    (unless allowed), or levelled off."""

    def rule(losses: Sequence[float]) -> str:
        value = losses[-1]
        if value <= target and (allow_negative or value >= 0):
            return "reached"
        if value < 0 and not allow_negative:
            return "negative"
        if plateau_stop(losses):
            return "levelled off"
        if halved(losses):
            return "halved"
        return ""

    return rule


def halved(losses: Sequence[float], min_points: int = 16, ratio: float = 0.6) -> bool:
    """Evidence that a run fits its batch, short of memorising it: after at least ``min_points``
    points the loss is at most ``ratio`` of where it started (it fell by 40%: well below the
    loss of predicting the targets' average, for a cross-entropy over many classes) and still
    falling (not levelled off).

    Example:
        >>> halved([2.0 * 0.95**t for t in range(16)]), halved([2.0, 0.9] + [0.9] * 14)
        (True, False)
    """
    if len(losses) < min_points or not all(math.isfinite(v) for v in losses) or not losses[0] > 0:
        return False
    return min(losses) <= ratio * losses[0] and not levelled_off(losses) and losses[-1] < min(losses[:-1]) + 1e-12


@dataclass
class OverfitVerdict:
    """One batch overfitted (or not), and why not.

    ``decrease_fraction`` is ``(initial - lowest) / |initial|``; ``levelled_off`` says the curve
    stopped improving (see :func:`levelled_off`).
    """

    status: Verdict
    initial: float
    lowest: float
    final: float
    reached: bool
    negative: bool
    rising: bool
    levelled_off: bool
    decrease_fraction: float
    projected_steps: float = math.nan


def projected_steps(losses: Sequence[float], target: float) -> float:
    """Steps still needed to reach ``target`` at the rate of the last third of the curve (a straight
    line in log loss); ``inf`` when the loss is not falling there, ``nan`` when it cannot be told.

    Example:
        >>> round(projected_steps([1.0, 0.5, 0.25, 0.125], 0.0625), 3)
        1.0
        >>> projected_steps([1.0, 1.0, 1.0], 0.1)
        inf
    """
    tail = [float(v) for v in losses[-max(2, len(losses) // 3) :]]
    if len(tail) < 2 or not all(math.isfinite(v) and v > 0 for v in tail) or not target > 0:
        return math.nan
    slope = (math.log(tail[-1]) - math.log(tail[0])) / (len(tail) - 1)
    if slope >= 0:
        return math.inf
    return max(0.0, (math.log(target) - math.log(tail[-1])) / slope)


def overfit_target(initial: float, target_fraction: float, target_loss: float | None) -> float:
    """The loss that counts as memorised: ``target_loss`` when given, else ``target_fraction`` of
    the loss at init (a cross-entropy or a squared error can reach a tenth of where it started on a
    handful of samples; the fraction needs no knowledge of the loss's scale).

    Example:
        >>> overfit_target(2.3, 0.1, None), overfit_target(2.3, 0.1, 0.05)
        (0.22999999999999998, 0.05)
    """
    if target_loss is not None:
        return target_loss
    return target_fraction * initial if math.isfinite(initial) and initial > 0 else 0.0


def overfit_verdict(
    losses: Sequence[float],
    target_loss: float,
    *,
    allow_negative: bool = False,
    min_decrease: float = 0.01,
    on_course: float = 3.0,
) -> OverfitVerdict:
    """Judge the loss curve of a model trained on one fixed batch.

    ``pass`` when the lowest loss is ``<= target_loss`` (and not negative, unless
    ``allow_negative``), or when it is still falling steadily at a rate that reaches the target
    within ``on_course`` times the steps taken so far (:func:`projected_steps`), or it halved and is
    still falling (:func:`halved`). Otherwise ``fail``
    when the loss went negative, rose, is not finite, fell by less than ``min_decrease`` of its
    initial value, or levelled off above the target; ``warn`` when it is still falling, too slowly
    to tell (more steps would).

    Example:
        >>> overfit_verdict([2.3, 0.5, 0.01], 0.05).status
        'pass'
        >>> overfit_verdict([2.3 * 0.7**t for t in range(12)], 0.01).status  # falling, on course
        'pass'
        >>> overfit_verdict([2.3 - 0.003 * t for t in range(20)], 0.05).status  # slow, still falling
        'warn'
        >>> overfit_verdict([2.3, 1.5] + [1.4] * 16, 0.05).status  # levelled off
        'fail'
        >>> overfit_verdict([2.3, 2.3, 2.3], 0.05).status  # flat
        'fail'
        >>> v = overfit_verdict([2.3, -5.0, -40.0], 0.05)
        >>> v.status, v.negative
        ('fail', True)
    """
    if not losses:
        raise ValueError("overfit_verdict needs a non-empty loss curve")
    finite = [v for v in losses if math.isfinite(v)]
    initial = float(losses[0])
    lowest = min(finite) if finite else math.nan
    final = float(losses[-1])
    negative = not allow_negative and lowest < 0
    rising = math.isfinite(final) and final > initial + 1e-6 * max(1.0, abs(initial))
    ok = math.isfinite(initial) and initial != 0 and len(finite) == len(losses)
    decrease = (initial - lowest) / abs(initial) if ok else math.nan
    levelled = levelled_off(losses)
    reached = math.isfinite(lowest) and lowest <= target_loss and not negative
    projected = projected_steps(losses, target_loss) if ok and not levelled else math.nan
    status: Verdict
    if reached:
        status = "pass"
    elif negative or rising or not ok or not decrease >= min_decrease or levelled:
        status = "fail"
    elif projected <= on_course * (len(losses) - 1) or halved(losses):
        status = "pass"
    else:
        status = "warn"
    return OverfitVerdict(status, initial, lowest, final, reached, negative, rising, levelled, decrease, projected)
