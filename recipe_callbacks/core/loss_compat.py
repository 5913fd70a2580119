"""Which loss did ``training_step`` compute? The user's loss value matched against candidates.

From one batch's model outputs, its targets and the loss value ``training_step`` returned, this
module computes the losses a user could have meant (cross-entropy of logits, NLL of
log-probabilities, BCE of probabilities, MSE of predictions shaped like the targets, ...) and the
losses of the silent mistakes that look like them:

- probabilities into a loss that applies its own softmax/sigmoid: ``softmax`` in ``forward`` and
  then ``F.cross_entropy`` (a double softmax), ``sigmoid`` outputs into BCE-with-logits, or the
  softmax/sigmoid applied in ``training_step`` before such a loss;
- ``F.nll_loss`` on logits or on probabilities (it expects log-probabilities);
- a ``(B, 1)`` output against a ``(B,)`` target (or the other way round) in MSE/L1/Huber, which
  PyTorch broadcasts to ``(B, B)``;
- one-hot targets in a regression loss (a classification trained as regression);
- integer class ids in a regression loss.

Every candidate is computed in float64 (float32 for large outputs) with ``ignore_index=-100`` for
class ids (Hugging Face's convention) and, for sequences, also shifted by one position (labels
shifted inside a causal LM).
:func:`identify` says which candidates the user's value matches; a mistake is only reported when
the value matches it and no correct candidate, so a loss with extra terms (label smoothing, class
weights, a regulariser) is never called a mistake.

Nothing here imports Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F

from recipe_callbacks.core.task import class_axis, is_binary_valued

OutputKind = Literal["logits", "probabilities", "log_probabilities"]
Severity = Literal["correct", "warn", "fail"]
IGNORE_INDEX = -100
_SUM_TOLERANCE = 1e-3  # rows of probabilities sum to 1 within this
_MIN_VALUES_FOR_RANGE = 8  # a binary output is called "probabilities" only from this many values on


@dataclass(frozen=True)
class Candidate:
    """One way the loss could have been computed, its value on the batch, and what it means.

    ``severity`` is ``"correct"`` for a computation that fits the outputs and targets, else the
    status a match deserves; ``fix`` says exactly what to change (empty when correct).
    """

    name: str
    value: float
    severity: Severity
    meaning: str
    fix: str = ""


@dataclass(frozen=True)
class Identification:
    """What the user's loss matched: the best candidate (``None`` when nothing matched) and all
    matches, correct ones first."""

    loss: float
    matches: tuple[Candidate, ...]
    candidates: tuple[Candidate, ...]

    @property
    def best(self) -> Candidate | None:
        return self.matches[0] if self.matches else None


def multiclass_output_kind(output: torch.Tensor, axis: int, sum_tolerance: float = _SUM_TOLERANCE) -> OutputKind:
    """``"probabilities"`` when every row along ``axis`` lies in [0, 1] and sums to 1,
    ``"log_probabilities"`` when every row is <= 0 and its ``logsumexp`` is 0, ``"logits"`` else.

    Example:
        >>> multiclass_output_kind(torch.softmax(torch.randn(4, 3), 1), 1)
        'probabilities'
        >>> multiclass_output_kind(torch.log_softmax(torch.randn(4, 3), 1), 1)
        'log_probabilities'
        >>> multiclass_output_kind(torch.randn(4, 3), 1)
        'logits'
    """
    o = output.detach()
    o = o if o.dtype in (torch.float32, torch.float64) else o.to(torch.float32)
    if o.numel() == 0:
        return "logits"
    if bool((o >= 0).all() and (o <= 1).all()) and bool(((o.sum(axis) - 1).abs() <= sum_tolerance).all()):
        return "probabilities"
    if bool((o <= 0).all()) and bool((torch.logsumexp(o, axis).abs() <= sum_tolerance).all()):
        return "log_probabilities"
    return "logits"


def binary_output_kind(output: torch.Tensor) -> OutputKind:
    """``"probabilities"`` when at least 8 outputs all lie in [0, 1] (a sigmoid), else ``"logits"``.

    Example:
        >>> binary_output_kind(torch.sigmoid(torch.randn(16)))
        'probabilities'
        >>> binary_output_kind(torch.randn(16))
        'logits'
    """
    o = output.detach()
    if o.numel() >= _MIN_VALUES_FOR_RANGE and bool((o >= 0).all() and (o <= 1).all()):
        return "probabilities"
    return "logits"


def is_one_hot(target: torch.Tensor) -> bool:
    """Whether ``target`` is ``(N, C)`` with ``C >= 3``, all 0/1 and exactly one 1 per row.

    Example:
        >>> is_one_hot(F.one_hot(torch.tensor([0, 2, 1]), 3).float()), is_one_hot(torch.ones(3, 3))
        (True, False)
    """
    if target.ndim != 2 or target.shape[1] < 3 or target.shape[0] == 0 or not is_binary_valued(target):
        return False
    return bool((target.to(torch.float64).sum(1) == 1).all())


def _try(fn: Callable[[], torch.Tensor]) -> float | None:
    try:
        value = float(fn())
    except (RuntimeError, ValueError, IndexError):
        return None
    return value if math.isfinite(value) else None


def _class_candidates(output: torch.Tensor, target: torch.Tensor, sum_tolerance: float) -> list[Candidate]:
    """Cross-entropy family for class-id targets; ``output`` in ``(N, C, ...)`` layout."""
    o, y = output, target.long()
    kind = multiclass_output_kind(o, 1, sum_tolerance)
    probs_fix = (
        "forward returns probabilities (rows in [0, 1] summing to 1): F.cross_entropy applies its own softmax, "
        "so the softmax is applied twice. Return the logits from forward (drop the softmax; apply it only for "
        "predictions), or keep the probabilities and use F.nll_loss(torch.log(p), y)."
    )
    out: list[tuple[str, Callable[[], torch.Tensor], Severity, str, str]] = [
        ("cross_entropy(output, y)", lambda: F.cross_entropy(o, y, ignore_index=IGNORE_INDEX),
         "fail" if kind == "probabilities" else "correct",
         "cross-entropy of outputs that are already probabilities: a double softmax" if kind == "probabilities"
         else "cross-entropy of the outputs as logits", probs_fix if kind == "probabilities" else ""),
        ("cross_entropy(softmax(output), y)",
         lambda: F.cross_entropy(torch.softmax(o, 1), y, ignore_index=IGNORE_INDEX), "fail",
         "cross-entropy of softmax(outputs): a softmax applied before a loss that applies its own",
         "training_step applies softmax to the outputs before F.cross_entropy (or nn.CrossEntropyLoss): pass the "
         "raw logits to the loss; it applies log_softmax itself."),
        ("nll_loss(output, y)", lambda: F.nll_loss(o, y, ignore_index=IGNORE_INDEX),
         "correct" if kind == "log_probabilities" else "fail",
         "NLL of the outputs as log-probabilities" if kind == "log_probabilities"
         else f"NLL of outputs that are {kind}, not log-probabilities",
         "" if kind == "log_probabilities" else (
             "F.nll_loss (nn.NLLLoss) expects log-probabilities, but the outputs are "
             + ("probabilities: use F.nll_loss(torch.log(p), y), or return logits and use F.cross_entropy."
                if kind == "probabilities" else
                "logits: add log_softmax (F.nll_loss(F.log_softmax(logits, 1), y)) or use F.cross_entropy."))),
    ]
    if kind == "probabilities":
        out.append(("nll_loss(log(output), y)", lambda: F.nll_loss(torch.log(o), y, ignore_index=IGNORE_INDEX),
                    "correct", "NLL of the log of the output probabilities", ""))
    return [Candidate(n, v, s, m, f) for n, fn, s, m, f in out if (v := _try(fn)) is not None]


def _binary_candidates(output: torch.Tensor, target: torch.Tensor) -> list[Candidate]:
    o, t = output.reshape(-1), target.reshape(-1).to(output.dtype)
    kind = binary_output_kind(o)
    twice = (
        "forward returns probabilities (a sigmoid: all outputs in [0, 1]) and the loss is BCE-with-logits, "
        "which applies its own sigmoid: the sigmoid is applied twice. Return the logits from forward (drop the "
        "sigmoid) and keep F.binary_cross_entropy_with_logits, or keep the sigmoid and use F.binary_cross_entropy."
    )
    out: list[tuple[str, Callable[[], torch.Tensor], Severity, str, str]] = [
        ("binary_cross_entropy_with_logits(output, y)", lambda: F.binary_cross_entropy_with_logits(o, t),
         "fail" if kind == "probabilities" else "correct",
         "BCE-with-logits of sigmoid outputs: the sigmoid applied twice" if kind == "probabilities"
         else "BCE of the outputs as logits",
         twice if kind == "probabilities" else ""),
        ("binary_cross_entropy_with_logits(sigmoid(output), y)",
         lambda: F.binary_cross_entropy_with_logits(torch.sigmoid(o), t), "fail",
         "BCE-with-logits of sigmoid(outputs): a sigmoid applied before a loss that applies its own",
         "training_step applies sigmoid before F.binary_cross_entropy_with_logits (nn.BCEWithLogitsLoss): pass "
         "the raw logits to the loss."),
        ("mse(output, y)", lambda: F.mse_loss(o, t), "correct", "squared error against 0/1 targets", ""),
    ]
    if kind == "probabilities":
        out.append(("binary_cross_entropy(output, y)", lambda: F.binary_cross_entropy(o, t), "correct",
                    "BCE of the output probabilities", ""))
    found = [Candidate(n, v, s, m, f) for n, fn, s, m, f in out if (v := _try(fn)) is not None]
    return found + _broadcast_candidates(output, target)


_REGRESSION_LOSSES: tuple[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]], ...] = (
    ("mse", lambda a, b: ((a - b) ** 2).mean()),
    ("rmse", lambda a, b: ((a - b) ** 2).mean().sqrt()),
    ("l1", lambda a, b: (a - b).abs().mean()),
    ("smooth_l1", lambda a, b: F.smooth_l1_loss(a, b)),
)


def _regression_candidates(output: torch.Tensor, target: torch.Tensor) -> list[Candidate]:
    """Paired regression losses, and their (B, B) broadcasts when one side is (B, 1), the other (B,)."""
    n = output.shape[0]
    integral = not target.is_floating_point() and target.dtype != torch.bool
    one_hot = target.is_floating_point() and is_one_hot(target) and output.shape == target.shape
    paired_severity: Severity = "correct"
    meaning = "regression loss of outputs shaped like the targets"
    fix = ""
    if integral and not is_binary_valued(target):
        paired_severity, meaning = "warn", "a regression loss on integer class ids"
        fix = (
            "the targets are integer class ids, and the loss treats them as numbers (class 3 is 'closer' to 2 "
            "than to 9). For categories output C logits and use F.cross_entropy(logits, y); for ordered "
            "quantities cast the targets to float in the data (y.float()) to say they are numbers."
        )
    elif one_hot:
        paired_severity, meaning = "warn", "a regression loss on one-hot targets"
        fix = (
            "one-hot targets in a regression loss train a classifier as a regressor: use "
            "F.cross_entropy(logits, y.argmax(1)) (or F.cross_entropy(logits, y) with the probability targets)."
        )
    t = target.to(output.dtype)
    o = output
    out: list[Candidate] = []
    if o.numel() == t.numel():
        a, b = o.reshape(n, -1), t.reshape(n, -1)
        for name, fn in _REGRESSION_LOSSES:
            value = _try(lambda fn=fn: fn(a, b))  # type: ignore[misc]
            if value is not None:
                out.append(Candidate(f"{name}(output, y)", value, paired_severity, meaning, fix))
        if one_hot:
            value = _try(lambda: ((torch.softmax(o, 1) - t) ** 2).mean())
            if value is not None:
                out.append(Candidate("mse(softmax(output), y)", value, "warn",
                                     "squared error of softmax outputs against one-hot targets", fix))
    return out + _broadcast_candidates(output, target)


def _broadcast_candidates(output: torch.Tensor, target: torch.Tensor) -> list[Candidate]:
    """MSE/RMSE/L1/Huber of a ``(B, 1)`` output against a ``(B,)`` target (or the reverse), as
    PyTorch broadcasts them: ``(B, B)``."""
    n = output.shape[0]
    o, t = output, target.to(output.dtype)
    out: list[Candidate] = []
    column = (o.shape == (n, 1) and t.shape == (n,)) or (o.shape == (n,) and t.shape == (n, 1))
    if column and n > 1:
        ob, tb = o.reshape(n, 1), t.reshape(1, n)  # PyTorch's broadcast: (n, 1) against (n,) -> (n, n)
        for name, fn in _REGRESSION_LOSSES:
            value = _try(lambda fn=fn: fn(ob, tb))  # type: ignore[misc]
            if value is not None:
                out.append(Candidate(
                    f"{name}(output, y) broadcast to ({n}, {n})", value, "fail",
                    f"a loss of a {tuple(output.shape)} output against a {tuple(target.shape)} target, which "
                    f"PyTorch broadcasts to ({n}, {n}): every prediction compared with every target",
                    f"the output is {tuple(output.shape)} and the target {tuple(target.shape)}: make them the same "
                    "shape before the loss, e.g. F.mse_loss(y_hat.squeeze(-1), y) or F.mse_loss(y_hat, "
                    "y.unsqueeze(-1)). (PyTorch warns 'Using a target size that is different to the input size'.)",
                ))
    return out


def _sequence_views(output: torch.Tensor, target: torch.Tensor) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(suffix, logits in (N, C, ...) layout, class ids) pairs to try: as they are, flattened
    ``(B*T, V)`` logits against ``(B, T)`` ids, and shifted by one position as causal LMs do inside."""
    views: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    if output.ndim == 2 and target.ndim >= 2 and output.shape[0] == target.numel():
        target = target.reshape(-1)
    axis = class_axis(output, target)
    if axis is None:
        return views
    logits = output.movedim(-1, 1) if axis == -1 else output
    views.append(("", logits, target))
    if axis == -1 and output.ndim == 3 and output.shape[1] > 1:  # (B, T, V) against (B, T)
        shifted = output[:, :-1].movedim(-1, 1)
        views.append((" shifted by one position", shifted, target[:, 1:]))
    return views


def candidates(output: torch.Tensor, target: torch.Tensor, dtype: torch.dtype = torch.float64) -> list[Candidate]:
    """Every candidate loss of ``output`` and ``target`` (both with the batch dimension first),
    computed in ``dtype``. Rows of 16-bit outputs count as probabilities when they sum to 1 within
    2e-2 (their rounding), others within 1e-3.

    Example:
        >>> logits, y = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), torch.tensor([0, 2])
        >>> {c.name: round(c.value, 4) for c in candidates(logits, y)}["cross_entropy(output, y)"]
        0.8606
    """
    sum_tolerance = 2e-2 if output.dtype in (torch.float16, torch.bfloat16) else _SUM_TOLERANCE
    out = output.detach().to(dtype)
    if out.ndim == 0 or target.ndim == 0 or not output.is_floating_point():
        return []
    found: list[Candidate] = []
    integral = not target.is_floating_point() and target.dtype != torch.bool
    if integral:
        for suffix, logits, ids in _sequence_views(out, target.detach()):
            found += [Candidate(c.name + suffix, c.value, c.severity, c.meaning + suffix, c.fix)
                      for c in _class_candidates(logits, ids, sum_tolerance)]
    if out.shape[0] != target.shape[0]:
        return found
    if out.numel() == target.numel() and is_binary_valued(target) and not is_one_hot(target):
        found += _binary_candidates(out, target.detach())
    else:
        found += _regression_candidates(out, target.detach())
    if (
        target.is_floating_point() and target.shape == output.shape and out.ndim >= 2 and out.shape[1] >= 2
        and bool((target >= 0).all()) and bool(((target.to(torch.float64).sum(1) - 1).abs() <= 1e-6).all())
    ):  # class-probability (or one-hot) targets, as F.cross_entropy accepts them
        value = _try(lambda: F.cross_entropy(out, target.detach().to(dtype)))
        if value is not None:
            found.append(Candidate("cross_entropy(output, p)", value, "correct",
                                   "cross-entropy of logits against class-probability targets"))
    return found


def matches(loss: float, value: float, rtol: float) -> bool:
    """Whether ``value`` reproduces ``loss`` within ``rtol`` (relative, with a 1e-6 floor).

    Example:
        >>> matches(2.30259, 2.302585, 1e-4), matches(2.3, 1.2, 1e-4)
        (True, False)
    """
    return abs(loss - value) <= rtol * max(abs(loss), abs(value)) + 1e-6


def identify(loss: float, found: list[Candidate], rtol: float = 1e-4) -> Identification:
    """The candidates whose value matches ``loss``, the closest first; a correct candidate goes first
    when it is about as close as the closest one (within 10x its distance), so that two computations
    that cannot be told apart on this batch never make a mistake of a correct loss.

    Example:
        >>> p, y = torch.softmax(torch.randn(8, 4), 1), torch.arange(8) % 4
        >>> user_loss = float(F.cross_entropy(p, y))  # a double softmax
        >>> identify(user_loss, candidates(p, y)).best.severity
        'fail'
    """
    hit = sorted((c for c in found if matches(loss, c.value, rtol)), key=lambda c: abs(c.value - loss))
    if hit and hit[0].severity != "correct":
        closest = abs(hit[0].value - loss)
        fair = [c for c in hit if c.severity == "correct" and abs(c.value - loss) <= 10 * closest + 1e-9 * abs(loss)]
        if fair:
            hit.remove(fair[0])
            hit.insert(0, fair[0])
    return Identification(loss, tuple(hit), tuple(found))
