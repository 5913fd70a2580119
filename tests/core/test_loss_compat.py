"""core.loss_compat against plain PyTorch: each candidate equals the loss a user would write."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from recipe_callbacks.core import loss_compat as core


def by_name(output: torch.Tensor, target: torch.Tensor) -> dict[str, core.Candidate]:
    return {c.name: c for c in core.candidates(output, target)}


def test_class_candidates_equal_pytorch_and_judge_the_output_kind() -> None:
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(32, 5, generator=g), torch.randint(0, 5, (32,), generator=g)
    found = by_name(logits, y)
    assert found["cross_entropy(output, y)"].value == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert found["cross_entropy(output, y)"].severity == "correct"
    assert found["nll_loss(output, y)"].severity == "fail"
    probs = logits.softmax(1)
    found = by_name(probs, y)
    assert found["cross_entropy(output, y)"].severity == "fail"  # probabilities into cross_entropy
    assert found["nll_loss(log(output), y)"].value == pytest.approx(float(F.nll_loss(probs.log(), y)), rel=1e-6)
    assert found["nll_loss(log(output), y)"].severity == "correct"


def test_ignore_index_and_shifted_sequences() -> None:
    g = torch.Generator().manual_seed(1)
    logits, y = torch.randn(2, 6, 7, generator=g), torch.randint(0, 7, (2, 6), generator=g)
    y[:, -2:] = -100
    shifted = F.cross_entropy(logits[:, :-1].reshape(-1, 7), y[:, 1:].reshape(-1))
    found = by_name(logits, y)
    assert found["cross_entropy(output, y) shifted by one position"].value == pytest.approx(float(shifted), rel=1e-6)
    flat = by_name(logits.reshape(-1, 7), y)  # (B*T, V) against (B, T)
    assert flat["cross_entropy(output, y)"].value == pytest.approx(
        float(F.cross_entropy(logits.reshape(-1, 7), y.reshape(-1))), rel=1e-6)


def test_broadcast_candidate_equals_what_pytorch_computes() -> None:
    g = torch.Generator().manual_seed(2)
    out, y = torch.randn(8, 1, generator=g), torch.randn(8, generator=g)
    with pytest.warns(UserWarning, match="target size"):
        user = float(F.mse_loss(out, y))
    ident = core.identify(user, core.candidates(out, y))
    assert ident.best is not None and ident.best.severity == "fail" and "broadcast to (8, 8)" in ident.best.name
    assert core.identify(float(F.mse_loss(out.squeeze(1), y)), core.candidates(out, y)).best.severity == "correct"


def test_binary_kinds() -> None:
    g = torch.Generator().manual_seed(3)
    logits, t = torch.randn(16, generator=g), (torch.rand(16, generator=g) > 0.5).float()
    p = torch.sigmoid(logits)
    twice = core.identify(float(F.binary_cross_entropy_with_logits(p, t)), core.candidates(p, t)).best
    assert twice is not None and twice.severity == "fail"
    right = core.identify(float(F.binary_cross_entropy(p, t)), core.candidates(p, t)).best
    assert right is not None and right.severity == "correct"


def test_nothing_matches_a_loss_with_extra_terms() -> None:
    g = torch.Generator().manual_seed(4)
    logits, y = torch.randn(16, 3, generator=g), torch.randint(0, 3, (16,), generator=g)
    user = float(F.cross_entropy(logits, y, label_smoothing=0.2))
    assert core.identify(user, core.candidates(logits, y)).best is None


def test_a_correct_candidate_wins_when_it_is_as_close() -> None:
    close = [core.Candidate("mistake", 1.00000, "fail", ""), core.Candidate("right", 1.000001, "correct", "")]
    assert core.identify(1.0000005, close).best.name == "right"  # type: ignore[union-attr]
    far = [core.Candidate("mistake", 1.0, "fail", ""), core.Candidate("right", 1.00005, "correct", "")]
    assert core.identify(1.0, far).best.name == "mistake"  # type: ignore[union-attr]
