"""Dependency matrices against plain-PyTorch oracles (full Jacobians, linear maps), no Trainer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from recipe_callbacks.core.dependencies import (
    EmbeddingCapture,
    OutputRecorder,
    batch_major,
    batchnorm_in_eval,
    cost_in_steps,
    dependency_by_gradient,
    dependency_by_perturbation,
    dependency_picture,
    first_mixing_output,
    first_tensor,
    future,
    off_diagonal,
    probe_indices,
    probe_weights,
    relative,
    restored_buffers,
)


def jacobian_oracle(fn, x: torch.Tensor, probes: list[int]) -> torch.Tensor:
    """D[o, i] = || sum_k w[o, k] * d y[o, k] / d x[i, :] || from the full Jacobian (B, K, B, D)."""
    y = fn(x)
    weights = probe_weights(y).reshape(y.shape[0], -1)
    jac = torch.autograd.functional.jacobian(fn, x).reshape(y.shape[0], weights.shape[1], x.shape[0], -1)
    out = torch.full((y.shape[0], x.shape[0]), math.nan, dtype=torch.float64)
    for o in probes:
        out[o] = torch.einsum("k,kid->id", weights[o], jac[o]).double().norm(dim=1)
    return out


def mixing_mlp(x: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(1)
    lin = nn.Linear(3, 4)
    h = torch.tanh(lin(x))
    return h - 0.3 * h.mean(0)  # the batch mean: every sample leaks into every other


def test_gradient_matrix_matches_the_jacobian_oracle() -> None:
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    probes = [0, 2, 4]
    leaf = x.clone().requires_grad_(True)
    got = dependency_by_gradient(mixing_mlp(leaf), leaf, probes)
    want = jacobian_oracle(mixing_mlp, x, probes)
    assert torch.allclose(got[probes], want[probes], rtol=1e-5, atol=1e-7)
    assert torch.isnan(got[1]).all() and torch.isnan(got[3]).all()  # not probed
    assert (got[probes] > 0).all()


def test_per_sample_model_gives_an_exactly_diagonal_matrix_and_leaves_parameter_grads_alone() -> None:
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(6, 3, requires_grad=True)
    matrix = dependency_by_gradient(net(x), x, list(range(6)))
    assert torch.count_nonzero(matrix - torch.diag(torch.diagonal(matrix))) == 0
    assert (torch.diagonal(matrix) > 0).all()
    assert all(p.grad is None for p in net.parameters())
    assert off_diagonal(relative(matrix, axis=1), 1e-6) == []


def test_softmax_outputs_still_have_a_gradient() -> None:
    # A plain sum of probabilities is constant (gradient 0): the random weighting avoids that.
    x = torch.randn(4, 3, requires_grad=True)
    probs = nn.Linear(3, 5)(x).softmax(-1)
    assert (torch.diagonal(dependency_by_gradient(probs, x, range(4))) > 0).all()


def test_time_matrix_of_a_causal_and_an_anti_causal_op() -> None:
    x = torch.randn(2, 6, 3, requires_grad=True)
    causal = dependency_by_gradient(x.cumsum(1), x, range(6), out_dim=1, in_dim=1)
    assert torch.equal(causal > 0, torch.tril(torch.ones(6, 6, dtype=torch.bool)))
    assert future(relative(causal, axis=1), 1e-6) == []
    assert len(future(relative(causal, axis=1), 1e-6, strict=True)) == 6  # the diagonal
    leaky = dependency_by_gradient(x.flip(1).cumsum(1).flip(1), x, [0, 3], out_dim=1, in_dim=1)
    found = {(d.out, d.source) for d in future(relative(leaky, axis=1), 1e-6)}
    assert found == {(0, s) for s in range(1, 6)} | {(3, 4), (3, 5)}


def test_perturbation_matrix_matches_a_linear_map() -> None:
    # y[:, t] = sum_s M[t, s] x[:, s]: perturbing x[:, s] by delta moves y[:, t] by |M[t, s]| * ||delta||.
    m = torch.tensor([[1.0, 0.0, 0.0], [0.5, 2.0, 0.0], [0.0, 1.0, 3.0]], dtype=torch.float64)
    x = torch.randn(2, 3, 4, dtype=torch.float64)

    def net(t: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ts,bsf->btf", m, t)

    got = dependency_by_perturbation(net, x, [0, 1, 2], out_dim=1, in_dim=1)
    generator = torch.Generator().manual_seed(0)
    for s in range(3):  # the same noise the function draws, in the same order
        delta = torch.randn(2, 4, generator=generator, dtype=torch.float64) * float(x.std())
        assert torch.allclose(got[:, s], m[:, s].abs() * delta.norm())
    assert future(relative(got, axis=0), 1e-9) == []


def test_perturbation_of_token_ids_stays_in_the_seen_vocabulary() -> None:
    ids = torch.tensor([[0, 4, 2], [3, 1, 4]])
    seen: list[torch.Tensor] = []

    def net(t: torch.Tensor) -> torch.Tensor:
        seen.append(t.clone())
        return nn.functional.one_hot(t, 5).double().cumsum(1)

    got = dependency_by_perturbation(net, ids, [1], out_dim=1, in_dim=1)
    assert seen[1][:, 1].tolist() == [0, 2]  # 4 -> 0 (wraps at the largest id + 1), 1 -> 2
    assert (got[:, 1] > 0).tolist() == [False, True, True]
    assert int(seen[1].max()) <= 4


def test_first_mixing_output_names_the_first_mixed_tensor() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    a = x * 2
    pos = torch.ones(7, 2, requires_grad=True)  # leading dim not a multiple of 4: not judged
    b = a.reshape(3, 4).t()  # a view across the batch: sample 0 now holds pieces of others
    c = b + 1
    scan = first_mixing_output([a, pos, b, c], x, probe=0, tolerance=1e-6)
    assert (scan.first_mixed, scan.last_clean) == (2, 0)
    assert math.isnan(scan.leaks[1]) and scan.leaks[0] == 0.0 and scan.leaks[2] > 0.1
    assert scan.backwards == 2
    clean = first_mixing_output([a, c - c + a], x, probe=1, tolerance=1e-6)
    assert clean.first_mixed is None and clean.last_clean == 1


def test_small_helpers() -> None:
    assert probe_indices(16, 4) == [0, 5, 10, 15]
    assert probe_indices(1, 4) == [0] and probe_indices(0, 4) == []
    rel = relative(torch.tensor([[4.0, 1.0, math.nan], [0.0, 0.0, 0.0]], dtype=torch.float64), axis=1)
    assert rel[0, :2].tolist() == [1.0, 0.25] and math.isnan(rel[0, 2]) and rel[1].tolist() == [0.0, 0.0, 0.0]
    assert batch_major(torch.zeros(6, 5), 3).shape == (3, 2, 5)
    assert batch_major(torch.zeros(7), 3) is None
    assert first_tensor([1, torch.tensor([1]), torch.tensor([2.0])]).tolist() == [2.0]
    assert first_tensor("no tensor") is None
    assert cost_in_steps(1, 4, 16, 16) == 3.0


def test_embedding_capture_takes_the_token_embedding_not_the_positional_one() -> None:
    tok, pos = nn.Embedding(10, 4), nn.Embedding(5, 4)
    tok.weight.requires_grad_(False)  # frozen: the captured output is made to require grad
    model = nn.ModuleDict({"pos": pos, "tok": tok})
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with EmbeddingCapture(model, ids) as capture:
        p = model["pos"](torch.arange(5).unsqueeze(0))  # called first, with other ids of the same shape
        t = model["tok"](ids)
    assert capture.name == "tok" and capture.output is t and t.requires_grad
    assert p is not capture.output
    assert not tok._forward_hooks  # hooks removed on exit


def test_output_recorder_keeps_the_finishing_order_and_counts_repeated_calls() -> None:
    inner = nn.Linear(2, 2)
    block = nn.Sequential(inner, nn.ReLU())
    model = nn.Sequential(block)
    with OutputRecorder(model) as recorder:
        model(torch.ones(1, 2))
        inner(torch.ones(1, 2))
    assert recorder.names == ["0.0", "0.1", "0", "0.0 (call 2)"]
    assert recorder.kind(3) == "Linear"


def test_restored_buffers_and_batchnorm_in_eval() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.5)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with restored_buffers(net):
        net(torch.randn(8, 3))  # train mode: running statistics move
        assert not torch.equal(net[1].running_mean, before["1.running_mean"])
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert batchnorm_in_eval(net) == 1
    assert not net[1].training and net[2].training and net.training


def test_dependency_picture_outlines_flagged_cells_and_shows_missing_cells_grey() -> None:
    rel = torch.tensor([[1.0, 0.5], [math.nan, 1.0]], dtype=torch.float64)
    flagged = future(rel, 1e-4)
    figure = dependency_picture(rel, flagged, title="deps")
    ax, bar = figure.axes
    (image,) = ax.get_images()
    shown = image.get_array()
    assert bool(shown.mask[1, 0]) and shown[0, 0] == 1.0  # NaN: not measured, drawn in the "bad" grey
    assert image.cmap.get_bad().tolist() == pytest.approx([0.827, 0.827, 0.827, 1.0], abs=1e-3)
    (outline,) = [p for p in ax.patches if p.get_label() == "dependency that should be 0"]
    assert outline.get_xy() == (0.5, -0.5)  # the cell (row 0, column 1): output 0 depends on input 1
    assert bar.get_ylabel() == "relative dependency (log scale)" and image.norm.vmin == 1e-6


def test_gradient_without_a_graph_is_refused() -> None:
    with pytest.raises(ValueError, match="perturbation"):
        dependency_by_gradient(torch.zeros(2, 2), torch.zeros(2, 2), [0])
