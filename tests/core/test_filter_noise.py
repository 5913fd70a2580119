"""Noise score and filter layout, checked against loops, hand-derived values and reshapes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from recipe_callbacks.core.filter_noise import bank_from_linear, bank_noise_score, filter_noise_scores, filter_tiles


def gabor_bank(n: int = 8, size: int = 7, wavelength: float = 6.0) -> torch.Tensor:
    """``(n, 1, size, size)`` Gabor filters at ``n`` orientations: smooth, edge-like structure."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    filters = []
    for theta in torch.linspace(0, math.pi, n + 1)[:-1].tolist():
        along = xx * math.cos(theta) + yy * math.sin(theta)
        envelope = torch.exp(-(xx**2 + yy**2) / (2 * (size / 4) ** 2))
        filters.append(envelope * torch.cos(2 * math.pi * along / wavelength))
    return torch.stack(filters).unsqueeze(1)


def loop_score(kernel: torch.Tensor) -> float:
    """Oracle for one (H, W) kernel: neighbour pairs enumerated one by one."""
    h, w = kernel.shape
    pairs = [((i, j), (i + di, j + dj)) for i, j in itertools.product(range(h), range(w))
             for di, dj in ((0, 1), (1, 0)) if i + di < h and j + dj < w]
    d = sum((float(kernel[a]) - float(kernel[b])) ** 2 for a, b in pairs) / len(pairs)
    values = [float(v) for v in kernel.flatten()]
    mean = sum(values) / len(values)
    v = sum((x - mean) ** 2 for x in values) / (len(values) - 1)
    return d / (2 * v)


def test_score_matches_a_loop_oracle() -> None:
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(3, 1, 4, 5, generator=g)
    expected = [loop_score(bank[i, 0]) for i in range(3)]
    torch.testing.assert_close(filter_noise_scores(bank), torch.tensor(expected, dtype=torch.float64))


def test_hand_derived_values() -> None:
    sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    laplace = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])
    # Sobel: sum of squared neighbour differences 12 + 4 over 12 pairs; variance 12 / 8.
    scores = filter_noise_scores(torch.stack([sobel, laplace]).unsqueeze(1))
    assert scores.tolist() == pytest.approx([(16 / 12) / (2 * 1.5), (108 / 12) / (2 * 2.5)])


def test_random_init_scores_about_one_and_gabor_far_lower() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 32, 7)  # PyTorch's own (kaiming-uniform) init
    random_score = bank_noise_score(conv.weight)
    smooth_score = bank_noise_score(gabor_bank())
    assert 0.85 < random_score < 1.15
    assert smooth_score < 0.45
    assert bank_noise_score(gabor_bank(size=5)) < 0.6
    noisy_gabor = gabor_bank() + 0.5 * torch.randn(8, 1, 7, 7, dtype=torch.float64)
    assert smooth_score < bank_noise_score(noisy_gabor) < random_score
    assert 0.85 < bank_noise_score(torch.randn(16, 2, 3, 5, 5)) < 1.15  # 3-D kernels
    assert 0.8 < bank_noise_score(torch.randn(16, 1, 64)) < 1.2  # 1-D kernels


def test_constant_filters_and_kernels_without_neighbours() -> None:
    bank = torch.cat([torch.zeros(1, 1, 3, 3), torch.randn(1, 1, 3, 3)])
    scores = filter_noise_scores(bank)
    assert math.isnan(scores[0]) and math.isfinite(scores[1])
    assert bank_noise_score(bank) == pytest.approx(float(scores[1]))
    assert math.isnan(bank_noise_score(torch.zeros(2, 1, 3, 3)))
    with pytest.raises(ValueError, match="no spatial neighbours"):
        bank_noise_score(torch.randn(4, 3, 1, 1))


def test_linear_weight_reshaped_to_the_image() -> None:
    w = torch.randn(5, 2 * 3 * 4)
    bank = bank_from_linear(w, (2, 3, 4))
    assert bank is not None and bank.shape == (5, 2, 3, 4)
    torch.testing.assert_close(bank[1, 1, 2], w[1, 1 * 12 + 2 * 4 : 1 * 12 + 3 * 4])
    grey = bank_from_linear(torch.randn(5, 12), (3, 4))
    assert grey is not None and grey.shape == (5, 1, 3, 4)
    assert bank_from_linear(w, (24,)) is None
    assert bank_from_linear(w, (2, 3, 5)) is None


def test_tiles_layout() -> None:
    g = torch.Generator().manual_seed(0)
    colour = torch.randn(5, 3, 4, 4, generator=g)
    tiles, ncols = filter_tiles(colour)
    assert torch.equal(tiles, colour) and ncols == 3
    grey = torch.randn(4, 2, 3, 3, generator=g)
    tiles, ncols = filter_tiles(grey)
    assert ncols == 2 and tiles.shape == (8, 1, 3, 3)
    assert torch.equal(tiles[2 * 3 + 1, 0], grey[3, 1])  # filter-major: filter 3, channel 1
    volume = torch.randn(2, 1, 3, 4, 5, generator=g)  # (O, C, D, H, W)
    tiles, _ = filter_tiles(volume)
    assert tiles.shape == (2, 1, 4, 15)
    assert torch.equal(tiles[1, 0, :, 5:10], volume[1, 0, 1])  # depth slice 1 sits second
    strip, _ = filter_tiles(torch.randn(3, 1, 9))
    assert strip.shape == (3, 1, 1, 9)
    assert filter_tiles(torch.randn(100, 1, 5, 5), max_filters=10)[0].shape[0] == 10
