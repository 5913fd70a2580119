"""Prediction dynamics math, checked against plain PyTorch and hand-derived values."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.nn import functional

from recipe_callbacks.core.prediction_jitter import (
    back_and_forth,
    flip_rate,
    jitter,
    late_median,
    snapshot,
    target_scale,
    thin_indices,
)
from recipe_callbacks.core.task import class_axis


def test_multiclass_snapshot_matches_softmax_and_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    s = snapshot(logits, y, "multiclass")
    probs = torch.softmax(logits.double(), dim=1)
    torch.testing.assert_close(s.tracked, probs[torch.arange(6), y])
    torch.testing.assert_close(s.per_sample, probs[torch.arange(6), y])
    assert s.classes is not None and s.classes.tolist() == logits.argmax(1).tolist()
    assert s.loss == pytest.approx(float(functional.cross_entropy(logits.double(), y)))


def test_dense_and_sequence_layouts_use_the_right_class_dimension() -> None:
    g = torch.Generator().manual_seed(1)
    dense, y = torch.randn(2, 3, 4, 5, generator=g), torch.randint(0, 3, (2, 4, 5), generator=g)
    s = snapshot(dense, y, "multiclass")
    oracle = torch.softmax(dense.double(), 1).gather(1, y.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(s.tracked, oracle)
    torch.testing.assert_close(s.per_sample, oracle.flatten(1).mean(1))
    assert s.loss == pytest.approx(float(functional.cross_entropy(dense.double(), y)))
    seq, t = torch.randn(2, 7, 5, generator=g), torch.randint(0, 5, (2, 7), generator=g)
    assert class_axis(seq, t) == -1
    s = snapshot(seq, t, "multiclass")
    assert s.loss == pytest.approx(float(functional.cross_entropy(seq.double().transpose(1, 2), t)))


def test_binary_and_regression_snapshots() -> None:
    logit, y = torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1, 1, 0])
    s = snapshot(logit, y, "binary")
    p = torch.sigmoid(logit.double().flatten())
    torch.testing.assert_close(s.tracked, torch.stack([p[0], p[1], 1 - p[2]]))
    assert s.classes is not None and s.classes.tolist() == [1, 0, 1]
    assert s.loss == pytest.approx(float(functional.binary_cross_entropy_with_logits(logit.flatten(), y.float())))
    pred, target = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[1.0, 4.0], [1.0, -1.0]])
    s = snapshot(pred, target, "regression")
    assert s.classes is None
    assert s.per_sample.tolist() == [1.0, 1.0]
    assert s.loss == pytest.approx(float(functional.mse_loss(pred, target)))


def test_jitter_flip_rate_and_scale_by_hand() -> None:
    assert jitter(torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.4, 0.5, 0.3])) == pytest.approx((0.3 + 0 + 0.6) / 3)
    assert jitter(torch.tensor([0.0, 0.0]), torch.tensor([2.0, 4.0]), scale=2.0) == pytest.approx(1.5)
    assert flip_rate(torch.tensor([[0, 1], [2, 2]]), torch.tensor([[0, 0], [1, 2]])) == 0.5
    assert target_scale(torch.tensor([1.0, 2.0, 3.0, 4.0])) == pytest.approx(math.sqrt(1.25))
    assert target_scale(torch.tensor([5.0, 5.0])) == 1.0


def test_late_median_ignores_the_warm_up_and_nan() -> None:
    values = [math.nan, 0.9, 0.8, 0.1, math.nan, 0.3, 0.2]
    steps = [0, 5, 10, 15, 20, 25, 30]
    assert late_median(values, steps, after_step=12) == (0.2, 3)
    value, count = late_median(values, steps, after_step=30)
    assert math.isnan(value) and count == 0


@pytest.mark.parametrize("length", [2, 7, 8, 257])
def test_thin_indices_halve_and_keep_the_newest(length: int) -> None:
    kept = thin_indices(length)
    assert kept[-1] == length - 1
    assert len(kept) == math.ceil(length / 2)
    assert all(b - a == 2 for a, b in itertools.pairwise(kept))


def test_back_and_forth_by_hand() -> None:
    drift = torch.tensor([[0.1, 0.9], [0.2, 0.8], [0.4, 0.7]])
    assert back_and_forth(drift) == pytest.approx(0.0)
    # Sample 0 goes 0 -> 1 -> 0 (path 2, net 0); sample 1 goes 0 -> 0.5 -> 1 (path 1, net 1).
    assert back_and_forth(torch.tensor([[0.0, 0.0], [1.0, 0.5], [0.0, 1.0]])) == pytest.approx(1 - 1 / 3)
    assert math.isnan(back_and_forth(torch.ones(1, 3)))
    assert math.isnan(back_and_forth(torch.ones(4, 3)))


def test_undone_per_record_against_a_loop_oracle() -> None:
    from recipe_callbacks.core.prediction_jitter import undone_per_record

    g = torch.Generator().manual_seed(0)
    history = torch.rand(12, 5, generator=g, dtype=torch.float64)
    path = sum(abs(float(history[r + 1, k] - history[r, k])) for r in range(11) for k in range(5))
    net = sum(abs(float(history[-1, k] - history[0, k])) for k in range(5))
    assert undone_per_record(history) == pytest.approx((path - net) / (11 * 5))
    steady = torch.linspace(0, 1, 12).unsqueeze(1).repeat(1, 5)  # however fast, steady drift undoes nothing
    assert undone_per_record(steady) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(undone_per_record(history[:1]))


def test_judge_dynamics_flags_back_and_forth_and_passes_steady_learning() -> None:
    from recipe_callbacks.core.prediction_jitter import RecordHistory, judge_dynamics

    def history(values: list[float]) -> RecordHistory:
        h = RecordHistory()
        for step, v in enumerate(values):
            previous = values[step - 1] if step else v
            h.add(step, torch.tensor([v, v]), abs(v - previous), 0.0, 1.0)
        return h

    learning = judge_dynamics(history([0.1 + 0.08 * i for i in range(11)]), 0.3)  # moves 0.08 per record
    assert learning.moving and not learning.jumpy and learning.undone_jitter == pytest.approx(0.0, abs=1e-9)
    bouncing = judge_dynamics(history([0.5 + (0.06 if i % 2 else -0.06) for i in range(11)]), 0.3)
    assert bouncing.jumpy and bouncing.undone_jitter > 0.1
    assert judge_dynamics(history([0.5, 0.6]), 0.3).late_records < 3


@pytest.mark.parametrize("seed", range(4))
def test_plain_class_logits_take_the_short_way_to_the_same_numbers_bit_for_bit(seed: int) -> None:
    from recipe_callbacks.core import prediction_jitter

    g = torch.Generator().manual_seed(seed)
    calls = []
    for trial in range(50):
        k, c = int(torch.randint(1, 40, (1,), generator=g)), int(torch.randint(2, 60, (1,), generator=g))
        logits = torch.randn(k, c, generator=g, dtype=torch.float64) * (10.0 ** float(torch.randint(-3, 3, (1,))))
        if trial % 7 == 0:
            logits[0, 0] = 80.0  # a near-certain row
        labels = torch.randint(0, c, (k,), generator=g)
        short = snapshot(logits.float(), labels, "multiclass", min_confidence=0.3)
        calls.append(prediction_jitter._plain_classes(logits, labels))
        long = prediction_jitter._snapshot(logits.float().double(), labels, "multiclass", 0.3)  # the general way
        assert short.loss == long.loss
        for a, b in ((short.tracked, long.tracked), (short.per_sample, long.per_sample), (short.classes, long.classes),
                     (short.confident, long.confident)):
            assert a is not None and b is not None and a.dtype == b.dtype and torch.equal(a, b)
    assert all(calls)
    padded = torch.tensor([0, -100, 1])  # a padding index goes the general way
    assert not prediction_jitter._plain_classes(torch.zeros(3, 2, dtype=torch.float64), padded)
