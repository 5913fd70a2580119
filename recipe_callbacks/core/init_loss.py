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

Which task a model solves and the loss of each sample are :mod:`recipe_callbacks.core.task`'s;
the bias itself, its layer and ``fix_bias`` are :mod:`recipe_callbacks.core.init_well`'s.
Nothing here imports Lightning; the functions work on plain tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from recipe_callbacks.core.data_stats import label_counts
from recipe_callbacks.core.pictures import Band, band_chart, bar_chart
from recipe_callbacks.core.task import Task, class_first, class_indices, per_sample_loss

if TYPE_CHECKING:
    from matplotlib.figure import Figure

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

    @classmethod
    def of(cls, task: Task, num_classes: int | None, targets: list[torch.Tensor]) -> TargetSummary:
        """The summary of ``targets``, one batch after the other.

        Example:
            >>> TargetSummary.of("multiclass", 3, [torch.tensor([0, 2]), torch.tensor([2, 2])]).prior().tolist()
            [0.25, 0.0, 0.75]
        """
        summary = cls(task, num_classes)
        for target in targets:
            summary.update(target)
        return summary

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
        if self.task == "multiclass":
            t = class_indices(t)  # one-hot / probability targets count as their argmax class
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

    def parts(self) -> list[torch.Tensor]:
        """The sums to add over processes (see :meth:`load`): ``total, total_sq, [n]`` for regression,
        the class counts (or nothing) otherwise."""
        if self.task == "regression":
            return [self.total, self.total_sq, torch.tensor([float(self.n)], dtype=torch.float64)]
        return [] if self.counts is None else [self.counts]

    def load(self, parts: list[torch.Tensor]) -> None:
        """Take :meth:`parts` summed over processes."""
        if self.task == "regression":
            self.total, self.total_sq, self.n = parts[0], parts[1], int(parts[2][0])
        elif parts:
            self.counts = parts[0]
            self.n = int(self.counts.sum())

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


# Where an expected loss came from: log C for a prior unknown or balanced (``entropy`` is the
# balanced prior's), the prior's entropy, the judged labels' cross-entropy against the prior, the
# target variance, the MSE of the counted mean on the judged targets, the ``expected=`` argument, or
# log C because the prior cannot be acted on (no bias, per-position labels).
Basis = Literal[
    "prior_unknown", "prior_balanced", "prior_entropy", "judged_labels", "target_variance", "judged_targets",
    "argument", "log_c", "",
]
# Bases that are log C.
LOG_C_BASES: tuple[str, ...] = ("prior_unknown", "prior_balanced", "log_c")


@dataclass(frozen=True)
class ExpectedLoss:
    """The loss expected at a well-calibrated init and the loss of an uninformed (default) init.

    ``basis`` says where ``value`` came from (see :data:`Basis`); ``entropy`` is the prior's
    entropy when the basis is ``"prior_balanced"``.
    """

    value: float
    uninformed: float
    basis: Basis
    entropy: float = math.nan

    @property
    def is_log_c(self) -> bool:
        """Whether the expectation is ``log C`` (the prior unknown, balanced or not actionable)."""
        return self.basis in LOG_C_BASES


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
        >>> expected_classification_loss(10, None, 0.25).basis
        'prior_unknown'
    """
    uniform = math.log(num_classes)
    if prior is None:
        return ExpectedLoss(uniform, uniform, "prior_unknown")
    h = entropy(prior)
    if h >= uniform / (1.0 + tolerance):
        return ExpectedLoss(uniform, uniform, "prior_balanced", h)
    if observed is None or observed.numel() != prior.numel() or float(observed.sum()) <= 0:
        return ExpectedLoss(h, uniform, "prior_entropy")
    p = prior.detach().to(torch.float64).flatten()
    p = (p / p.sum()).clamp_min(1e-12)
    q = observed.detach().to(torch.float64).flatten()
    q = q / q.sum()
    return ExpectedLoss(float(-(q * p.log()).sum()), uniform, "judged_labels")


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
        return ExpectedLoss(var, second, "target_variance")
    # E[(y - m)^2] = E[y^2] - 2 m E[y] + m^2, per output column, averaged over columns
    value = float((judged.total_sq / judged.n - 2 * mean * j_mean + mean**2).mean())  # type: ignore[union-attr]
    return ExpectedLoss(value, j_second, "judged_targets")


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


class InitLossSums:
    """The loss at init and what goes with it, summed over one or more batches of logits and
    targets: the loss, the predicted probability of each class, the spread of the logits and the
    targets; :meth:`parts`/:meth:`load` add them over processes.

    Example:
        >>> sums = InitLossSums("multiclass", 4)
        >>> sums.add(torch.zeros(8, 4), torch.arange(8) % 4)
        >>> round(sums.loss, 4), sums.mean_prob().tolist(), sums.per_position
        (1.3863, [0.25, 0.25, 0.25, 0.25], False)
    """

    def __init__(self, task: Task, num_classes: int | None) -> None:
        self.task: Task = task
        self.loss_sum = 0.0
        self.n = 0
        self.prob_sum: torch.Tensor | None = None  # (C,) mean predicted probability times n
        self.logit_sq = 0.0
        self.logit_count = 0
        self.targets = TargetSummary(task, num_classes)
        self.label_ndim = 1  # dims of the class indices (2 and more: a label per token or pixel)

    def add(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch (multiclass logits in ``(N, C, ...)`` layout)."""
        n = logits.shape[0]
        self.loss_sum += float(per_sample_loss(logits, target, self.task).sum())
        self.n += n
        probs = predicted_distribution(logits, self.task)
        if probs is not None:  # (C,) kept on the CPU with the counted targets and the prior
            probs = probs.detach().cpu()
            self.prob_sum = probs * n if self.prob_sum is None else self.prob_sum + probs * n
        centred = logits.detach().to(torch.float64)
        self.logit_sq += float(((centred - centred.mean()) ** 2).sum())
        self.logit_count += centred.numel()
        self.targets.update(target)
        self.label_ndim = class_indices(target).ndim if self.task == "multiclass" else target.ndim

    def parts(self) -> list[torch.Tensor]:
        """Everything to add over processes, in a fixed order (see :meth:`load`)."""
        head = torch.tensor([self.loss_sum, float(self.n), self.logit_sq, float(self.logit_count)], dtype=torch.float64)
        probs = [] if self.prob_sum is None else [self.prob_sum]
        return [head, *probs, *self.targets.parts()]

    def load(self, parts: list[torch.Tensor]) -> None:
        """Take :meth:`parts` summed over processes."""
        head = parts[0]
        self.loss_sum, self.n = float(head[0]), int(head[1])
        self.logit_sq, self.logit_count = float(head[2]), int(head[3])
        rest = parts[1:]
        if self.prob_sum is not None:
            self.prob_sum, rest = rest[0], rest[1:]
        self.targets.load(rest)

    @property
    def loss(self) -> float:
        return self.loss_sum / self.n if self.n else math.nan

    @property
    def logit_std(self) -> float:
        return math.sqrt(self.logit_sq / self.logit_count) if self.logit_count else math.nan

    @property
    def per_position(self) -> bool:
        """Multiclass labels per token or pixel (judged against log C, as the recipe does)."""
        return self.task == "multiclass" and self.label_ndim >= 2

    def mean_prob(self) -> torch.Tensor | None:
        """The mean predicted probability of each class ``(C,)`` (``None`` for regression)."""
        return None if self.prob_sum is None else self.prob_sum / max(self.n, 1)


# Where a class prior came from: DataInspector's counts, fix_bias's counts, targets counted over
# the training set, or the judged batch itself (the last resort).
Origin = Literal["inspector", "fix_bias", "counted", "first_batch"]


@dataclass(frozen=True)
class PriorChoice:
    """The class prior to judge against (``None``: unknown), where it came from and over how many
    targets it was counted (``origin == "counted"``)."""

    prior: torch.Tensor | None
    origin: Origin
    counted: int = 0


def choose_prior(
    size: int,
    inspector: torch.Tensor | None,
    fixed: TargetSummary | None,
    count: Callable[[], TargetSummary | None],
    judged: TargetSummary,
) -> PriorChoice:
    """The prior of ``size`` classes from enough data: DataInspector's, else fix_bias's, else
    ``count()`` (called only when needed: it reads the training set), else the judged targets'.
    A counted prior short of the largest classes gets frequency 0 for them.

    Example:
        >>> judged = TargetSummary("binary")
        >>> judged.update(torch.tensor([1.0, 1.0, 0.0, 0.0]))
        >>> choose_prior(2, torch.tensor([0.9, 0.1]), None, lambda: None, judged).origin
        'inspector'
        >>> choose_prior(2, None, None, lambda: None, judged).prior.tolist()
        [0.5, 0.5]
    """
    prior, origin, counted = inspector, "inspector", 0
    if prior is None and fixed is not None:
        prior, origin = fixed.prior(), "fix_bias"
    if prior is None or prior.numel() != size:
        summary = count()
        if summary is not None and summary.prior() is not None:
            prior, origin, counted = summary.prior(), "counted", summary.n
    if prior is not None and prior.numel() < size:  # classes beyond the largest label seen: frequency 0
        prior = F.pad(prior, (0, size - prior.numel()))
    if prior is None or prior.numel() != size:
        prior, origin = judged.prior(), "first_batch"
    if prior is not None and prior.numel() != size:
        prior = None
    return PriorChoice(prior, origin, counted)  # type: ignore[arg-type]


def expected_at_init(
    task: Task,
    size: int | None,
    judged: TargetSummary,
    tolerance: float,
    *,
    inspector: Callable[[int], torch.Tensor | None],
    fixed: TargetSummary | None,
    count: Callable[[int | None], TargetSummary | None],
    given: float | None = None,
) -> tuple[ExpectedLoss | None, PriorChoice | None]:
    """The loss expected at init for the ``judged`` targets of ``task`` (``size`` classes for a
    multiclass one), and the class prior it comes from (:func:`choose_prior`: ``inspector(size)``,
    else ``fixed``, else ``count(size)``, which reads the training set and is called only when
    needed, else the judged targets). Regression: the variance of ``fixed`` or ``count(None)``
    targets, else (none counted) of the judged ones. ``given``: the user's expected loss, which
    replaces the value. ``None`` when nothing was counted.

    Example:
        >>> judged = TargetSummary.of("binary", None, [torch.tensor([1.0] + [0.0] * 9)])
        >>> exp, choice = expected_at_init("binary", None, judged, 0.25, inspector=lambda size: None,
        ...                                fixed=None, count=lambda size: None)
        >>> round(exp.value, 4), exp.basis, choice.origin
        (0.3251, 'prior_entropy', 'first_batch')
    """
    choice: PriorChoice | None = None
    exp: ExpectedLoss | None
    if task == "regression":
        summary = fixed or count(None)
        summary = summary if summary is not None and summary.n else None  # a count of no targets: none
        exp = expected_regression_loss(summary, judged) if summary else expected_regression_loss(judged)
    else:
        classes = size if task == "multiclass" else 2
        assert classes is not None
        choice = choose_prior(classes, inspector(classes), fixed, lambda: count(classes), judged)
        observed = judged.counts if choice.origin != "first_batch" else None
        exp = expected_classification_loss(classes, choice.prior, tolerance, observed)
    if exp is not None and given is not None:
        exp = ExpectedLoss(given, exp.uninformed, "argument")
    return exp, choice


# What keeps multiclass logits from being judged: no class axis of the expected size, or a target
# class index beyond the logits.
ClassProblem = Literal["", "classes", "target_range"]


def multiclass_pairs(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], num_classes: int | None
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int, ClassProblem]:
    """``(logits, target)`` pairs with the class axis of the logits first (``(N, C, ...)``), the
    number of classes (``num_classes``, else the size of that axis) and what keeps them from being
    judged (``""``: nothing).

    Example:
        >>> pairs, size, problem = multiclass_pairs([(torch.zeros(2, 3), torch.tensor([0, 4]))], None)
        >>> size, problem
        (3, 'target_range')
    """
    pairs = [(class_first(lg, tg), tg) for lg, tg in pairs]
    logits = pairs[0][0]
    size = num_classes or int(logits.shape[1])
    if logits.ndim < 2 or logits.shape[1] != size:
        return pairs, size, "classes"
    if any(int(t.max()) >= size for _, t in pairs if t.numel()):
        return pairs, size, "target_range"
    return pairs, size, ""


def init_sums(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], task: Task, num_classes: int | None
) -> tuple[InitLossSums | None, int | None, ClassProblem]:
    """The :class:`InitLossSums` of ``(logits, target)`` pairs of ``task`` and the number of classes
    (multiclass: of :func:`multiclass_pairs`, and no sums when a problem keeps the pairs from being
    judged, which is the third item).

    Raises:
        RuntimeError, ValueError: the loss cannot be computed from these logits and targets.

    Example:
        >>> sums, size, problem = init_sums([(torch.zeros(4, 2), torch.tensor([0, 1, 1, 0]))], "multiclass", None)
        >>> round(sums.loss, 4), size, problem
        (0.6931, 2, '')
    """
    problem: ClassProblem = ""
    if task == "multiclass":
        pairs, num_classes, problem = multiclass_pairs(pairs, num_classes)
        if problem:
            return None, num_classes, problem
    sums = InitLossSums(task, num_classes)
    for logits, target in pairs:
        sums.add(logits, target)
    return sums, num_classes, problem


def prior_gap(mean_prob: torch.Tensor, prior: torch.Tensor) -> float:
    """Total variation between the mean predicted distribution and the prior.

    Example:
        >>> round(prior_gap(torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])), 4)
        0.4
    """
    return float(0.5 * (mean_prob - prior).abs().sum())


# Largest total variation between the mean predicted distribution and an imbalanced prior that an init
# may show and still pass (a default bias on a 1:9 task shows 0.4).
MAX_PRIOR_GAP = 0.25
# Why the prior cannot be acted on: the final layer has no bias, or the labels are per position.
Obstacle = Literal["", "no_bias", "per_position"]


@dataclass(frozen=True)
class AtInit:
    """The verdict on the loss at init: the judgement, the expectation it was judged against (log C
    when the prior cannot be acted on) and why the prior could not be (``""``: it could)."""

    judgement: Judgement
    expected: ExpectedLoss
    obstacle: Obstacle


def judge_at_init(
    loss: float, exp: ExpectedLoss, tolerance: float, *, has_bias: bool, per_position: bool, gap: float,
    given: bool = False,
) -> AtInit:
    """:func:`judge_init_loss`, then two rules. Never advise what cannot be done: an uninformed loss
    with no bias on the final layer, or with per-position labels (tokens, pixels), is judged
    against log C. And the label mix of the judged batch can hide a default bias (a batch rich in
    the rare class makes the uninformed loss look right): a mean prediction farther than
    :data:`MAX_PRIOR_GAP` from an imbalanced prior is ``uninformed``. ``given``: the expected loss
    is the user's, taken as it is.

    Example:
        >>> exp = ExpectedLoss(0.325, math.log(2), "prior_entropy")
        >>> judge_at_init(0.70, exp, 0.25, has_bias=False, per_position=False, gap=0.4).judgement.verdict
        'pass'
        >>> judge_at_init(0.33, exp, 0.25, has_bias=True, per_position=False, gap=0.4).judgement.verdict
        'uninformed'
    """
    j = judge_init_loss(loss, exp, tolerance)
    obstacle: Obstacle = ""
    if j.verdict == "uninformed" and not given and (not has_bias or per_position):
        obstacle = "no_bias" if not has_bias else "per_position"
        exp = ExpectedLoss(exp.uninformed, exp.uninformed, "log_c")
        j = judge_init_loss(loss, exp, tolerance)
    hidden = not obstacle and not given and has_bias and not per_position and not exp.is_log_c
    if j.verdict in ("pass", "too_low") and hidden and gap > MAX_PRIOR_GAP:
        j = replace(j, verdict="uninformed")
    return AtInit(j, exp, obstacle)


@dataclass(frozen=True)
class LossAtInit:
    """The loss-at-init Finding in numbers and codes: the verdict, the prior the mean prediction is
    compared with (``None``: unknown, or regression), their total variation (:func:`prior_gap`, 0
    without a prior) and the Finding's values."""

    at: AtInit
    prior: torch.Tensor | None
    gap: float
    values: dict[str, float]


def loss_at_init(
    sums: InitLossSums, exp: ExpectedLoss, choice: PriorChoice | None, tolerance: float, *, has_bias: bool,
    given: bool, step_loss: float | None, cost: float,
) -> LossAtInit:
    """Judge the summed loss at init against ``exp`` (:func:`judge_at_init`, with the gap between the
    mean prediction and ``choice``'s prior), with the values of its Finding (:func:`init_values`)."""
    mean_prob, prior = sums.mean_prob(), choice.prior if choice is not None else None
    gap = prior_gap(mean_prob, prior) if mean_prob is not None and prior is not None else 0.0
    at = judge_at_init(sums.loss, exp, tolerance, has_bias=has_bias, per_position=sums.per_position, gap=gap,
                       given=given)
    return LossAtInit(at, prior, gap, init_values(sums, at, prior, gap, step_loss, cost))


def init_values(
    sums: InitLossSums, at: AtInit, prior: torch.Tensor | None, gap: float, step_loss: float | None, cost: float
) -> dict[str, float]:
    """The values of the loss-at-init Finding: the judgement's figures, the sample count and the
    cost; the step's own loss when known; the class count, and the gap to the ``prior`` when there
    is one, for classification."""
    j = at.judgement
    values: dict[str, float] = {
        "observed": j.observed, "expected": j.expected, "ratio": j.ratio, "band_low": j.low,
        "band_high": j.high, "uninformed": at.expected.uninformed, "logit_std": sums.logit_std,
        "samples": float(sums.n), "cost_steps": cost,
    }
    if step_loss is not None:
        values["step_loss"] = step_loss
    mean_prob = sums.mean_prob()
    if mean_prob is not None:
        values["num_classes"] = float(mean_prob.numel())
        if prior is not None:
            values["prob_gap"] = gap
    return values


def loss_band_chart(values: dict[str, float], tolerance: float, status: str, source: str) -> Figure:
    """The loss at init (and the step's loss, and the uninformed loss) against the expected band."""
    points = {"loss at init": values["observed"]}
    if "step_loss" in values:
        points["training_step loss"] = values["step_loss"]
    if math.isfinite(values["uninformed"]) and abs(values["uninformed"] - values["expected"]) > 1e-9:
        points["uninformed init"] = values["uninformed"]
    return band_chart(
        points, Band(values["band_low"], values["band_high"], f"expected band (tolerance {tolerance:g})"),
        title=f"InitLossCheck {status.upper()}: the loss at init must fall in the green band ({source})",
        xlabel="loss at init", reference=(values["expected"], f"expected {values['expected']:.4g}"),
    )


def prior_ratio_chart(mean_prob: torch.Tensor, prior: torch.Tensor) -> Figure:
    """A bar per class of the mean predicted probability over the prior: 1 matches the prior (a
    zoomed line chart of two near-equal curves would exaggerate noise)."""
    ratio = (mean_prob / prior.clamp_min(1e-12)).tolist()
    off = [c for c, r in enumerate(ratio) if not 0.5 <= r <= 2.0]
    return bar_chart(
        [str(c) for c in range(len(ratio))], ratio,
        title="InitLossCheck: mean predicted probability / prior per class at init; every bar near 1",
        xlabel="class", ylabel="predicted / prior", reference=(1.0, "1 = matches the prior"),
        band=Band(0.5, 2.0, "within 2x of the prior"), flagged=off, flagged_label="more than 2x off",
    )


def short_vector(values: torch.Tensor, limit: int = 6) -> str:
    """A vector in a few characters: its first ``limit`` entries to 3 digits.

    Example:
        >>> short_vector(torch.tensor([0.5, 0.25])), short_vector(torch.arange(8.0), limit=2)
        ('[0.5, 0.25]', '[0, 1, ...]')
    """
    items = [f"{float(v):.3g}" for v in values.flatten()[:limit]]
    more = ", ..." if values.numel() > limit else ""
    return "[" + ", ".join(items) + more + "]"


def per_class_table(mean_prob: torch.Tensor, prior: torch.Tensor | None) -> str:
    """A Markdown table of the mean predicted probability and the prior of each class."""
    rows = ["| class | mean predicted probability | prior |", "|---|---|---|"]
    for c, p in enumerate(mean_prob.tolist()):
        rows.append(f"| {c} | {p:.4g} | {'' if prior is None else f'{float(prior[c]):.4g}'} |")
    return "\n".join(rows)
