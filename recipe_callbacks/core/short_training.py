"""Train a model for a few steps on a few samples: the loop behind ``InputIndependentBaseline``
(recipe step 2g) and ``OverfitOneBatch`` (2h), free of Lightning.

A module, a loss closure ``(module, batch) -> loss`` and an optimizer go in, a :class:`ShortRun`
(the loss curve and what the first backward pass showed) comes out. The helpers rebuild the user's
optimizer, cut a batch to a few samples, and read an optimizer and a model for the usual reasons a
model cannot fit (learning rate zero, frozen parameters, dropout still on). The curves are judged
in :mod:`recipe_callbacks.core.baseline_curves` and :mod:`recipe_callbacks.core.overfit_curve`.

The caller owns the RNG: :func:`train_for` seeds torch when given ``seed``, so run it inside
``torch.random.fork_rng`` (or Lightning's ``isolate_rng``) to leave the real run untouched.

A run can be continued later (``resume=``): each run keeps the random state from before the loss
that followed its last step, so a run continued from a model and optimizer put back as they were
after that step gives the same curve, bit for bit, as one uninterrupted run of the longer length.
"""

from __future__ import annotations

import inspect
import itertools
import math
import random
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parameter import is_lazy

LossFn = Callable[[nn.Module, Any], "torch.Tensor | None"]


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
        fresh_steps: optimizer steps taken by this call (``steps`` less those of the run it resumed).
        fresh_evals: forward passes of this call not followed by a step (the loss after the last
            step, or the one a stop rule ended the run on).
        rng: the random state from before the loss that followed the last step (what
            :func:`train_for` needs to continue the run; ``None`` unless asked for, and after a
            non-finite loss).
    """

    losses: list[float] = field(default_factory=list)
    steps: int = 0
    reached_target: bool = False
    no_grad_params: list[str] = field(default_factory=list)
    stop_reason: str = ""
    fresh_steps: int = 0
    fresh_evals: int = 0
    rng: RandomState | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RandomState:
    """The random generators a ``training_step`` may draw from: torch (CPU and every CUDA device
    already in use), Python's ``random`` and numpy's global generator."""

    cpu: torch.Tensor
    cuda: list[torch.Tensor] | None
    python: Any
    numpy: Any

    def restore(self) -> None:
        """Put every generator back to this state."""
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        random.setstate(self.python)
        np.random.set_state(self.numpy)


def _torch_states() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    in_use = torch.cuda.is_available() and torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if in_use else None


class _Draws:
    """The random state of a run at each step, cheaply: torch's generators at every step, Python's
    and numpy's at the start only (a ``training_step`` rarely draws from them; when it did, their
    state moved and :meth:`state` has none: the run cannot be continued, a caller starts it afresh)."""

    def __init__(self) -> None:
        self._python, self._numpy = random.getstate(), np.random.get_state()
        self._torch = _torch_states()

    def step(self) -> None:
        self._torch = _torch_states()

    def state(self) -> RandomState | None:
        numpy_now = np.random.get_state()
        same = random.getstate() == self._python and all(
            np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b
            for a, b in zip(numpy_now, self._numpy, strict=True)
        )
        return RandomState(*self._torch, self._python, self._numpy) if same else None


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
    resume: ShortRun | None = None,
    resumable: bool = False,
) -> ShortRun:
    """Take up to ``steps`` optimizer steps on ``batches`` (cycled), recording the loss.

    The loss is recorded before each step; when it is already ``<= stop_below``, or ``stop`` (called
    with the losses so far) returns a non-empty reason, the run stops there (no step taken).
    Otherwise, after the last step the loss is evaluated once more without gradients. A non-finite
    loss ends the run too.

    With ``resume`` (an earlier run of this model, now put back with its optimizer as they were
    after that run's last step), the run continues it instead of starting afresh: the stopping
    rules are first applied to the earlier run's losses (where an uninterrupted run would have
    stopped, the earlier curve is cut there and nothing is trained), then training goes on from
    its last step under the random state it left, so the curve equals that of one uninterrupted
    run of ``steps`` steps bit for bit. ``seed`` is not used then. ``resumable`` keeps the random
    state that continuing this run needs (``ShortRun.rng``; taking it at every step costs a
    little, so only when asked).

    Raises:
        ShortTrainingError: ``loss_fn`` returned no tensor, or ``batches`` is empty.
        ValueError: ``resume`` has more steps than ``steps``, or no random state to continue from.

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
    if resume is None:
        if seed is not None:
            torch.manual_seed(seed)
        run = ShortRun()
    else:
        run = _replayed(resume, steps, stop_below, stop)
        if run.reached_target or run.stop_reason:
            return run
        assert resume.rng is not None
        resume.rng.restore()
    draws = _Draws() if resumable else None
    for step in range(run.steps, steps):
        batch = batches[step % len(batches)]
        if draws is not None:
            draws.step()
        optimizer.zero_grad(set_to_none=True)
        loss = _scalar_loss(loss_fn(model, batch))
        value = float(loss.detach())
        run.losses.append(value)
        run.fresh_evals += 1
        if not math.isfinite(value):
            run.rng = None
            return run
        run.reached_target = stop_below is not None and value <= stop_below
        run.stop_reason = "" if run.reached_target or stop is None else stop(run.losses)
        if run.reached_target or run.stop_reason:
            run.rng = None if draws is None else draws.state()
            return run
        loss.backward()  # type: ignore[no-untyped-call]
        if step == 0:
            run.no_grad_params = params_without_grad(model)
        optimizer.step()
        run.steps += 1
        run.fresh_steps += 1
        run.fresh_evals -= 1
    if draws is not None:
        draws.step()
    run.rng = None if draws is None else draws.state()
    with torch.no_grad():
        run.losses.append(float(_scalar_loss(loss_fn(model, batches[steps % len(batches)]))))
    run.fresh_evals += 1
    if stop_below is not None and run.losses[-1] <= stop_below:
        run.reached_target = True
    return run


def current_random_state() -> RandomState:
    """The random generators as they are now (see :class:`RandomState`)."""
    return RandomState(*_torch_states(), random.getstate(), np.random.get_state())


def evaluate_losses(model: nn.Module, loss_fn: LossFn, batches: Sequence[Any], rng: RandomState) -> list[float]:
    """The loss of each batch, without gradients and without a step, every one under the random
    state ``rng`` (so a ``training_step`` with dropout draws the same masks for each): the points
    of a paired comparison of batches on one model.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
        >>> batch = torch.ones(4, 2)
        >>> a, b = evaluate_losses(net, lambda m, x: m(x).sum(), [batch, batch], current_random_state())
        >>> a == b  # the same dropout masks
        True
    """
    losses = []
    with torch.no_grad():
        for batch in batches:
            rng.restore()
            losses.append(float(_scalar_loss(loss_fn(model, batch))))
    return losses


def _replayed(resume: ShortRun, steps: int, stop_below: float | None, stop: StopRule | None) -> ShortRun:
    """The earlier run's steps as an uninterrupted run under these stopping rules would have taken
    them: cut where a rule fires on its losses, else all of them, ready to go on from the last."""
    if resume.steps > steps or resume.rng is None:
        raise ValueError(
            f"cannot continue a run of {resume.steps} steps to {steps} steps"
            + ("" if resume.rng is not None else " (it ended on a non-finite loss)")
        )
    run = ShortRun(no_grad_params=list(resume.no_grad_params), rng=resume.rng)
    for value in resume.losses[: resume.steps]:
        run.losses.append(value)
        if stop_below is not None and value <= stop_below:
            run.reached_target = True
            return run
        reason = stop(run.losses) if stop is not None else ""
        if reason:
            run.stop_reason = reason
            return run
        run.steps += 1
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


def other_pairings(targets: torch.Tensor, limit: int = 23, seed: int = 0) -> list[list[int]]:
    """Orders of a few samples' inputs that pair them with their targets differently: with
    ``order``, target ``i`` goes with the input of sample ``order[i]``.

    One order per distinct pairing (two samples with equal targets exchanging their inputs leave the
    pairs as they were, so such orders count once, and those that give the batch's own pairs not at
    all), at most ``limit``: every one when there are no more, else a sample drawn with a generator
    of its own (``seed``; the global random state is not touched). For a permutation test: a model
    that has learned nothing about which input goes with which target is as likely to do best on
    any of the pairings as on the batch's own.

    Example:
        >>> len(other_pairings(torch.tensor([0, 1, 2, 3])))  # 4! - 1
        23
        >>> other_pairings(torch.tensor([5, 5, 7]))  # target 7 with input 1 or 0 (not its own, 2)
        [[0, 2, 1], [1, 2, 0]]
        >>> other_pairings(torch.tensor([1, 1]))  # equal targets: no other pairing
        []
    """
    n = int(targets.shape[0]) if targets.ndim else 0
    rows = targets.detach().reshape(n, -1)
    keys: list[int] = []  # each target's key: the first sample with an equal target
    for i in range(n):
        keys.append(next((keys[j] for j in range(i) if torch.equal(rows[i], rows[j])), i))

    def pairing(order: Sequence[int]) -> tuple[tuple[int, int], ...]:
        return tuple(sorted((j, keys[i]) for i, j in enumerate(order)))

    seen = {pairing(range(n))}
    found: list[list[int]] = []

    def add(order: Sequence[int]) -> None:
        key = pairing(order)
        if key not in seen:
            seen.add(key)
            found.append(list(order))

    if math.factorial(n) <= 10 * (limit + 1):
        for order in itertools.permutations(range(n)):
            add(order)
        if len(found) > limit:
            g = torch.Generator().manual_seed(seed)
            found = [found[i] for i in sorted(torch.randperm(len(found), generator=g)[:limit].tolist())]
        return found
    g = torch.Generator().manual_seed(seed)
    for _ in range(20 * limit):
        if len(found) >= limit:
            break
        add(torch.randperm(n, generator=g).tolist())
    return found


def take_samples(batch: Any, n: int, batch_size: int, indices: Sequence[int] | None = None) -> Any:
    """The first ``n`` samples of a batch (the samples at ``indices``, when given): every tensor whose
    first dimension is ``batch_size`` is cut to them; everything else is kept as it is (tuples, lists
    and dicts are rebuilt).

    Example:
        >>> x, y = take_samples((torch.zeros(8, 3), torch.arange(8)), 2, 8)
        >>> tuple(x.shape), y.tolist()
        ((2, 3), [0, 1])
        >>> take_samples({"x": torch.zeros(8, 3), "scale": torch.ones(3)}, 2, 8)["scale"].shape
        torch.Size([3])
        >>> take_samples(torch.arange(8), 2, 8, indices=[1, 5]).tolist()
        [1, 5]
    """
    if isinstance(batch, torch.Tensor):
        if batch.ndim == 0 or batch.shape[0] != batch_size:
            return batch
        return batch[:n] if indices is None else batch[torch.tensor(list(indices), device=batch.device)]
    if isinstance(batch, Mapping):
        return type(batch)({k: take_samples(v, n, batch_size, indices)  # type: ignore[call-arg]
                            for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(take_samples(v, n, batch_size, indices) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(take_samples(v, n, batch_size, indices) for v in batch)
    return batch


def distinct_targets(targets: torch.Tensor, n: int) -> list[int] | None:
    """The first sample of each of the batch's first ``n`` different targets, when the first ``n``
    samples repeat a target but the batch holds ``n`` different ones (``None`` otherwise: the first
    ``n`` samples are as varied as the batch allows, or the targets are not one per sample).

    Example:
        >>> distinct_targets(torch.tensor([3, 3, 1, 3, 0, 2, 1]), 4)
        [0, 2, 4, 5]
        >>> distinct_targets(torch.tensor([3, 1, 0, 2, 1]), 4) is None  # already different
        True
        >>> distinct_targets(torch.tensor([0, 1, 1, 0, 1]), 4) is None  # two classes: as varied as it gets
        True
    """
    if targets.ndim == 0 or targets.shape[0] <= n:
        return None
    rows = targets.detach().reshape(targets.shape[0], -1).cpu()  # one copy; the comparisons on the host
    picked: list[int] = []
    for i in range(rows.shape[0]):
        if not any(torch.equal(rows[i], rows[j]) for j in picked):
            picked.append(i)
            if len(picked) == n:
                break
    return picked if len(picked) == n and picked != list(range(n)) else None
