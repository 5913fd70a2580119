"""Task inference and per-sample losses, against plain PyTorch losses with ``reduction="none"``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recipe_callbacks.core.task import (
    class_axis,
    class_first,
    infer_task,
    is_binary_valued,
    paired_rows,
    per_sample_loss,
    require_task,
)


def test_infer_task_from_shapes_and_dtypes() -> None:
    assert infer_task(torch.zeros(4, 10), torch.tensor([1, 2, 3, 0])) == "multiclass"
    assert infer_task(torch.zeros(4, 3, 5, 5), torch.zeros(4, 5, 5, dtype=torch.long)) == "multiclass"
    assert infer_task(torch.zeros(4, 2), torch.tensor([0, 1, 1, 0])) == "multiclass"
    assert infer_task(torch.zeros(4), torch.tensor([0.0, 1.0, 0.0, 1.0])) == "binary"
    assert infer_task(torch.zeros(4, 1), torch.tensor([0, 1, 1, 0])) == "binary"
    assert infer_task(torch.zeros(4, 1), torch.tensor([True, False, True, True])) == "binary"
    assert infer_task(torch.zeros(5, 3), torch.tensor([[0.0, 1.0, 1.0]] * 5)) == "binary"  # multi-label
    assert infer_task(torch.zeros(4, 1), torch.tensor([[0.3], [50.0], [1.0], [2.0]])) == "regression"
    assert infer_task(torch.zeros(4, 3), torch.zeros(4, 3) + 0.5) == "regression"
    assert infer_task(torch.zeros(4, 3), torch.tensor([7, 8, 9, 1])) == "multiclass"  # labels are not checked
    assert infer_task(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long)) is None  # batch sizes differ
    assert infer_task(torch.zeros(4, 3), torch.zeros(4, 2)) is None  # nothing fits
    assert infer_task(torch.zeros(4, dtype=torch.long), torch.zeros(4)) is None  # integer outputs are no logits
    assert infer_task(torch.zeros(4, 1), torch.tensor([0, 3, 2, 1])) is None  # one output, integer classes


def test_float_targets_of_zeros_and_ones_are_binary() -> None:
    # BCE with logits takes float targets, and a batch of an imbalanced binary task may hold no 1 at all.
    assert infer_task(torch.zeros(3, 2), torch.zeros(3, 2)) == "binary"
    assert infer_task(torch.zeros(3, 1), torch.tensor([0.0, 1.0, 0.0])) == "binary"
    assert infer_task(torch.zeros(3, 2), torch.full((3, 2), 0.25)) == "regression"


def test_class_axis_first_wins_and_sequence_logits_have_it_last() -> None:
    y = torch.zeros(2, 3, dtype=torch.long)
    assert class_axis(torch.zeros(2, 5, 3), y) == 1
    assert class_axis(torch.zeros(2, 3, 65), y) == -1
    assert class_axis(torch.zeros(2, 3, 3), y) == 1  # both fit: PyTorch's layout
    assert class_axis(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)) is None  # C = 1 is no class axis
    assert class_axis(torch.zeros(2, 4, 4), y) is None
    logits = torch.randn(2, 3, 65)
    moved = class_first(logits, y)
    assert moved.shape == (2, 65, 3) and torch.equal(moved.movedim(1, -1), logits)
    assert class_first(moved, y) is moved  # idempotent


def test_require_task_raises_naming_the_shapes() -> None:
    assert require_task(torch.zeros(5, 3), torch.tensor([0, 1, 2, 0, 1])) == "multiclass"
    with pytest.raises(ValueError, match=r"cannot tell the task.*\(5, 3\).*\(5, 2\).*differ in size per sample"):
        require_task(torch.zeros(5, 3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="do not fit any task: their batch sizes differ"):
        require_task(torch.zeros(3, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="must be 0 or 1"):
        require_task(torch.zeros(4, 1), torch.tensor([0, 3, 2, 1]))


# Moved from test_eval_stats, where it tested eval_stats.infer_task (FullEvalSet's inference, now require_task).
def test_require_task_from_shapes_and_targets() -> None:
    assert require_task(torch.zeros(5, 3), torch.tensor([0, 1, 2, 0, 1])) == "multiclass"
    assert require_task(torch.zeros(2, 4, 3, 3), torch.zeros(2, 3, 3, dtype=torch.long)) == "multiclass"
    assert require_task(torch.zeros(5, 1), torch.tensor([0, 1, 1, 0, 1])) == "binary"
    assert require_task(torch.zeros(5, 3), torch.tensor([[0.0, 1.0, 1.0]] * 5)) == "binary"  # multi-label
    assert require_task(torch.zeros(5), torch.tensor([0.1, 2.0, 3.0, 4.0, 5.0])) == "regression"
    with pytest.raises(ValueError, match="cannot tell the task"):
        require_task(torch.zeros(5, 3), torch.zeros(5, 2))


# Moved from test_prediction_jitter, where it tested prediction_jitter.infer_task (PredictionDynamicsLogger's
# inference, now require_task). One expectation changed on purpose: float targets that are all 0/1 with one
# output each were "regression" there and are "binary" everywhere now (see
# test_float_targets_of_zeros_and_ones_are_binary).
def test_require_task_for_prediction_dynamics() -> None:
    assert require_task(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long)) == "multiclass"
    assert require_task(torch.zeros(3), torch.zeros(3, dtype=torch.long)) == "binary"
    assert require_task(torch.zeros(3, 2), torch.zeros(3, 2)) == "binary"  # was "regression"
    with pytest.raises(ValueError, match="do not fit"):
        require_task(torch.zeros(3, 5), torch.zeros(4, dtype=torch.long))


def test_is_binary_valued() -> None:
    assert is_binary_valued(torch.tensor([0.0, 1.0])) and is_binary_valued(torch.tensor([True]))
    assert not is_binary_valued(torch.tensor([0.0, 0.5])) and not is_binary_valued(torch.zeros(0))


def test_per_sample_loss_matches_torch_losses() -> None:
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(6, 5, generator=g), torch.randint(0, 5, (6,), generator=g)
    ce = per_sample_loss(logits, y, "multiclass")
    assert ce.dtype == torch.float64 and ce.shape == (6,)
    torch.testing.assert_close(ce, F.cross_entropy(logits.double(), y, reduction="none"))
    # the mean of the per-sample losses is the usual batch loss
    assert float(ce.mean()) == pytest.approx(float(F.cross_entropy(logits, y)))
    seg, seg_y = torch.randn(3, 4, 2, 5, generator=g), torch.randint(0, 4, (3, 2, 5), generator=g)
    torch.testing.assert_close(
        per_sample_loss(seg, seg_y, "multiclass"), F.cross_entropy(seg.double(), seg_y, reduction="none").mean((1, 2))
    )
    seq, tokens = torch.randn(3, 5, 7, generator=g), torch.randint(0, 7, (3, 5), generator=g)
    assert infer_task(seq, tokens) == "multiclass"
    oracle = F.cross_entropy(seq.double().flatten(0, 1), tokens.flatten(), reduction="none").reshape(3, 5).mean(1)
    torch.testing.assert_close(per_sample_loss(seq, tokens, "multiclass"), oracle)
    soft = torch.softmax(torch.randn(6, 5, generator=g), dim=1)
    torch.testing.assert_close(
        per_sample_loss(logits, soft, "multiclass"), F.cross_entropy(logits.double(), soft.double(), reduction="none")
    )


def test_per_sample_binary_and_regression_losses_match_torch() -> None:
    g = torch.Generator().manual_seed(2)
    flat, flat_bits = torch.randn(6, generator=g), (torch.rand(6, generator=g) > 0.5).float()
    torch.testing.assert_close(
        per_sample_loss(flat, flat_bits, "binary"),
        F.binary_cross_entropy_with_logits(flat.double(), flat_bits.double(), reduction="none"),
    )
    out, bits = torch.randn(6, 1, generator=g), (torch.rand(6, generator=g) > 0.5).float()
    torch.testing.assert_close(
        per_sample_loss(out, bits, "binary"),
        F.binary_cross_entropy_with_logits(out.squeeze(1).double(), bits.double(), reduction="none"),
    )
    multi, labels = torch.randn(6, 3, generator=g), torch.randint(0, 2, (6, 3), generator=g)
    torch.testing.assert_close(
        per_sample_loss(multi, labels, "binary"),
        F.binary_cross_entropy_with_logits(multi.double(), labels.double(), reduction="none").mean(1),
    )
    pred, real = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    torch.testing.assert_close(
        per_sample_loss(pred, real, "regression"), F.mse_loss(pred.double(), real.double(), reduction="none").mean(1)
    )
    assert float(per_sample_loss(pred, real, "regression").mean()) == pytest.approx(float(F.mse_loss(pred, real)))


def test_per_sample_loss_does_not_broadcast_or_guess() -> None:
    with pytest.raises(ValueError, match="shaped like the target"):
        per_sample_loss(torch.zeros(4, 4), torch.zeros(4), "regression")  # would broadcast to (4, 4)
    with pytest.raises(ValueError, match="shaped like the target"):
        per_sample_loss(torch.zeros(4, 2), torch.zeros(4), "binary")
    with pytest.raises(ValueError, match="multiclass loss needs logits"):
        per_sample_loss(torch.zeros(4, 3), torch.zeros(4, 2, dtype=torch.long), "multiclass")
    with pytest.raises(ValueError, match="task must be one of"):
        per_sample_loss(torch.zeros(4), torch.zeros(4), "ranking")  # type: ignore[arg-type]
    out, t = paired_rows(torch.ones(3, 1, requires_grad=True), torch.tensor([1, 0, 1]))
    assert out.shape == t.shape == (3, 1) and not out.requires_grad and t.dtype == torch.float64


def test_one_hot_and_probability_rows_are_multiclass_with_their_argmax_as_class() -> None:
    from recipe_callbacks.core.task import class_indices, is_distribution

    one_hot = torch.nn.functional.one_hot(torch.tensor([2, 0, 1, 2]), 3).float()
    soft = one_hot * 0.9 + 0.1 / 3  # label smoothing
    for rows in (one_hot, soft):
        assert is_distribution(rows) and infer_task(torch.zeros(4, 3), rows) == "multiclass"
        assert class_indices(rows).tolist() == [2, 0, 1, 2]
        oracle = torch.nn.functional.cross_entropy(torch.zeros(4, 3), rows, reduction="none").double()
        torch.testing.assert_close(per_sample_loss(torch.zeros(4, 3), rows, "multiclass"), oracle)
    assert infer_task(torch.zeros(5, 3), torch.tensor([[0.0, 1.0, 1.0]] * 5)) == "binary"  # two labels: multi-label
    assert infer_task(torch.zeros(4, 1), torch.tensor([[1.0], [0.0], [1.0], [0.0]])) == "binary"
    assert not is_distribution(torch.tensor([[0.5, float("nan")]]))
