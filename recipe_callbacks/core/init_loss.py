"""The loss a model should have at initialisation, and the bias that gives it (recipe steps 2d and 2e).

A freshly initialised network knows nothing about its input, so the best it can honestly do is
predict the prior: the class frequencies for a classifier, the target mean for a regressor. Its
loss is then the entropy of the prior (cross-entropy) or the variance of the targets (MSE):

- multiclass cross-entropy over C classes, prior ``p``: ``H(p) = -sum_c p_c log p_c``; for a
  balanced prior that is ``log C`` (Karpathy's ``-log(1/C)``);
- binary cross-entropy with positive rate ``p``: ``h(p) = -p log p - (1 - p) log(1 - p)``;
- mean squared error with targets ``y``: ``Var(y)`` (the bias set to the target mean).

A default-initialised net does not know the prior either: its logits are near zero, so its loss
is the *uninformed* loss: ``log C`` whatever the prior, ``log 2`` for BCE, ``E[y^2]`` for MSE
(predicting 0). On a balanced task the two agree. On a 1:9 binary task they do not (``log 2 =
0.693`` against ``h(0.1) = 0.325``): that gap is what ``fix_bias`` removes.

Which task a model solves and the loss of each sample are :mod:`recipe_callbacks.core.task`'s.
Nothing here imports Lightning; the functions work on plain tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from recipe_callbacks.core.data_stats import label_counts
from recipe_callbacks.core.task import Task

Verdict = Literal["pass", "too_low", "uninformed", "too_high"]


def predicted_distribution(output: torch.Tensor, task: Task) -> torch.Tensor | None:
    """The mean predicted probability of each class over the batch: softmax for multiclass
    (``(C,)``), ``[1 - mean sigmoid, mean sigmoid]`` for binary; ``None`` for regression."""
    out = output.detach().to(torch.float64)
    if task == "multiclass":
        probs = out.softmax(dim=1).transpose(0, 1).reshape(out.shape[1], -1)  # (C, N * ...)
        return probs.mean(dim=1)
    if task == "binary":
        p = out.sigmoid().mean()
        return torch.stack([1 - p, p])
    return None


def entropy(prior: torch.Tensor) -> float:
    """Shannon entropy in nats of a distribution (normalised first; ``0 log 0 = 0``).

    Example:
        >>> round(entropy(torch.ones(10)), 6) == round(math.log(10), 6)
        True
    """
    p = prior.detach().to(torch.float64).flatten()
    total = float(p.sum())
    if total <= 0:
        raise ValueError("entropy(prior): the prior must have a positive sum")
    p = p / total
    nz = p[p > 0]
    return float(-(nz * nz.log()).sum())


def binary_entropy(p: float) -> float:
    """Entropy in nats of a coin with probability ``p`` of heads.

    Example:
        >>> round(binary_entropy(0.1), 4)
        0.3251
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"binary_entropy(p={p}): p must be in [0, 1]")
    if p in (0.0, 1.0):
        return 0.0
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


class TargetSummary:
    """Running counts of targets: class counts for classification, sums for regression.

    ``update`` takes one batch of targets at a time; everything is kept in float64 on the CPU.

    Example:
        >>> s = TargetSummary("binary")
        >>> s.update(torch.tensor([0.0, 1.0, 0.0, 0.0]))
        >>> s.prior().tolist()
        [0.75, 0.25]
    """

    def __init__(self, task: Task, num_classes: int | None = None) -> None:
        self.task: Task = task
        self.num_classes = 2 if task == "binary" else num_classes
        self.counts: torch.Tensor | None = None  # (C,) for classification
        self.total = torch.zeros(0, dtype=torch.float64)  # (D,) sum of y per output column
        self.total_sq = torch.zeros(0, dtype=torch.float64)  # (D,) sum of y^2
        self.n = 0

    def update(self, target: torch.Tensor) -> None:
        t = target.detach().cpu()
        if self.task == "regression":
            cols = t.to(torch.float64).reshape(t.shape[0], -1)  # (N, D)
            if self.total.numel() == 0:
                self.total = torch.zeros(cols.shape[1], dtype=torch.float64)
                self.total_sq = torch.zeros(cols.shape[1], dtype=torch.float64)
            self.total += cols.sum(dim=0)
            self.total_sq += (cols**2).sum(dim=0)
            self.n += cols.shape[0]
            return
        counts = label_counts(t, self.num_classes).to(torch.float64)  # an ignore_index (-100) is not a class
        if counts.numel() == 0:
            return
        if self.counts is None:
            self.counts = counts
        else:
            if counts.numel() > self.counts.numel():
                self.counts = F.pad(self.counts, (0, counts.numel() - self.counts.numel()))
            self.counts[: counts.numel()] += counts
        self.n += int(counts.sum())

    def prior(self) -> torch.Tensor | None:
        """Class frequencies ``(C,)`` summing to 1 (binary: ``[negatives, positives]``)."""
        if self.counts is None or float(self.counts.sum()) <= 0:
            return None
        return self.counts / self.counts.sum()

    def mean(self) -> torch.Tensor | None:
        """Mean target per output column ``(D,)`` (regression)."""
        return self.total / self.n if self.n and self.total.numel() else None

    def variance(self) -> float | None:
        """Population variance of the targets, averaged over output columns (regression)."""
        mean = self.mean()
        if mean is None:
            return None
        return float((self.total_sq / self.n - mean**2).clamp_min(0).mean())

    def second_moment(self) -> float | None:
        """``E[y^2]`` averaged over output columns: the MSE of predicting 0 (regression)."""
        return float((self.total_sq / self.n).mean()) if self.n and self.total.numel() else None


@dataclass(frozen=True)
class ExpectedLoss:
    """The loss expected at a well-calibrated init and the loss of an uninformed (default) init.

    ``source`` says where ``value`` came from, e.g. ``"log C (prior unknown)"``.
    """

    value: float
    uninformed: float
    source: str


def expected_classification_loss(
    num_classes: int, prior: torch.Tensor | None, tolerance: float, observed: torch.Tensor | None = None
) -> ExpectedLoss:
    """Expected cross-entropy at init for C classes (binary is C = 2).

    The rule: ``log C`` when the prior is unknown or *balanced*, the prior's entropy otherwise.
    A prior counts as balanced when its entropy lies within the tolerance band of ``log C``
    (``H(p) >= log C / (1 + tolerance)``): then a default-init model (loss ~ log C) passes, and
    ``log C`` and ``H(p)`` are the same verdict anyway. A prior skewed beyond that makes the
    expected loss ``H(p)``, and a default-init model (still at ``log C``) is flagged.

    When the judged samples' own class frequencies ``observed`` (``q``) are given and differ from
    the prior ``p`` (e.g. one batch against a prior counted over the data set), the expected loss
    is the cross-entropy ``-sum_c q_c log p_c`` of a model that predicts ``p`` on those samples;
    it equals ``H(p)`` when ``q = p``, and removes the batch-to-batch noise of the label mix.

    Example:
        >>> e = expected_classification_loss(2, torch.tensor([0.9, 0.1]), 0.25)
        >>> round(e.value, 4), round(e.uninformed, 4)
        (0.3251, 0.6931)
        >>> expected_classification_loss(10, None, 0.25).source
        'log C (prior unknown)'
    """
    uniform = math.log(num_classes)
    if prior is None:
        return ExpectedLoss(uniform, uniform, "log C (prior unknown)")
    h = entropy(prior)
    if h >= uniform / (1.0 + tolerance):
        return ExpectedLoss(uniform, uniform, f"log C (prior balanced, entropy {h:.4g})")
    if observed is None or observed.numel() != prior.numel() or float(observed.sum()) <= 0:
        return ExpectedLoss(h, uniform, "entropy of the class prior")
    p = prior.detach().to(torch.float64).flatten()
    p = (p / p.sum()).clamp_min(1e-12)
    q = observed.detach().to(torch.float64).flatten()
    q = q / q.sum()
    return ExpectedLoss(float(-(q * p.log()).sum()), uniform, "cross-entropy of the judged labels against the prior")


def expected_regression_loss(summary: TargetSummary, judged: TargetSummary | None = None) -> ExpectedLoss | None:
    """Expected MSE at init: the target variance (bias at the target mean); uninformed: ``E[y^2]``.

    With ``judged`` (the targets actually judged, when ``summary`` was counted elsewhere), the
    expected loss is the MSE of predicting ``summary``'s mean on the judged targets.

    Example:
        >>> s = TargetSummary("regression")
        >>> s.update(torch.tensor([49.0, 51.0]))
        >>> e = expected_regression_loss(s)
        >>> e.value, e.uninformed
        (1.0, 2501.0)
    """
    var, second = summary.variance(), summary.second_moment()
    if var is None or second is None:
        return None
    mean = summary.mean()
    j_mean, j_second = (judged.mean(), judged.second_moment()) if judged is not None else (None, None)
    if mean is None or j_mean is None or j_second is None or j_mean.numel() != mean.numel():
        return ExpectedLoss(var, second, "variance of the targets")
    # E[(y - m)^2] = E[y^2] - 2 m E[y] + m^2, per output column, averaged over columns
    value = float((judged.total_sq / judged.n - 2 * mean * j_mean + mean**2).mean())  # type: ignore[union-attr]
    return ExpectedLoss(value, j_second, "MSE of the counted target mean on the judged targets")


@dataclass(frozen=True)
class Judgement:
    """How an observed loss at init compares with the expected one.

    ``band`` is ``[expected / (1 + tolerance), expected * (1 + tolerance)]`` (symmetric on a log
    scale). ``verdict``: ``pass`` inside the band; ``too_low`` below it (the model already knows
    the answers: a leak, or a pretrained model); ``uninformed`` above it but no higher than the
    uninformed loss times ``(1 + tolerance) ** 2`` (the default bias on an imbalanced task: use
    ``fix_bias``; the margin is wider on that side because the random default bias of the final
    layer skews the predictions, and on an imbalanced task that skew costs more); ``too_high``
    above both (a confident, wrong init, e.g. a final layer with large weights).
    """

    verdict: Verdict
    observed: float
    expected: float
    ratio: float
    low: float
    high: float


def judge_init_loss(observed: float, expected: ExpectedLoss, tolerance: float) -> Judgement:
    """Place ``observed`` against the expected loss and its tolerance band.

    Example:
        >>> judge_init_loss(2.31, ExpectedLoss(math.log(10), math.log(10), ""), 0.25).verdict
        'pass'
        >>> judge_init_loss(0.70, ExpectedLoss(0.325, math.log(2), ""), 0.25).verdict
        'uninformed'
        >>> judge_init_loss(9.0, ExpectedLoss(math.log(10), math.log(10), ""), 0.25).verdict
        'too_high'
    """
    e = expected.value
    low, high = e / (1.0 + tolerance), e * (1.0 + tolerance)
    ratio = observed / e if e > 0 else math.inf
    verdict: Verdict
    if not math.isfinite(observed):
        verdict = "too_high"
    elif observed < low:
        verdict = "too_low"
    elif observed <= high:
        verdict = "pass"
    elif expected.uninformed > high and observed <= expected.uninformed * (1.0 + tolerance) ** 2:
        verdict = "uninformed"
    else:
        verdict = "too_high"
    return Judgement(verdict, observed, e, ratio, low, high)


def bias_for_prior(task: Task, summary: TargetSummary, eps: float = 1e-4) -> torch.Tensor | None:
    """The final-layer bias that makes a zero-weight model predict the prior.

    Softmax: ``log p_c`` (classes never seen get probability ``eps``); BCE: the log-odds
    ``log(p / (1 - p))`` of the positive rate (clamped to ``[eps, 1 - eps]``), a 1-element
    tensor; regression: the target mean per output column. ``None`` when nothing was counted.

    Example:
        >>> s = TargetSummary("binary")
        >>> s.update(torch.tensor([1, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
        >>> round(float(bias_for_prior("binary", s)[0]), 4) == round(math.log(0.1 / 0.9), 4)
        True
    """
    if task == "regression":
        return summary.mean()
    prior = summary.prior()
    if prior is None:
        return None
    if task == "binary":
        rate = float(prior[1].clamp(eps, 1 - eps))
        return torch.tensor([math.log(rate / (1 - rate))], dtype=torch.float64)
    freq = prior.clamp_min(eps)
    return (freq / freq.sum()).log()
