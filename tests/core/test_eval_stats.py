"""The Lightning-free math of FullEvalSet against plain PyTorch, statistics and DistributedSampler itself."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DistributedSampler
from torchmetrics.functional import mean_absolute_error, mean_squared_error
from torchmetrics.functional.classification import binary_accuracy, multiclass_accuracy

from recipe_callbacks.core.eval_stats import (
    estimate,
    format_estimate,
    interval_decimals,
    per_sample_loss,
    per_sample_metric,
    real_rows,
    round_to_interval,
    sample_sums,
    unpadded_positions,
    z_value,
)


def test_per_sample_losses_average_to_the_torch_losses() -> None:
    g = torch.Generator().manual_seed(0)
    logits, classes = torch.randn(7, 4, generator=g), torch.randint(0, 4, (7,), generator=g)
    ce = per_sample_loss(logits, classes, "cross_entropy")
    assert ce.dtype == torch.float64 and ce.shape == (7,)
    torch.testing.assert_close(ce, F.cross_entropy(logits.double(), classes, reduction="none"))
    # segmentation: one loss per sample, averaged over its pixels
    seg, seg_y = torch.randn(3, 4, 2, 5, generator=g), torch.randint(0, 4, (3, 2, 5), generator=g)
    expected = torch.stack([F.cross_entropy(seg[i : i + 1].double(), seg_y[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(per_sample_loss(seg, seg_y, "cross_entropy"), expected)
    # binary with a (N, 1) output and (N,) targets
    out, bits = torch.randn(7, 1, generator=g), torch.randint(0, 2, (7,), generator=g).float()
    torch.testing.assert_close(
        per_sample_loss(out, bits, "bce_with_logits").mean(),
        F.binary_cross_entropy_with_logits(out.squeeze(1).double(), bits.double()),
    )
    pred, real = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
    torch.testing.assert_close(per_sample_loss(pred, real, "mse").mean(), F.mse_loss(pred.double(), real.double()))
    torch.testing.assert_close(per_sample_loss(pred, real, "l1").mean(), F.l1_loss(pred.double(), real.double()))
    with pytest.raises(ValueError, match="shaped like the target"):
        per_sample_loss(torch.zeros(4, 4), torch.zeros(4), "mse")  # would broadcast to (4, 4)


def test_per_sample_metrics() -> None:
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [3.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 0, 1])
    assert per_sample_metric("accuracy", "multiclass", logits, y).tolist() == [1.0, 1.0, 0.0, 0.0]  # type: ignore[union-attr]
    binary = per_sample_metric("accuracy", "binary", torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1, 1, 0]))
    assert binary is not None and binary.tolist() == [1.0, 0.0, 0.0]
    mae = per_sample_metric("mae", "regression", torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]))
    assert mae is not None and mae.tolist() == [1.0, 2.0]
    mse = per_sample_metric("mse", "regression", torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]))
    assert mse is not None and mse.tolist() == [1.0, 4.0]
    assert per_sample_metric("auroc", "binary", torch.zeros(2), torch.zeros(2)) is None
    assert per_sample_metric("mae", "multiclass", logits, y) is None


def test_per_sample_metrics_average_to_torchmetrics() -> None:
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(50, 5, generator=g), torch.randint(0, 5, (50,), generator=g)
    accuracy = per_sample_metric("accuracy", "multiclass", logits, y)
    assert accuracy is not None
    reference = multiclass_accuracy(logits, y, num_classes=5, average="micro")
    assert float(accuracy.mean()) == pytest.approx(float(reference), rel=1e-6)
    out, bits = torch.randn(50, generator=g), torch.randint(0, 2, (50,), generator=g)
    binary = per_sample_metric("accuracy", "binary", out, bits)
    assert binary is not None and float(binary.mean()) == pytest.approx(float(binary_accuracy(out.sigmoid(), bits)))
    pred, real = torch.randn(50, 1, generator=g), torch.randn(50, generator=g)
    mae, mse = per_sample_metric("mae", "regression", pred, real), per_sample_metric("mse", "regression", pred, real)
    assert mae is not None and float(mae.mean()) == pytest.approx(float(mean_absolute_error(pred.squeeze(1), real)))
    assert mse is not None and float(mse.mean()) == pytest.approx(float(mean_squared_error(pred.squeeze(1), real)))


def test_sums_over_uneven_batches_give_the_exact_mean_and_stderr() -> None:
    values = torch.rand(37, generator=torch.Generator().manual_seed(3)) * 4.0
    batches = values.split(16)  # 16, 16, 5
    total = sum((sample_sums(b) for b in batches), torch.zeros(3, dtype=torch.float64))
    est = estimate(*total.tolist())
    data = values.double().tolist()
    assert est.count == 37
    assert est.mean == pytest.approx(statistics.fmean(data), rel=1e-12)
    assert est.stderr == pytest.approx(statistics.stdev(data) / math.sqrt(37), rel=1e-9)
    assert est.half_width == pytest.approx(1.959964 * est.stderr, rel=1e-6)
    assert est.low < est.mean < est.high
    mean_of_batch_means = statistics.fmean(float(b.double().mean()) for b in batches)
    assert abs(mean_of_batch_means - est.mean) > 1e-3  # the average Lightning-style batch means would give


def test_sums_leave_out_masked_rows() -> None:
    sums = sample_sums(torch.tensor([1.0, 2.0, 30.0]), torch.tensor([True, True, False]))
    assert sums.tolist() == [2.0, 3.0, 5.0]


def test_estimate_without_enough_samples() -> None:
    assert math.isnan(estimate(0, 0.0, 0.0).mean)
    one = estimate(1, 0.7, 0.49)
    assert one.mean == pytest.approx(0.7) and math.isnan(one.stderr) and one.count == 1
    assert estimate(3, 3.0, 3.0).half_width == 0.0


def test_z_value() -> None:
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_value(0.99) == pytest.approx(2.575829, abs=1e-6)
    with pytest.raises(ValueError):
        z_value(1.0)


@pytest.mark.parametrize(
    ("value", "half_width", "expected"),
    [
        (0.41237, 0.0063, "0.412 ± 0.006"),
        (0.41237, 0.014, "0.412 ± 0.014"),
        (0.41237, 0.0096, "0.412 ± 0.010"),  # rounds up to a leading 1: two digits
        (2.3026, 0.25, "2.3 ± 0.2"),
        (1234.5, 37.0, "1230 ± 40"),
        (87.6, 3.2, "88 ± 3"),
        (0.5, 0.0, "0.5 ± 0"),
    ],
)
def test_round_to_interval(value: float, half_width: float, expected: str) -> None:
    assert round_to_interval(value, half_width) == expected


def test_interval_decimals_and_report_text() -> None:
    assert interval_decimals(0.006) == 3
    assert interval_decimals(0.5) == 1
    assert interval_decimals(5.0) == 0
    with pytest.raises(ValueError):
        interval_decimals(0.0)
    assert format_estimate(0.41237, 0.0063, 1797) == "0.412 ± 0.006, n = 1,797"
    assert format_estimate(0.41237, math.nan, 1) == "0.4124 (no interval), n = 1"
    assert estimate(4, 10.0, 30.0).text() == "2.5 ± 1.3, n = 4"  # half-width 1.265


@pytest.mark.parametrize(("n", "replicas"), [(5, 2), (37, 2), (37, 3), (40, 4), (2, 4), (1, 3), (11, 8)])
def test_unpadded_positions_match_distributed_sampler(n: int, replicas: int) -> None:
    """The real prefixes of all shards together are every index exactly once, the rest is padding."""
    seen: list[int] = []
    padding = 0
    for rank in range(replicas):
        sampler = DistributedSampler(list(range(n)), num_replicas=replicas, rank=rank, shuffle=True, seed=7)
        shard = list(sampler)
        real = unpadded_positions(n, replicas, rank, sampler.num_samples)
        seen += shard[:real]
        padding += len(shard) - real
    assert sorted(seen) == list(range(n))
    assert padding == sampler.total_size - n


def test_real_rows() -> None:
    assert real_rows(0, 4, None) == 4
    assert real_rows(16, 4, 18) == 2
    assert real_rows(20, 2, 18) == 0
    assert real_rows(0, 8, 18) == 8


def test_sequence_logits_with_the_class_axis_last() -> None:
    g = torch.Generator().manual_seed(2)
    logits, tokens = torch.randn(3, 5, 7, generator=g), torch.randint(0, 7, (3, 5), generator=g)  # (B, T, V), (B, T)
    oracle = F.cross_entropy(logits.double().flatten(0, 1), tokens.flatten(), reduction="none").reshape(3, 5).mean(1)
    torch.testing.assert_close(per_sample_loss(logits, tokens, "cross_entropy"), oracle)
    accuracy = per_sample_metric("accuracy", "multiclass", logits, tokens)
    assert accuracy is not None
    torch.testing.assert_close(accuracy, (logits.argmax(-1) == tokens).double().mean(1))
