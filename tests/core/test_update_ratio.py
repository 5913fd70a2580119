"""Update ratios and activation health against plain PyTorch and hand computations."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from recipe_callbacks.core import update_ratio as core


def test_ratio_of_a_known_sgd_step_matches_the_hand_formula() -> None:
    # One SGD step w <- w - lr * g moves the weights by exactly lr * ||g||.
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    x, y = torch.randn(7, 5), torch.randn(7, 3)
    lr = 0.1
    before = [p.detach().clone() for p in layer.parameters()]
    nn.functional.mse_loss(layer(x), y).backward()
    grads = [p.grad.detach().clone() for p in layer.parameters()]  # type: ignore[union-attr]
    torch.optim.SGD(layer.parameters(), lr=lr).step()
    after = [p.detach() for p in layer.parameters()]

    update, weight = core.update_norms(before, after)
    for u, w, g, b in zip(update.tolist(), weight.tolist(), grads, before, strict=True):
        assert u == pytest.approx(lr * g.norm().item(), rel=1e-5)
        assert w == pytest.approx(b.norm().item(), rel=1e-6)

    ratios = core.layer_log10_ratios(["lin.weight", "lin.bias"], update.tolist(), weight.tolist())
    g2 = sum(g.pow(2).sum().item() for g in grads)
    w2 = sum(b.pow(2).sum().item() for b in before)
    assert list(ratios) == ["lin"]
    assert ratios["lin"] == pytest.approx(math.log10(lr * math.sqrt(g2) / math.sqrt(w2)), abs=1e-5)


def test_log10_ratio_clamps_zero_and_infinite_and_keeps_nan() -> None:
    assert core.log10_ratio(0.0, 1.0) == core.LOG10_FLOOR
    assert core.log10_ratio(0.0, 0.0) == core.LOG10_FLOOR
    assert core.log10_ratio(1.0, 0.0) == core.LOG10_CEILING
    assert core.log10_ratio(2e-4, 2.0) == pytest.approx(-4.0)
    assert math.isnan(core.log10_ratio(math.nan, 1.0))


def test_layer_name_groups_by_owning_module() -> None:
    assert core.layer_name("encoder.layers.3.linear1.weight") == "encoder.layers.3.linear1"
    assert core.layer_name("temperature") == "root"


def test_update_norms_rejects_mismatched_lists() -> None:
    with pytest.raises(ValueError, match="2 tensors before the step but 1 after"):
        core.update_norms([torch.ones(1), torch.ones(1)], [torch.ones(1)])


def test_half_precision_difference_is_taken_in_float32() -> None:
    before = torch.tensor([1000.0], dtype=torch.float16)
    after = torch.tensor([1000.5], dtype=torch.float16)
    update, weight = core.update_norms([before], [after])
    assert update.item() == pytest.approx(0.5)
    assert weight.item() == pytest.approx(1000.0)


def test_activation_kinds() -> None:
    kinds = [core.activation_kind(m) for m in (nn.ReLU(), nn.ReLU6(), nn.Tanh(), nn.Sigmoid(), nn.Hardtanh(),
                                               nn.Hardsigmoid(), nn.GELU(), nn.SiLU(), nn.Softplus(),
                                               nn.LeakyReLU(), nn.Linear(1, 1))]
    assert kinds == ["relu", "relu6", "tanh", "sigmoid", "hardtanh", "hardsigmoid", "gelu", "silu", "softplus",
                     None, None]


def test_hugging_face_activations_are_recognised_by_class_name() -> None:
    activations = pytest.importorskip("transformers.activations")
    kinds = {name: core.activation_kind(activations.ACT2CLS[name]()) for name in (
        "gelu", "gelu_new", "gelu_fast", "gelu_accurate", "gelu_pytorch_tanh", "quick_gelu", "silu", "relu2",
        "mish", "linear")}
    assert kinds == {"gelu": "gelu", "gelu_new": "gelu", "gelu_fast": "gelu", "gelu_accurate": "gelu",
                     "gelu_pytorch_tanh": "gelu", "quick_gelu": "quick_gelu", "silu": "silu", "relu2": "relu",
                     "mish": None, "linear": None}
    clipped, args = activations.ACT2CLS["gelu_10"]
    assert core.activation_kind(clipped(**args)) is None  # cut off on the right too: not judged as a GELU


@pytest.mark.parametrize(("kind", "derivative"), [
    ("gelu", lambda x: torch.special.ndtr(x) + x * torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
    ("silu", lambda x: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x)))),
    ("quick_gelu", lambda x: torch.sigmoid(1.702 * x) * (1 + 1.702 * x * (1 - torch.sigmoid(1.702 * x)))),
    ("softplus", torch.sigmoid),
])
def test_smooth_cutoffs_pass_less_than_a_hundredth_of_the_gradient(kind: str, derivative: Any) -> None:
    # Oracle: the derivative itself. Left of the cutoff it stays below 0.01; a little right of it, not.
    cutoff = core.INPUT_CUTOFFS[kind]
    left = torch.linspace(cutoff - 20, cutoff, 2001, dtype=torch.float64)
    assert derivative(left).abs().max() < 0.01
    assert derivative(torch.tensor([cutoff + 0.3], dtype=torch.float64)).abs().item() > 0.01
    assert core.inactive_input_mask(left[:-1], kind).all()  # type: ignore[arg-type]


def test_dead_relu_units_counted_per_feature_against_a_loop() -> None:
    torch.manual_seed(1)
    pre = torch.randn(16, 10)
    pre[:, [2, 7]] = -torch.rand(16, 2) - 0.1  # two units negative on every sample
    out = torch.relu(pre)
    active, inactive = core.unit_activity(core.inactive_mask(out, "relu"), unit_dim=1)
    expected_dead = sum(all(out[n, d].item() == 0.0 for n in range(16)) for d in range(10)) / 10
    assert core.dead_fraction(active) == pytest.approx(expected_dead)
    assert core.dead_fraction(active) == pytest.approx(0.2)
    assert inactive.item() == float((out == 0).sum())


def test_conv_units_are_channels_and_unit_dim_selects_the_axis() -> None:
    out = torch.ones(4, 3, 5, 5)
    out[:, 1] = 0.0  # channel 1 dead everywhere
    out[0, 2, 0, 0] = 0.0  # one zero in channel 2 does not kill it
    active, _ = core.unit_activity(core.inactive_mask(out, "relu"), unit_dim=1)
    assert active.tolist() == [100.0, 0.0, 99.0]
    seq = torch.ones(2, 6, 4)  # (N, T, D): units on the last axis
    seq[..., 3] = 0.0
    active_last, _ = core.unit_activity(core.inactive_mask(seq, "relu"), unit_dim=-1)
    assert core.dead_fraction(active_last) == 0.25
    active_oob, _ = core.unit_activity(core.inactive_mask(seq, "relu"), unit_dim=5)  # falls back to the last
    assert core.dead_fraction(active_oob) == 0.25


def test_tanh_and_sigmoid_saturation_thresholds() -> None:
    t = torch.tensor([[-0.995, 0.5, 0.991, 0.98]])
    assert core.inactive_mask(t, "tanh").tolist() == [[True, False, True, False]]
    s = torch.tensor([[0.005, 0.5, 0.995, 0.02]])
    assert core.inactive_mask(s, "sigmoid").tolist() == [[True, False, True, False]]
    h = torch.tensor([-2.0, 0.0, 2.0])
    assert core.inactive_mask(h, "hardtanh", low=-2.0, high=2.0).tolist() == [True, False, True]
    assert core.inactive_mask(torch.tensor([0.0, 3.0, 6.0]), "relu6").tolist() == [True, False, True]


def test_judge_history_needs_the_whole_window_out_of_range() -> None:
    assert core.judge_history([-12.0, -12.0], -5.0, -1.0, patience=3) == "ok"  # too few samples
    assert core.judge_history([-3.0, -12.0, -12.0, -12.0], -5.0, -1.0, patience=3) == "low"
    assert core.judge_history([0.5, math.nan, 0.2], -5.0, -1.0, patience=3) == "high"
    assert core.judge_history([0.5, -3.0, 0.2], -5.0, -1.0, patience=3) == "ok"
    assert core.recent_median([5.0, 1.0, 2.0, 3.0, 4.0], 4) == 2.5
