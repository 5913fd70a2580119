"""The input-independent baseline's verdict (recipe step 2g): the real-input curve against the zero-input one.

A model trained from the same weights on real and on zeroed inputs must reach a clearly lower loss
on the real ones; :func:`baseline_stop` says when the evidence is decisive, :func:`baseline_verdict`
judges the two curves. :func:`pairing_test` asks the same question of the real run alone, where the
curves are still undecided: did its training lower the loss of each input with its own target more
than with other samples' targets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from recipe_callbacks.core.loss_curves import Verdict, identical_curves, levelled_off, step_noise
from recipe_callbacks.core.short_training import StopRule
from recipe_callbacks.core.skip import CheckSkipped


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
    ahead: bool = False  # below the reference at those points, by any amount


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
    refs = [reference(i) for i in range(max(0, len(real) - confirm), len(real))]
    gaps = [
        r - x if math.isfinite(r) and math.isfinite(x) else math.nan  # NaN where a loss is unknown or infinite
        for r, x in zip(refs, map(float, real[len(real) - len(refs):]), strict=True)
    ]
    full = len(real) >= confirm
    ok = full and all(g >= margin(r) for g, r in zip(gaps, refs, strict=True))
    ahead = full and all(g > 0 for g in gaps)
    return Separation(ref, gap, margin(ref) if math.isfinite(ref) else math.nan, noise, ok, ahead)


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


def next_horizon(horizon: int, max_steps: int, step: int = 8) -> int:
    """The step horizon of the baseline's next round, after a round to ``horizon`` left the curves
    undecided: ``step`` steps further, at most ``max_steps``. Each round continues both runs where
    the last one stopped (nothing is trained twice), so short rounds cost only the one pass each run
    takes again at its last step, and the zero-input run goes at most ``step`` steps beyond where
    the real run separates (a language model's real run first learns the same token frequencies as
    the zero-input one and separates only after tens of steps).

    Example:
        >>> next_horizon(8, 60), next_horizon(56, 60)
        (16, 60)
    """
    return min(horizon + step, max_steps)


@dataclass
class BaselineVerdict:
    """The input-independent baseline judged: the real-input curve against the zero-input curve."""

    status: Verdict | Literal["skip"]
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
    memorised: bool = False


#: Both runs ended below this fraction of their initial loss: they memorised their few samples.
MEMORISED = 0.05


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
    or when the real run ended without its loss below the zero run's at its last ``confirm``
    points (the input does not help); ``pass`` when it separated (see :func:`separation`);
    ``skip`` when it ended below the zero run at every one of those points but not yet by the
    margin (pulling away when the runs ran out of steps: undecided, not a bug), or when both runs
    memorised their few samples (each ended below ``MEMORISED`` of its initial loss: a zero-input
    model learns so few samples by position and bias alone, so the curves cannot tell); ``warn`` when a
    loss is not finite or the real run's loss did not decrease by ``min_decrease`` of its initial
    value (then the comparison says nothing about the input).

    Example:
        >>> baseline_verdict([2.3, 1.0, 0.5, 0.3], [2.3, 2.1, 2.0, 2.0], 0.05).status
        'pass'
        >>> baseline_verdict([2.3, 2.0, 1.9, 1.8], [2.3, 2.0, 1.9, 1.8], 0.05).status  # identical
        'fail'
        >>> baseline_verdict([2.5, 2.2, 2.1, 2.0], [2.3, 2.1, 2.05, 2.0], 0.05).status  # no better than zeros
        'fail'
        >>> baseline_verdict([2.3, 2.3, 2.3], [2.1, 2.1, 2.0], 0.05).status  # learned nothing: says nothing
        'warn'
        >>> baseline_verdict([2.3, 2.0, 1.8, 1.7], [2.3, 2.01, 1.81, 1.71], 0.05).status  # ahead, not yet clearly
        'skip'
        >>> baseline_verdict([4.5, 0.5, 0.03, 0.028], [4.5, 0.4, 0.03, 0.027], 0.05).memorised  # both learned them
        True
    """
    if not real or not zero:
        raise ValueError("baseline_verdict needs two non-empty loss curves")
    r0, r1, z0, z1 = float(real[0]), float(real[-1]), float(zero[0]), float(zero[-1])
    finite = all(math.isfinite(v) for v in (*real, *zero))
    learned = finite and r0 - min(real) > min_decrease * max(abs(r0), 1e-12)
    identical = identical_curves(real, zero) and len(real) <= len(zero)
    sep = separation(real, zero, zero_levelled, min_gap, confirm)
    memorised = finite and r1 < MEMORISED * r0 and min(zero) < MEMORISED * z0
    status: Verdict | Literal["skip"]
    if identical:
        status = "fail"
    elif not finite or not learned:
        status = "warn"
    elif sep.separated:
        status = "pass"
    else:
        status = "skip" if memorised or sep.ahead else "fail"
    best = min((v for v in zero if math.isfinite(v)), default=math.nan)
    return BaselineVerdict(
        status, r0, r1, z0, z1, best, sep.gap, sep.margin, sep.noise, learned, identical, sep.separated, memorised
    )


#: The most a pairing test may err: it decides only with at least ``1 / PAIRING_ALPHA - 1`` other pairings.
PAIRING_ALPHA = 0.05

#: Losses within this share of each other are the same loss: a mean over a batch in float32 taken in
#: another order differs by a few of its epsilons (1.2e-7), far less than this.
PAIRING_RTOL = 1e-5


@dataclass
class PairingTest:
    """The real run's losses with each input paired with its own target and with other pairings of
    the same samples, before and after its training (see :func:`pairing_test`).

    ``own_fall`` is how far training lowered the loss of the batch's own pairing; ``gap`` how far
    that exceeds the largest fall of any other pairing; ``p_value`` the chance that the own pairing
    comes first by luck, had the training learned nothing about which input goes with which target.
    """

    pairings: int
    own_fall: float
    gap: float
    p_value: float
    learned: bool

    def describe(self) -> str:
        """What the test found, for a Finding's summary."""
        return (
            f"the real run learned from its inputs which target goes with which: its loss fell {self.own_fall:.3g} "
            f"with each input and its own target, {self.gap:.3g} more than with any of the {self.pairings} other "
            f"pairings of these samples (by luck with chance {self.p_value:.2g})"
        )


def pairing_test(before: Sequence[float], after: Sequence[float], alpha: float = PAIRING_ALPHA) -> PairingTest:
    """A permutation test on one model: index 0 of ``before`` and ``after`` is the loss with the
    batch's own pairing of inputs and targets, the rest the losses with other pairings of the same
    samples (their inputs in another order, the targets kept), each before and after the run's
    training, all under the same random state.

    A model that has learned nothing from its inputs about their targets (one that ignores its
    input, or gets the same input for every sample) lowers every pairing's loss alike: which one
    falls most is then a matter of luck, the own pairing with chance ``1 / (pairings + 1)``, so
    ``learned`` is only set when that chance is at most ``alpha`` and the own pairing fell more
    than every other one (beyond round-off, ``PAIRING_RTOL``). Falls are compared rather than the
    losses after training, so what an input does to the loss before any training (a mask kept with
    its own sample, say) cancels out.

    Example:
        >>> before = [4.55] + [4.55] * 23
        >>> pairing_test(before, [4.14] + [4.15] * 23).learned
        True
        >>> pairing_test(before, [4.14] * 24).learned  # the same for every pairing: the input is ignored
        False
        >>> pairing_test(before[:4], [4.14, 4.15, 4.15, 4.15]).p_value  # too few pairings to tell
        0.25
    """
    if len(before) != len(after) or not before:
        raise ValueError("pairing_test needs the same pairings before and after, the own one first")
    falls = [b - a for b, a in zip(before, after, strict=True)]
    own, others = falls[0], falls[1:]
    p_value = 1.0 / len(falls)
    finite = all(math.isfinite(v) for v in (*before, *after))
    gap = own - max(others) if others and finite else math.nan
    tolerance = PAIRING_RTOL * max(1.0, *(abs(v) for v in (*before, *after) if math.isfinite(v)))
    learned = finite and bool(others) and p_value <= alpha and own > 0 and gap > tolerance
    return PairingTest(len(others), own, gap, p_value, learned)


@dataclass
class BaselineRuns:
    """What the two short runs left: plain data, the same on every rank after the broadcast.

    Attributes:
        real: the loss curve on the real inputs.
        zero: the loss curve on zeroed inputs (of the last round).
        steps: optimizer steps of the real run.
        zero_steps: optimizer steps of the zero run.
        zero_levelled: the zero run stopped because its loss levelled off.
        spent: every pass of every round, in steps on the few samples (see ``run_cost``).
        constant: the one value of the input when every value of it is the same, else ``None``.
        pairing: the pairing test, when the curves were undecided after a round and it was taken.
        skipped: why the runs could not train (then raised on every rank).
    """

    real: list[float]
    zero: list[float]
    steps: int
    zero_steps: int
    zero_levelled: bool
    spent: float
    constant: float | None
    pairing: PairingTest | None = None
    skipped: CheckSkipped | None = None
