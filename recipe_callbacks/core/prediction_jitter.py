"""Prediction dynamics on a fixed set of samples: what the model predicts, how much it jitters.

Recipe step 2k: keep a fixed batch of validation samples and look at the model's predictions on
it over training. With a sane learning rate the predictions settle; with one that is too high
they keep jumping back and forth. The quantities here, computed from the model's outputs on the
same ``K`` samples at consecutive records:

- **tracked value**, per sample (and per position for sequence / dense outputs): the probability
  the model gives to the true class (classification: softmax over the class dimension, or the
  sigmoid of a single logit for binary), or the prediction itself (regression).
- **jitter**: mean absolute change of the tracked value between two consecutive records. For
  classification it is a probability change in [0, 1]; for regression it is divided by the
  standard deviation of the fixed targets, so it is unit-free.
- **confident**: a prediction whose top probability is at least ``min_confidence`` of the way
  from chance (``1/C``) to certainty: with ``min_confidence = 0.5``, above 0.75 for 2 classes and
  0.55 for 10. An argmax over near-uniform probabilities changes with every small update, which says
  nothing about the learning rate.
- **flip rate**: the fraction of predictions whose class changed between two consecutive records
  while confident at one of them at least (a confident prediction given up, or one confidently
  taken); a change between two near-uniform predictions is not a flip.
- **heat-map value**, per sample: the true-class probability (classification) or the absolute
  prediction error (regression), averaged over positions.
- **back-and-forth fraction**: of the way each sample's heat-map value travelled over a stretch
  of records, the part that was undone: ``1 - sum_k |last - first| / sum_k sum_r |step r|``.
  About 0 for predictions that drift steadily (still learning), near 1 for predictions that
  jump back and forth (a learning rate too high); a random walk of ``R`` steps gives about
  ``1 - 1/sqrt(R)``.
- **fixed-batch loss**: cross-entropy (multiclass), binary cross-entropy with logits (binary) or
  mean squared error (regression) of the fixed samples.

The task and its loss are :mod:`recipe_callbacks.core.task`'s. Nothing here imports Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from recipe_callbacks.core.task import (
    IGNORE_INDEX,
    Task,
    class_axis,
    class_first,
    class_indices,
    per_sample_loss,
    require_task,
)

#: A record's outputs (on the host) wait to be summarised with the next ones, up to this many
#: records: between training steps the code of one summary is cold (about 300 us on the bench's
#: tiny model), in a run warm (about 60 us after the first). Only outputs of at most HELD_VALUES
#: values wait (language-model logits are summarised at once).
HELD_RECORDS = 8
HELD_VALUES = 1 << 16


@dataclass(frozen=True)
class Snapshot:
    """What one record keeps of the model's outputs on the fixed samples.

    Attributes:
        tracked: ``(K, *)`` true-class probability (classification) or prediction (regression);
            jitter is the mean absolute change of this between records.
        classes: ``(K, *)`` predicted classes, or ``None`` for regression.
        confident: ``(K, *)`` whether each predicted class is confident (see the module
            docstring), or ``None`` for regression.
        per_sample: ``(K,)`` heat-map value: true-class probability, or absolute error.
        loss: the fixed-batch loss.
    """

    tracked: torch.Tensor
    classes: torch.Tensor | None
    per_sample: torch.Tensor
    loss: float
    confident: torch.Tensor | None = None


    def state(self) -> dict[str, torch.Tensor | None]:
        """What a checkpoint keeps of the last record (on the CPU), for :meth:`from_state`."""
        return {
            "previous_tracked": self.tracked.cpu(),
            "previous_classes": None if self.classes is None else self.classes.cpu(),
            "previous_confident": None if self.confident is None else self.confident.cpu(),
        }

    @staticmethod
    def from_state(state: dict[str, object]) -> Snapshot | None:
        """The last record back from :meth:`state` (``None`` when there was none).

        Example:
            >>> s = Snapshot.from_state(Snapshot(torch.ones(2), None, torch.ones(2), 0.5).state())
            >>> s.tracked.tolist(), s.classes, math.isnan(s.loss)
            ([1.0, 1.0], None, True)
        """
        tracked = state.get("previous_tracked")
        if not isinstance(tracked, torch.Tensor):
            return None
        classes, confident = state.get("previous_classes"), state.get("previous_confident")
        return Snapshot(tracked, classes if isinstance(classes, torch.Tensor) else None, torch.zeros(0), math.nan,
                        confident if isinstance(confident, torch.Tensor) else None)


def _per_sample_mean(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape[0], -1).mean(dim=1)


def confidence_floor(num_classes: int, min_confidence: float) -> float:
    """The top probability above which a prediction over ``num_classes`` classes is confident.

    Example:
        >>> confidence_floor(2, 0.5), confidence_floor(10, 0.5)
        (0.75, 0.55)
    """
    chance = 1.0 / max(num_classes, 1)
    return chance + min_confidence * (1.0 - chance)


def snapshot(outputs: torch.Tensor, targets: torch.Tensor, task: Task, min_confidence: float = 0.5) -> Snapshot:
    """Summarise the outputs on the fixed samples (float64, on the outputs' device).

    Example:
        >>> s = snapshot(torch.tensor([[0.0, 0.0], [4.0, 0.0]]), torch.tensor([1, 0]), "multiclass")
        >>> s.tracked.tolist(), s.classes.tolist(), s.confident.tolist()
        ([0.5, 0.9820137900379085], [0, 0], [False, True])
        >>> s = snapshot(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]), "regression")
        >>> s.per_sample.tolist(), s.loss
        ([1.0, 1.0], 1.0)
    """
    out = outputs.detach().to(torch.float64)
    if task == "multiclass" and _plain_classes(out, targets):
        return _plain_multiclass(out, targets.detach().long(), min_confidence)
    return _snapshot(out, targets, task, min_confidence)


def _plain_classes(out: torch.Tensor, targets: torch.Tensor) -> bool:
    """``(K, C)`` logits with ``(K,)`` integer classes, none of them the padding index: the usual case."""
    return (out.ndim == 2 and targets.ndim == 1 and out.shape[0] == targets.shape[0] and out.shape[1] >= 2
            and not targets.is_floating_point() and targets.numel() > 0 and int(targets.min()) >= 0)


def _plain_multiclass(out: torch.Tensor, labels: torch.Tensor, min_confidence: float) -> Snapshot:
    """:func:`snapshot` of ``(K, C)`` float64 logits and ``(K,)`` classes in a few operations, with the
    same numbers: the cross-entropy is minus the true class's log-probability, averaged, as
    ``F.cross_entropy`` computes it from the same ``log_softmax``."""
    log_probs = torch.log_softmax(out, dim=1)
    true = log_probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    tracked = true.exp()
    top_log_prob, classes = log_probs.max(dim=1)
    confident = top_log_prob.exp() >= confidence_floor(out.shape[1], min_confidence)
    return Snapshot(tracked, classes, tracked, float(true.neg().mean()), confident)


def _snapshot(out: torch.Tensor, targets: torch.Tensor, task: Task, min_confidence: float) -> Snapshot:
    """:func:`snapshot` of every other layout (sequences, one-hot targets, padding, binary, regression)."""
    labels = class_indices(targets.detach()).long()  # one-hot / probability rows: their argmax class
    if task == "multiclass" and class_axis(out, labels) is None:
        raise ValueError(f"outputs {tuple(out.shape)} have no class axis that fits targets {tuple(labels.shape)}")
    loss = float(per_sample_loss(out, targets, task).mean())
    if task == "regression":
        prediction = out.reshape(targets.shape)
        error = (prediction - targets.detach().to(torch.float64)).abs()
        return Snapshot(prediction, None, _per_sample_mean(error), loss)
    if task == "binary":
        logit = out.reshape(labels.shape)
        p_one = torch.sigmoid(logit)
        tracked = torch.where(labels == 1, p_one, 1.0 - p_one)
        confident = torch.maximum(p_one, 1.0 - p_one) >= confidence_floor(2, min_confidence)
        return Snapshot(tracked, (logit > 0).long(), _per_sample_mean(tracked), loss, confident)
    log_probs = torch.log_softmax(class_first(out, labels), dim=1).movedim(1, -1)  # (K, *, C)
    scored = labels != IGNORE_INDEX  # padding positions (-100) are no prediction to track
    tracked = log_probs.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1).exp()
    top_log_prob, classes = log_probs.max(dim=-1)
    confident = top_log_prob.exp() >= confidence_floor(log_probs.shape[-1], min_confidence)
    if bool(scored.all()):
        return Snapshot(tracked, classes, _per_sample_mean(tracked), loss, confident)
    # the same samples every record, so the same mask: keep the scored positions only, flattened
    kept = scored.reshape(scored.shape[0], -1)
    per_sample = (tracked * scored).reshape(kept.shape).sum(dim=1) / kept.sum(dim=1).clamp_min(1)
    return Snapshot(tracked[scored], classes[scored], per_sample, loss, confident[scored])


def fixed_indices(size: int, indices: Sequence[int] | None, num_samples: int) -> tuple[list[int], list[int]]:
    """The dataset indices of the fixed samples (``indices``, else the first ``num_samples`` of
    ``size``), and those of them out of range (empty when all fit).

    Example:
        >>> fixed_indices(10, None, 16), fixed_indices(10, [3, 12], 16)
        (([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], []), ([3, 12], [12]))
    """
    chosen = list(indices) if indices is not None else list(range(min(num_samples, size)))
    return chosen, [i for i in chosen if i >= size]


def check_task(requested: str | None, output: torch.Tensor, targets: torch.Tensor) -> Task:
    """The task the fixed samples are scored as: ``requested`` (``None`` infers it, ``"classification"``
    is one of multiclass or binary) checked against the outputs and targets.

    Raises:
        ValueError: the outputs and targets do not fit ``requested`` (the message says why).

    Example:
        >>> check_task(None, torch.zeros(4, 3), torch.tensor([0, 1, 2, 0]))
        'multiclass'
        >>> check_task("regression", torch.zeros(4, 3), torch.zeros(4))
        Traceback (most recent call last):
        ...
        ValueError: outputs (4, 3) and targets (4,) differ in size
    """
    if requested == "regression":
        if output.numel() != targets.numel():
            raise ValueError(f"outputs {tuple(output.shape)} and targets {tuple(targets.shape)} differ in size")
        return "regression"
    if requested is None:
        return require_task(output, targets)
    # a classification: float labels are class indices or 0/1 here
    found = require_task(output, targets.long() if targets.is_floating_point() else targets)
    if requested != "classification" and found != requested:
        raise ValueError(f"task={requested!r}, but outputs {tuple(output.shape)} with targets "
                         f"{tuple(targets.shape)} are a {found} task")
    return found


@dataclass(frozen=True)
class Record:
    """One record of the fixed samples: the snapshot, the change since the previous one (``None`` for
    the first; ``flip_rate`` ``None`` for regression) and whether every output was finite."""

    snapshot: Snapshot
    jitter: float | None
    flip_rate: float | None
    finite: bool

    def scalars(self) -> dict[str, float]:
        """The logged quantities: ``fixed_batch_loss``, then ``jitter`` and ``flip_rate`` when measured."""
        out = {"fixed_batch_loss": self.snapshot.loss}
        if self.jitter is not None:
            out["jitter"] = self.jitter
        if self.flip_rate is not None:
            out["flip_rate"] = self.flip_rate
        return out


def record(
    outputs: torch.Tensor, targets: torch.Tensor, task: Task, previous: Snapshot | None, *,
    min_confidence: float = 0.5, scale: float = 1.0,
) -> Record:
    """Summarise the outputs of one record (:func:`snapshot`) and compare them with the previous one
    (:func:`jitter`, :func:`flip_rate` over the confident predictions).

    Example:
        >>> first = record(torch.tensor([[2.0, 0.0]]), torch.tensor([0]), "multiclass", None)
        >>> first.scalars().keys(), first.finite
        (dict_keys(['fixed_batch_loss']), True)
        >>> later = record(torch.tensor([[0.0, 2.0]]), torch.tensor([0]), "multiclass", first.snapshot)
        >>> round(later.jitter or 0.0, 3), later.flip_rate
        (0.762, 1.0)
    """
    snap = snapshot(outputs, targets, task, min_confidence)
    finite = bool(torch.isfinite(outputs).all())
    jit: float | None = None
    flips: float | None = None
    if previous is not None:
        jit = jitter(previous.tracked, snap.tracked, scale)
        if snap.classes is not None and previous.classes is not None:
            flips = flip_rate(previous.classes, snap.classes, previous.confident, snap.confident)
    return Record(snap, jit, flips, finite)


def captions(last: Snapshot, targets: torch.Tensor, classification: bool) -> list[str] | None:
    """``y=<label> p=<prediction>`` per fixed sample for the sample grid, from the last record
    (``None`` when its predictions are not one per sample).

    Example:
        >>> captions(Snapshot(torch.ones(2), torch.tensor([1, 0]), torch.ones(2), 0.0), torch.tensor([1, 1]), True)
        ['y=1 p=1', 'y=1 p=0']
        >>> captions(Snapshot(torch.tensor([0.5]), None, torch.ones(1), 0.0), torch.tensor([0.25]), False)
        ['y=0.25 p=0.5']
    """
    truth = targets.flatten().tolist()
    if classification and last.classes is not None and last.classes.ndim == 1:
        return [f"y={int(t)} p={int(p)}" for t, p in zip(truth, last.classes.cpu().tolist(), strict=False)]
    if not classification and last.tracked.ndim == 1:
        return [f"y={t:.2g} p={p:.2g}" for t, p in zip(truth, last.tracked.cpu().tolist(), strict=False)]
    return None


def target_scale(targets: torch.Tensor) -> float:
    """The unit regression jitter is measured in: the standard deviation of the fixed targets
    (1.0 when they are all equal).

    Example:
        >>> target_scale(torch.tensor([1.0, 3.0]))
        1.0
        >>> target_scale(torch.tensor([0.0, 4.0]))
        2.0
    """
    t = targets.detach().to(torch.float64).flatten()
    std = float(t.std(unbiased=False)) if t.numel() > 1 else 0.0
    return std if std > 0 and math.isfinite(std) else 1.0


def jitter(previous: torch.Tensor, current: torch.Tensor, scale: float = 1.0) -> float:
    """Mean absolute change of the tracked values between two records, divided by ``scale``.

    Example:
        >>> jitter(torch.tensor([0.75, 0.25]), torch.tensor([0.25, 0.25]))
        0.25
    """
    return float((current.to(torch.float64) - previous.to(torch.float64)).abs().mean()) / scale


def flip_rate(
    previous: torch.Tensor,
    current: torch.Tensor,
    previous_confident: torch.Tensor | None = None,
    current_confident: torch.Tensor | None = None,
) -> float:
    """Fraction of predicted classes that changed between two records; with the confidence masks,
    only changes to or from a confident prediction count (over all predictions).

    Example:
        >>> flip_rate(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 0]))
        0.5
        >>> before, after = torch.tensor([True, True, True, False]), torch.tensor([True, True, False, False])
        >>> flip_rate(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 0, 0]), before, after)
        0.25
    """
    changed = previous != current
    if previous_confident is not None and current_confident is not None:
        changed = changed & (previous_confident | current_confident)
    return float(changed.to(torch.float64).mean())


def late_median(values: Sequence[float], steps: Sequence[int], after_step: float) -> tuple[float, int]:
    """Median of the finite ``values`` recorded at steps later than ``after_step``, and how many
    there were (NaN and 0 when none). The median asks for a *sustained* level: more than half of
    the late records must be above a limit for the median to be.

    Example:
        >>> late_median([0.9, 0.5, 0.1, 0.2, 0.3], [0, 10, 20, 30, 40], after_step=15)
        (0.2, 3)
    """
    late = [float(v) for v, s in zip(values, steps, strict=True) if s > after_step and math.isfinite(v)]
    if not late:
        return math.nan, 0
    return float(torch.tensor(late, dtype=torch.float64).median()), len(late)


def back_and_forth(history: torch.Tensor) -> float:
    """The back-and-forth fraction of ``(R, K)`` values (records x samples): the part of the way
    travelled that was undone (NaN with fewer than 2 records or no movement).

    Example:
        >>> back_and_forth(torch.tensor([[0.1], [0.5], [0.9]]))  # steady drift
        0.0
        >>> back_and_forth(torch.tensor([[0.1], [0.9], [0.1], [0.9]]))  # 2.4 travelled, 0.8 net
        0.6666666666666667
    """
    h = history.detach().to(torch.float64)
    if h.ndim != 2 or h.shape[0] < 2:
        return math.nan
    path = float(h.diff(dim=0).abs().sum())
    net = float((h[-1] - h[0]).abs().sum())
    return 1.0 - net / path if path > 0 else math.nan


def undone_per_record(history: torch.Tensor) -> float:
    """The movement of ``(R, K)`` values (records x samples) that was undone, per record and sample:
    ``(sum_k sum_r |step r| - sum_k |last - first|) / ((R - 1) K)`` (NaN with fewer than 2 records).

    It is the jitter that went back and forth: 0 for predictions that drift steadily however fast
    (a model still learning), about the jitter itself for predictions that jump to and fro (a learning
    rate too high). Unlike a median of the jitter it counts every burst of jumps.

    Example:
        >>> undone_per_record(torch.tensor([[0.1], [0.5], [0.9]]))  # steady drift
        0.0
        >>> round(undone_per_record(torch.tensor([[0.1], [0.9], [0.1], [0.9]])), 3)  # 2.4 travelled, 0.8 net
        0.533
    """
    h = history.detach().to(torch.float64)
    if h.ndim != 2 or h.shape[0] < 2 or h.shape[1] == 0:
        return math.nan
    path = float(h.diff(dim=0).abs().sum())
    net = float((h[-1] - h[0]).abs().sum())
    return max(0.0, path - net) / ((h.shape[0] - 1) * h.shape[1])


def thin_indices(length: int) -> list[int]:
    """The records kept when a full history is halved: every other one, counted back from the
    newest, so the newest record always stays and the kept ones span the whole run.

    Example:
        >>> thin_indices(5)
        [0, 2, 4]
        >>> thin_indices(4)
        [1, 3]
    """
    return list(range((length - 1) % 2, length, 2))


@dataclass
class RecordHistory:
    """The records kept for the heat map and the verdict, at most ``cap`` (halved when full:
    :func:`thin_indices`), one entry per record in every list.

    Example:
        >>> h = RecordHistory(cap=8)
        >>> for s in range(10):
        ...     h.add(s, torch.zeros(2), 0.1, math.nan, 1.0)
        >>> h.steps, h.heatmap_matrix().shape
        ([0, 2, 4, 6, 8, 9], torch.Size([2, 6]))
    """

    cap: int = 256
    steps: list[int] = field(default_factory=list)
    per_sample: list[torch.Tensor] = field(default_factory=list)  # (K,) each
    jitters: list[float] = field(default_factory=list)
    flip_rates: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def add_record(self, step: int, record: Record) -> Snapshot:
        """Keep ``record`` of ``step`` (its snapshot's heat-map values, jitter, flip rate and loss); returns
        its snapshot, the one the next record is compared with."""
        snap = record.snapshot
        jit, flips = (math.nan if v is None else v for v in (record.jitter, record.flip_rate))
        self.add(step, snap.per_sample.float(), jit, flips, snap.loss)
        return snap

    def add(self, step: int, per_sample: torch.Tensor, jitter: float, flips: float, loss: float) -> None:
        self.steps.append(step)
        self.per_sample.append(per_sample)
        self.jitters.append(jitter)
        self.flip_rates.append(flips)
        self.losses.append(loss)
        if len(self.steps) > self.cap:
            keep = thin_indices(len(self.steps))
            self.steps = [self.steps[i] for i in keep]
            self.per_sample = [self.per_sample[i] for i in keep]
            self.jitters = [self.jitters[i] for i in keep]
            self.flip_rates = [self.flip_rates[i] for i in keep]
            self.losses = [self.losses[i] for i in keep]

    def heatmap_matrix(self) -> torch.Tensor:
        """``(K, R)``: one row per fixed sample, one column per kept record (oldest left)."""
        return torch.stack(self.per_sample, dim=1) if self.per_sample else torch.zeros(0, 0)

    def state(self) -> dict[str, torch.Tensor]:
        return {
            "steps": torch.tensor(self.steps, dtype=torch.long),
            "per_sample": self.heatmap_matrix().T.contiguous(),  # (R, K)
            "jitters": torch.tensor(self.jitters, dtype=torch.float64),
            "flip_rates": torch.tensor(self.flip_rates, dtype=torch.float64),
            "losses": torch.tensor(self.losses, dtype=torch.float64),
        }

    def load(self, state: dict[str, object]) -> None:
        def values(key: str) -> list[float]:
            found = state.get(key)
            return [float(v) for v in found.tolist()] if isinstance(found, torch.Tensor) else []

        self.steps = [int(s) for s in values("steps")]
        per_sample = state.get("per_sample")
        self.per_sample = list(per_sample.unbind(0)) if isinstance(per_sample, torch.Tensor) else []
        self.jitters, self.flip_rates, self.losses = values("jitters"), values("flip_rates"), values("losses")


@dataclass(frozen=True)
class Dynamics:
    """The late part of a run's records, judged (see :func:`judge_dynamics`)."""

    late_records: int
    late_jitter: float
    late_flip_rate: float
    back_and_forth: float
    undone_jitter: float
    jumpy: bool  # a learning rate too high: the predictions go back and forth
    moving: bool  # they move more than ``max_jitter`` per record (jumpy or still learning)

    def values(
        self, *, max_jitter: float, max_flip_rate: float, records: int, learning_rate: float, classification: bool
    ) -> dict[str, float]:
        """The Finding's values, in the order the report shows them (the flip rates for classification)."""
        out = {"late_jitter": self.late_jitter, "max_jitter": max_jitter, "records": float(records),
               "learning_rate": learning_rate}
        if classification:
            out.update({"late_flip_rate": self.late_flip_rate, "max_flip_rate": max_flip_rate})
        out.update({"back_and_forth": self.back_and_forth, "undone_jitter": self.undone_jitter})
        return out

    def describe(self, k: int, warmup_fraction: float, max_jitter: float, max_flip_rate: float,
                 classification: bool) -> str:
        """What the Finding says it saw on the ``k`` fixed samples after warm-up."""
        unit = "" if classification else " target std"
        seen = (f"after the first {warmup_fraction:.0%} of training, the predictions on {k} fixed samples moved by "
                f"{self.late_jitter:.3g}{unit} per record (median)")
        if classification:
            seen += (f" and {self.late_flip_rate:.1%} of them flipped class per record to or from a confident one "
                     f"(limit {max_flip_rate:.1%})")
        return (seen + f"; {self.undone_jitter:.3g}{unit} per record went back and forth (limit {max_jitter:.3g}), "
                f"{self.back_and_forth:.0%} of their movement undone")


def judge_dynamics(
    history: RecordHistory,
    warmup_fraction: float,
    *,
    scale: float = 1.0,
    max_jitter: float = 0.04,
    max_flip_rate: float = 0.1,
    min_back_and_forth: float = 0.5,
    classification: bool = True,
) -> Dynamics:
    """Judge the records after the first ``warmup_fraction`` of the steps: jumpy when the undone
    movement per record (:func:`undone_per_record`, in units of ``scale``) is above ``max_jitter``,
    or (classification) the median flip rate is above ``max_flip_rate`` while at least
    ``min_back_and_forth`` of the movement was undone. Fewer than 3 late records: NaN, not jumpy.

    Example:
        >>> h = RecordHistory()
        >>> for s, p in enumerate([0.1, 0.9, 0.1, 0.9, 0.1, 0.9]):
        ...     h.add(s, torch.tensor([p]), 0.8, 0.0, 1.0)
        >>> d = judge_dynamics(h, 0.3)
        >>> d.late_records, d.jumpy, round(d.undone_jitter, 2)
        (4, True, 0.8)
    """
    after = warmup_fraction * (history.steps[-1] if history.steps else 0)
    late_jitter, n_late = late_median(history.jitters, history.steps, after)
    late_flips, _ = late_median(history.flip_rates, history.steps, after)
    if n_late < 3:
        return Dynamics(n_late, late_jitter, late_flips, math.nan, math.nan, False, False)
    first_late = next(i for i, s in enumerate(history.steps) if s > after)
    late = torch.stack(history.per_sample[max(0, first_late - 1) :])
    bf, undone = back_and_forth(late), undone_per_record(late) / scale
    flips = classification and late_flips > max_flip_rate and bf >= min_back_and_forth
    jumpy = undone > max_jitter or flips
    return Dynamics(n_late, late_jitter, late_flips, bf, undone, jumpy, jumpy or late_jitter > max_jitter)
